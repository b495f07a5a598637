"""``telemetryd agent``: sample on the wall-clock grid, spool, publish, announce presence.

Two named tasks in one TaskGroup:
- the sampler wakes on multiples of the interval (no drift across a fleet), samples, fills
  in the agent's own counters, appends the report to the synced spool and hands it to
  the publisher; a sample that overruns its slot skips the missed ticks and counts them;
- the publisher keeps a session with the broker: on connect it announces ``online`` (the
  Last Will says ``offline``), publishes new reports at once and drains what the spool
  held from before oldest first at a bounded rate, and removes each report from the spool
  only after its PUBACK. On any failure it reconnects with capped, jittered backoff.

With ``[agent.attribution] jobs`` the sampler's report also goes through the job
accountant (telemetryd/jobacct.py) before it is spooled, so a job's ended record is as
durable as the report carrying it; the accounts live in ``<state_dir>/jobs.json``.

A reload (telemetryd/reload.py) swaps the sampler between two samples, retimes the next
tick, and reconnects only when the broker settings changed; the spool, the queue, the
boot id and the seq numbering go on.

Delivery is at least once: a report published just before a crash is sent again, and the
aggregator recognises it by (node, boot, seq).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable

from exporters.mqtt import MqttSession, MqttSettings, MqttUnavailable, Will
from telemetryd import __version__, statedir
from telemetryd.backoff import Backoff
from telemetryd.codec import encode_json
from telemetryd.config import AgentConfig
from telemetryd.connect import mqtt_settings
from telemetryd.jobacct import JobAccountant
from telemetryd.model import (
    SCHEMA_VERSION,
    EventMessage,
    GpuInventory,
    Report,
    Status,
    decode_report,
    encode_report,
)
from telemetryd.reload import AgentReload, Reloader
from telemetryd.sampler import NodeSampler, open_sampler
from telemetryd.sdnotify import Notifier, Supervisor, Watchdog
from telemetryd.service import stopped_within, wait_any
from telemetryd.spool import Entry, Spool, SpoolError, entry_name
from telemetryd.topics import node_topic

log = logging.getLogger(__name__)


MEMORY_REPORTS = 64  # reports held in memory while the disk refuses them


def next_tick(now: float, interval: float) -> float:
    """The next multiple of ``interval`` (seconds since the epoch) strictly after ``now``."""
    tick = (math.floor(now / interval) + 1) * interval
    while tick <= now:  # decimal intervals round: never return ``now`` itself
        tick += interval
    return tick


class _Pending:
    """A report on its way: its spool entry (if it made it to disk) and its bytes."""

    __slots__ = ("entry", "payload")

    def __init__(self, entry: Entry | None, payload: bytes) -> None:
        self.entry = entry
        self.payload = payload


class Agent:
    """The agent service; ``run`` returns after ``stop`` is set and shutdown is done."""

    def __init__(
        self,
        sampler: NodeSampler,
        spool: Spool,
        settings: MqttSettings,
        *,
        interval: float,
        backlog_rate: float,
        clock: Callable[[], float] = time.time,
        accountant: JobAccountant | None = None,
    ) -> None:
        self.sampler = sampler
        self.accountant = accountant
        self.spool = spool
        self.settings = settings
        self.interval = interval
        self.backlog_rate = backlog_rate
        self._clock = clock
        self.cluster, self.node = sampler.cluster, sampler.node
        self.published = 0
        self.sessions = 0
        self.reconnects = 0
        self.overruns = 0
        self.lost_unspooled = 0
        self.mqtt_error = ""  # why the last connection attempt failed, for STATUS=
        self.watchdog = Watchdog(Notifier(None))  # fed by the sample loop
        self.connected = asyncio.Event()
        self._busy = 0  # a sample being taken or a live report being published
        self._live: asyncio.Queue[_Pending] = asyncio.Queue()
        # Reports the disk refused (full, read-only): kept here, bounded, sent first.
        self._memory: deque[_Pending] = deque()
        self._gpus: list[GpuInventory] = []
        self._sampling = asyncio.Lock()  # held while a sample is taken: reload waits for it
        self._retimed = asyncio.Event()  # the interval changed: compute the next tick again
        self._reconnect = asyncio.Event()  # the broker settings changed
        self.settings.will = Will(
            node_topic(self.cluster, self.node, "status"), self._status("offline", "lost")
        )

    # -- presence --------------------------------------------------------------------------
    def _status(self, state: str, reason: str) -> bytes:
        status = Status(
            schema=SCHEMA_VERSION,
            state=state,  # type: ignore[arg-type]
            cluster=self.cluster,
            node=self.node,
            boot_id=self.sampler.boot_id,
            time_ns=time.time_ns(),
            version=__version__,
            interval_s=self.interval,
            reason=reason,  # type: ignore[arg-type]
            gpus=self._gpus,
            absent=dict(self.sampler.absent) or None,
        )
        return encode_json(status)

    # -- sampling --------------------------------------------------------------------------
    async def _sample_loop(self, stop: asyncio.Event) -> None:
        seq = 0
        while not stop.is_set():
            tick = next_tick(self._clock(), self.interval)
            if await wait_any((stop, self._retimed), tick - self._clock()):
                if stop.is_set():
                    return
                self._retimed.clear()
                continue
            self._busy += 1
            work = self.watchdog.enter()
            try:
                async with self._sampling:
                    await self._take(seq)
            finally:
                self._busy -= 1
                self.watchdog.leave(work)
            seq += 1
            late = self._clock() - tick
            if late > self.interval:
                missed = int(late // self.interval)
                self.overruns += missed
                log.warning("sample took %.1fs: skipped %d tick(s)", late, missed)

    async def _take(self, seq: int) -> None:
        """One report: sample, account, spool (under the lock a reload waits for)."""
        report = await self.sampler.sample(seq)
        self._stamp(report)
        accountant = self.accountant
        if accountant is not None:
            await self._account(accountant, report)
        if not self._gpus and report.gpus:
            self._gpus = [
                GpuInventory(index=g.index, uuid=g.uuid, name=g.name, pci_bus_id=g.pci_bus_id)
                for g in report.gpus
            ]
        await self._spool(report)
        if accountant is not None and report.jobs:
            await asyncio.to_thread(accountant.spooled)

    async def _account(self, accountant: JobAccountant, report: Report) -> None:
        """Job records into the report (off the loop: it saves its state file).

        A bug in the accounting must not cost the report: it goes out without job records.
        """
        try:
            await asyncio.to_thread(accountant.update, report)
        except Exception:
            log.exception("job accounting failed; report %d goes out without jobs", report.seq)
            report.jobs = []

    def _stamp(self, report: Report) -> None:
        report.interval_s = self.interval  # the sampler's may predate a reload
        stats = report.agent
        stats.spool_reports = len(self.spool)
        stats.spool_bytes = self.spool.bytes
        stats.published = self.published
        stats.dropped = self.spool.dropped + self.lost_unspooled
        stats.reconnects = self.reconnects
        stats.overruns = self.overruns
        stats.spool_errors = self.spool.errors

    async def _spool(self, report: Report) -> None:
        payload = encode_report(report)
        name = entry_name(report.time_ns, report.boot_id, report.seq)
        try:
            entry: Entry | None = await asyncio.to_thread(self.spool.append, name, payload)
        except SpoolError as exc:
            log.error("%s: report %d is kept in memory only", exc, report.seq)
            entry = None
        pending = _Pending(entry, payload)
        if self.connected.is_set():
            self._live.put_nowait(pending)
        elif entry is None:
            self._keep_in_memory(pending)

    def _keep_in_memory(self, pending: _Pending) -> None:
        """Hold a report that is not on disk; beyond the bound the oldest goes, counted."""
        if len(self._memory) >= MEMORY_REPORTS:
            self._memory.popleft()
            self.lost_unspooled += 1
        self._memory.append(pending)

    # -- publishing ------------------------------------------------------------------------
    async def _publish(self, session: MqttSession, pending: _Pending) -> None:
        payload = pending.payload
        if b'"events":[' in payload:
            report = decode_report(payload)
            for event in report.events:
                message = EventMessage(schema=SCHEMA_VERSION, cluster=report.cluster,
                                       node=report.node, boot_id=report.boot_id,
                                       seq=report.seq, event=event)  # fmt: skip
                await session.publish(
                    node_topic(self.cluster, self.node, "event"), encode_json(message)
                )
        await session.publish(node_topic(self.cluster, self.node, "report"), payload)
        self.published += 1
        if pending.entry is not None:
            await asyncio.to_thread(self.spool.remove, pending.entry)

    async def _live_loop(self, session: MqttSession) -> None:
        while True:
            pending = await self._live.get()
            self._busy += 1
            try:
                await self._publish(session, pending)
            except BaseException:  # the connection dropped, or we were cancelled because of it
                if pending.entry is None:  # not on disk: it waits in memory instead
                    self._keep_in_memory(pending)
                raise
            finally:
                self._busy -= 1

    async def _backlog_loop(self, session: MqttSession, backlog: list[Entry]) -> None:
        while self._memory:
            pending = self._memory.popleft()
            try:
                await self._publish(session, pending)
            except BaseException:  # failed or cancelled: it is not lost, it waits again
                self._memory.appendleft(pending)
                raise
        if backlog:
            log.info("draining %d spooled report(s) at %g/s", len(backlog), self.backlog_rate)
        gap = 1.0 / self.backlog_rate
        for entry in backlog:
            if entry not in self.spool:
                continue  # dropped over the bounds, or sent meanwhile
            payload = await asyncio.to_thread(self.spool.read, entry)
            if payload is None:
                continue
            started = time.monotonic()
            await self._publish(session, _Pending(entry, payload))
            await asyncio.sleep(max(0.0, gap - (time.monotonic() - started)))

    async def _session(self, stop: asyncio.Event, backoff: Backoff) -> None:
        self._reconnect.clear()
        async with MqttSession(self.settings) as session:
            backoff.reset()
            self.sessions += 1
            self.reconnects = self.sessions - 1
            status = node_topic(self.cluster, self.node, "status")
            await session.publish(status, self._status("online", "connected"), retain=True)
            # Everything not yet acknowledged is backlog now; what is sampled from here on
            # is live and goes first. Reports that are only in memory wait there.
            while not self._live.empty():
                pending = self._live.get_nowait()
                if pending.entry is None:
                    self._keep_in_memory(pending)
            self.connected.set()
            backlog = self.spool.entries()
            try:
                async with asyncio.TaskGroup() as group:
                    live = group.create_task(self._live_loop(session), name="agent.live")
                    drain = group.create_task(self._backlog_loop(session, backlog),
                                              name="agent.backlog")  # fmt: skip
                    await wait_any((stop, self._reconnect), None)
                    drain.cancel()
                    await self._flush_live(live)
                # Moving to another broker: the old one must not keep saying "online".
                if stop.is_set() or session.settings.broker != self.settings.broker:
                    await session.publish(status, self._status("offline", "shutdown"), retain=True)
            finally:
                self.connected.clear()

    async def _flush_live(self, live: asyncio.Task[None], deadline_s: float = 2.0) -> None:
        """At shutdown, give reports already sampled a moment to reach the broker."""
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_s
        while self._busy or not self._live.empty():
            if live.done() or loop.time() >= until:
                break
            await asyncio.sleep(0.05)
        live.cancel()

    async def _mqtt_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(cap=self.settings.reconnect_max)
        while not stop.is_set():
            message = ""
            try:
                await self._session(stop, backoff)
            except* MqttUnavailable as group:
                message = str(group.exceptions[0])
            if not message:
                continue  # stopped (the loop ends), or the broker settings changed
            self.mqtt_error = message
            delay = backoff.next()
            log.warning("MQTT: %s; retrying in %.1fs", message, delay)
            if await stopped_within(stop, delay):
                return

    def status_line(self) -> str:
        """What systemd shows as the agent's STATUS=."""
        counts = f"{self.published} reports, spool {len(self.spool)}"
        if self.connected.is_set():
            return f"connected to {self.settings.broker}; {counts}"
        why = f": {self.mqtt_error}" if self.mqtt_error else ""
        return f"connecting to {self.settings.broker}{why}; {counts}"

    # -- reload ----------------------------------------------------------------------------
    async def reload(
        self,
        *,
        sampler: NodeSampler | None,
        settings: MqttSettings | None,
        interval: float,
        backlog_rate: float,
        accountant: JobAccountant | None,
    ) -> None:
        """Apply a new configuration between two samples (telemetryd/reload.py builds it).

        ``sampler`` (when the sources changed) replaces the old one, which is closed, and
        takes over its boot id so the seq numbering goes on; ``settings`` (when the broker
        settings changed) make the publisher reconnect with them. Nothing queued is lost.
        """
        async with self._sampling:
            if sampler is not None:
                sampler.boot_id = self.sampler.boot_id
                old, self.sampler = self.sampler, sampler
                await asyncio.to_thread(old.close)
            self.accountant = accountant
        if interval != self.interval:
            self.interval = interval
            self._retimed.set()
        self.backlog_rate = backlog_rate
        if settings is not None:
            settings.will = self.settings.will
            self.settings = settings
            self._reconnect.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Sample and publish until ``stop``; then announce offline and return."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._sample_loop(stop), name="agent.sample")
            group.create_task(self._mqtt_loop(stop), name="agent.mqtt")


