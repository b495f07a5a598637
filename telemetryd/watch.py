"""The live picture of a fleet as a viewer sees it on the broker: ``top``, ``status``, the demo.

A viewer is just another MQTT subscriber (DESIGN.md): it reads agents' reports, events and
retained presence, and the aggregator's retained fleet summary, alerts, pending alerts and
silences, so it needs no API of its own. :class:`Watch` is that picture with no UI in it
(nvitop's split: this is the API, ``tui.py`` the UI). ``ingest`` is called per message and
only updates state; views read it at their own pace, so a burst of a thousand reports
costs a thousand cheap updates and one redraw. A message that cannot be used is counted
with its reason and never stops the feed.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from telemetryd.alerting.matchers import Matcher, matches_all, parse_matcher
from telemetryd.alerting.model import Alert
from telemetryd.alerting.wire import (
    PendingAlerts,
    Silences,
    decode_alert,
    decode_pending,
    decode_silences,
)
from telemetryd.codec import DecodeError
from telemetryd.fleetparts import merge_fleet, merge_pending
from telemetryd.model import FleetNode, FleetSummary, decode_fleet_summary
from telemetryd.names import name_problem
from telemetryd.topics import ROOT, part_member
from telemetryd.watchwire import (
    EventView,
    GpuSample,
    ReportView,
    Ring,
    decode_event_view,
    decode_report_view,
    decode_status_view,
    holders,
    sampled_value,
)

NodeStateName = Literal["online", "offline", "silent", "unknown"]
METRICS = ("util", "temp", "power", "mem")  # ring-buffered per GPU, for sparklines
EVENTS_KEPT = 64  # per node


def _most_first(counts: dict[str, int]) -> tuple[str, ...]:
    """Keys by how many GPUs they hold, most first, then by name."""
    if len(counts) < 2:
        return tuple(counts)
    return tuple(sorted(counts, key=lambda k: (-counts[k], k)))


@dataclass
class GpuState:
    """One GPU: its newest sample, a ring per metric, and its energy counter today."""

    sample: GpuSample
    rings: dict[str, Ring]
    day: int = -1  # local date ordinal the energy baseline belongs to
    energy_base_mj: int | None = None
    energy_since_ns: int = 0

    @property
    def failed(self) -> bool:
        """The agent could not read it (lost, hung, timed out)."""
        return self.sample.error is not None

    def energy_today_j(self) -> float:
        """Joules counted by the GPU's own energy counter since the baseline (not integrated)."""
        now, base = self.sample.energy_mj, self.energy_base_mj
        if now is None or base is None or now < base:
            return 0.0
        return (now - base) / 1000.0


@dataclass
class NodeState:
    """One node: presence, newest report, GPUs and recent events."""

    cluster: str
    node: str
    status: str | None = None  # online/offline from the retained status topic
    status_reason: str = ""
    status_received_ns: int = 0
    version: str = ""
    report: ReportView | None = None
    received_ns: int = 0  # when the newest report arrived here
    reports: int = 0
    gpus: dict[int, GpuState] = field(default_factory=dict)
    events: deque[EventView] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    fleet: FleetNode | None = None  # the aggregator's view, from the fleet summary
    # who holds its GPUs in the newest report, most GPUs first: HPC job ids, pods
    jobs: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        """(cluster, node)."""
        return (self.cluster, self.node)

    def state(self, now_ns: int, silent_after: float) -> NodeStateName:
        """Offline by its presence, silent when reports stopped, else online.

        Without a report of our own (a viewer that just connected, a node on a long
        interval) the aggregator's verdict from the fleet summary stands.
        """
        if self.status == "offline" and self.status_received_ns >= self.received_ns:
            return "offline"
        if self.report is None:
            return self.fleet.state if self.fleet is not None else "unknown"
        limit = silent_after * self.report.interval_s
        return "silent" if (now_ns - self.received_ns) / 1e9 > limit else "online"


