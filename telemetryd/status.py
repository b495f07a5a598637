"""``telemetryd status``: the fleet once, for scripts and SSH sessions.

It is a viewer like ``top`` that looks once: connect, subscribe to the cluster's tree,
let the retained state arrive (presence, the aggregator's fleet summary, firing and
pending alerts, silences), wait for one report from each node that says it is online
(reports are not retained, so a node on a 10 s interval may take 10 s), and answer.
It never waits longer than ``[top] wait``; what it could not hear by then is named in
the answer (``complete: false``, ``waiting_for_reports``) rather than guessed.

The answer is :class:`~telemetryd.statusdoc.StatusDoc`; its exit code is 1 when an alert
fires that no silence mutes, else 0. A broker that cannot be reached is one line and
exit 2 (the CLI's part).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from exporters.mqtt import MqttSession, MqttSettings, MqttUnavailable
from telemetryd.alerting.model import SEVERITIES, Alert, severity_rank
from telemetryd.config import TopConfig
from telemetryd.connect import check_cluster_filter
from telemetryd.errors import TelemetrydError
from telemetryd.statusdoc import (
    AggregatorView,
    AlertCounts,
    AlertRef,
    FleetView,
    GpuCounts,
    GpuRef,
    GpuUsage,
    NodeCounts,
    NodeRef,
    NodeUsage,
    SinkView,
    StatusDoc,
    TopConsumers,
)
from telemetryd.topics import ROOT, watch_filter
from telemetryd.watch import NodeState, Watch
from telemetryd.watchwire import GpuSample

SETTLE_S = 0.3  # the retained flood is over after this long without a retained message
BUSY_PCT = 50  # GPU utilisation at or above: busy
IDLE_PCT = 5  # below: idle; in between: light
THROTTLE_REASONS = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal",
                              "hw_power_brake"})  # fmt: skip
TOP = 5
STALE_S = 60.0  # a fleet summary older than this: the aggregator may be down


class BrokerUnreachable(TelemetrydError):
    """The broker could not be reached, refused us, or dropped us; one line naming it."""


class Gathered(Watch):
    """A Watch filled once, and how far the filling got."""

    def __init__(self, *, broker: str, cluster: str, silent_after: float, wait_s: float) -> None:
        super().__init__(silent_after=silent_after, history=2)  # no sparklines here
        self.broker = broker
        self.cluster = cluster
        self.wait_s = wait_s
        self.settled = False  # the retained flood was over before the deadline


def expects_report(node: NodeState) -> bool:
    """Whether the node says it is online and we have not heard a report from it yet.

    The aggregator's verdict wins over a retained "online" that outlived its agent (a
    broker restarted with persistence): a node it calls offline or silent is not waited
    for.
    """
    if node.reports or node.status == "offline":
        return False
    fleet = node.fleet.state if node.fleet is not None else None
    if fleet in ("offline", "silent"):
        return False
    return node.status == "online" or fleet == "online"


def _ours(topic: str, cluster: str) -> bool:
    """Keep our topics: amqtt may hand a new subscriber retained messages of other topics."""
    parts = topic.split("/", 3)
    return len(parts) == 4 and f"{parts[0]}/{parts[1]}" == ROOT and cluster in ("+", parts[2])


async def gather(settings: MqttSettings, cfg: TopConfig) -> Gathered:
    """Connect once, listen until the picture is complete or ``cfg.wait`` passed.

    Raises:
        BrokerUnreachable: the broker refused us, is not there, or dropped us.
        ConfigError: the cluster filter is not a name.
    """
    check_cluster_filter(cfg.cluster)
    watch = Gathered(broker=str(settings.broker), cluster=cfg.cluster,
                     silent_after=cfg.silent_after, wait_s=cfg.wait)  # fmt: skip
    # One attempt, bounded like the rest: a host that drops packets must not hang a script.
    settings = dataclasses.replace(settings, timeout=min(settings.timeout, max(cfg.wait, 2.0)))
    try:
        async with MqttSession(settings) as session:
            await session.subscribe([watch_filter(cfg.cluster)], qos=0)
            watch.connected, watch.connection = True, f"connected to {settings.broker}"
            await _listen(session, watch, cfg)
    except MqttUnavailable as exc:
        text = str(exc)
        if str(settings.broker) not in text:
            text = f"broker {settings.broker}: {text}"
        raise BrokerUnreachable(text) from None
    return watch


async def _listen(session: MqttSession, watch: Gathered, cfg: TopConfig) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.wait
    last_retained = loop.time()
    arrived = asyncio.Event()

    async def read() -> None:
        nonlocal last_retained
        try:
            async for message in session.messages():
                if not _ours(message.topic, cfg.cluster):
                    continue
                if message.retain:
                    last_retained = loop.time()
                watch.ingest(message.topic, message.payload)
                arrived.set()
        finally:
            arrived.set()

    reader = asyncio.create_task(read(), name="status.read")
    try:
        waiting: list[NodeState] = []
        listed_at = None  # the retained flood the waiting list was made after
        while not reader.done():
            now = loop.time()
            watch.settled = now - last_retained >= SETTLE_S
            if watch.settled:
                if listed_at != last_retained:
                    waiting, listed_at = list(watch.nodes.values()), last_retained
                waiting = [n for n in waiting if expects_report(n) and watch.nodes.get(n.key) is n]
                if not waiting:
                    return
            if now >= deadline:
                return
            until = deadline if watch.settled else min(deadline, last_retained + SETTLE_S)
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), timeout=until - now)
        reader.result()  # the connection dropped: raises MqttUnavailable
        raise MqttUnavailable("the connection closed")
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, MqttUnavailable):
            await reader


async def status(settings: MqttSettings, cfg: TopConfig) -> StatusDoc:
    """Gather, then summarise at the moment the gathering ended."""
    watch = await gather(settings, cfg)
    return summarize(watch, time.time_ns(), broker=watch.broker, cluster=watch.cluster,
                     settled=watch.settled, wait_s=watch.wait_s)  # fmt: skip


# -- the summary -----------------------------------------------------------------------------
def iso(ns: int) -> str:
    """UTC, to the second: what a person and ``date -d`` both read."""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ref(node: NodeState) -> NodeRef:
    seen = node.received_ns or None
    if node.fleet is not None and node.fleet.last_seen_ns:
        seen = max(seen or 0, node.fleet.last_seen_ns)
    return NodeRef(cluster=node.cluster, node=node.node, reason=node.status_reason,
                   last_seen=iso(seen) if seen else None, last_seen_ns=seen)  # fmt: skip


def _r1(value: float) -> float:
    return round(value, 1)


def _usage(node: NodeState, index: int, s: GpuSample) -> GpuUsage:
    return GpuUsage(cluster=node.cluster, node=node.node, gpu=index, uuid=s.uuid, model=s.name,
                    power_w=None if s.power_w is None else _r1(s.power_w), temp_c=s.temp_c,
                    util_pct=s.util_gpu_pct)  # fmt: skip


def _gpus(online: list[NodeState]) -> tuple[GpuCounts, TopConsumers]:
    g, top = GpuCounts(), TopConsumers()
    utils: list[int] = []
    readable: list[tuple[NodeState, int, GpuSample]] = []
    for node in online:
        node_power, node_utils, temps = 0.0, [], []
        for index, gpu in sorted(node.gpus.items()):
            s = gpu.sample
            g.total += 1
            if s.error is not None:
                g.failed += 1
                g.failed_gpus.append(GpuRef(cluster=node.cluster, node=node.node, gpu=index,
                                            uuid=s.uuid, model=s.name, error=s.error.code,
                                            message=s.error.message))  # fmt: skip
                continue
            g.ok += 1
            readable.append((node, index, s))
            u = s.util_gpu_pct
            if u is None:
                g.util_unknown += 1
            else:
                utils.append(u)
                node_utils.append(u)
                g.busy += u >= BUSY_PCT
                g.idle += u < IDLE_PCT
                g.light += IDLE_PCT <= u < BUSY_PCT
            g.throttled += bool(THROTTLE_REASONS.intersection(s.clock_event_reasons or ()))
            node_power += s.power_w or 0.0
            if s.temp_c is not None:
                temps.append(s.temp_c)
        g.power_w += node_power
        if node.gpus:
            top.nodes_by_power.append(NodeUsage(
                cluster=node.cluster, node=node.node, gpus=len(node.gpus),
                power_w=_r1(node_power),
                util_mean_pct=_r1(sum(node_utils) / len(node_utils)) if node_utils else None,
                temp_max_c=max(temps) if temps else None,
            ))  # fmt: skip
    g.power_w = _r1(g.power_w)
    g.util_mean_pct = _r1(sum(utils) / len(utils)) if utils else None
    top.nodes_by_power.sort(key=lambda n: (-n.power_w, n.cluster, n.node))
    del top.nodes_by_power[TOP:]

    def largest(value: str) -> list[GpuUsage]:
        have = [r for r in readable if getattr(r[2], value) is not None]
        have.sort(key=lambda r: (-getattr(r[2], value), r[0].cluster, r[0].node, r[1]))
        return [_usage(*r) for r in have[:TOP]]

    top.gpus_by_power, top.gpus_by_temp = largest("power_w"), largest("temp_c")
    return g, top


def _alert_ref(alert: Alert) -> AlertRef:
    labels = alert.labels
    gpu = labels.get("gpu", "")
    since = alert.fired_ns or alert.starts_ns or None
    return AlertRef(name=alert.name, severity=alert.severity, cluster=labels.get("cluster"),
                    node=labels.get("node"), gpu=int(gpu) if gpu.isdigit() else None,
                    summary=alert.annotations.get("summary", ""),
                    since=iso(since) if since else None, since_ns=since,
                    fingerprint=alert.fingerprint)  # fmt: skip


def _alert_order(a: AlertRef) -> tuple[int, int, str, str, str, int]:
    """Worst first, then oldest first."""
    gpu = -1 if a.gpu is None else a.gpu
    return (severity_rank(a.severity), a.since_ns or 0, a.name, a.cluster or "", a.node or "", gpu)


def _alerts(watch: Watch, now_ns: int, known: bool) -> AlertCounts:
    counts = AlertCounts(known=known, firing_by_severity=dict.fromkeys(SEVERITIES, 0))
    for alert in watch.firing_alerts():
        if watch.silenced_by(alert, now_ns):
            counts.silenced += 1
            continue
        counts.firing.append(_alert_ref(alert))
        by = counts.firing_by_severity
        by[alert.severity] = by.get(alert.severity, 0) + 1
    counts.firing.sort(key=_alert_order)
    counts.pending = len(watch.pending_alerts()) + sum(p.truncated for p in watch.pending.values())
    return counts


def _aggregator(watch: Watch, clusters: Iterable[str], now_ns: int) -> AggregatorView | None:
    if not watch.fleets:
        return None
    view = AggregatorView()
    for cluster, f in sorted(watch.fleets.items()):
        age = max(0.0, (now_ns - f.time_ns) / 1e9)
        sinks = [SinkView(name=s.name, state=s.state, written=s.written, lag=s.lag,
                          last_error=s.last_error) for s in f.sinks]  # fmt: skip
        view.fleets.append(FleetView(
            cluster=cluster, aggregator=f.aggregator, time=iso(f.time_ns), time_ns=f.time_ns,
            age_s=_r1(age), stale=age > STALE_S, received=f.received, accepted=f.accepted,
            duplicates=f.duplicates, rejected=sum(f.rejected.values()),
            broker_dropped=f.broker_dropped, sinks=sinks,
        ))  # fmt: skip
    view.clusters_without_summary = sorted(set(clusters) - set(watch.fleets))
    return view


def summarize(
    watch: Watch,
    now_ns: int,
    *,
    broker: str = "",
    cluster: str = "+",
    settled: bool = True,
    wait_s: float = 0.0,
) -> StatusDoc:
    """The fleet at ``now_ns`` as :class:`StatusDoc` (pure: the same watch, the same answer)."""
    nodes = sorted(watch.nodes.values(), key=lambda n: n.key)
    counts, online = NodeCounts(total=len(nodes)), []
    for node in nodes:
        state = watch.node_state(node, now_ns)
        setattr(counts, state, getattr(counts, state) + 1)
        if state == "online":
            online.append(node)
        else:
            getattr(counts, f"{state}_nodes").append(_ref(node))
    gpus, top = _gpus(online)
    clusters = sorted({n.cluster for n in nodes} | set(watch.fleets)
                      | {c for c, _ in watch.firing})  # fmt: skip
    waiting = [_ref(n) for n in nodes if expects_report(n)]
    doc = StatusDoc(
        generated=iso(now_ns), generated_ns=now_ns, broker=broker, cluster=cluster,
        clusters=clusters, complete=settled and not waiting, waiting_for_reports=waiting,
        nodes=counts, gpus=gpus, alerts=_alerts(watch, now_ns, known=bool(watch.fleets)),
        top=top, aggregator=_aggregator(watch, clusters, now_ns),
    )  # fmt: skip
    doc.exit_code = 1 if doc.alerts.firing else 0
    doc.warnings = _warnings(watch, doc, settled, wait_s)
    return doc


def _names(refs: list[NodeRef], many: int = 10) -> str:
    names = [f"{r.cluster}/{r.node}" for r in refs[:many]]
    return ", ".join(names) + (f" and {len(refs) - many} more" if len(refs) > many else "")


def _warnings(watch: Watch, doc: StatusDoc, settled: bool, wait_s: float) -> list[str]:
    out: list[str] = []
    where = f"on {doc.broker}" if doc.broker else "on the broker"
    scope = "" if doc.cluster == "+" else f" in cluster {doc.cluster}"
    if not watch.nodes and not watch.fleets:
        out.append(f"nothing under {ROOT}/{doc.cluster}/ {where}: no agent or aggregator "
                   "has published there")  # fmt: skip
    if doc.aggregator is None:
        out.append(f"no fleet summary from an aggregator {where}{scope}: alerts are unknown "
                   "(is the aggregator running?)")  # fmt: skip
    else:
        fleets = doc.aggregator.fleets
        out.extend(f"the fleet summary of cluster {f.cluster} is {f.age_s:.0f} s old: its "
                   f"aggregator ({f.aggregator}) may be down and its alerts out of date"
                   for f in fleets if f.stale)  # fmt: skip
        out.extend(f"no fleet summary for cluster {name}: its alerts are unknown"
                   for name in doc.aggregator.clusters_without_summary)  # fmt: skip
        out.extend(f"sink {s.name} of {f.aggregator} is {s.state}"
                   + (f": {s.last_error}" if s.last_error else "")
                   for f in fleets for s in f.sinks if s.state != "ok")  # fmt: skip
    if doc.waiting_for_reports:
        waited = f" within {wait_s:g} s" if wait_s else ""
        out.append(f"no report yet{waited} from {len(doc.waiting_for_reports)} node(s) that "
                   f"say they are online: {_names(doc.waiting_for_reports)} (their interval "
                   "may be longer than --wait); their GPUs are not counted")  # fmt: skip
    if not settled:
        out.append("retained state was still arriving when the wait ended: counts may be low")
    rejected = sum(watch.rejected.values())
    if rejected:
        out.append(f"{rejected} message(s) could not be read; the last: {watch.last_problem}")
    return out
