"""What ``top`` shows of the fleet, with no UI in it: node rows, sorting, heatmap, totals.

nvitop's split: :class:`~telemetryd.watch.Watch` is the data, this module is the view-model
(pure functions from a watch and a clock to rows of text and style names), ``tui.py`` only
puts them on a screen. Everything an operator relies on (what sorts before what, what a
colour a GPU gets, which jobs a node runs) is decided here and tested without a terminal;
what the filter line matches is in ``topfilter``.

Cost: at 1,000 nodes x 8 GPUs a redraw builds 1,000 rows and 8,000 heatmap cells, once per
refresh however many reports arrived in between; each is a few attribute reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import overload

from telemetryd import topfmt as fmt
from telemetryd.alerting.model import SEVERITIES, severity_rank
from telemetryd.topfmt import Part
from telemetryd.watch import NodeState, NodeStateName, Totals, Watch

SORT_COLUMNS = (
    "node", "state", "gpus", "util", "power", "temp", "mem", "alerts", "seen", "jobs",
)  # fmt: skip
# Each column's natural order: names A-Z, live values and alert counts highest first, the
# longest-unseen node first (what an operator sorts by "last seen" for), jobs by id (a
# node holding none last). S reverses it.
_HIGHEST_FIRST = {"gpus", "util", "power", "temp", "mem", "alerts", "seen"}
_STATE_RANK = {"offline": 0, "silent": 1, "unknown": 2, "online": 3}


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node in the table; live values are None unless the node is online."""

    cluster: str
    node: str
    state: NodeStateName
    gpus: int
    failed: int
    util: float | None
    power: float | None
    temp: float | None  # the hottest GPU
    mem: float | None  # mean framebuffer use, percent
    alerts: int  # firing, not silenced
    severity: str  # the worst of them, "" when none
    seen_s: float | None  # since its newest report (or the aggregator's last sight)
    jobs: tuple[str, ...] = ()  # HPC job ids on its GPUs (the newest report's), most GPUs first
    pods: tuple[str, ...] = ()  # pods (namespace/pod, or UID) on its GPUs

    @property
    def key(self) -> str:
        """``cluster/node``: unique, and the table's row key."""
        return f"{self.cluster}/{self.node}"


def _alert_counts(watch: Watch, now_ns: int) -> dict[tuple[str, str], tuple[int, str]]:
    counts: dict[tuple[str, str], tuple[int, str]] = {}
    for alert in watch.firing_alerts():
        node = alert.labels.get("node")
        if node is None or watch.silenced_by(alert, now_ns):
            continue
        key = (alert.labels.get("cluster", ""), node)
        n, worst = counts.get(key, (0, ""))
        if not worst or severity_rank(alert.severity) < severity_rank(worst):
            worst = alert.severity
        counts[key] = (n + 1, worst)
    return counts


def node_row(
    watch: Watch, node: NodeState, now_ns: int, alerts: tuple[int, str] = (0, "")
) -> NodeRow:
    """One node's row as of ``now_ns``."""
    state = watch.node_state(node, now_ns)
    utils: list[float] = []
    mems: list[float] = []
    temp: float | None = None
    watts = 0.0
    failed = 0
    for gpu in node.gpus.values():
        s = gpu.sample
        if gpu.failed:
            failed += 1
            continue
        if s.util_gpu_pct is not None:
            utils.append(s.util_gpu_pct)
        mem = s.mem_pct
        if mem is not None:
            mems.append(mem)
        if s.temp_c is not None and (temp is None or s.temp_c > temp):
            temp = s.temp_c
        watts += s.power_w or 0.0
    seen_ns = node.received_ns or (node.fleet.last_seen_ns if node.fleet else None) or 0
    live = state == "online"
    return NodeRow(
        cluster=node.cluster, node=node.node, state=state,
        gpus=len(node.gpus) or (node.fleet.gpus if node.fleet else 0), failed=failed,
        util=sum(utils) / len(utils) if live and utils else None,
        power=watts if live and node.gpus else None,
        temp=temp if live else None,
        mem=sum(mems) / len(mems) if live and mems else None,
        alerts=alerts[0], severity=alerts[1],
        seen_s=(now_ns - seen_ns) / 1e9 if seen_ns else None,
        jobs=node.jobs, pods=node.pods,
    )  # fmt: skip


def build_rows(watch: Watch, now_ns: int) -> list[NodeRow]:
    """Every node's row, unsorted."""
    counts = _alert_counts(watch, now_ns)
    return [node_row(watch, n, now_ns, counts.get(n.key, (0, ""))) for n in watch.nodes.values()]


