"""``telemetryd aggregator``: consume, validate, make durable, acknowledge, fan out.

The order of one batch is what makes "nothing lost" true:
1. take what the broker has delivered (up to ``batch_size``; never waiting to fill a
   batch, so a quiet system syncs each message at once and a busy one batches itself);
2. validate each message; refused ones go to the dead-letter file with their reason;
   duplicates (node, boot, seq already accepted) are only counted;
3. append the new reports to the write-ahead log and sync it, sync the dead letters;
4. only now mark them accepted, update the fleet, hand them to the sinks,
5. and acknowledge the whole batch to the broker, in arrival order.
A crash before 5 means the broker sends the batch again; what step 3 already wrote is
then recognised as duplicate. When the WAL is full (a sink down for long), step 3 waits
and nothing is acknowledged: the broker holds the rest, bounded by its own queue limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporters.base import Sink
from exporters.mqtt import Message, MqttSession, MqttSettings, MqttUnavailable
from telemetryd import registry, statedir
from telemetryd.backoff import Backoff
from telemetryd.codec import encode_json
from telemetryd.config import AggregatorConfig
from telemetryd.connect import mqtt_settings
from telemetryd.deadletter import DeadLetters
from telemetryd.durable import replace_file
from telemetryd.errors import ConfigError
from telemetryd.fleet import Fleet, dumps
from telemetryd.ingest import Limits
from telemetryd.intake import sort_batch
from telemetryd.jobs import JobTable
from telemetryd.model import EventMessage, Report, Status
from telemetryd.names import sanitize_hostname
from telemetryd.reload import Reloader, reload_aggregator
from telemetryd.rollup import Rollups
from telemetryd.sdnotify import Notifier, Supervisor, Watchdog
from telemetryd.service import stopped_within
from telemetryd.shard import Shard, forward
from telemetryd.sinkrunner import Feed, SinkRunners
from telemetryd.topics import fleet_event_topic, fleet_part_topic, fleet_topic, subscriptions
from telemetryd.urls import UrlError, parse_sink_url
from telemetryd.wal import Wal, WalError

if TYPE_CHECKING:
    from exporters.prometheus import FleetCollector
    from telemetryd.alerting.expr import Value
    from telemetryd.alerting.panel import Panel
    from telemetryd.alerting.service import AlertService

log = logging.getLogger(__name__)

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"


class Aggregator:
    """The aggregator service; ``run`` returns after ``stop`` once everything is flushed."""

    def __init__(
        self,
        cfg: AggregatorConfig,
        *,
        wal: Wal,
        fleet: Fleet,
        deadletters: DeadLetters,
        sinks: list[tuple[str, Sink]],
        settings: MqttSettings,
        directory: Path,
    ) -> None:
        self.cfg = cfg
        self.wal = wal
        self.fleet = fleet
        self.deadletters = deadletters
        self.settings = settings
        self.feed = Feed(wal, keep=max(2048, 2 * cfg.batch_size))
        self.runners = SinkRunners(self.feed, deadletters, batch_size=cfg.batch_size,
                                   retry_max=cfg.sink_retry_max)  # fmt: skip
        for _url, sink in sinks:
            self.runners.add(sink)
        self.limits = Limits(cfg.max_payload_bytes, cfg.max_clock_skew, cfg.max_report_age)
        self.shard = Shard.from_config(cfg)  # None when alone; else which nodes are ours
        self.snapshot_path = directory / "fleet-state.json"
        self.snapshot_index = wal.first_index
        # Never hand out an index a reader already went past (see Wal.advance_to).
        wal.advance_to(max([r.cursor for r in self.runners] + [self._saved_snapshot_index()]))
        self.events = 0
        self.connected = asyncio.Event()
        self.mqtt_error = ""  # why the last connection attempt failed, for /readyz
        self.metrics: FleetCollector | None = None  # fed each new report when /metrics is served
        self.alerts: AlertService | None = None  # the alert engine, unless turned off
        self.jobs = JobTable()  # running and recently ended jobs, joined across nodes
        self.rollups = Rollups(cfg.rollup_interval)  # per-node summaries for federation
        self._session: MqttSession | None = None
        self._commit_lock = asyncio.Lock()
        self._summary_error = ""
        self._events_out: list[EventMessage] = []  # fleet events not yet published
        self.watchdog = Watchdog(Notifier(None))  # fed by the consumer and housekeeping
        self._status_mark = (time.monotonic(), 0)  # (when, accepted) at the last STATUS=

    def _saved_snapshot_index(self) -> int:
        try:
            return int(json.loads(self.snapshot_path.read_bytes())["index"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    # -- start-up: what was accepted before ------------------------------------------------
    def recover(self) -> None:
        """Load the last fleet snapshot and replay the WAL records written after it."""
        from telemetryd.recovery import recover

        recover(self)

    # -- one batch -------------------------------------------------------------------------
    async def _commit(
        self, session: MqttSession, batch: list[Message], stop: asyncio.Event
    ) -> None:
        now = time.time_ns()
        got = sort_batch(batch, fleet=self.fleet, limits=self.limits,
                         deadletters=self.deadletters, shard=self.shard, now=now)  # fmt: skip
        for message in got.counters:
            self._broker_counter(message)
        self.events += got.events
        if got.requests:
            await self._silence_requests(got.requests, now)
        # Shielded: once the WAL write starts, the bookkeeping that follows it must happen
        # even if the connection drops (which cancels us) - or the feed would skip records.
        durable = self._make_durable(got.payloads, got.stored, got.statuses, now, stop, got.fed)
        done = await asyncio.shield(durable)
        if done is None:
            return  # stopping with the batch unwritten: unacknowledged, sent again
        if got.forwards:  # other members' nodes: acknowledged once their owner has them
            with session.urgent():  # this task drains the queue: its publishes read on
                await forward(session, got.forwards)
        for message in batch:
            session.ack(message)
        # Fleet events and retained alert state go out from housekeeping, not here: the
        # consumer must not wait on thousands of PUBACKs when a site-wide event changes
        # as many alerts (notifications do not wait: the dispatcher has them already).
        self._events_out += done

    async def _make_durable(
        self,
        payloads: list[bytes],
        reports: list[Report],
        statuses: list[Status],
        now: int,
        stop: asyncio.Event,
        fed: list[Report] | None = None,
    ) -> list[EventMessage] | None:
        """WAL, dead letters, then the fleet: the part of a commit that must not be cut.

        ``fed`` (default: ``reports``) is what updates the live state; in a group of
        aggregators it differs from what is stored (intake.py).
        """
        # Room first, outside the lock: housekeeping needs the lock to save the snapshot,
        # and only after that may it release WAL segments. Waiting for room inside the
        # lock stalled a full WAL for good, even with the sinks caught up (seen at 10,000
        # nodes, bench/fleet_run.py).
        if payloads and not await self._room(stop):
            return None
        async with self._commit_lock:
            if payloads and not await self._append(payloads, reports, stop):
                return None
            if not await self._flush_deadletters(stop):
                return None
            fleet_events: list[EventMessage] = []
            for report in reports if fed is None else fed:
                self.fleet.claim(report)
                events = self.fleet.on_report(report, now)
                self.jobs.observe(report)
                self.rollups.observe(report)
                fleet_events += events
                if self.metrics is not None:
                    self.metrics.observe(report, now)
                if self.alerts is not None:
                    self.alerts.on_report(report, now)
                    self.alerts.on_fleet_events(events)
            for status in statuses:
                self.fleet.on_status(status, now)
                if self.alerts is not None:
                    self.alerts.on_status(status, now)
            return fleet_events

    async def _room(self, stop: asyncio.Event) -> bool:
        """Wait while the WAL is full (False: stopped meanwhile); nothing is acknowledged."""
        warned = False
        while self.wal.full():
            if not warned:
                log.warning("WAL full (%d bytes): not acknowledging until the sinks catch up",
                            self.wal.bytes)  # fmt: skip
                warned = True
            self.watchdog.beat()  # waiting for the sinks is not being stuck
            if await stopped_within(stop, 0.5):
                return False
        if warned:
            log.info("WAL has room again (%d bytes): acknowledging", self.wal.bytes)
        return True

    async def _append(
        self, payloads: list[bytes], reports: list[Report], stop: asyncio.Event
    ) -> bool:
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                first = await asyncio.to_thread(self.wal.append, payloads)
            except WalError as exc:
                log.error("%s; holding %d report(s), not acknowledged", exc, len(payloads))
                self.watchdog.beat()
                if await stopped_within(stop, backoff.next()):
                    return False
                continue
            self.feed.committed(first, reports)
            return True

    async def _flush_deadletters(self, stop: asyncio.Event) -> bool:
        """Sync the dead letters; a disk that refuses holds the batch, like the WAL does."""
        if not self.deadletters.pending:
            return True  # the common case: no thread hop for nothing
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                await asyncio.to_thread(self.deadletters.flush)
            except OSError as exc:
                log.error("cannot write dead letters to %s (%s); holding the batch",
                          self.deadletters.path, exc.strerror or exc)  # fmt: skip
                self.watchdog.beat()
                if await stopped_within(stop, backoff.next()):
                    return False
                continue
            return True

    def _panel(self) -> Panel | None:
        return self.alerts.panel if self.alerts is not None else None

    async def _silence_requests(self, requests: list[Message], now: int) -> None:
        """Applied before they are acknowledged; refused ones join the dead letters."""
        from telemetryd.alerting.panel import apply_request

        for message in requests:
            refused = await apply_request(self._panel(), message.topic, message.payload)
            if refused is not None:
                self.deadletters.add(message.topic, refused.reason, refused.detail,
                                     message.payload, now)  # fmt: skip

    def _broker_counter(self, message: Message) -> None:
        if message.topic == SYS_DROPPED:
            with contextlib.suppress(ValueError):
                self.fleet.broker_dropped = int(message.payload)

    # -- the MQTT side ---------------------------------------------------------------------
    async def _consume(self, session: MqttSession, stop: asyncio.Event) -> None:
        # Bounded: when it is full the session stops reading the socket (max_pending), so
        # memory stays bounded whatever the broker sends.
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=2 * self.cfg.batch_size)

        async def receive() -> None:
            async for message in session.messages():
                await queue.put(message)

        async with asyncio.TaskGroup() as group:
            receiver = group.create_task(receive(), name="aggregator.receive")
            while not stop.is_set():
                getter = asyncio.ensure_future(queue.get())
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait(
                    {getter, stopping, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                stopping.cancel()
                if getter not in done:
                    getter.cancel()
                    break
                batch = [getter.result()]
                while len(batch) < self.cfg.batch_size and not queue.empty():
                    batch.append(queue.get_nowait())
                work = self.watchdog.enter()
                try:
                    await self._commit(session, batch, stop)
                finally:
                    self.watchdog.leave(work)
            receiver.cancel()

    async def _mqtt_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(cap=self.settings.reconnect_max)
        filters = subscriptions(self.cfg.clusters, self.cfg.shared_group)
        filters += [self.shard.filter()] if self.shard is not None else []
        while not stop.is_set():
            failure = ""
            try:
                async with MqttSession(self.settings) as session:
                    # The data filters last: their retained QoS 1 messages are acknowledged
                    # only once consuming starts, and amqtt answers no further SUBSCRIBE
                    # until they are (a 5 s stall per restart against `telemetryd broker`).
                    await session.subscribe([SYS_DROPPED], qos=0)
                    panel = self._panel()
                    extra = await panel.subscribe(session, self.cfg.clusters) if panel else []
                    await session.subscribe(filters)
                    backoff.reset()
                    self._session = session
                    self.mqtt_error = ""
                    self.connected.set()
                    if self.alerts is not None:
                        self.alerts.republish()  # a broker without persistence forgot them
                        await self.alerts.publish(session)
                    log.info("consuming %s from %s", ", ".join(filters + extra),
                             self.settings.broker)  # fmt: skip
                    await self._consume(session, stop)
            except* MqttUnavailable as group:
                failure = str(group.exceptions[0])
            finally:
                self._session = None
                self.connected.clear()
            if failure:
                self.mqtt_error = failure
                delay = backoff.next()
                log.warning("MQTT: %s; retrying in %.1fs", failure, delay)
                if await stopped_within(stop, delay):
                    return

    def alert_inputs(self) -> dict[str, Value]:
        """The aggregator's own health, for rules of the ``aggregator`` scope."""
        states = [r.report() for r in self.runners]
        return {
            "mqtt_connected": self.connected.is_set(),
            "broker_dropped": self.fleet.broker_dropped,
            "wal_bytes": self.wal.bytes,
            "sink_lag_bytes": max((s.lag_bytes for s in states), default=0),
            "sinks_retrying": sum(1 for s in states if s.state == "retrying"),
            "deadletters": sum(self.deadletters.counts.values()),
        }

    # -- housekeeping ----------------------------------------------------------------------
    async def _save_snapshot(self) -> None:
        async with self._commit_lock:
            data: dict[str, Any] = {"index": self.wal.next_index, "fleet": self.fleet.snapshot()}
            self.jobs.prune(time.time_ns())
            data["jobs"] = self.jobs.snapshot()
            if self.alerts is not None:
                data["alerts"] = self.alerts.snapshot()
        await asyncio.to_thread(replace_file, self.snapshot_path, dumps(data))
        self.snapshot_index = int(data["index"])

    async def _publish_summaries(self) -> None:
        session = self._session
        if session is None:
            return
        states = [r.report() for r in self.runners]
        for cluster in self.fleet.clusters():
            summary = self.fleet.summary(cluster, rejected=dict(self.deadletters.counts),
                                         wal_bytes=self.wal.bytes, sinks=states)  # fmt: skip
            shard = self.shard  # a group member publishes its part; viewers merge them
            topic = fleet_part_topic(cluster, shard.member) if shard else fleet_topic(cluster)
            try:
                await session.publish(topic, encode_json(summary), retain=True)
            except MqttUnavailable as exc:
                if str(exc) != self._summary_error:
                    log.warning("fleet summary not published: %s", exc)
                    self._summary_error = str(exc)
                return
            self._summary_error = ""

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Snapshot and WAL release, every half second; never waits on the broker.

        Apart from the publishing loop: a publish can wait seconds for its PUBACK while
        the consumer, blocked on a full WAL, reads nothing - and only this loop frees
        the WAL. A full WAL is snapshotted at once instead of at the next 5 s mark.
        """
        last_snapshot = time.monotonic()
        while not await stopped_within(stop, 0.5):
            work = self.watchdog.enter()
            now = time.monotonic()
            if now - last_snapshot >= 5.0 or self.wal.full():
                await self._save_snapshot()
                last_snapshot = now
            upto = min([r.saved for r in self.runners] + [self.snapshot_index])
            await asyncio.to_thread(self.wal.release, upto)
            self.watchdog.leave(work)

    async def _publishing(self, stop: asyncio.Event) -> None:
        """Fleet summaries, rollups, fleet events and alert state, every half second."""
        last_summary = 0.0
        while not await stopped_within(stop, 0.5):
            work = self.watchdog.enter()
            now = time.monotonic()
            if now - last_summary >= self.cfg.fleet_interval:
                await self._publish_summaries()
                last_summary = now
            await self.rollups.tick(self.fleet, self._session)
            session = self._session
            if session is not None:
                # Fleet events and alert changes of the commits (and of the 1 s tick: a
                # node gone silent).
                with contextlib.suppress(MqttUnavailable):
                    await self._publish_events(session)
                    if self.alerts is not None:
                        await self.alerts.publish(session)
            self.watchdog.leave(work)

    async def _publish_events(self, session: MqttSession) -> None:
        """The fleet events of the commits since the last call; unsent ones are kept."""
        while self._events_out:
            event = self._events_out[0]
            await session.publish(fleet_event_topic(event.cluster), encode_json(event))
            self._events_out.pop(0)

    def status_line(self) -> str:
        """What systemd shows as the aggregator's STATUS=."""
        if self.connected.is_set():
            where = f"consuming from {self.settings.broker}"
        else:
            why = f": {self.mqtt_error}" if self.mqtt_error else ""
            where = f"connecting to {self.settings.broker}{why}"
        now, accepted = time.monotonic(), self.fleet.accepted
        (since, before), self._status_mark = self._status_mark, (now, accepted)
        rate = (accepted - before) / max(now - since, 1e-3)  # since the previous status
        states = [r.report() for r in self.runners]
        sinks = ", ".join(f"{s.name} {s.state} lag {s.lag}" for s in states)
        firing = len(self.alerts.engine.firing()) if self.alerts is not None else 0
        return (f"{where}; {rate:.1f} reports/s, {accepted} accepted, {self.fleet.duplicates} "
                f"duplicate; sinks: {sinks}; {firing} alert(s) firing")  # fmt: skip

    def ready(self) -> bool:
        """Connected, and every sink opened (systemd's READY=1 waits for this)."""
        return self.connected.is_set() and all(r.state.state == "ok" for r in self.runners)

    async def _consume_until(self, stop: asyncio.Event, consumed: asyncio.Event) -> None:
        try:
            await self._mqtt_loop(stop)
        finally:
            consumed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``; then let the sinks catch up briefly and save state."""
        # The sinks stop once the consumer has: a batch committed after ``stop`` is written too.
        consumed = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                self.runners.start(group, consumed)
                group.create_task(self._consume_until(stop, consumed), name="aggregator.mqtt")
                group.create_task(self._housekeeping(stop), name="aggregator.housekeeping")
                group.create_task(self._publishing(stop), name="aggregator.publishing")
                if self.alerts is not None:
                    group.create_task(self.alerts.run(stop, self.alert_inputs), name="alerts")
        finally:
            await self._save_snapshot()
            self.wal.close()


def make_sink(url: str, cfg: AggregatorConfig) -> Sink:
    """Build a sink from its URL; a bad option is a configuration error, said in one line."""
    try:
        parsed = parse_sink_url(url)
        return registry.sink_factory(parsed.kind)(parsed, cfg)
    except (UrlError, KeyError) as exc:
        raise ConfigError([f"aggregator.sinks: {exc}"]) from None


async def serve(
    cfg: AggregatorConfig,
    stop: asyncio.Event,
    *,
    reloader: Reloader[AggregatorConfig] | None = None,
) -> None:
    """The whole aggregator: state directory, WAL, sinks, MQTT; returns after ``stop``.

    ``reloader`` (SIGHUP under ``telemetryd aggregator``) re-reads the configuration.
    """
    directory = statedir.resolve(cfg.state_dir)
    lock = statedir.StateLock(directory, "aggregator")
    lock.acquire()
    try:
        wal = Wal(directory / "wal", max_bytes=cfg.wal_max_bytes)
        await asyncio.to_thread(wal.open)
        urls = cfg.sinks or [f"sqlite://{directory / 'telemetry.db'}"]
        sinks = [(url, make_sink(url, cfg)) for url in urls]
        host = sanitize_hostname(socket.gethostname())
        shard = Shard.from_config(cfg)
        name = shard.name(host) if shard is not None else host  # members never share one
        settings = mqtt_settings(
            cfg,
            client_id=f"telemetryd-aggregator-{name}",
            persistent=True,
            session_expiry=cfg.session_expiry,
            receive_maximum=min(65535, 2 * cfg.batch_size),
            max_pending=cfg.batch_size,
        )
        aggregator = Aggregator(
            cfg,
            wal=wal,
            fleet=Fleet(silent_after=cfg.silent_after, name=name),
            deadletters=DeadLetters(
                directory / "deadletter.jsonl", max_bytes=cfg.deadletter_max_bytes
            ),
            sinks=sinks,
            settings=settings,
            directory=directory,
        )
        if cfg.alerts.enabled:
            from telemetryd.alerting.service import open_alerts

            aggregator.alerts = open_alerts(cfg.alerts, aggregator.fleet, directory, name=name)
            if shard is not None and aggregator.alerts.panel is not None:
                aggregator.alerts.panel.part = shard.member  # _pending/part/<member>
            aggregator.alerts.engine.jobs = aggregator.jobs
        api = None
        if cfg.listen:
            from telemetryd.httpapi import HttpApi

            api = HttpApi(aggregator, cfg.listen)
        notify = Supervisor.from_env(ready=aggregator.ready, status=aggregator.status_line)
        aggregator.watchdog = notify.watchdog
        notify.start(stop)  # from here: the watchdog is fed during the replay (in a thread)
        try:
            if api is not None:
                await api.start()  # before the replay, so a busy address is said at once
            await asyncio.to_thread(aggregator.recover)
            aggregator.metrics = api.ready() if api is not None else None
            log.info("aggregator: sinks %s, WAL %s", ", ".join(urls), wal.directory)
            async with asyncio.TaskGroup() as group:
                if reloader is not None:
                    reloader.on_start, reloader.on_done = notify.reloading, notify.reloaded
                    apply = functools.partial(reload_aggregator, aggregator)
                    group.create_task(reloader.run(stop, apply), name="aggregator.reload")
                await aggregator.run(stop)
        finally:
            notify.close()
            wal.close()  # run() closes it too; this covers a failed start
            if api is not None:
                await api.stop()
    finally:
        lock.release()
