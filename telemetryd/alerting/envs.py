"""What a rule expression sees in each scope: one small ``Env`` per GPU, node, event, group, job.

Kept apart from the engine so the engine reads as a state machine, and so each scope's
names (documented in docs/alerts.md) are defined where they are computed.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any

from telemetryd.alerting.expr import Compiled, Value, Window
from telemetryd.fleet import Fleet, NodeState
from telemetryd.jobs import Job
from telemetryd.model import Event, Gpu, Report

_POINTS = 32  # per look-back: enough resolution, bounded memory for 10k GPUs


class History:
    """The recorded values of one series' counters, per look-back window.

    Points are thinned to about ``_POINTS`` per window, so an ``increase(x, "1h")`` on a
    10 s interval keeps 32 points rather than 360; one point older than the window is
    kept so the increase covers the whole window. Each window is one flat array of
    ``t, v, t, v, ...`` doubles (16 bytes a point, against ~100 for a tuple of floats):
    an aggregator of 10,000 GPUs keeps millions of them.
    """

    __slots__ = ("points",)

    def __init__(self) -> None:
        self.points: dict[str, array[float]] = {}

    def record(self, window: Window, t: float, value: Value) -> None:
        """Add a reading at ``t`` seconds (once per report; older or equal times ignored)."""
        if not isinstance(value, int | float) or isinstance(value, bool):
            return
        points = self.points.get(window.key)
        if points is None:
            points = self.points[window.key] = array("d")
        n = len(points)
        if n and t <= points[-2]:
            return
        if n >= 4 and t - points[-4] < window.seconds / _POINTS:
            points[-2], points[-1] = t, float(value)  # thin: replace the newest
        else:
            points.extend((t, float(value)))
        drop = 0
        while len(points) - drop > 4 and points[drop + 2] <= t - window.seconds:
            drop += 2
        if drop:
            del points[:drop]

    def compute(self, window: Window, fn: str) -> Value:
        """Rate (per second), increase or changes over the window; None without 2 points."""
        points = self.points.get(window.key)
        if points is None or len(points) < 4:
            return None
        total = 0.0
        changes = 0
        prev = points[1]
        for i in range(3, len(points), 2):
            v = points[i]
            if v != prev:
                changes += 1
            total += v - prev if v >= prev else v  # a reset counts from zero
            prev = v
        if fn == "changes":
            return changes
        if fn == "increase":
            return total
        span = points[-2] - points[0]
        return total / span if span > 0 else None


class _Base:
    """Labels and look-backs common to every scope."""

    def __init__(self, labels: dict[str, str], history: History | None) -> None:
        self.labels = labels
        self.history = history

    def label(self, name: str) -> Value:
        """A label of the series, or None."""
        return self.labels.get(name)

    def window(self, window: Window, fn: str) -> Value:
        """A look-back over this series' recorded history."""
        return None if self.history is None else self.history.compute(window, fn)

    def attr(self, base: str, name: str) -> Value:
        """``agent.x`` / ``host.x``; None in scopes without them."""
        return None

    def aggregate(self, fn: str, arg: Compiled) -> Value:
        """Aggregates exist in group scope only."""
        return None


def _plain(value: Any) -> Value:
    if isinstance(value, list):
        return tuple(value)
    return value


class GpuEnv(_Base):
    """One GPU of one report: its fields, ``error`` as its code, node and cluster."""

    def __init__(
        self, report: Report, gpu: Gpu, labels: dict[str, str], history: History | None
    ) -> None:
        super().__init__(labels, history)
        self.report = report
        self.gpu = gpu

    def name(self, name: str) -> Value:
        """The value of a plain name in this scope (None when absent)."""
        if name == "node":
            return self.report.node
        if name == "cluster":
            return self.report.cluster
        if name == "error":
            return self.gpu.error.code if self.gpu.error is not None else None
        return getattr(self.gpu, name, None)


