"""``telemetryd top``, the operator's terminal UI: the one module that imports textual.

It reads straight from MQTT (a :class:`~telemetryd.watch.Watch` fed by
:func:`~telemetryd.watchfeed.follow`), so it needs no API of its own. Everything that can
be decided without a terminal lives in ``topview``, ``topdetail``, ``topalerts`` and
``topfmt``; this module only lays their rows out and handles keys. Cost at scale: messages
only update the watch; the screen is redrawn on a timer every ``[top] refresh`` seconds
and only when the watch changed (or ages went stale); the node table and the heatmap
draw only the lines in view (``Heatmap`` and ``RowTable``, on Textual's line API, at the
end of this module). The module is longer than our others because the one-importer rule
keeps every Textual class here; what has no Textual in it is elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.geometry import Size
from textual.markup import escape
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.style import Style
from textual.widget import Widget
from textual.widgets import Button, ContentSwitcher, DataTable, Input, Label, Static

from exporters.mqtt import MqttSession, MqttSettings, MqttUnavailable
from telemetryd import topalerts, topdetail, topfilter, topgrid, topstate, topview
from telemetryd.alerting.wire import SilenceRequest
from telemetryd.codec import encode_json
from telemetryd.config import TopConfig
from telemetryd.connect import mqtt_settings
from telemetryd.logcapture import logs_into
from telemetryd.topfmt import Part, legend
from telemetryd.topgrid import Grid
from telemetryd.topics import silence_request_topic
from telemetryd.watch import Watch
from telemetryd.watchfeed import follow

STALE_S = 5.0  # redraw at least this often, so ages and "silent" move without messages


def _c(parts: Iterable[Part]) -> Content:
    return Content.assemble(*parts)


def _lines(lines: Iterable[Iterable[Part]]) -> Content:
    """Many lines as one Content, assembled in one pass."""
    parts: list[Part] = []
    for i, line in enumerate(lines):
        if i:
            parts.append(("\n", ""))
        parts.extend(line)
    return _c(parts)


def _cell(part: Part) -> str:
    """A table cell as markup: DataTable measures column widths of strings, not Content."""
    text, style = part
    return f"[{style}]{escape(text)}[/]" if style else escape(text)


# -- line-API widgets: at 1,000 nodes only what is in view is drawn ----------------------
def _strip(parts: Iterable[Part], base: Style, over: Style | None) -> Strip:
    """A line of styled runs as a Strip on ``base``, ``over`` on top of every run."""
    content = Content.assemble(*parts)
    if over is not None:
        content = content.stylize(over)
    return Strip(content.render_segments(base))


class Heatmap(Widget):
    """The heatmap's lines, drawn on the line API: only the lines scrolled into view."""

    DEFAULT_CSS = "Heatmap { height: auto; }"

    def __init__(self, *, id: str) -> None:
        super().__init__(id=id)
        self.lines: Sequence[list[Part]] = []

    def show(self, lines: Sequence[list[Part]]) -> None:
        """New lines; the layout is redone only when their number changed."""
        layout, self.lines = len(lines) != len(self.lines), lines
        self.refresh(layout=layout)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """One row per line."""
        return len(self.lines)

    def render_line(self, y: int) -> Strip:
        """Line ``y``, asked for only while it is in view."""
        base = self.visual_style
        if y >= len(self.lines):
            return Strip.blank(self.size.width, base.rich_style)
        strip = _strip(self.lines[y], base, None)
        return strip.extend_cell_length(self.size.width, base.rich_style)


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
        grid, width, base = self.grid, self.size.width, self.visual_style
        over, component, plain = None, self.get_visual_style, base
        if y == 0:
            base, parts = base + component("rowtable--header"), grid.header()
        else:
            index = round(self.scroll_y) + y - 1
            if index >= len(grid.keys):
                return Strip.blank(width, base.rich_style)
            parts = grid.row(index)
            if index == grid.cursor:  # the cursor's colours win over the cells'
                over = component("rowtable--cursor")
            elif index % 2 == 0:
                base += component("rowtable--even-row")
        strip = _strip(parts, base, over)
        scroll_x = round(self.scroll_x)
        return strip.crop_extend(scroll_x, scroll_x + width, plain.rich_style)


