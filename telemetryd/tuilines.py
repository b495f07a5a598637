"""top's widgets on Textual's line API: a table of many rows and the heatmap.

Besides ``tui.py``, the one module that imports textual (and rich's Segment and Style,
the currency of Textual's line API), split from it for size. Both widgets draw only the
lines in view, from styled runs (``topfmt.Part``) built by the pure modules: at 1,000
nodes a DataTable redrew every visible cell from markup after each of ~2,000 cell
updates a second and a Static heatmap re-wrapped ~50 lines of ~100 spans, together more
than half of top's CPU (measured with bench/top_redraw.py; figures in docs/top.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style as RichStyle
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.style import Style
from textual.widget import Widget

from telemetryd import topgrid
from telemetryd.topfmt import Part
from telemetryd.topgrid import Grid


def _strip(
    parts: Iterable[Part], base: RichStyle, styles: dict[str, RichStyle], over: RichStyle | None
) -> Strip:
    """A line of styled runs as a Strip, ``over`` on top; ``styles`` caches parsed names."""
    segments = []
    for text, name in parts:
        style = styles.get(name)
        if style is None:
            style = styles[name] = Style.parse(name).rich_style if name else RichStyle()
        segments.append(Segment(text, base + style + over if over else base + style))
    return Strip(segments)


class Heatmap(Widget):
    """The heatmap's lines, drawn on the line API: only the lines scrolled into view."""

    DEFAULT_CSS = "Heatmap { height: auto; }"

    def __init__(self, *, id: str) -> None:
        super().__init__(id=id)
        self.lines: Sequence[list[Part]] = []
        self._styles_of: dict[str, RichStyle] = {}

    def show(self, lines: Sequence[list[Part]]) -> None:
        """New lines; the layout is redone only when their number changed."""
        layout, self.lines = len(lines) != len(self.lines), lines
        self.refresh(layout=layout)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """One row per line."""
        return len(self.lines)

    def render_line(self, y: int) -> Strip:
        """Line ``y``, asked for only while it is in view."""
        base = self.rich_style
        if y >= len(self.lines):
            return Strip.blank(self.size.width, base)
        strip = _strip(self.lines[y], base, self._styles_of, None)
        return strip.extend_cell_length(self.size.width, base)


class RowTable(ScrollView, can_focus=True):
    """A table of many rows on the line API: a Grid (topgrid) of which only the view is drawn.

    What top needs of DataTable at 1,000 rows: a fixed header (click: sort), a row cursor
    (arrows, page keys, home/end, a click; enter or a second click: open), zebra stripes.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rowtable--header", "rowtable--cursor", "rowtable--even-row",
    }  # fmt: skip
    DEFAULT_CSS = """
    RowTable { background: $surface; color: $foreground; }
    RowTable:focus { background-tint: $foreground 5%; }
    RowTable > .rowtable--header { text-style: bold; background: $panel; color: $foreground; }
    RowTable > .rowtable--even-row { background: $surface-lighten-1 50%; }
    RowTable:dark > .rowtable--even-row { background: $surface-darken-1 40%; }
    RowTable > .rowtable--cursor {
        background: $block-cursor-blurred-background; color: $block-cursor-blurred-foreground;
        text-style: $block-cursor-blurred-text-style;
    }
    RowTable:focus > .rowtable--cursor {
        background: $block-cursor-background; color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select", "open", show=False),
        Binding("up", "move(-1)", show=False), Binding("down", "move(1)", show=False),
        Binding("pageup", "page(-1)", show=False), Binding("pagedown", "page(1)", show=False),
        Binding("home", "move(-1_000_000)", show=False),
        Binding("end", "move(1_000_000)", show=False),
    ]  # fmt: skip

    class Selected(Message):
        """A row was opened (enter, or a click on the cursor's row)."""

        def __init__(self, table: RowTable, key: str) -> None:
            super().__init__()
            self.table, self.key = table, key

        @property
        def control(self) -> RowTable:
            """The table, for ``@on(..., "#id")``."""
            return self.table

    class HeaderClicked(Message):
        """A column header was clicked."""

        def __init__(self, table: RowTable, column: str) -> None:
            super().__init__()
            self.table, self.column = table, column

        @property
        def control(self) -> RowTable:
            """The table, for ``@on(..., "#id")``."""
            return self.table

    def __init__(self, columns: Sequence[tuple[str, str]], *, id: str) -> None:
        super().__init__(id=id)
        self.grid = Grid(columns)
        self._styles_of: dict[str, RichStyle] = {}

    def fill(self, keys: list[str], cells: list[tuple[Part, ...]]) -> None:
        """Show these rows (the cursor stays on its key; it is kept in view when they moved)."""
        if self.grid.fill(keys, cells):
            self.call_after_refresh(self._follow)
        self.virtual_size = Size(self.grid.width, len(keys) + 1)
        self.refresh()

    def _follow(self) -> None:
        y = topgrid.scroll_for(self.grid.cursor, round(self.scroll_y), self.size.height - 1)
        self.scroll_to(y=y, animate=False, immediate=True)

    def action_move(self, delta: int) -> None:
        """Cursor keys: move the cursor, scrolling to keep it in view."""
        self.grid.move(delta)
        self._follow()
        self.refresh()

    def action_page(self, direction: int) -> None:
        """Page keys: a screenful of rows up or down."""
        self.action_move(direction * max(1, self.size.height - 2))

    def action_select(self) -> None:
        """Enter: open the row under the cursor."""
        key = self.grid.selected()
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: events.Click) -> None:
        """A click on the header sorts by that column; on a row, moves the cursor there."""
        offset = event.get_content_offset(self)
        if offset is None:
            return
        x, y = offset.x + round(self.scroll_x), offset.y
        if y == 0:
            column = self.grid.column_at(x)
            if column is not None:
                self.post_message(self.HeaderClicked(self, column))
        elif (index := round(self.scroll_y) + y - 1) < len(self.grid.keys):
            if index == self.grid.cursor:  # as DataTable: a click on the cursor's row opens it
                self.action_select()
            self.grid.cursor = index
            self.refresh()

    def on_focus(self) -> None:
        """The cursor's colour follows focus."""
        self.refresh()

    def on_blur(self) -> None:
        """The cursor's colour follows focus."""
        self.refresh()

    def render_line(self, y: int) -> Strip:
        """The header at the top, then the rows scrolled into view."""
        grid, width, base = self.grid, self.size.width, self.rich_style
        over, component, plain = None, self.get_component_rich_style, base
        if y == 0:
            base, parts = base + component("rowtable--header"), grid.header()
        else:
            index = round(self.scroll_y) + y - 1
            if index >= len(grid.keys):
                return Strip.blank(width, base)
            parts = grid.row(index)
            if index == grid.cursor:  # the cursor's colours win over the cells'
                over = component("rowtable--cursor")
            elif index % 2 == 0:
                base += component("rowtable--even-row")
        strip = _strip(parts, base, self._styles_of, over)
        scroll_x = round(self.scroll_x)
        return strip.crop_extend(scroll_x, scroll_x + width, plain)