class NodeEnv(_Base):
    """One node: presence from the fleet, counters from its latest report."""

    def __init__(
        self,
        fleet: Fleet,
        state: NodeState,
        report: Report | None,
        *,
        now_ns: int,
        gpus_expected: int,
        labels: dict[str, str],
        history: History | None,
    ) -> None:
        super().__init__(labels, history)
        self.fleet, self.state, self.report = fleet, state, report
        self.now_ns, self.gpus_expected = now_ns, gpus_expected

    def name(self, name: str) -> Value:  # one line per documented name
        """The value of a plain name in this scope (None when absent)."""
        s = self.state
        if name == "state":
            return self.fleet.node_state(s, self.now_ns)
        if name == "silent_s":
            return None if s.last_seen_ns is None else (self.now_ns - s.last_seen_ns) / 1e9
        if name == "gpus":
            return len(self.report.gpus) if self.report is not None else len(s.gpus)
        if name == "gpus_expected":
            return self.gpus_expected
        if name == "seq_missing":
            return sum(q.missing() for q in s.boots.values())
        if name in ("node", "cluster", "interval_s", "gpus_failed", "skew_s", "reports"):
            return _plain(getattr(s, name))
        return None

    def attr(self, base: str, name: str) -> Value:
        """``agent.x`` / ``host.x``; None in scopes without them."""
        if self.report is None:
            return None
        part = self.report.agent if base == "agent" else self.report.host
        return _plain(getattr(part, name, None)) if part is not None else None


class EventEnv(_Base):
    """One event: its fields (``code`` is the XID), plus node and cluster."""

    def __init__(self, cluster: str, node: str, event: Event, labels: dict[str, str]) -> None:
        super().__init__(labels, None)
        self.cluster, self.node, self.event = cluster, node, event

    def name(self, name: str) -> Value:
        """The value of a plain name in this scope (None when absent)."""
        if name == "node":
            return self.node
        if name == "cluster":
            return self.cluster
        return _plain(getattr(self.event, name, None))


class GroupEnv(_Base):
    """The latest reports of the online nodes of one group; aggregates run over them."""

    def __init__(self, members: list[tuple[NodeEnv, Report]], labels: dict[str, str]) -> None:
        super().__init__(labels, None)
        self.members = members

    def name(self, name: str) -> Value:
        """The value of a plain name in this scope (None when absent)."""
        if name == "nodes_total":
            return len(self.members)
        if name == "gpus_total":
            return sum(len(r.gpus) for _, r in self.members)
        return None

    def _gpus(self) -> Iterable[GpuEnv]:
        for node_env, report in self.members:
            for gpu in report.gpus:
                yield GpuEnv(report, gpu, node_env.labels, None)

    def aggregate(self, fn: str, arg: Compiled) -> Value:
        """Aggregates exist in group scope only."""
        if fn == "nodes":
            return sum(1 for env, _ in self.members if arg(env))
        values = [arg(env) for env in self._gpus()]
        if fn in ("count", "share"):
            hits = sum(1 for v in values if v)
            if fn == "count":
                return hits
            return hits / len(values) if values else None
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if not numbers:
            return None
        if fn == "sum":
            return sum(numbers)
        if fn == "avg":
            return sum(numbers) / len(numbers)
        return min(numbers) if fn == "min" else max(numbers)


class AggregatorEnv(_Base):
    """The aggregator's own health, as given by the aggregator each tick."""

    def __init__(self, values: dict[str, Value], labels: dict[str, str], history: History) -> None:
        super().__init__(labels, history)
        self.values = values

    def name(self, name: str) -> Value:
        """The value of a plain name in this scope (None when absent)."""
        return self.values.get(name)


class JobEnv(_Base):
    """One running job: its joined record, and the GPUs it holds in their latest reports.

    The live names (``util_pct``, ``power_w``, ...) read the GPUs the job holds now (the
    running parts, not GPUs it already left), each in its node's latest report: the job
    record itself only has means since the start, which would hide a job that went idle.
    """

    def __init__(self, job: Job, gpus: list[Gpu], now_ns: int, labels: dict[str, str]) -> None:
        super().__init__(labels, None)
        self.job, self.gpus, self.now_ns = job, gpus, now_ns

    def _live(self, field: str) -> list[float]:
        values = (getattr(g, field) for g in self.gpus if g.error is None)
        return [v for v in values if v is not None]

    def name(self, name: str) -> Value:  # one line per documented name
        """The value of a plain name in this scope (None when absent)."""
        job = self.job
        if name in ("job", "kind", "cluster"):
            return str(getattr(job, name))
        if name in ("nodes", "gpus"):
            return len(getattr(job, name))
        if name == "age_s":
            return (self.now_ns - job.start_ns) / 1e9
        if name == "energy_j":
            return None if job.energy_mj is None else job.energy_mj / 1000
        live = self._live(_LIVE[name]) if name in _LIVE else []
        if not live:
            return None
        if name == "util_pct":
            return sum(live) / len(live)
        return max(live) if name == "util_max_pct" else sum(live)


_LIVE = {
    "util_pct": "util_gpu_pct",
    "util_max_pct": "util_gpu_pct",
    "power_w": "power_w",
    "mem_used_bytes": "fb_used_bytes",
}