class TableFiller:
    """Keeps a DataTable in step with rows: cell updates when the order held, else a rebuild.

    For the small tables (alerts, a node's GPUs and processes); the node table, 1,000 rows
    at scale, is a ``RowTable`` that draws only the rows in view.
    """

    def __init__(self, table: DataTable[str], columns: Sequence[tuple[str, str]]) -> None:
        self.table = table
        self.columns = [key for key, _ in columns]
        self.keys: list[str] = []
        self.cells: list[tuple[Part, ...]] = []
        for key, label in columns:
            table.add_column(label, key=key)

    def fill(self, keys: list[str], cells: list[tuple[Part, ...]]) -> None:
        """Show exactly these rows, keeping the cursor on the same row key."""
        table = self.table
        if keys == self.keys:
            for key, new, old in zip(keys, cells, self.cells, strict=True):
                if new != old:
                    for column, a, b in zip(self.columns, new, old, strict=True):
                        if a != b:
                            table.update_cell(key, column, _cell(a))
        else:
            selected = self.selected()
            table.clear()
            for key, row in zip(keys, cells, strict=True):
                table.add_row(*map(_cell, row), key=key)
            if selected in keys:
                table.move_cursor(row=keys.index(selected), animate=False)
        self.keys, self.cells = keys, cells

    def selected(self) -> str | None:
        """The row key under the cursor."""
        if not self.keys or not 0 <= self.table.cursor_row < len(self.keys):
            return None
        return self.keys[self.table.cursor_row]


def _table(id_: str) -> DataTable[str]:
    return DataTable(id=id_, cursor_type="row", zebra_stripes=True)


