"""What the headless demo prints: alerts as they fire and resolve, then a summary and a verdict.

The demo watches its own system the way an operator's tools do, from the broker: the
aggregator's retained ``_alerts/<fingerprint>`` topics (the alert while it fires, an empty
payload once it resolved) and its retained ``_fleet`` summary. ``AlertLog`` turns those
messages into episodes (pure, no I/O, so the verdict is unit-tested); ``observe`` feeds it
from an MQTT session; ``summary`` renders the end: each alert the scenario must cause, when
it fired and resolved (or MISSING), what else fired, the fleet, and whether the run passed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from exporters.mqtt import Message, MqttSession, MqttSettings, MqttUnavailable
from telemetryd.alerting.wire import decode_alert
from telemetryd.backoff import Backoff
from telemetryd.codec import DecodeError
from telemetryd.fleetparts import merge_fleet
from telemetryd.model import FleetSummary, decode_fleet_summary
from telemetryd.service import stopped_within
from telemetryd.topics import ROOT, fleet_part_topic, fleet_topic, part_member

log = logging.getLogger(__name__)

TIME_UP = "time is up"
STALE_S = 2.0  # an alert that fired this long before the run began is left from an earlier one


@dataclass(frozen=True, slots=True)
class Expected:
    """An alert the scenario must fire and resolve: rule name, node and GPU (if any)."""

    name: str
    node: str
    gpu: str | None = None

    def label(self) -> str:
        """``GpuFellOffBus sim-01 gpu 5``."""
        return f"{self.name} {self.node}" + (f" gpu {self.gpu}" if self.gpu is not None else "")


@dataclass(slots=True)
class Episode:
    """One alert from firing to resolved (``resolved_at`` None while it fires)."""

    fingerprint: str
    name: str
    severity: str
    node: str
    gpu: str | None
    summary: str
    fired_at: float  # seconds since the scenario began
    resolved_at: float | None = None

    def label(self) -> str:
        """Name, node and GPU, as Expected.label writes them."""
        return Expected(self.name, self.node, self.gpu).label()

    def matches(self, expected: Expected) -> bool:
        """Whether this is the alert ``expected`` describes."""
        return (self.name, self.node, self.gpu) == (expected.name, expected.node, expected.gpu)


class AlertLog:
    """Alert episodes from the retained alert topics, in the order they happened."""

    def __init__(self, cluster: str, start_ns: int) -> None:
        self.prefix = f"{ROOT}/{cluster}/_alerts/"
        self.start_ns = start_ns  # wall clock when the scenario began
        self.episodes: list[Episode] = []
        self.firing: dict[str, Episode] = {}
        self.stale: list[str] = []  # topics of alerts left retained by an earlier run
        self.undecodable = 0

    def feed(self, topic: str, payload: bytes, at: float) -> tuple[str, Episode] | None:
        """Take one message of an alert topic; ("firing"|"resolved", episode) if news."""
        if not topic.startswith(self.prefix):
            return None
        fingerprint = topic[len(self.prefix) :]
        if not payload:
            episode = self.firing.pop(fingerprint, None)
            if episode is None:
                return None  # a clear of something we never saw fire
            episode.resolved_at = at
            return "resolved", episode
        try:
            alert = decode_alert(payload)
        except DecodeError as exc:
            self.undecodable += 1
            log.warning("demo: undecodable alert on %s: %s", topic, exc)
            return None
        if alert.status != "firing" or fingerprint in self.firing:
            return None  # an update of a firing alert (its value moved): not news
        if alert.fired_ns and alert.fired_ns < self.start_ns - STALE_S * 1e9:
            self.stale.append(topic)
            return None
        labels = alert.labels
        episode = Episode(
            fingerprint=fingerprint,
            name=alert.name,
            severity=alert.severity,
            node=labels.get("node", "-"),
            gpu=labels.get("gpu"),
            summary=alert.annotations.get("summary", ""),
            fired_at=at,
        )
        self.firing[fingerprint] = episode
        self.episodes.append(episode)
        return "firing", episode


def event_line(kind: str, episode: Episode, at: float) -> str:
    """``+12.3s FIRING   critical GpuFellOffBus sim-01 gpu 5: <summary>``, or its resolve."""
    head = f"{at:+7.1f}s {kind.upper():<8} {episode.severity:<8} {episode.label()}"
    if kind == "resolved":
        return f"{head} (fired for {at - episode.fired_at:.1f} s)"
    return f"{head}: {episode.summary}" if episode.summary else head


@dataclass(frozen=True, slots=True)
class Verdict:
    """The summary's lines and whether every expected alert fired and resolved."""

    lines: list[str]
    passed: bool


def _when(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}s"


