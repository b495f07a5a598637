"""The node table's row model (topgrid): widths, the cursor kept on its row, lines, clicks."""

from __future__ import annotations

from telemetryd.topgrid import Grid, scroll_for

COLUMNS = [("node", "node"), ("util", "util %")]


def rows(*names: str) -> tuple[list[str], list[tuple[tuple[str, str], ...]]]:
    return list(names), [((n, ""), (str(len(n)), "dim")) for n in names]


def test_widths_cover_every_row_and_the_labels() -> None:
    grid = Grid(COLUMNS)
    grid.fill(*rows("a", "a-much-longer-name"))
    assert grid.widths == [len("a-much-longer-name"), len("util %")]
    assert grid.width == sum(grid.widths) + 4
    assert "".join(t for t, _ in grid.header()) == f" {'node':<18}  util % "
    assert grid.row(0) == [(" ", ""), ("a", ""), (" " * 18, ""), (" ", ""), ("1", "dim"),
                           ("      ", "")]  # fmt: skip


def test_cursor_stays_on_its_key_when_rows_move() -> None:
    grid = Grid(COLUMNS)
    assert grid.fill(*rows("a", "b", "c")) and grid.selected() == "a"
    grid.move(2)
    assert grid.selected() == "c"
    assert grid.fill(*rows("c", "a", "b")) and grid.cursor == 0  # reordered: follows "c"
    assert not grid.fill(*rows("c", "a", "b"))  # same order: nothing moved
    grid.fill(*rows("a", "b"))  # its row is gone: the cursor stays in range
    assert grid.selected() == "a"
    grid.move(10)
    assert grid.selected() == "b"
    grid.move(-10)
    assert grid.selected() == "a"
    grid.fill([], [])
    assert grid.selected() is None


def test_header_clicks_find_their_column() -> None:
    grid = Grid(COLUMNS)
    grid.fill(*rows("abc"))
    first = grid.widths[0] + 2
    assert grid.column_at(0) == "node" and grid.column_at(first - 1) == "node"
    assert grid.column_at(first) == "util" and grid.column_at(grid.width) is None


def test_scrolling_keeps_the_cursor_in_view_with_least_movement() -> None:
    assert scroll_for(5, 0, 10) == 0
    assert scroll_for(12, 0, 10) == 3
    assert scroll_for(2, 8, 10) == 2
    assert scroll_for(3, 0, 0) == 0