class MainScreen(Screen[None]):
    """Totals on top, one of the three views, the filter line, messages and status."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "view('fleet')", "fleet"),
        Binding("2", "view('nodes')", "nodes"),
        Binding("3", "view('alerts')", "alerts"),
        Binding("tab", "next_view", "next view", priority=True),
        Binding("s", "cycle('sort')", "sort"),
        Binding("S", "cycle('reverse')", "reverse"),
        Binding("slash", "filter", "filter"),
        Binding("c", "cycle('cluster')", "cluster"),
        Binding("f", "cycle('alerts')", "alert filter"),
        Binding("m", "cycle('metric')", "metric"),
        Binding("x", "silence", "silence"),
    ]

    def compose(self) -> ComposeResult:
        """Totals, view bar, the switcher of views, filter line, message and status."""
        yield Static(id="totals")
        yield Static(id="viewbar")
        with ContentSwitcher(initial="overview", id="views"):
            with Vertical(id="overview"):
                with VerticalScroll(id="fleet"):
                    yield Static(id="legend")
                    yield Heatmap(id="heatmap")
                yield RowTable(topview.TABLE_COLUMNS, id="nodes")
            with Vertical(id="alerts"):
                yield _table("alert-table")
                yield Static(id="silences")
        yield Input(
            id="filter", placeholder="filter: node, state, job id or pod; re:REGEX / ~REGEX"
        )
        yield Static(id="message")
        yield Static(id="status")

    def on_mount(self) -> None:
        """Tables get their columns once; the node table takes the keys first."""
        app = self.top
        self.query_one("#nodes").focus()
        app.nodes = self.query_one("#nodes", RowTable)
        app.alert_table = TableFiller(
            self.query_one("#alert-table", DataTable),
            [(c, c) for c in topalerts.ALERT_COLUMNS],
        )
        app.redraw(force=True)  # rows now, so the first keys find them
        self.call_after_refresh(app.redraw, force=True)  # and again once the width is known

    def on_resize(self) -> None:
        """The heatmap wraps at the new width."""
        self.top.redraw(force=True)

    @property
    def top(self) -> TopApp:
        """The app, typed."""
        assert isinstance(self.app, TopApp)
        return self.app

    def action_view(self, view: str) -> None:
        """Switch to fleet, nodes or alerts."""
        self.top.state.view = view
        self.query_one("#views", ContentSwitcher).current = (
            "alerts" if view == "alerts" else "overview"
        )
        self.query_one("#fleet").display = view == "fleet"
        self.query_one("#alert-table" if view == "alerts" else "#nodes").focus()
        self.top.redraw(force=True)

    def action_next_view(self) -> None:
        """Tab: the next view."""
        self.top.state.cycle("view", self.top.live)
        self.action_view(self.top.state.view)

    def action_cycle(self, what: str) -> None:
        """s, S, c, f, m: the next sort column, reverse, cluster, alert filter, metric."""
        self.top.state.cycle(what, self.top.live)
        self.top.redraw(force=True)

    @on(RowTable.HeaderClicked, "#nodes")
    def _header(self, event: RowTable.HeaderClicked) -> None:
        self.top.state.sort_by(event.column)
        self.top.redraw(force=True)

    @on(RowTable.Selected, "#nodes")
    def _drill(self, event: RowTable.Selected) -> None:
        cluster, _, node = event.key.partition("/")
        self.app.push_screen(DetailScreen(cluster, node))

    def action_filter(self) -> None:
        """/: open the filter line."""
        box = self.query_one("#filter", Input)
        box.value = self.top.state.filter_text
        box.display = True
        box.focus()

    @on(Input.Submitted, "#filter")
    def _filtered(self, event: Input.Submitted) -> None:
        self.top.set_filter(event.value)
        event.input.display = False
        self.action_view(self.top.state.view)

    def key_escape(self) -> None:
        """Escape closes the filter line without changing the filter."""
        box = self.query_one("#filter", Input)
        if box.display:
            box.display = False
            self.query_one("#nodes").focus()

    def action_silence(self) -> None:
        """x: silence the alert under the cursor, when both gates allow it."""
        self.top.silence_selected()


class DetailScreen(Screen[None]):
    """One node: header, GPUs with sparklines, processes, alerts and recent events."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "back")]

    def __init__(self, cluster: str, node: str) -> None:
        super().__init__()
        self.key = (cluster, node)

    def compose(self) -> ComposeResult:
        """Header, GPUs, processes, alerts and events, one under the other."""
        yield Static(id="detail-header")
        with VerticalScroll():
            yield _table("gpus")
            yield Static("[b]Processes[/b]", classes="section")
            yield _table("procs")
            yield Static("[b]Alerts[/b]", classes="section")
            yield Static(id="node-alerts")
            yield Static("[b]Recent events[/b]", classes="section")
            yield Static(id="events")
        yield Static(id="status")

    def on_mount(self) -> None:
        """Draw at once: the node is there now, the next tick may be a second away."""
        self.gpus = TableFiller(
            self.query_one("#gpus", DataTable), [(c, c) for c in topdetail.GPU_COLUMNS]
        )
        self.procs = TableFiller(
            self.query_one("#procs", DataTable), [(c, c) for c in topdetail.PROCESS_COLUMNS]
        )
        app = self.app
        assert isinstance(app, TopApp)
        self.draw(app.clock())

    def draw(self, now_ns: int) -> None:
        """Redraw from the watch (the node may have been removed meanwhile)."""
        app = self.app
        assert isinstance(app, TopApp)
        node = app.live.nodes.get(self.key)
        if node is None:
            self.query_one("#detail-header", Static).update(f"{'/'.join(self.key)}: gone")
            return
        self.query_one("#detail-header", Static).update(
            _c(topdetail.header(app.live, node, now_ns))
        )
        gpus = topdetail.gpu_rows(node)
        self.gpus.fill([str(i) for i in sorted(node.gpus)], gpus)
        procs = topdetail.process_rows(node)
        self.procs.fill([str(i) for i in range(len(procs))], procs)
        alerts = [
            r for r in topalerts.alert_rows(app.live, now_ns)
            if r.alert.labels.get("node") == node.node and r.cluster in ("", node.cluster)
        ]  # fmt: skip
        self.query_one("#node-alerts", Static).update(
            _lines(map(topalerts.alert_line, alerts)) if alerts else "none"
        )
        events = topdetail.event_lines(node, now_ns)
        self.query_one("#events", Static).update(_lines(events) if events else "none")


