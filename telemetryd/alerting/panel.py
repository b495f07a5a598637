"""The operator's panel on MQTT: pending alerts, silences, and silences asked for over MQTT.

Firing alerts have one retained topic each (service.py). A terminal UI also needs what is
about to fire and what is muted; those are short lists, so each cluster gets one retained
message of each: ``telemetry/v1/<cluster>/_pending`` and ``.../_silences`` (wire.py).

They are rebuilt at most every ``interval`` seconds and published only when their content
changed (the encoded bytes without ``time_ns``), so a quiet aggregator publishes nothing.
A pending alert's ``value`` moves with every report, so a change of values alone goes out
at most every ``value_refresh`` seconds; a change of which alerts are pending, or of the
silences, goes out at once. After a (re)connect everything is published again (a broker
without persistence forgot it). A publish that fails is logged once and retried at the
next rebuild: the panel never holds up the aggregator's commits.

With ``[aggregator.alerts] mqtt_silences`` on, the aggregator hands each message of
``.../_silences/request`` to ``apply``, which adds the silence under an id derived from the
request's id (wire.request_silence_id): a request delivered twice mutes once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from exporters.mqtt import MqttSession, MqttUnavailable
from telemetryd.alerting.durations import Clock, SystemClock
from telemetryd.alerting.engine import Engine
from telemetryd.alerting.model import Alert, severity_rank
from telemetryd.alerting.silences import Silence, SilenceError, SilenceStore
from telemetryd.alerting.wire import (
    MAX_PENDING,
    PendingAlerts,
    SilenceInfo,
    Silences,
    decode_silence_request,
    request_silence_id,
)
from telemetryd.codec import DecodeError, encode_json
from telemetryd.ingest import Reason, decode_reason
from telemetryd.topics import (
    pending_part_topic,
    pending_topic,
    silence_request_filters,
    silences_topic,
)

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 << 10  # a valid request is at most ~10 KiB (wire.SilenceRequest)


@dataclass(frozen=True, slots=True)
class Refused:
    """A silence request that was not applied, with the dead-letter reason and why."""

    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class _Sent:
    shape: bytes  # what must go out at once when it changes
    full: bytes  # everything but time_ns
    at: float  # monotonic time it was published


def _lists_on(silence: Silence, cluster: str) -> bool:
    """Whether a silence belongs on ``cluster``'s list: its ``cluster`` matchers allow it."""
    return all(m.matches({"cluster": cluster}) for m in silence.matchers if m.name == "cluster")


def silence_info(silence: Silence, now_ns: int) -> SilenceInfo:
    """A stored silence as ``_silences`` shows it."""
    return SilenceInfo(
        id=silence.id, matchers=[str(m) for m in silence.matchers],
        starts_ns=silence.starts_ns, ends_ns=silence.ends_ns, created_by=silence.created_by,
        comment=silence.comment, state=silence.state(now_ns),
    )  # fmt: skip