def summary(
    alerts: AlertLog, expected: list[Expected], fleet: FleetSummary | None, *, ended: str
) -> Verdict:
    """The final report; ``ended``: why the run stopped (TIME_UP, or "interrupted", "quit").

    Only a run that lasted its whole duration can fail: one stopped early says how far it got.
    """
    width = max([len(e.label()) for e in expected] + [len("expected alert")]) + 2
    lines = [f"summary ({ended}):", f"  {'expected alert':<{width}}{'fired':>9}{'resolved':>10}"]
    done = 0
    for want in expected:
        mine = [e for e in alerts.episodes if e.matches(want)]
        fired = mine[0].fired_at if mine else None
        still = any(e.resolved_at is None for e in mine)
        resolved = None if still or not mine else mine[-1].resolved_at
        status = "ok" if fired is not None and resolved is not None else "MISSING"
        if fired is not None and resolved is None:
            status = "STILL FIRING"
        done += status == "ok"
        lines.append(f"  {want.label():<{width}}{_when(fired):>9}{_when(resolved):>10}  {status}")
    others = [e for e in alerts.episodes if not any(e.matches(w) for w in expected)]
    if others:
        lines.append("  also fired:")
        lines += [
            f"    {e.severity:<8} {e.label()} {_when(e.fired_at)}"
            + (f" .. {_when(e.resolved_at)}" if e.resolved_at is not None else ", still firing")
            for e in others
        ]
    lines.append(f"  fleet: {_fleet(fleet)}")
    passed = done == len(expected)
    if passed:
        lines.append("  verdict: PASS, every expected alert fired and resolved")
    elif ended != TIME_UP:
        lines.append(f"  verdict: none, {ended} ({done} of {len(expected)} expected "
                     "alerts fired and resolved so far)")  # fmt: skip
    else:
        lines.append("  verdict: FAIL, an expected alert did not fire, or did not resolve")
    return Verdict(lines, passed)


def _fleet(fleet: FleetSummary | None) -> str:
    if fleet is None:
        return "no summary from the aggregator"
    states: dict[str, int] = {}
    for node in fleet.nodes:
        states[node.state] = states.get(node.state, 0) + 1
    words = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    gpus = sum(node.gpus for node in fleet.nodes)
    rejected = sum(fleet.rejected.values())
    missing = sum(node.missing for node in fleet.nodes)
    return (
        f"{len(fleet.nodes)} nodes ({words or 'none'}), {gpus} GPUs; reports: "
        f"{fleet.accepted} accepted, {missing} missing, {fleet.duplicates} duplicates, "
        f"{rejected} rejected"
    )


class Observer:
    """Follows the demo's cluster on the broker and prints alerts as they come and go."""

    def __init__(
        self,
        settings: MqttSettings,
        cluster: str,
        alerts: AlertLog,
        *,
        clock: Callable[[], float],
        out: Callable[[str], None] | None,
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.alerts = alerts
        self.fleet: FleetSummary | None = None
        self.fleet_parts: dict[int, FleetSummary] = {}  # several aggregators: merged
        self.subscribed = asyncio.Event()
        self.error = ""  # why the last connection attempt failed
        self._clock = clock  # seconds since the scenario began
        self._out = out  # None: record only (the terminal UI has the screen)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until ``stop``, reconnecting as any viewer would."""
        backoff = Backoff(cap=2.0)
        while not stop.is_set():
            try:
                async with MqttSession(self.settings) as session:
                    await session.subscribe([f"{self.alerts.prefix}+", fleet_topic(self.cluster),
                                             fleet_part_topic(self.cluster, "+")])  # fmt: skip
                    backoff.reset()
                    self.subscribed.set()
                    reader = asyncio.ensure_future(self._read(session))
                    stopping = asyncio.ensure_future(stop.wait())
                    try:
                        done, _ = await asyncio.wait(
                            {reader, stopping}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:  # also when cancelled: a reader left behind fails unheard
                        stopping.cancel()
                        if not reader.done():
                            reader.cancel()
                    if reader in done:
                        reader.result()  # MqttUnavailable when the connection dropped
            except MqttUnavailable as exc:
                self.error = str(exc)
                # Before the first connection the demo says it once, as an error (demo.py).
                level = logging.WARNING if self.subscribed.is_set() else logging.DEBUG
                log.log(level, "demo observer: %s", exc)
            if not stop.is_set() and await stopped_within(stop, backoff.next()):
                return

    async def _read(self, session: MqttSession) -> None:
        async for message in session.messages():
            session.ack(message)
            await self._take(session, message)

    async def _take(self, session: MqttSession, message: Message) -> None:
        # amqtt 0.12.1 may hand a new subscriber retained messages of other topics: the
        # topic is checked here, not trusted from the subscription.
        if message.topic == fleet_topic(self.cluster):
            try:
                self.fleet = decode_fleet_summary(message.payload)
            except DecodeError as exc:
                log.warning("demo: undecodable fleet summary: %s", exc)
            return
        member = part_member(message.topic.split("/")[4:])
        if message.topic.startswith(fleet_topic(self.cluster) + "/") and member is not None:
            try:
                if message.payload:
                    self.fleet_parts[member] = decode_fleet_summary(message.payload)
                else:
                    self.fleet_parts.pop(member, None)
            except DecodeError as exc:
                log.warning("demo: undecodable fleet summary part: %s", exc)
            self.fleet = merge_fleet(self.fleet_parts) if self.fleet_parts else self.fleet
            return
        at = self._clock()
        news = self.alerts.feed(message.topic, message.payload, at)
        while self.alerts.stale:  # left retained by an earlier demo run on this broker
            await session.publish(self.alerts.stale.pop(), b"", retain=True)
        if news is not None and self._out is not None:
            self._out(event_line(news[0], news[1], at))