class HelpScreen(ModalScreen[None]):
    """The keys, on ``?``."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        """The key list."""
        yield Static(Content.from_markup(topstate.HELP), id="help")


class SilenceScreen(ModalScreen["SilenceRequest | None"]):
    """Matchers prefilled from the alert, a duration, a comment and who asks."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "cancel")]

    def __init__(self, title: str, matchers: str, duration: str, created_by: str) -> None:
        super().__init__()
        self.title_text = title
        self.values = {"matchers": matchers, "duration": duration, "created-by": created_by}

    def compose(self) -> ComposeResult:
        """Four fields, an error line and two buttons."""
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            for key, label in (("matchers", "Matchers"), ("duration", "Duration"),
                               ("comment", "Comment"), ("created-by", "Created by")):  # fmt: skip
                yield Label(label)
                yield Input(self.values.get(key, ""), id=key)
            yield Static(id="dialog-error")
            with Horizontal(id="buttons"):
                yield Button("Silence", id="ok", variant="warning")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#ok")
    @on(Input.Submitted)
    def _ok(self) -> None:
        value = {k: self.query_one(f"#{k}", Input).value for k in
                 ("matchers", "duration", "comment", "created-by")}  # fmt: skip
        try:
            request = topalerts.build_request(
                value["matchers"], value["duration"], value["comment"], value["created-by"]
            )
        except ValueError as exc:
            self.query_one("#dialog-error", Static).update(Content(str(exc)))
            return
        self.dismiss(request)


