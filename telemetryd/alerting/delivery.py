"""Getting notifications to receivers: one lane per receiver, retries, dead letters.

Each receiver has its own bounded queue and task, so a receiver that is slow or down
delays only itself: never the other receivers, the dispatcher or the engine. A hook makes
one attempt per ``send``; the policy lives here, the same for every channel: retries with
capped exponential backoff and jitter (the receiver's ``retries`` and ``retry_max``,
a server's Retry-After honoured), then the dead-letter file. A notification refused for
good (HookError with ``retryable=False``) goes there at once.

The queue holds at most one notification per alert group: a newer one replaces a queued
one, and stops the retries of one being retried, because after an outage only the
newest state of a group is worth telling (the older would announce what is no longer so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from exporters.hooks.base import Hook, HookError
from exporters.hooks.config import Receiver
from telemetryd.alerting.deadletters import FILE as DEADLETTER_FILE
from telemetryd.alerting.deadletters import DeadLetterFile
from telemetryd.alerting.durations import Clock, SystemClock
from telemetryd.alerting.model import Notification
from telemetryd.backoff import Backoff
from telemetryd.codec import Struct

log = logging.getLogger(__name__)

RETRY_AFTER_MAX = 3600.0  # a Retry-After longer than this is taken as this
Outcome = Literal["sent", "failed", "superseded"]
OnDone = Callable[[Notification, Outcome], None]
Sleep = Callable[[float], Awaitable[None]]


class ReceiverStats(Struct, kw_only=True):
    """Counters of one receiver, for /metrics and ``alerts list``."""

    sent: int = 0  # notifications delivered
    retries: int = 0  # attempts after a first one failed
    failed: int = 0  # notifications dead-lettered
    superseded: int = 0  # dropped for a newer one of the same group
    queued: int = 0  # waiting, not yet being sent
    in_flight: int = 0  # being sent or retried (0 or 1)
    last_error: str = ""
    last_error_ns: int = 0
    last_sent_ns: int = 0


@dataclass
class _Lane:
    """One receiver's queue, task state and counters."""

    name: str
    hook: Hook
    timeout: float
    retries: int
    retry_max: float
    queue: OrderedDict[str, Notification] = field(default_factory=OrderedDict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    superseded: asyncio.Event = field(default_factory=asyncio.Event)
    current: str | None = None  # group key being sent or retried
    stats: ReceiverStats = field(default_factory=ReceiverStats)


class Delivery:
    """The lanes of every receiver; ``submit`` is cheap and never waits.

    Args:
        hooks: receiver name -> its hook.
        directory: where ``deadletter.jsonl`` is kept (``<state_dir>/alerts``).
        receivers: receiver configurations (timeout, retries, retry_max); a hook without
            one gets the defaults.
        clock: wall time of counters and dead letters.
        sleep: waits between retries (tests pass one that does not sleep).
        backoff_base: the first retry delay, seconds (doubling up to ``retry_max``).
        queue_max: notifications (distinct groups) one receiver may have waiting; past it
            the oldest is dead-lettered.
        grace_s: how long ``run`` lets in-flight notifications finish at stop.
    """

    def __init__(
        self,
        hooks: Mapping[str, Hook],
        directory: Path,
        *,
        receivers: Mapping[str, Receiver] | None = None,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        backoff_base: float = 0.5,
        queue_max: int = 1024,
        deadletter_max_bytes: int = 16 << 20,
        grace_s: float = 2.0,
    ) -> None:
        self.clock = clock or SystemClock()
        self.deadletters = DeadLetterFile(
            directory / DEADLETTER_FILE, max_bytes=deadletter_max_bytes
        )
        self.on_done: OnDone | None = None
        self._sleep = sleep
        self._base = backoff_base
        self._queue_max = queue_max
        self._grace = grace_s
        self._changed = asyncio.Event()
        self._dead = asyncio.Event()
        self._writing = False
        self._lanes: dict[str, _Lane] = {}
        for name, hook in hooks.items():
            cfg = (receivers or {}).get(name)
            self._lanes[name] = _Lane(
                name, hook, timeout=cfg.timeout if cfg else 10.0,
                retries=cfg.retries if cfg else 8, retry_max=cfg.retry_max if cfg else 60.0,
            )  # fmt: skip

    def __contains__(self, receiver: str) -> bool:
        return receiver in self._lanes

    def hook(self, receiver: str) -> Hook:
        """The hook of a receiver."""
        return self._lanes[receiver].hook

    def submit(self, note: Notification) -> None:
        """Queue a notification; it replaces a queued or retried one of the same group."""
        lane = self._lanes[note.receiver]
        key = note.group_key
        if key in lane.queue:
            lane.stats.superseded += 1
        elif len(lane.queue) >= self._queue_max:
            _, oldest = lane.queue.popitem(last=False)
            self._dead_letter(lane, oldest, 0, "queue full: the receiver fell too far behind")
        lane.queue[key] = note
        if lane.current == key:
            lane.superseded.set()
        lane.wake.set()

    def stats(self) -> dict[str, ReceiverStats]:
        """Counters per receiver (copies)."""
        out = {}
        for name, lane in self._lanes.items():
            stats = ReceiverStats(
                **{f: getattr(lane.stats, f) for f in lane.stats.__struct_fields__}
            )
            stats.queued = len(lane.queue)
            stats.in_flight = int(lane.current is not None)
            out[name] = stats
        return out

    async def close(self) -> None:
        """Close every hook (after ``run`` returned); a hook that fails to close is logged."""
        for lane in self._lanes.values():
            try:
                await lane.hook.close()
            except Exception as exc:  # noqa: BLE001 - one bad hook must not keep others open
                log.warning("alert receiver %s: close failed: %s", lane.name, exc)

    async def idle(self) -> None:
        """Wait until nothing is queued, in flight or waiting to be written."""
        while not self._is_idle():
            self._changed.clear()
            await self._changed.wait()

    def _is_idle(self) -> bool:
        busy = any(lane.queue or lane.current is not None for lane in self._lanes.values())
        return not busy and not self.deadletters.pending and not self._writing

    async def run(self, stop: asyncio.Event) -> None:
        """Run every lane until ``stop``; then give in-flight sends ``grace_s`` to finish."""
        tasks = [asyncio.create_task(self._work(lane)) for lane in self._lanes.values()]
        tasks.append(asyncio.create_task(self._write_dead_letters()))
        try:
            await stop.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._grace):
                    await self.idle()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.to_thread(self.deadletters.flush)
            except OSError as exc:
                log.error("alert dead letters: cannot write %s: %s", self.deadletters.path, exc)

    async def _work(self, lane: _Lane) -> None:
        while True:
            while not lane.queue:
                self._changed.set()
                lane.wake.clear()
                await lane.wake.wait()
            key, note = lane.queue.popitem(last=False)
            lane.current = key
            lane.superseded.clear()
            try:
                await self._deliver(lane, key, note)
            finally:
                lane.current = None

    async def _deliver(self, lane: _Lane, key: str, note: Notification) -> None:
        """Attempts until delivered, refused for good, out of retries or superseded."""
        backoff = Backoff(base=self._base, cap=lane.retry_max)
        attempts = 0
        while True:
            attempts += 1
            retryable, retry_after = True, None
            try:
                async with asyncio.timeout(lane.timeout):
                    await lane.hook.send(note)
            except HookError as exc:
                error, retryable, retry_after = str(exc), exc.retryable, exc.retry_after
            except TimeoutError:
                error = f"no answer within {lane.timeout:g}s"
            except Exception as exc:  # noqa: BLE001 - a hook's bug must not stop its lane
                error = f"hook raised {type(exc).__name__}: {exc}"
                log.warning("alert receiver %s: %s", lane.name, error)
            else:
                lane.stats.sent += 1
                lane.stats.last_sent_ns = self.clock.time_ns()
                self._done(note, "sent")
                return
            lane.stats.last_error = error
            lane.stats.last_error_ns = self.clock.time_ns()
            if not retryable:
                self._dead_letter(lane, note, attempts, f"refused: {error}")
                return
            if not lane.superseded.is_set():
                if attempts > lane.retries:
                    reason = f"gave up after {attempts} attempts: {error}"
                    self._dead_letter(lane, note, attempts, reason)
                    return
                delay = backoff.next()
                if retry_after is not None:
                    delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
                await self._pause(lane, delay)
            if lane.superseded.is_set():  # a newer one of the group is queued: send that
                lane.stats.superseded += 1
                self._done(note, "superseded")
                return
            lane.stats.retries += 1

    async def _pause(self, lane: _Lane, delay: float) -> None:
        """Sleep ``delay``, or less if a newer notification of the group arrives."""
        sleeper = asyncio.ensure_future(self._sleep(delay))
        newer = asyncio.ensure_future(lane.superseded.wait())
        try:
            await asyncio.wait({sleeper, newer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            newer.cancel()

    def _dead_letter(self, lane: _Lane, note: Notification, attempts: int, reason: str) -> None:
        lane.stats.failed += 1
        log.warning("alert receiver %s: %s; notification kept in %s", lane.name, reason,
                    self.deadletters.path)  # fmt: skip
        self.deadletters.add(lane.name, attempts, reason, note, self.clock.time_ns())
        self._dead.set()
        self._done(note, "failed")

    def _done(self, note: Notification, outcome: Outcome) -> None:
        if self.on_done is not None:
            self.on_done(note, outcome)
        self._changed.set()

    async def _write_dead_letters(self) -> None:
        while True:
            await self._dead.wait()
            self._dead.clear()
            self._writing = True
            try:
                await asyncio.to_thread(self.deadletters.flush)
            except OSError as exc:
                log.error("alert dead letters: cannot write %s: %s", self.deadletters.path, exc)
                await asyncio.sleep(1.0)  # kept in memory; tried again with the next one
                self._dead.set()
            finally:
                self._writing = False
                self._changed.set()