def sort_rows(rows: Iterable[NodeRow], column: str, reverse: bool = False) -> list[NodeRow]:
    """Rows in ``column``'s natural order (``reverse`` flips it); absent values go last."""
    if column not in SORT_COLUMNS:
        raise ValueError(f"sort column {column!r}: expected one of {', '.join(SORT_COLUMNS)}")
    by_name = sorted(rows, key=lambda r: (r.cluster, r.node), reverse=reverse)
    if column == "node":
        return by_name
    if column == "state":
        return sorted(by_name, key=lambda r: _STATE_RANK[r.state], reverse=reverse)
    if column == "jobs":
        held = sorted((r for r in by_name if r.jobs or r.pods), key=_job_order, reverse=reverse)
        return held + [r for r in by_name if not (r.jobs or r.pods)]
    descending = (column in _HIGHEST_FIRST) != reverse
    present: list[tuple[float, NodeRow]] = []
    absent: list[NodeRow] = []
    for row in by_name:
        value = _sort_value(row, column)
        if value is None:
            absent.append(row)
        else:
            present.append((value, row))
    present.sort(key=lambda item: item[0], reverse=descending)
    return [row for _, row in present] + absent


def _job_order(row: NodeRow) -> tuple[bool, int, str]:
    """Job ids in number order (9 before 10), then pods A-Z."""
    first = (row.jobs or row.pods)[0]
    return (not first.isdigit(), int(first) if first.isdigit() else 0, first)


def _sort_value(row: NodeRow, column: str) -> float | None:
    if column == "alerts":
        return row.alerts * 10 + (len(SEVERITIES) - severity_rank(row.severity))
    value: float | int | None = getattr(row, "seen_s" if column == "seen" else column)
    return None if value is None else float(value)


def next_in(options: Sequence[str | None], current: str | None) -> str | None:
    """The option after ``current`` (wrapping); the first when ``current`` is gone."""
    try:
        return options[(options.index(current) + 1) % len(options)]
    except ValueError:
        return options[0] if options else None


def clusters(watch: Watch) -> list[str | None]:
    """The cluster filter's cycle: all (None), then each cluster seen."""
    names = {c for c, _ in watch.nodes} | set(watch.fleets)
    return [None, *sorted(names)]


# -- the node table -------------------------------------------------------------------------
TABLE_COLUMNS = (
    ("node", "node"), ("state", "state"), ("gpus", "GPUs"), ("util", "util %"),
    ("power", "power"), ("temp", "max °C"), ("mem", "mem %"), ("alerts", "alerts"),
    ("seen", "last seen"), ("jobs", "jobs / pods"),
)  # fmt: skip


def table_cells(row: NodeRow) -> tuple[Part, ...]:
    """One row of the node table, cell by cell, in TABLE_COLUMNS order."""
    stale = row.state != "online"
    state_style = fmt.STATE_STYLES[row.state]
    gpus = f"{row.gpus - row.failed}/{row.gpus}" if row.failed else str(row.gpus)
    return (
        (row.key, state_style if stale else ""),
        (row.state, state_style),
        (gpus + (" ✗" if row.failed else ""), "bold #ff3030" if row.failed else ""),
        (fmt.num(row.util), ""),
        (fmt.power(row.power), ""),
        (fmt.num(row.temp), fmt.pct_style(row.temp, 80, 88)),
        (fmt.num(row.mem), fmt.pct_style(row.mem, 90, 97)),
        (f"{row.alerts} {row.severity}" if row.alerts else "-",
         fmt.SEVERITY_STYLES.get(row.severity, "dim")),
        (fmt.age(row.seen_s), state_style if stale else "dim"),
        (fmt.holders(row.jobs, row.pods), "dim" if stale or not row.jobs + row.pods else fmt.OWNER),
    )  # fmt: skip


# -- the heatmap ----------------------------------------------------------------------------
def _gpu_count(node: NodeState) -> int:
    return len(node.gpus) or (node.fleet.gpus if node.fleet else 0) or 1


def node_cells(watch: Watch, node: NodeState, state: str, metric: str) -> list[Part]:
    """One node's GPUs as heatmap cells; an offline or silent node greys all of them."""
    if state == "offline":
        return [fmt.OFFLINE] * _gpu_count(node)
    if state == "silent":
        return [fmt.SILENT] * _gpu_count(node)
    if not node.gpus:
        return [fmt.UNKNOWN] * _gpu_count(node)
    gpus = node.gpus
    return [fmt.heat_cell(gpus[i].sample, metric) for i in sorted(gpus)]


