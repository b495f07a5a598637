"""Per-node rollups: the aggregator's summary of each node per ``rollup_interval``.

Why rollups: a country federates several sites, and a site's raw telemetry (reports,
events, presence, process lists) must never leave it. What crosses to the national broker
is the aggregator's own output: the fleet summary, alert state, and one rollup per node
per interval (rollupmodel.py), which is what a national ``top`` needs for a node row.

The accumulator is fed each accepted report in the aggregator's commit (cheap: a few
additions per GPU) and emptied every interval by the housekeeping tick. Only the present
counts: a report older than the node's newest (drained from a spool after an outage) is
history and is left to the stores.

Rollups are **retained**: a national viewer that starts up sees every node at once instead
of waiting one interval, and a WAN outage leaves the last picture, with its time, in place.
Retained state must not outlive its node, so a node that leaves this aggregator's fleet
state (forgotten, or owned by another member of a shared group) gets an empty retained
message, which clears it on the site broker and, through the bridge, nationally.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import cast, get_args

from exporters.mqtt import MqttSession, MqttUnavailable
from telemetryd.codec import encode_json
from telemetryd.fleet import Fleet
from telemetryd.model import Report
from telemetryd.owners import counted, job_key
from telemetryd.rollupmodel import ROLLUP_SCHEMA, Health, Rollup, RollupGpu
from telemetryd.topics import rollup_topic

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
"""Publish ``payload`` retained on ``topic`` (QoS 1); raises when the broker is gone."""

CONCURRENT = 256  # publishes in flight at once: 10,000 nodes do not wait 10,000 round trips
ERROR_EVENTS = frozenset({"ecc_dbe", "ecc_sbe", "remap_failure", "gpu_lost", "gpu_error"})
HEALTHS: frozenset[str] = frozenset(get_args(Health))


@dataclass(slots=True)
class GpuAcc:
    """One GPU's sums and peaks since the interval began."""

    uuid: str
    samples: int = 0
    failed: int = 0
    util_sum: float = 0.0
    util_n: int = 0
    util_max: int | None = None
    power_sum: float = 0.0
    power_n: int = 0
    temp_max: float | None = None
    mem_max: int | None = None
    mem_total: int | None = None
    energy_first: int | None = None  # the counter at the interval's start (or first reading)
    energy_last: int | None = None
    xids: int = 0
    errors: int = 0
    health: Health = "unknown"
    jobs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class NodeAcc:
    """One node's interval: its report count and its GPUs by index."""

    reports: int = 0
    newest_ns: int = 0
    gpus: dict[int, GpuAcc] = field(default_factory=dict)


