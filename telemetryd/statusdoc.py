"""The JSON document of ``telemetryd status --json`` (schema 1), field by field in docs/status.md.

A contract for scripts: fields are only ever added within schema 1, never renamed,
removed or retyped, and every field is always present (``null`` or an empty list when
there is nothing to say), so ``jq .alerts.firing`` never has to guess. Anything that
would break this bumps ``schema``.
"""

from __future__ import annotations

from typing import Literal

from telemetryd.codec import Struct, field


class NodeRef(Struct, kw_only=True):
    """A node named in a list (offline, silent, unknown, waited for)."""

    cluster: str
    node: str
    reason: str = ""  # the agent's presence reason: connected, shutdown, lost ("" if none)
    last_seen: str | None = None  # last report, ours or the aggregator's (ISO 8601, UTC)
    last_seen_ns: int | None = None


class NodeCounts(Struct, kw_only=True):
    """Nodes by state; the four states add up to ``total``."""

    total: int = 0
    online: int = 0
    offline: int = 0
    silent: int = 0
    unknown: int = 0
    offline_nodes: list[NodeRef] = field(default_factory=list)
    silent_nodes: list[NodeRef] = field(default_factory=list)
    unknown_nodes: list[NodeRef] = field(default_factory=list)


class GpuRef(Struct, kw_only=True):
    """A GPU the agent could not read, and why."""

    cluster: str
    node: str
    gpu: int
    uuid: str
    model: str
    error: str  # the agent's code: gpu_lost, timeout, ...
    message: str


class GpuCounts(Struct, kw_only=True):
    """GPUs of the online nodes, as their newest report has them.

    ``ok`` = ``busy`` + ``light`` + ``idle`` + ``util_unknown``; ``throttled`` counts
    ok GPUs whatever their utilisation.
    """

    total: int = 0
    ok: int = 0
    failed: int = 0
    busy: int = 0
    light: int = 0
    idle: int = 0
    util_unknown: int = 0
    throttled: int = 0
    power_w: float = 0.0
    util_mean_pct: float | None = None
    failed_gpus: list[GpuRef] = field(default_factory=list)


class AlertRef(Struct, kw_only=True):
    """One firing alert, as the aggregator published it."""

    name: str
    severity: str
    cluster: str | None
    node: str | None
    gpu: int | None
    summary: str
    since: str | None  # when it became firing (ISO 8601, UTC)
    since_ns: int | None
    fingerprint: str


class AlertCounts(Struct, kw_only=True):
    """Alerts; ``known`` is false when no aggregator summary arrived (then all is zero)."""

    known: bool = False
    firing: list[AlertRef] = field(default_factory=list)  # not silenced
    firing_by_severity: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    silenced: int = 0  # firing, but muted by an active silence


class NodeUsage(Struct, kw_only=True):
    """A node among the top consumers."""

    cluster: str
    node: str
    gpus: int
    power_w: float
    util_mean_pct: float | None
    temp_max_c: float | None


class GpuUsage(Struct, kw_only=True):
    """A GPU among the top consumers."""

    cluster: str
    node: str
    gpu: int
    uuid: str
    model: str
    power_w: float | None
    temp_c: float | None
    util_pct: int | None


class TopConsumers(Struct, kw_only=True):
    """The five largest of each, largest first."""

    nodes_by_power: list[NodeUsage] = field(default_factory=list)
    gpus_by_power: list[GpuUsage] = field(default_factory=list)
    gpus_by_temp: list[GpuUsage] = field(default_factory=list)


class SinkView(Struct, kw_only=True):
    """One of the aggregator's stores."""

    name: str
    state: str  # ok, retrying, starting
    written: int
    lag: int
    last_error: str | None


class FleetView(Struct, kw_only=True):
    """The aggregator's retained summary of one cluster."""

    cluster: str
    aggregator: str
    time: str
    time_ns: int
    age_s: float
    stale: bool  # older than STALE_S: the aggregator may be down
    received: int
    accepted: int
    duplicates: int
    rejected: int
    broker_dropped: int | None
    sinks: list[SinkView] = field(default_factory=list)


class AggregatorView(Struct, kw_only=True):
    """What the aggregators said, per cluster."""

    fleets: list[FleetView] = field(default_factory=list)
    clusters_without_summary: list[str] = field(default_factory=list)


class StatusDoc(Struct, kw_only=True):
    """``telemetryd status --json``."""

    schema: Literal[1] = 1
    generated: str
    generated_ns: int
    broker: str
    cluster: str  # the filter: a name, or "+" for every cluster
    clusters: list[str] = field(default_factory=list)
    complete: bool = True
    waiting_for_reports: list[NodeRef] = field(default_factory=list)
    exit_code: int = 0  # 1 when an alert fires that no silence mutes, else 0
    nodes: NodeCounts = field(default_factory=NodeCounts)
    gpus: GpuCounts = field(default_factory=GpuCounts)
    alerts: AlertCounts = field(default_factory=AlertCounts)
    top: TopConsumers = field(default_factory=TopConsumers)
    aggregator: AggregatorView | None = None
    warnings: list[str] = field(default_factory=list)
