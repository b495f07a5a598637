"""A table as a row model with no UI: column widths, a cursor that stays on its row, lines.

top's node table holds 1,000 rows of which a screen shows a few dozen. Textual's DataTable
keeps a renderable per cell and, on any update, redraws every visible cell from markup;
at 1,000 rows refreshed every second that was a third of top's CPU. The widget in
``tui.py`` keeps only this model and asks it for the lines in view, so a refresh costs the
rows' texts (which ``topview`` builds anyway) and the drawing of what is on screen.
"""

from __future__ import annotations

from collections.abc import Sequence

from telemetryd.topfmt import Part

PAD = 1  # blank cells either side of a column, as DataTable's cell_padding


class Grid:
    """Rows of styled cells under labelled columns, and which row the cursor is on."""

    def __init__(self, columns: Sequence[tuple[str, str]]) -> None:
        self.columns = [key for key, _ in columns]
        self.labels = [label for _, label in columns]
        self.keys: list[str] = []
        self.cells: list[tuple[Part, ...]] = []
        self.cursor = 0
        self.widths = [len(label) for label in self.labels]

    def fill(self, keys: list[str], cells: list[tuple[Part, ...]]) -> bool:
        """Show exactly these rows, the cursor on the same key; whether the order changed.

        A column is as wide as its widest text (or label), over all rows, not only the
        visible ones: scrolling never shifts the columns.
        """
        selected, moved = self.selected(), keys != self.keys
        widths = [len(label) for label in self.labels]
        for i, column in enumerate(zip(*cells, strict=False)):
            widths[i] = max(widths[i], max(len(text) for text, _ in column))
        self.keys, self.cells, self.widths = keys, cells, widths
        if moved and selected is not None and selected in keys:
            self.cursor = keys.index(selected)
        self.cursor = max(0, min(self.cursor, len(keys) - 1))
        return moved

    def selected(self) -> str | None:
        """The key of the row under the cursor (None when there are no rows)."""
        return self.keys[self.cursor] if 0 <= self.cursor < len(self.keys) else None

    @property
    def width(self) -> int:
        """Cells across all columns, padding included."""
        return sum(self.widths) + 2 * PAD * len(self.widths)

    def header(self) -> list[Part]:
        """The column labels as one line."""
        return self._line(tuple((label, "") for label in self.labels))

    def row(self, index: int) -> list[Part]:
        """Row ``index`` as one line of styled runs, padded to the column widths."""
        return self._line(self.cells[index])

    def _line(self, cells: tuple[Part, ...]) -> list[Part]:
        parts: list[Part] = []
        pad = " " * PAD
        for (text, style), width in zip(cells, self.widths, strict=True):
            parts += [(pad, ""), (text, style), (" " * (width - len(text)) + pad, "")]
        return parts

    def column_at(self, x: int) -> str | None:
        """The column under cell ``x`` of a line (a click on the header), None past the end."""
        for key, width in zip(self.columns, self.widths, strict=True):
            x -= width + 2 * PAD
            if x < 0:
                return key
        return None

    def move(self, delta: int) -> None:
        """Move the cursor by ``delta`` rows, stopping at the first and the last."""
        self.cursor = max(0, min(self.cursor + delta, len(self.keys) - 1))


def scroll_for(cursor: int, scroll_y: int, rows_in_view: int) -> int:
    """The scroll offset that shows row ``cursor`` with the least movement from ``scroll_y``."""
    if cursor < scroll_y:
        return cursor
    if rows_in_view > 0 and cursor >= scroll_y + rows_in_view:
        return cursor - rows_in_view + 1
    return scroll_y