class TopApp(App[None]):
    """``telemetryd top``: construct with a config; ``watch``/``feed``/``clock`` for tests."""

    CSS_PATH = "top.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", priority=True, show=False),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(
        self,
        cfg: TopConfig,
        *,
        watch: Watch | None = None,
        feed: bool = True,
        settings: MqttSettings | None = None,
        clock: Callable[[], int] = time.time_ns,
        title: str = "",
    ) -> None:
        super().__init__()
        self.cfg, self.clock, self.feed = cfg, clock, feed
        self.live = watch or Watch(silent_after=cfg.silent_after, history=cfg.history, clock=clock)
        self.settings = settings
        if feed:
            self.mqtt()  # a bad password file is a config error before the screen opens
        self.title = title or "telemetryd top"
        self.state = topstate.TopState(metric=cfg.metric)
        self.requests: list[tuple[str, SilenceRequest]] = []  # published, not yet active
        self.nodes: RowTable
        self.alert_table: TableFiller
        self._stop = asyncio.Event()
        self._drawn_version, self._drawn_ns = -1, 0
        self._rate_at: tuple[int, int] | None = None
        self._rate: float | None = None

    def get_default_screen(self) -> Screen[None]:
        """The main screen is the bottom of the stack; escape from a detail returns to it."""
        return MainScreen()

    def on_mount(self) -> None:
        """Start the feed (unless a test feeds the watch) and the redraw timer."""
        if self.feed:
            self.run_worker(self._follow(), name="watch-feed", group="feed")
        self.set_interval(self.cfg.refresh, self.tick, name="redraw")

    def on_unmount(self) -> None:
        """Let the feed disconnect cleanly."""
        self._stop.set()

    def mqtt(self) -> MqttSettings:
        """The MQTT settings of this viewer (read from the config on first use)."""
        if self.settings is None:
            client_id = f"telemetryd-top-{socket.gethostname()}-{os.getpid()}"
            self.settings = mqtt_settings(self.cfg, client_id=client_id)
        return self.settings

    async def _follow(self) -> None:
        await follow(self.mqtt(), self.live, self.cfg.cluster, stop=self._stop)

    # -- drawing ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Timer: status every tick; the views only when the watch changed or went stale."""
        now = self.clock()
        if self._rate_at is not None and now > self._rate_at[0]:
            seconds = (now - self._rate_at[0]) / 1e9
            self._rate = (self.live.messages - self._rate_at[1]) / seconds
        self._rate_at = (now, self.live.messages)
        stale = (now - self._drawn_ns) / 1e9 >= STALE_S
        self.redraw(force=stale)

    def redraw(self, *, force: bool = False) -> None:
        """Draw the screen on top from the watch, if it changed since the last draw."""
        now, screen = self.clock(), self.screen
        status = _c(topview.status_line(self.live, now, self._rate))
        for widget in screen.query("#status").results(Static):
            widget.update(status)
        if not force and self.live.version == self._drawn_version:
            return
        self._drawn_version, self._drawn_ns = self.live.version, now
        for request in topalerts.settle(self.requests, self.live, now):
            self.say(f"silence active: {topalerts.describe_request(request)}")
        if isinstance(screen, DetailScreen):
            screen.draw(now)
        elif isinstance(screen, MainScreen):
            self._draw_main(screen, now)

    def _rows(self, now: int) -> list[topview.NodeRow]:
        st = self.state
        rows = [r for r in topview.build_rows(self.live, now) if st.row_filter.matches(r)]
        return topview.sort_rows(rows, st.sort, st.reverse)

    def _draw_main(self, screen: MainScreen, now: int) -> None:
        totals_nodes, cluster = None, self.state.row_filter.cluster
        if cluster is not None:
            totals_nodes = [n for n in self.live.nodes.values() if n.cluster == cluster]
        totals = self.live.totals(now, totals_nodes)
        screen.query_one("#totals", Static).update(_c(topview.totals_line(totals)))
        view, metric = self.state.view, self.state.metric
        screen.query_one("#viewbar", Static).update(_c(topstate.viewbar(self.state)))
        if view == "alerts":
            self._draw_alerts(screen, now)
            return
        rows = self._rows(now)
        self.nodes.fill([r.key for r in rows], [topview.table_cells(r) for r in rows])
        if view != "fleet":
            return
        heat = screen.query_one("#heatmap", Heatmap)
        width = heat.content_region.width or self.size.width - 4
        screen.query_one("#legend", Static).update(_c(legend(metric)))
        heat.show(topview.heatmap(self.live, rows, metric, width) or [[("no nodes", "")]])

    def _draw_alerts(self, screen: MainScreen, now: int) -> None:
        rows = topalerts.alert_rows(self.live, now)
        self.alert_table.fill([r.key for r in rows], [topalerts.alert_cells(r) for r in rows])
        silences = topalerts.silence_lines(self.live, now)
        screen.query_one("#silences", Static).update(
            _c([("Active silences\n", "bold")]) + _lines(silences) if silences
            else "No active silences"
        )  # fmt: skip

    def say(self, text: str, *, error: bool = False) -> None:
        """One line above the status bar: what just happened, or what went wrong."""
        for widget in self.screen.query("#message").results(Static):
            widget.update(_c([(text, "bold #ff5050" if error else "green")]))

    def set_filter(self, text: str) -> None:
        """Apply what was typed on the filter line; a bad regex keeps the old filter."""
        try:
            self.state.set_filter(text)
        except topfilter.FilterError as exc:
            self.say(str(exc), error=True)
            return
        self.say("")
        self.redraw(force=True)

    # -- silencing --------------------------------------------------------------------------
    def silence_selected(self) -> None:
        """Open the silence dialog for the selected alert, or say why it cannot be."""
        screen = self.screen
        if not isinstance(screen, MainScreen) or self.state.view != "alerts":
            self.say("x silences the selected alert in the alerts view (3)", error=True)
            return
        try:
            row, cluster = topalerts.silence_target(
                self.live, self.alert_table.selected(), self.cfg, self.clock()
            )
        except ValueError as exc:
            self.say(str(exc), error=True)
            return
        dialog = SilenceScreen(
            f"Silence {row.alert.name} ({row.state})",
            topalerts.default_matchers(row.alert.labels),
            self.cfg.silence_duration,
            topalerts.default_created_by(os.environ, socket.gethostname()),
        )

        def done(request: SilenceRequest | None) -> None:
            if request is not None:
                self.publish_silence(cluster, request)

        self.push_screen(dialog, done)

    @work(group="silence", exclusive=False)
    async def publish_silence(self, cluster: str, request: SilenceRequest) -> None:
        """Publish the request (QoS 1) on a short-lived session of its own."""
        base = self.mqtt()
        silence_id = f"{base.client_id}-silence"  # over MQTT 5: an ACL refusal has a reason
        settings = dataclasses.replace(base, client_id=silence_id, will=None, version="5")
        try:
            async with MqttSession(settings) as session:
                topic = silence_request_topic(cluster)
                await session.publish(topic, encode_json(request), qos=1)
        except MqttUnavailable as exc:
            self.say(f"silence not sent: {exc}", error=True)
            return
        self.requests.append((cluster, request))
        self.say(f"silence requested: {topalerts.describe_request(request)}")

    def action_help(self) -> None:
        """?: the keys."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


async def run_top(cfg: TopConfig, *, title: str = "") -> None:
    """Run ``top`` until the operator quits (in the running event loop, e.g. the demo's)."""
    app = TopApp(cfg, title=title)
    with logs_into(app.live.note):
        await app.run_async()


def main_top(cfg: TopConfig, settings: MqttSettings | None = None) -> int:
    """The CLI's entry: run ``top`` in a fresh event loop; the exit code."""
    app = TopApp(cfg, settings=settings)
    with logs_into(app.live.note):
        app.run()
    return app.return_code or 0
