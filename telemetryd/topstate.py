"""What the operator chose with keys (view, sort, filter, metric) and the key help, no UI.

``tui.py`` maps each key to one call here, so what a key does is tested without a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from telemetryd import topfmt as fmt
from telemetryd.topfilter import ALERT_FILTERS, RowFilter, make_filter
from telemetryd.topfmt import Part
from telemetryd.topview import SORT_COLUMNS, clusters, next_in
from telemetryd.watch import Watch

T = TypeVar("T")
VIEWS = ("fleet", "nodes", "alerts")
HELP = """\
[b]Views[/b]   1 fleet (totals, heatmap)   2 nodes (table)   3 alerts   tab next view
[b]Nodes[/b]   enter  node detail (escape back)   s / S  sort by next column / reverse
        click a column header to sort by it
[b]Filter[/b]  /  text filter on cluster/node, a state word, a job id (/81234: the nodes
           of job 81234) or a pod name; start with re: or ~ for a regular expression
           (~^gpu-0[1-4]$); empty clears it; escape cancels
        c  cycle cluster    f  cycle alert filter (all / alerting / ok)
[b]Fleet[/b]   m  cycle the heatmap metric (utilisation, temperature, power, memory)
[b]Alerts[/b]  x  silence the selected alert (needs \\[top] allow_silence = true and an
           aggregator with [aggregator.alerts] mqtt_silences = true)
        ?  this help    q / ctrl+c  quit"""


@dataclass
class TopState:
    """What the operator chose with keys: view, sort, filter, heatmap metric."""

    metric: str = "util"
    view: str = "fleet"
    sort: str = "node"
    reverse: bool = False
    filter_text: str = ""
    row_filter: RowFilter = field(default_factory=RowFilter)

    def cycle(self, what: str, watch: Watch) -> None:
        """One key's change: the next view, sort column, cluster, alert filter or metric."""
        f = self.row_filter
        if what == "view":
            self.view = _after(VIEWS, self.view)
        elif what == "sort":
            self.sort = _after(SORT_COLUMNS, self.sort)
        elif what == "reverse":
            self.reverse = not self.reverse
        elif what == "cluster":
            self.row_filter = replace(f, cluster=next_in(clusters(watch), f.cluster))
        elif what == "alerts":
            self.row_filter = replace(f, alerts=_after(ALERT_FILTERS, f.alerts))
        elif what == "metric":
            self.metric = _after(fmt.METRIC_ORDER, self.metric)
        else:
            raise ValueError(
                f"cycle {what!r}: expected view, sort, reverse, cluster, alerts or metric"
            )

    def sort_by(self, column: str) -> None:
        """A click on a column header: sort by it, or reverse when it already is the sort."""
        self.reverse = not self.reverse if self.sort == column else False
        self.sort = column

    def set_filter(self, text: str) -> None:
        """What was typed on the filter line (FilterError leaves the filter as it was)."""
        f = self.row_filter
        self.row_filter = make_filter(text, f.cluster, f.alerts)
        self.filter_text = text.strip()


def _after(options: Sequence[T], current: T) -> T:
    return options[(options.index(current) + 1) % len(options)]


def viewbar(state: TopState) -> list[Part]:
    """The views as tabs (the current one highlighted), then sort, filter and heatmap metric."""
    view, sort, reverse, row_filter, metric = (
        state.view, state.sort, state.reverse, state.row_filter, state.metric
    )  # fmt: skip
    parts: list[Part] = [
        (f" {i + 1} {v} ", "reverse bold" if v == view else "") for i, v in enumerate(VIEWS)
    ]
    shown = row_filter.describe() or "none"
    parts.append((f"   sort {sort} {'↑' if reverse else '↓'}   filter: {shown}", ""))
    if view == "fleet":
        parts.append((f"   heatmap: {fmt.METRIC_SPECS[metric].label}", ""))
    return parts