class HeatLines(Sequence[list[Part]]):
    """The heatmap's lines, each built when first asked for: a screen shows only some.

    At 1,000 nodes the heatmap is ~50 lines of which a terminal shows ~25; the widget asks
    for the lines in view only, so the rest cost nothing.
    """

    def __init__(
        self, watch: Watch, rows: Sequence[NodeRow], metric: str, width: int, labels: bool
    ) -> None:
        self.watch, self.rows, self.metric, self.labels = watch, rows, metric, labels
        self.name_w = min(max((len(r.node) for r in rows), default=1), 16) if labels else 0
        nodes = watch.nodes
        self.gpu_w = max((_gpu_count(nodes[(r.cluster, r.node)]) for r in rows), default=1)
        block = (self.name_w + 1 if labels else 0) + self.gpu_w + 2
        self.per_line = max(1, (width + 2) // block)
        self._lines: dict[int, list[Part]] = {}

    def __len__(self) -> int:
        return -(-len(self.rows) // self.per_line)

    @overload
    def __getitem__(self, index: int) -> list[Part]: ...
    @overload
    def __getitem__(self, index: slice) -> list[list[Part]]: ...
    def __getitem__(self, index: int | slice) -> list[Part] | list[list[Part]]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        line = self._lines.get(index)
        if line is None:
            line = self._lines[index] = self._line(index)
        return line

    def _line(self, index: int) -> list[Part]:
        watch, name_w, gpu_w = self.watch, self.name_w, self.gpu_w
        start = index * self.per_line
        line: list[Part] = []
        for i, row in enumerate(self.rows[start : start + self.per_line]):
            if i:
                line.append(("  ", ""))
            if self.labels:
                name = row.node[:name_w].ljust(name_w)
                line.append(
                    (name + " ", fmt.STATE_STYLES[row.state] if row.state != "online" else "")
                )
            node = watch.nodes.get((row.cluster, row.node))
            # Lines are built when read: a node cleared since the rows were made (its
            # retained status emptied) keeps its place, blank, until the next frame.
            parts = [] if node is None else node_cells(watch, node, row.state, self.metric)
            line.extend(parts)
            line.append((" " * (gpu_w - len(parts)), ""))
        return merge(line)


def heatmap(
    watch: Watch, rows: Sequence[NodeRow], metric: str, width: int, *, labels: bool | None = None
) -> HeatLines:
    """The fleet as lines of styled runs: one block per GPU, nodes side by side.

    With labels (default up to 256 nodes) each node is ``name ████████``; without, nodes
    are separated by a space only, so 1,000 x 8 GPUs fit in about 60 lines of 160
    columns. Runs of the same style are merged, so a line is a handful of spans. Lines
    are built when first read (see HeatLines).
    """
    return HeatLines(watch, rows, metric, width, len(rows) <= 256 if labels is None else labels)


def merge(parts: Iterable[Part]) -> list[Part]:
    """Adjacent runs of one style joined: fewer spans to draw."""
    merged: list[Part] = []
    text, style = "", ""
    for t, s in parts:
        if s == style:
            text += t
            continue
        if text:
            merged.append((text, style))
        text, style = t, s
    if text:
        merged.append((text, style))
    return merged


# -- totals and status ----------------------------------------------------------------------
def totals_line(t: Totals) -> list[Part]:
    """Cluster totals: GPUs online, mean utilisation, power, energy today, node states."""
    parts: list[Part] = [
        ("GPUs ", "bold"), (f"{t.gpus - t.gpus_failed}/{t.gpus}", ""),
        (f" ({t.gpus_failed} failed)" if t.gpus_failed else "", "bold #ff3030"),
        ("  util ", "bold"), (fmt.num(t.util_mean, unit="%"), ""),
        ("  power ", "bold"), (f"{t.power_w / 1000:.1f} kW", ""),
        (f"  {fmt.energy_label(t.energy_since_ns)} ", "bold"), (fmt.energy(t.energy_today_j), ""),
        ("  nodes ", "bold"), (f"{t.online} online", "green"),
        (f" {t.offline} offline", fmt.STATE_STYLES["offline"] if t.offline else "dim"),
        (f" {t.silent} silent", fmt.STATE_STYLES["silent"] if t.silent else "dim"),
    ]  # fmt: skip
    if t.unknown:
        parts.append((f" {t.unknown} unknown", fmt.STATE_STYLES["unknown"]))
    parts.append(("  alerts ", "bold"))
    firing = [
        (f"{t.firing[s]} {s} ", fmt.SEVERITY_STYLES[s]) for s in SEVERITIES if t.firing.get(s)
    ]
    parts += firing or [("none firing ", "green")]
    parts += [(f"{t.pending} pending ", "dim"), (f"{t.silenced} silenced", "dim")]
    return merge(parts)


def newest_report_ns(watch: Watch) -> int:
    """When the newest report arrived (0: none yet); the status bar's data age."""
    return max((n.received_ns for n in watch.nodes.values()), default=0)


def status_line(watch: Watch, now_ns: int, rate: float | None) -> list[Part]:
    """Broker connection, messages per second, data age, rejected messages, key help."""
    newest = newest_report_ns(watch)
    data_age = fmt.age((now_ns - newest) / 1e9) if newest else "no reports yet"
    parts: list[Part] = [
        (watch.connection, "green" if watch.connected else "bold #ff5050"),
        ("  ", ""), (f"{rate:.0f} msg/s" if rate is not None else "- msg/s", ""),
        ("  data age ", "dim"), (data_age, ""),
    ]  # fmt: skip
    rejected = sum(watch.rejected.values())
    if rejected:
        parts += [(f"  {rejected} rejected: ", "bold #e0a000"), (watch.last_problem[:80], "dim")]
    elif watch.notice:
        parts += [("  ", ""), (watch.notice[:100], "#e0a000")]
    parts.append(("  / filter: node, job, pod  ? help  q quit", "dim"))
    return parts