class Rollups:
    """Accumulates accepted reports; ``due``/``publish`` turn them into retained rollups."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.nodes: dict[tuple[str, str], NodeAcc] = {}
        self.energy: dict[tuple[str, str, str], int] = {}  # (cluster, node, uuid): last counter
        self.published: set[tuple[str, str]] = set()  # nodes with a retained rollup out there
        self.start_ns = time.time_ns()
        self._last = time.monotonic()
        self.count = 0  # rollups published, for the logs and tests
        self.bytes = 0
        self._error = ""

    # -- feeding (in the commit) -----------------------------------------------------------
    def observe(self, report: Report) -> None:
        """Add one accepted report to its node's interval (history is skipped)."""
        if self.interval_s <= 0:
            return
        key = (report.cluster, report.node)
        acc = self.nodes.get(key)
        if acc is None:
            acc = self.nodes[key] = NodeAcc()
        if report.time_ns < acc.newest_ns:
            return
        acc.newest_ns = report.time_ns
        acc.reports += 1
        gpus = acc.gpus
        for gpu in report.gpus:  # a few comparisons per GPU: this runs for every report
            g = gpus.get(gpu.index)
            if g is None or g.uuid != gpu.uuid:
                g = gpus[gpu.index] = GpuAcc(gpu.uuid)
            g.samples += 1
            if gpu.error is not None:
                g.failed += 1
                code = gpu.error.code
                g.health = cast(Health, code) if code in HEALTHS else "error"
            else:
                g.health = "ok"
            value = gpu.util_gpu_pct
            if value is not None:
                g.util_sum += value
                g.util_n += 1
                if g.util_max is None or value > g.util_max:
                    g.util_max = value
            if gpu.power_w is not None:
                g.power_sum += gpu.power_w
                g.power_n += 1
            temp = gpu.temp_c
            if temp is not None and (g.temp_max is None or temp > g.temp_max):
                g.temp_max = temp
            used = gpu.fb_used_bytes
            if used is not None and (g.mem_max is None or used > g.mem_max):
                g.mem_max = used
            if gpu.fb_total_bytes is not None:
                g.mem_total = gpu.fb_total_bytes
            if gpu.energy_mj is not None:
                if g.energy_first is None:
                    before = self.energy.get((report.cluster, report.node, gpu.uuid))
                    g.energy_first = before if before is not None else gpu.energy_mj
                g.energy_last = gpu.energy_mj
            if gpu.owners:
                for owner in counted(gpu.owners):  # every holder in the interval, ids only
                    held = job_key(owner)
                    if held is not None and held[0] not in g.jobs:
                        g.jobs.append(held[0])
        for event in report.events:
            g = acc.gpus.get(event.gpu_index) if event.gpu_index is not None else None
            if g is None:
                continue
            if event.kind == "xid":
                g.xids += 1
            elif event.kind in ERROR_EVENTS:
                g.errors += 1

    # -- the interval's end (in housekeeping) ----------------------------------------------
    def due(self) -> bool:
        """Whether an interval has passed since the last rollups."""
        return self.interval_s > 0 and time.monotonic() - self._last >= self.interval_s

    def build(self, fleet: Fleet, now_ns: int) -> tuple[list[Rollup], list[tuple[str, str]]]:
        """The rollups of every node in ``fleet``, and the nodes whose rollup must be cleared.

        Synchronous, so no report lands between reading an interval and emptying it.
        """
        rollups: list[Rollup] = []
        for key, state in sorted(fleet.nodes.items()):
            acc = self.nodes.pop(key, None) or NodeAcc()
            gpus = acc.gpus
            if len(gpus) != len(state.gpus):  # known GPUs without a reading: listed, unknown
                for uuid, index in state.gpus.items():
                    gpus.setdefault(index, GpuAcc(uuid))
            rollups.append(Rollup(
                schema=ROLLUP_SCHEMA, cluster=state.cluster, node=state.node, time_ns=now_ns,
                start_ns=self.start_ns, state=fleet.node_state(state, now_ns),
                reports=acc.reports, last_seen_ns=state.last_seen_ns,
                gpus=[self._gpu(key, i, g) for i, g in sorted(gpus.items())],
                jobs=list(dict.fromkeys(j for g in gpus.values() for j in g.jobs)),
            ))  # fmt: skip
        self.nodes.clear()  # reports of nodes no longer in the fleet state
        live = {(r.cluster, r.node) for r in rollups}
        gone = sorted(self.published - live)
        for cluster, node in gone:
            for energy_key in [k for k in self.energy if k[:2] == (cluster, node)]:
                del self.energy[energy_key]
        self.start_ns = now_ns
        self._last = time.monotonic()
        return rollups, gone

    def _gpu(self, key: tuple[str, str], index: int, g: GpuAcc) -> RollupGpu:
        energy = None
        if g.energy_last is not None and g.energy_first is not None:
            # A counter that went back (driver reload, GPU reset) restarted from 0.
            energy = g.energy_last - g.energy_first
            energy = energy if energy >= 0 else g.energy_last
            self.energy[(*key, g.uuid)] = g.energy_last
        return RollupGpu(
            index=index, uuid=g.uuid, health=g.health, samples=g.samples, failed=g.failed,
            util_mean_pct=round(g.util_sum / g.util_n, 1) if g.util_n else None,
            util_max_pct=g.util_max,
            power_mean_w=round(g.power_sum / g.power_n, 1) if g.power_n else None,
            temp_max_c=g.temp_max, mem_used_max_bytes=g.mem_max, mem_total_bytes=g.mem_total,
            energy_mj=energy, xids=g.xids, errors=g.errors, jobs=g.jobs,
        )  # fmt: skip

    async def publish(self, fleet: Fleet, publish: Publish) -> None:
        """Build the interval's rollups and publish them retained; clear the forgotten ones.

        Raises what ``publish`` raises (the broker went away): the interval's figures are
        then lost for the national view, which sees an older rollup with its time.
        """
        rollups, gone = self.build(fleet, time.time_ns())
        out = [(rollup_topic(r.cluster, r.node), encode_json(r)) for r in rollups]
        out += [(rollup_topic(cluster, node), b"") for cluster, node in gone]
        await _all(publish, out)
        self.published = {(r.cluster, r.node) for r in rollups}
        self.count += len(rollups)
        self.bytes += sum(len(payload) for _, payload in out)
        if gone:
            log.info("rollups cleared for %d node(s) no longer held: %s", len(gone),
                     ", ".join(f"{c}/{n}" for c, n in gone[:10]))  # fmt: skip

    async def tick(self, fleet: Fleet, session: MqttSession | None) -> None:
        """The housekeeping hook: publish when an interval has passed and we are connected."""
        if session is None or not self.due():
            return
        try:
            await self.publish(fleet, lambda t, p: session.publish(t, p, retain=True))
        except MqttUnavailable as exc:
            if str(exc) != self._error:
                log.warning("rollups not published: %s", exc)
            self._error = str(exc)
            return
        self._error = ""


async def _all(publish: Publish, messages: Iterable[tuple[str, bytes]]) -> None:
    """Publish with at most CONCURRENT in flight (each waits for its PUBACK)."""
    pending: set[asyncio.Task[None]] = set()
    try:
        for topic, payload in messages:
            if len(pending) >= CONCURRENT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(asyncio.create_task(_call(publish, topic, payload)))
        for task in list(pending):
            await task
    finally:
        for task in pending:
            task.cancel()


async def _call(publish: Publish, topic: str, payload: bytes) -> None:
    await publish(topic, payload)