async def serve(
    cfg: AgentConfig,
    stop: asyncio.Event,
    *,
    publish_timeout: float | None = None,
    reloader: Reloader[AgentConfig] | None = None,
) -> None:
    """The whole agent: state directory, sources, spool, MQTT; returns after ``stop``.

    ``reloader`` (SIGHUP under ``telemetryd agent``) re-reads the configuration on request.

    ``publish_timeout`` replaces the usual wait for a PUBACK (MqttSettings.timeout): the
    demo's stalled link (demo_link.py) holds an agent's reports longer than that, and the
    agent must wait them out on the same connection instead of reconnecting.
    """
    directory = statedir.resolve(cfg.state_dir)
    lock = statedir.StateLock(directory, "agent")
    lock.acquire()
    sampler = open_sampler(cfg)
    agent: Agent | None = None
    try:
        spool = Spool(directory / "spool", max_bytes=cfg.spool_max_bytes,
                      max_age_s=cfg.spool_max_age)  # fmt: skip
        await asyncio.to_thread(spool.open)
        client_id = f"telemetryd-agent-{sampler.cluster}-{sampler.node}"

        def make_settings(cfg: AgentConfig) -> MqttSettings:
            settings = mqtt_settings(cfg, client_id=client_id)
            if publish_timeout is not None:
                settings.timeout = publish_timeout
            return settings

        settings = make_settings(cfg)
        accountant = JobAccountant(directory / "jobs.json") if cfg.attribution.jobs else None
        agent = Agent(sampler, spool, settings, interval=cfg.interval,
                      backlog_rate=cfg.backlog_rate, accountant=accountant)  # fmt: skip
        log.info(
            "agent %s/%s: %d GPU source(s), every %gs to %s, spool %s",
            sampler.cluster, sampler.node, 1 if sampler.gpu else 0, cfg.interval,
            settings.broker, spool.directory,
        )  # fmt: skip
        notify = Supervisor.from_env(ready=agent.connected.is_set, status=agent.status_line)
        agent.watchdog = notify.watchdog
        notify.start(stop)
        try:
            async with asyncio.TaskGroup() as group:
                if reloader is not None:
                    reloader.on_start, reloader.on_done = notify.reloading, notify.reloaded
                    apply = AgentReload(agent, cfg, directory, make_settings)
                    group.create_task(reloader.run(stop, apply), name="agent.reload")
                await agent.run(stop)
        finally:
            notify.close()
    finally:
        (agent.sampler if agent is not None else sampler).close()  # a reload may replace it
        lock.release()
