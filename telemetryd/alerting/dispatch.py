"""From "these alerts fire" to notifications, as Alertmanager's dispatcher does it.

Each alert goes to the routes it matches; per route it joins the aggregation group of its
``group_by`` labels. A group is first flushed ``group_wait`` after it appears (at once
when its alerts are older than that, as after a restart), then every ``group_interval``;
a flush leaves out silenced and inhibited alerts and sends only when the receiver has
something new to hear: an alert it was not told fires, a resolve (``send_resolved``), or
``repeat_interval`` passed. That rule is what keeps a flapping alert from paging a storm.

What each receiver was told about each group (fingerprints firing, resolved, when) is kept
in ``notify-state.json`` after every delivery, with the resolves still to be sent, so a
restarted aggregator fed the same firing alerts neither repeats nor forgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from telemetryd.alerting.delivery import Delivery, Outcome, ReceiverStats
from telemetryd.alerting.durations import Clock, SystemClock
from telemetryd.alerting.inhibit import Inhibitor
from telemetryd.alerting.model import Alert, Notification, notification
from telemetryd.alerting.notifylog import FILE, NOTHING, NotifyLog, Told
from telemetryd.alerting.routing import Route, Routing
from telemetryd.alerting.silences import SilenceStore
from telemetryd.codec import Struct

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Group:
    route: Route
    key: str
    labels: dict[str, str]
    due: float
    alerts: dict[str, Alert] = field(default_factory=dict)
    flushed: bool = False
    sending: tuple[Notification, frozenset[str], frozenset[str]] | None = None

    @property
    def told_key(self) -> str:
        return f"{self.route.receiver}/{self.key}"


class MutedAlert(Struct, kw_only=True):
    """An alert kept from its receivers, and why."""

    fingerprint: str
    labels: dict[str, str]
    silenced_by: list[str]  # silence ids
    inhibited_by: list[str]  # "<rule>: <source fingerprint>"


class GroupState(Struct, kw_only=True):
    """One aggregation group, for ``alerts list`` and /metrics."""

    receiver: str
    group_key: str
    group_labels: dict[str, str]
    firing: int
    resolved: int
    muted: int
    last_sent_ns: int  # 0: the receiver has not been told about this group
    sending: bool


class DispatchState(Struct, kw_only=True):
    """Groups, muted alerts and receiver counters."""

    groups: list[GroupState]
    muted: list[MutedAlert]
    receivers: dict[str, ReceiverStats]


class Dispatcher:
    """Groups alerts per route and decides what each receiver is told, and when.

    Args:
        routing: the loaded routing file.
        delivery: the receivers' lanes (every route's receiver must have one).
        directory: where ``notify-state.json`` is kept (``<state_dir>/alerts``).
        silences: the silence store (re-read when its file changes), or None.
        clock: monotonic time for timers, wall time for what is persisted.
        external_url: put in every notification (a link back to the aggregator).
    """

    def __init__(
        self,
        routing: Routing,
        delivery: Delivery,
        directory: Path,
        *,
        silences: SilenceStore | None = None,
        clock: Clock | None = None,
        external_url: str = "",
        silence_check_s: float = 1.0,
    ) -> None:
        missing = sorted({r.receiver for r in routing.routes() if r.receiver not in delivery})
        if missing:
            raise ValueError(f"routes name receivers without a hook: {', '.join(missing)}")
        self.routing = routing
        self.delivery = delivery
        self.log = NotifyLog(directory / FILE)
        self.silences = silences
        self.clock = clock or SystemClock()
        self.external_url = external_url
        self._silence_check_s = silence_check_s
        self._next_silence_check = 0.0
        self._inhibitor = Inhibitor(routing.inhibit_rules)
        self._groups: dict[str, _Group] = {}
        self._timers: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._dirty = False
        delivery.on_done = self._delivered
        self.update(self.log.load())

    # -- the engine's side -----------------------------------------------------------------

    def update(self, alerts: Iterable[Alert]) -> None:
        """Take firing alerts and newly resolved ones (upserts by fingerprint; no I/O).

        An alert stays firing here until the engine hands it over resolved.
        """
        batch = list(alerts)
        if not batch:
            return
        self._inhibitor.update(batch)
        now, now_ns = self.clock.monotonic(), self.clock.time_ns()
        for alert in batch:
            for route in self.routing.match(alert.labels):
                labels = route.group_labels(alert.labels)
                key = route.group_key(labels)
                group = self._groups.get(key)
                if group is None:
                    told = self.log.get(f"{route.receiver}/{key}")
                    if alert.status == "resolved" and not (
                        told and alert.fingerprint in told.firing
                    ):
                        continue  # nobody was told it fires: nothing to tell
                    group = self._groups[key] = _Group(route, key, labels, now + route.group_wait)
                    self._schedule(group)
                if alert.status == "resolved" and alert.fingerprint in group.alerts:
                    self._dirty = True  # a resolve to keep across a restart
                group.alerts[alert.fingerprint] = alert
                fired = alert.fired_ns or alert.starts_ns or now_ns
                waited = (now_ns - fired) / 1e9 >= route.group_wait
                if not group.flushed and alert.status == "firing" and waited and group.due > now:
                    group.due = now  # old news (a restart): no reason to wait for more
                    self._schedule(group)
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Flush groups as they fall due and run the delivery lanes, until ``stop``."""
        delivering = asyncio.create_task(self.delivery.run(stop))
        try:
            while not stop.is_set():
                self._wake.clear()
                await self.step()
                now = self.clock.monotonic()
                wait = self._silence_check_s
                if self._timers:
                    wait = max(0.0, min(wait, self._timers[0][0] - now))
                await _wait_any((self._wake, stop), wait)
            await delivering
        finally:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivering
            self.save()

    async def step(self) -> None:
        """One round: re-read silences if changed, flush due groups, persist if needed."""
        now = self.clock.monotonic()
        if self.silences is not None and now >= self._next_silence_check:
            self.silences.reload_if_changed()
            self._next_silence_check = now + self._silence_check_s
        self.tick(now)
        if self._dirty:
            data = self._snapshot()
            try:
                await asyncio.to_thread(self.log.write, data)
            except OSError as exc:
                log.error("alerts: cannot write %s: %s", self.log.path, exc.strerror or exc)
                self._dirty = True

    def tick(self, now: float | None = None) -> None:
        """Flush every group whose time has come."""
        now = self.clock.monotonic() if now is None else now
        while self._timers and self._timers[0][0] <= now:
            due, _, key = heapq.heappop(self._timers)
            group = self._groups.get(key)
            if group is None or group.due != due:
                continue  # deleted or rescheduled
            self._flush(group)
            if key in self._groups:
                group.due = now + group.route.group_interval
                self._schedule(group)

    def _schedule(self, group: _Group) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (group.due, self._seq, group.key))

    def _flush(self, group: _Group) -> None:
        """Decide what the group's receiver must hear now, as Alertmanager's dedup stage."""
        group.flushed = True
        now_ns = self.clock.time_ns()
        told = self.log.get(group.told_key)
        told_firing = told.firing if told else frozenset()
        firing = {fp: a for fp, a in group.alerts.items()
                  if a.status == "firing" and not self._muted(a, now_ns)}  # fmt: skip
        resolved = {fp: a for fp, a in group.alerts.items()
                    if a.status == "resolved" and fp in told_firing}  # fmt: skip
        send_resolved = self.delivery.hook(group.route.receiver).send_resolved
        action = ""
        if firing.keys() - told_firing:
            action = "send"
        elif resolved:
            action = "send" if send_resolved else "record"
        elif firing and told and told.sent_ns + group.route.repeat_interval * 1e9 <= now_ns:
            action = "send"
        if action == "send":
            sets = (frozenset(firing), frozenset(resolved if send_resolved else ()))
            if group.sending is None or group.sending[1:] != sets:
                self._send(group, list(firing.values()), list(resolved.values()), sets)
            return
        if action == "record":  # the receiver takes no resolves: forget them quietly
            assert told is not None
            self.log.told[group.told_key] = Told(frozenset(firing), frozenset(), told.sent_ns)
            self._dirty = True
        if group.sending is None:
            for fp in [fp for fp, a in group.alerts.items() if a.status == "resolved"]:
                del group.alerts[fp]
        self._cleanup(group)

    def _send(
        self,
        group: _Group,
        firing: list[Alert],
        resolved: list[Alert],
        sets: tuple[frozenset[str], frozenset[str]],
    ) -> None:
        receiver = group.route.receiver
        cfg = self.routing.receivers.get(receiver)
        alerts = sorted(firing, key=_order)
        if self.delivery.hook(receiver).send_resolved:
            alerts += sorted(resolved, key=_order)
        most = cfg.max_alerts if cfg else 0
        note = notification(receiver, group.key, group.labels, alerts,
                            external_url=self.external_url, max_alerts=most)  # fmt: skip
        group.sending = (note, *sets)
        self.delivery.submit(note)

    def _delivered(self, note: Notification, outcome: Outcome) -> None:
        """Delivery's report: on success, remember what the receiver now knows."""
        group = self._groups.get(note.group_key)
        if group is None or group.sending is None or group.sending[0] is not note:
            return  # a notification replaced by a newer one
        _, firing, resolved = group.sending
        group.sending = None
        if outcome == "sent":
            self.log.told[group.told_key] = Told(firing, resolved, self.clock.time_ns())
            for fp in resolved:
                alert = group.alerts.get(fp)
                if alert is not None and alert.status == "resolved":
                    del group.alerts[fp]
            self._dirty = True
            self._wake.set()
        self._cleanup(group)  # failed: the next flush (group_interval) tries again

    def _cleanup(self, group: _Group) -> None:
        if group.alerts or group.sending is not None:
            return
        del self._groups[group.key]
        told = self.log.told.get(group.told_key)
        if told is not None and not told.firing:
            del self.log.told[group.told_key]
        self._dirty = True

    def _muted(self, alert: Alert, now_ns: int) -> bool:
        if self.silences is not None and self.silences.muted(alert.labels, now_ns):
            return True
        return self._inhibitor.is_inhibited(alert.labels, alert.fingerprint)

    # -- persistence -----------------------------------------------------------------------

    def _snapshot(self) -> bytes:
        self._dirty = False
        owed = [
            alert
            for group in self._groups.values()
            for fp, alert in group.alerts.items()
            if alert.status == "resolved" and fp in (self.log.get(group.told_key) or NOTHING).firing
        ]
        live = {group.told_key for group in self._groups.values()}
        return self.log.snapshot(live, owed, self.clock.time_ns())

    def save(self) -> None:
        """Write ``notify-state.json`` now (blocking; ``run`` does it after deliveries)."""
        try:
            self.log.write(self._snapshot())
        except OSError as exc:
            log.error("alerts: cannot write %s: %s", self.log.path, exc.strerror or exc)
            self._dirty = True

    # -- the operator's side ---------------------------------------------------------------

    def state(self) -> DispatchState:
        """Groups, muted alerts and counters, as they are now."""
        now_ns = self.clock.time_ns()
        groups, muted = [], {}
        for group in self._groups.values():
            count = 0
            for fp, alert in group.alerts.items():
                if alert.status != "firing":
                    continue
                why = self.mute_reasons(alert, now_ns)
                if why.silenced_by or why.inhibited_by:
                    count += 1
                    muted[fp] = why
            told = self.log.get(group.told_key)
            firing = sum(a.status == "firing" for a in group.alerts.values())
            groups.append(GroupState(
                receiver=group.route.receiver, group_key=group.key, group_labels=group.labels,
                firing=firing, resolved=len(group.alerts) - firing, muted=count,
                last_sent_ns=told.sent_ns if told else 0, sending=group.sending is not None,
            ))  # fmt: skip
        return DispatchState(groups=groups, muted=list(muted.values()),
                             receivers=self.delivery.stats())  # fmt: skip

    def mute_reasons(self, alert: Alert, now_ns: int | None = None) -> MutedAlert:
        """The silences and inhibitions keeping ``alert`` from its receivers now."""
        now_ns = self.clock.time_ns() if now_ns is None else now_ns
        silenced = self.silences.muted(alert.labels, now_ns) if self.silences else []
        inhibited = self._inhibitor.inhibited_by(alert.labels, alert.fingerprint)
        return MutedAlert(fingerprint=alert.fingerprint, labels=alert.labels,
                          silenced_by=silenced, inhibited_by=inhibited)  # fmt: skip


def _order(alert: Alert) -> tuple[int, list[tuple[str, str]]]:
    return (alert.fired_ns or alert.starts_ns, sorted(alert.labels.items()))


async def _wait_any(events: Iterable[asyncio.Event], seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