class Panel:
    """The retained ``_pending`` and ``_silences`` of every cluster, and silence requests."""

    def __init__(
        self,
        engine: Engine,
        silences: SilenceStore | None,
        *,
        accepts_requests: bool = False,
        clock: Clock | None = None,
        interval: float = 0.5,
        value_refresh: float = 5.0,
    ) -> None:
        self.engine = engine
        self.silences = silences
        self.accepts_requests = accepts_requests
        self.clock = clock or SystemClock()
        self.interval = interval
        self.value_refresh = value_refresh
        self.applied = 0  # silences added from requests (duplicates not counted)
        self.part: int | None = None  # a group member publishes _pending/part/<member>
        self._sent: dict[str, _Sent] = {}
        self._next = 0.0  # monotonic time of the next rebuild
        self._error = ""  # the last publish failure, logged once
        self._publishing = asyncio.Lock()

    # -- what the messages hold ------------------------------------------------------------
    def clusters(self, pending: list[Alert]) -> list[str]:
        """Every cluster the fleet knows, and those named by a pending alert."""
        known = set(self.engine.fleet.clusters())
        known.update(a.labels["cluster"] for a in pending if a.labels.get("cluster"))
        return sorted(known)

    def pending_message(self, cluster: str, pending: list[Alert], now_ns: int) -> PendingAlerts:
        """The pending alerts of ``cluster`` (or of no cluster), most severe and oldest first."""
        mine = [a for a in pending if a.labels.get("cluster") in ("", None, cluster)]
        mine.sort(key=lambda a: (severity_rank(a.severity), a.starts_ns, a.fingerprint))
        kept = mine[:MAX_PENDING]
        return PendingAlerts(time_ns=now_ns, alerts=kept, truncated=len(mine) - len(kept))

    def silences_message(self, cluster: str, now_ns: int) -> Silences:
        """The silences not expired whose matchers allow ``cluster``."""
        kept = self.silences.list() if self.silences is not None else []
        infos = [silence_info(s, now_ns) for s in kept
                 if s.state(now_ns) != "expired" and _lists_on(s, cluster)]  # fmt: skip
        return Silences(time_ns=now_ns, silences=infos, accepts_requests=self.accepts_requests)

    def changes(self, now_ns: int, now_mono: float) -> list[tuple[str, bytes, _Sent]]:
        """(topic, payload, what to remember once published) of what should go out now."""
        if self.silences is not None:
            self.silences.reload_if_changed()  # the CLI's edits: one stat when none
        pending = self.engine.pending()
        out: list[tuple[str, bytes, _Sent]] = []
        for cluster in self.clusters(pending):
            listing = self.pending_message(cluster, pending, now_ns)
            shape = encode_json([[a.fingerprint for a in listing.alerts], listing.truncated])
            topic = (
                pending_topic(cluster)
                if self.part is None
                else pending_part_topic(cluster, self.part)
            )  # viewers merge the members' parts
            self._consider(out, topic, listing, shape, now_mono)
            muted = self.silences_message(cluster, now_ns)
            self._consider(out, silences_topic(cluster), muted, b"", now_mono)
        return out

    def _consider(
        self,
        out: list[tuple[str, bytes, _Sent]],
        topic: str,
        message: PendingAlerts | Silences,
        shape: bytes,
        now_mono: float,
    ) -> None:
        now_ns, message.time_ns = message.time_ns, 0
        full = encode_json(message)  # without time_ns: the bytes compare content only
        shape = shape or full
        sent = self._sent.get(topic)
        if sent is not None:
            if sent.full == full:
                return
            if sent.shape == shape and now_mono - sent.at < self.value_refresh:
                return  # only values moved: wait for the refresh
        message.time_ns = now_ns
        out.append((topic, encode_json(message), _Sent(shape, full, now_mono)))

    # -- publishing ------------------------------------------------------------------------
    async def publish(self, session: MqttSession) -> None:
        """Publish what changed, at most every ``interval``; failures are logged once."""
        now = self.clock.monotonic()
        if now < self._next or self._publishing.locked():
            return
        async with self._publishing:
            self._next = now + self.interval
            for topic, payload, sent in self.changes(self.clock.time_ns(), now):
                try:
                    await session.publish(topic, payload, retain=True)
                except MqttUnavailable as exc:
                    if str(exc) != self._error:
                        log.warning("alert panel (_pending, _silences) not published: %s; "
                                    "retrying", exc)  # fmt: skip
                        self._error = str(exc)
                    return
                self._sent[topic] = sent
                self._error = ""

    def republish(self) -> None:
        """After (re)connecting: publish every message again at the next call."""
        self._sent.clear()
        self._next = 0.0

    # -- silence requests ------------------------------------------------------------------
    async def subscribe(self, session: MqttSession, clusters: list[str]) -> list[str]:
        """Subscribe to silence requests when accepted; else drop the filters (returned).

        The aggregator's session is persistent: had an earlier run accepted requests, the
        broker would still deliver them after the setting was turned off.
        """
        filters = silence_request_filters(clusters)
        if self.accepts_requests:
            await session.subscribe(filters)
            return filters
        await session.unsubscribe(filters)
        return []

    async def apply(self, topic: str, payload: bytes) -> Refused | None:
        """Apply one silence request; a refusal is logged here and returned for dead letters.

        Called before the request is acknowledged: the silence is on disk by then, and a
        redelivery (crash before the PUBACK) finds it by its id and adds nothing.
        """
        store = self.silences
        if not self.accepts_requests or store is None:
            log.warning("silence request on %s ignored: [aggregator.alerts] mqtt_silences is "
                        "off", topic)  # fmt: skip
            return None
        if len(payload) > MAX_REQUEST_BYTES:
            return self._refuse(topic, "oversized", f"{len(payload)} bytes > {MAX_REQUEST_BYTES}")
        try:
            request = decode_silence_request(payload)
        except DecodeError as exc:
            return self._refuse(topic, decode_reason(exc), str(exc))
        silence_id = request_silence_id(request.request_id)
        store.reload_if_changed()
        if any(s.id == silence_id for s in store.list()):
            log.info("silence request %s on %s: already applied as silence %s",
                     request.request_id, topic, silence_id)  # fmt: skip
            return None
        ends_ns = store.clock.time_ns() + int(request.duration_s * 1e9)
        try:
            silence = await asyncio.to_thread(
                store.add, request.matchers, ends_ns=ends_ns, created_by=request.created_by,
                comment=request.comment, silence_id=silence_id,
            )  # fmt: skip
        except SilenceError as exc:
            return self._refuse(topic, "schema", str(exc))
        self.applied += 1
        self._next = 0.0  # the new silence goes out with the next publish
        log.info("silence %s added from %s by %s: %s for %gs (request %s)", silence.id, topic,
                 silence.created_by, ",".join(map(str, silence.matchers)), request.duration_s,
                 request.request_id)  # fmt: skip
        return None

    def _refuse(self, topic: str, reason: Reason, detail: str) -> Refused:
        log.warning("silence request on %s refused: %s; expected JSON with request_id, "
                    "matchers, duration_s, created_by (docs/alerts.md)", topic, detail)  # fmt: skip
        return Refused(reason, detail)


async def apply_request(panel: Panel | None, topic: str, payload: bytes) -> Refused | None:
    """A request that reached an aggregator: its panel's, or ignored when alerting is off."""
    if panel is None:
        log.warning("silence request on %s ignored: [aggregator.alerts] is off", topic)
        return None
    return await panel.apply(topic, payload)