@dataclass
class Totals:
    """The fleet at a glance."""

    nodes: int = 0
    online: int = 0
    offline: int = 0
    silent: int = 0
    unknown: int = 0
    gpus: int = 0
    gpus_failed: int = 0
    util_mean: float | None = None
    power_w: float = 0.0
    energy_today_j: float = 0.0
    energy_since_ns: int | None = None  # the earliest baseline of today's energy
    firing: dict[str, int] = field(default_factory=dict)  # by severity
    pending: int = 0
    silenced: int = 0


class Watch:
    """The fleet as seen on the broker; feed it with :meth:`ingest` (or :func:`follow`)."""

    def __init__(
        self,
        *,
        silent_after: float = 3.0,
        history: int = 180,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.silent_after = silent_after
        self.history = history
        self.clock = clock
        self.nodes: dict[tuple[str, str], NodeState] = {}
        self.fleets: dict[str, FleetSummary] = {}
        self.firing: dict[tuple[str, str], Alert] = {}  # (cluster, fingerprint)
        self.pending: dict[str, PendingAlerts] = {}
        # Several aggregators (docs/sharing.md): each member's part, merged into the above.
        self.fleet_parts: dict[str, dict[int, FleetSummary]] = {}
        self.pending_parts: dict[str, dict[int, PendingAlerts]] = {}
        self.silences: dict[str, Silences] = {}
        self.messages = 0
        self.rejected: Counter[str] = Counter()
        self.last_problem = ""
        self.notice = ""  # the newest warning of the viewer itself (a log line)
        self.version = 0  # bumped by every change a view may want to redraw
        self.alerts_version = 0
        self.connection = "connecting"
        self.connected = False
        self._matchers: dict[str, tuple[Matcher, ...]] = {}

    # -- feeding ---------------------------------------------------------------------------
    def ingest(self, topic: str, payload: bytes) -> None:
        """Take one message; a bad one is counted with its reason, never raised."""
        self.messages += 1
        parts = topic.split("/")
        if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != ROOT:
            return self._reject("topic", f"{topic}: not under {ROOT}/")
        cluster, name, rest = parts[2], parts[3], parts[4:]
        try:
            if name == "_alerts" and len(rest) == 1:
                self._alert(cluster, rest[0], payload)
            elif name == "_fleet" and not rest:
                if payload:
                    self._fleet(cluster, decode_fleet_summary(payload))
            elif name == "_pending" and not rest:
                self._set_pending(cluster, payload)
            elif name in ("_fleet", "_pending") and (member := part_member(rest)) is not None:
                self._part(cluster, name, member, payload)
            elif name == "_silences" and not rest:
                self._set_silences(cluster, payload)
            elif name.startswith("_"):
                return  # the aggregator's other topics (requests, fleet events)
            elif len(rest) == 1 and rest[0] in ("report", "status", "event"):
                self._node_message(cluster, name, rest[0], payload)
            else:
                return
        except DecodeError as exc:
            return self._reject("payload", f"{topic}: {exc}")
        self.version += 1

    def _reject(self, reason: str, line: str) -> None:
        self.rejected[reason] += 1
        self.last_problem = line

    def _node(self, cluster: str, node: str) -> NodeState:
        state = self.nodes.get((cluster, node))
        if state is None:
            state = self.nodes[(cluster, node)] = NodeState(cluster, node)
        return state

    def _node_message(self, cluster: str, node: str, kind: str, payload: bytes) -> None:
        for what, value in (("cluster", cluster), ("node", node)):
            problem = name_problem(value)
            if problem:
                raise DecodeError("", f"{what} {value!r} {problem}")
        if kind == "status":
            if not payload:  # a cleared presence: the node was removed
                self.nodes.pop((cluster, node), None)
                return
            status = decode_status_view(payload)
            state = self._node(cluster, node)
            state.status, state.status_reason = status.state, status.reason
            state.version = status.version or state.version
            state.status_received_ns = self.clock()
            return
        if kind == "event":
            message = decode_event_view(payload)
            self._event(self._node(cluster, node), message.event)
            return
        report = decode_report_view(payload)
        if report.node != node or report.cluster != cluster:
            raise DecodeError(
                "", f"report of {report.cluster}/{report.node} on the topic of {node}"
            )
        self._report(self._node(cluster, node), report)

    def _report(self, state: NodeState, report: ReportView) -> None:
        now = self.clock()
        state.report, state.received_ns = report, now
        state.reports += 1
        day = datetime.fromtimestamp(now / 1e9).toordinal()
        jobs: dict[str, int] = {}  # GPUs each holds (plain dicts: Counter.update is slower)
        pods: dict[str, int] = {}
        for sample in report.gpus:
            if len(sample.processes):  # keep the GPU's slice, not the whole payload
                sample.processes = sample.processes.copy()
            if sample.owners:
                gpu_jobs, gpu_pods = holders(sample)
                for key in gpu_jobs:
                    jobs[key] = jobs.get(key, 0) + 1
                for key in gpu_pods:
                    pods[key] = pods.get(key, 0) + 1
            gpu = state.gpus.get(sample.index)
            if gpu is None:
                rings = {m: Ring(self.history) for m in METRICS}
                gpu = state.gpus[sample.index] = GpuState(sample, rings)
            gpu.sample = sample
            for metric, ring in gpu.rings.items():
                ring.push(sampled_value(sample, metric))
            if sample.energy_mj is not None and (gpu.day != day or gpu.energy_base_mj is None):
                gpu.day, gpu.energy_base_mj, gpu.energy_since_ns = day, sample.energy_mj, now
        state.jobs, state.pods = _most_first(jobs), _most_first(pods)
        for event in report.events:
            self._event(state, event)

    @staticmethod
    def _event(state: NodeState, event: EventView) -> None:
        """Keep an event once: it arrives on .../event and again inside its report."""
        key = (event.time_ns, event.kind, event.gpu_index, event.code)
        if any((e.time_ns, e.kind, e.gpu_index, e.code) == key for e in state.events):
            return
        state.events.append(event)

    def _fleet(self, cluster: str, summary: FleetSummary, *, part: bool = False) -> None:
        if self.fleet_parts.get(cluster) and not part:
            return  # a plain summary left by a single aggregator: the parts are current
        self.fleets[cluster] = summary
        for fleet_node in summary.nodes:
            self._node(cluster, fleet_node.node).fleet = fleet_node

    def _alert(self, cluster: str, fingerprint: str, payload: bytes) -> None:
        if payload:
            self.firing[(cluster, fingerprint)] = decode_alert(payload)
        else:
            self.firing.pop((cluster, fingerprint), None)
        self.alerts_version += 1

    def _part(self, cluster: str, name: str, member: int, payload: bytes) -> None:
        """One member's ``_fleet``/``_pending`` part (empty: cleared): merge them again."""
        if name == "_fleet":
            fleets = self.fleet_parts.setdefault(cluster, {})
            if payload:
                fleets[member] = decode_fleet_summary(payload)
            else:
                fleets.pop(member, None)
            if fleets:
                self._fleet(cluster, merge_fleet(fleets), part=True)
            return
        pending = self.pending_parts.setdefault(cluster, {})
        if payload:
            pending[member] = decode_pending(payload)
        else:
            pending.pop(member, None)
        if pending:
            self.pending[cluster] = merge_pending(pending)
        else:
            self.pending.pop(cluster, None)
        self.alerts_version += 1

    def _set_pending(self, cluster: str, payload: bytes) -> None:
        if self.pending_parts.get(cluster):
            return  # a plain list left by a single aggregator: the parts are current
        if payload:
            self.pending[cluster] = decode_pending(payload)
        else:
            self.pending.pop(cluster, None)
        self.alerts_version += 1

    def _set_silences(self, cluster: str, payload: bytes) -> None:
        if payload:
            silences = decode_silences(payload)
            try:
                parsed = {s.id: tuple(map(parse_matcher, s.matchers)) for s in silences.silences}
            except ValueError as exc:
                raise DecodeError("silence matcher", str(exc)) from None
            self._matchers.update(parsed)
            self.silences[cluster] = silences
        else:
            self.silences.pop(cluster, None)
        self.alerts_version += 1

    def note(self, line: str) -> None:
        """Keep the viewer's own newest warning, for a UI to show instead of printing it."""
        self.notice = line
        self.version += 1

    # -- reading ---------------------------------------------------------------------------
    def node_state(self, node: NodeState, now_ns: int | None = None) -> NodeStateName:
        """online, offline, silent or unknown, now."""
        return node.state(self.clock() if now_ns is None else now_ns, self.silent_after)

    def pending_alerts(self) -> list[Alert]:
        """Every pending alert the aggregator listed (each once, over all clusters)."""
        seen: dict[str, Alert] = {}
        for pending in self.pending.values():
            for alert in pending.alerts:
                seen.setdefault(alert.fingerprint, alert)
        return list(seen.values())

    def firing_alerts(self) -> list[Alert]:
        """Every firing alert (each once, over all clusters)."""
        return list({a.fingerprint: a for a in self.firing.values()}.values())

    def silenced_by(self, alert: Alert, now_ns: int | None = None) -> list[str]:
        """Ids of the active silences that mute ``alert``."""
        now = self.clock() if now_ns is None else now_ns
        cluster = alert.labels.get("cluster")
        lists = [self.silences[cluster]] if cluster in self.silences else self.silences.values()
        return [
            s.id
            for silences in lists
            for s in silences.silences
            if s.starts_ns <= now < s.ends_ns
            and matches_all(self._matchers.get(s.id, ()), alert.labels)
        ]

    def accepts_silences(self, cluster: str | None = None) -> bool:
        """Whether the aggregator said it applies silence requests (for this cluster)."""
        lists = [self.silences[cluster]] if cluster in self.silences else self.silences.values()
        return any(s.accepts_requests for s in lists)

    def alerts_of(self, cluster: str, node: str) -> list[Alert]:
        """Firing alerts about one node."""
        return [
            a
            for a in self.firing_alerts()
            if a.labels.get("node") == node and a.labels.get("cluster", cluster) == cluster
        ]

    def totals(self, now_ns: int | None = None, nodes: Iterable[NodeState] | None = None) -> Totals:
        """Counts and sums over the fleet (or over ``nodes``)."""
        now = self.clock() if now_ns is None else now_ns
        t = Totals()
        util_sum, util_n = 0.0, 0
        for node in self.nodes.values() if nodes is None else nodes:
            t.nodes += 1
            state = node.state(now, self.silent_after)
            setattr(t, state, getattr(t, state) + 1)
            if state != "online":
                continue
            for gpu in node.gpus.values():
                t.gpus += 1
                s = gpu.sample
                if gpu.failed:
                    t.gpus_failed += 1
                    continue
                if s.util_gpu_pct is not None:
                    util_sum, util_n = util_sum + s.util_gpu_pct, util_n + 1
                t.power_w += s.power_w or 0.0
                t.energy_today_j += gpu.energy_today_j()
                if gpu.energy_base_mj is not None:
                    since = t.energy_since_ns
                    t.energy_since_ns = (
                        min(since, gpu.energy_since_ns) if since else gpu.energy_since_ns
                    )
        t.util_mean = util_sum / util_n if util_n else None
        for alert in self.firing_alerts():
            if self.silenced_by(alert, now):
                t.silenced += 1
            else:
                t.firing[alert.severity] = t.firing.get(alert.severity, 0) + 1
        t.pending = len(self.pending_alerts())
        return t
