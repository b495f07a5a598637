"""Tell systemd how a service is doing: readiness, status, a watchdog fed by real progress.

The notify protocol is one datagram of ``KEY=value`` lines to ``$NOTIFY_SOCKET`` (a path,
or ``@name`` for the abstract namespace), so it is written here instead of depending on
libsystemd. Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing. A send that
fails is logged once and never raised: a service must not die because its supervisor's
socket went away.

The watchdog pings only while the main loops make progress. A loop marks a unit of work
with ``Watchdog.enter()`` / ``leave()`` (or ``busy()``); a ping goes out every half
``WATCHDOG_USEC`` unless a unit of work has been open since before the previous ping and
nothing finished since. So a sample stuck in a driver call, or a consumer stuck on a lock,
stops the pings and systemd restarts the service, while a loop that is only waiting for
its next tick keeps it alive. An event loop blocked outright stops the pings too.

``Supervisor`` puts it together for a service's ``serve()``: READY=1 once the service
says it is ready (connected), STATUS= on every change of readiness and every ~10 s,
STOPPING=1 as soon as the stop event is set, and the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping

log = logging.getLogger(__name__)

STATUS_EVERY_S = 10.0


class Notifier:
    """Sends notify messages to one socket; with no address it is a no-op."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec  # None: no watchdog for us
        self.failed = False  # a send failed (logged once)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """From ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (systemd sets them)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process meant to ping; a child that inherited it must not.
        if not pid or pid == str(os.getpid()):
            with contextlib.suppress(ValueError):
                usec = int(env.get("WATCHDOG_USEC", "")) or None
        return cls(env.get("NOTIFY_SOCKET"), watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """Whether anything is sent at all (we run under systemd)."""
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """One datagram of ``KEY=value`` lines; True if it was sent."""
        if self.address is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall(text.encode())
        except OSError as exc:
            if not self.failed:
                log.warning("systemd notify socket %s: %s (not said again)", self.address, exc)
                self.failed = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: started (or a reload finished); systemd starts what is ordered after us."""
        return self.send(READY="1", **({"STATUS": _line(status)} if status else {}))

    def status(self, text: str) -> bool:
        """STATUS=: the line ``systemctl status`` shows."""
        return self.send(STATUS=_line(text))

    def reloading(self) -> bool:
        """RELOADING=1 with the monotonic clock systemd wants; ``ready()`` ends the reload."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING="1", MONOTONIC_USEC=str(usec))

    def stopping(self) -> bool:
        """STOPPING=1: shutting down on purpose, not failing."""
        return self.send(STOPPING="1")

    def ping(self) -> bool:
        """WATCHDOG=1: still alive; without it for WatchdogSec= systemd restarts us."""
        return self.send(WATCHDOG="1")


def _line(text: str) -> str:
    return " ".join(text.split())  # STATUS is one line


class Watchdog:
    """WATCHDOG=1 every half period, only while the marked loops make progress."""

    def __init__(self, notifier: Notifier, *, period_s: float | None = None) -> None:
        self.notifier = notifier
        usec = notifier.watchdog_usec
        self.period_s = period_s or (usec / 2e6 if usec else None)
        self.pings = 0
        self.skipped = 0
        self._open: dict[int, int] = {}  # token -> ticks (pings + skipped) when it began
        self._next = 0
        self._progress = True
        self._stalled = False

    def beat(self) -> None:
        """A loop made progress."""
        self._progress = True

    def enter(self) -> int:
        """A unit of work begins; pass the token to ``leave``."""
        self._next += 1
        self._open[self._next] = self.pings + self.skipped
        return self._next

    def leave(self, token: int) -> None:
        """The unit of work ``token`` is done (which is progress)."""
        self._open.pop(token, None)
        self._progress = True

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """``enter``/``leave`` around a block."""
        token = self.enter()
        try:
            yield
        finally:
            self.leave(token)

    def healthy(self) -> bool:
        """No work open since before the last tick, or something finished since."""
        tick = self.pings + self.skipped
        return self._progress or all(began == tick for began in self._open.values())

    def tick(self) -> bool:
        """One watchdog period is up: ping if healthy; True if it pinged."""
        ok = self.healthy()
        self._progress = False
        if ok:
            self.notifier.ping()
            self.pings += 1
        else:
            if not self._stalled:
                log.error("a main loop made no progress for %gs: no watchdog ping", self.period_s)
            self.skipped += 1
        self._stalled = not ok
        return ok

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop``; returns at once when systemd wants no watchdog."""
        if self.period_s is None or not self.notifier.enabled:
            return
        while True:
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.period_s)
            except TimeoutError:
                self.tick()
                continue
            return


EXTEND_FACTOR = 3  # each EXTEND_TIMEOUT_USEC covers three status periods


class Supervisor:
    """READY, STATUS, STOPPING and the watchdog for one service, as one background task."""

    def __init__(
        self,
        notifier: Notifier,
        *,
        ready: Callable[[], bool],
        status: Callable[[], str],
        every_s: float = STATUS_EVERY_S,
    ) -> None:
        self.notifier = notifier
        self.watchdog = Watchdog(notifier)
        self._ready = ready
        self._status = status
        self.every_s = every_s
        self.readied = False
        self.stopped = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls, *, ready: Callable[[], bool], status: Callable[[], str]) -> Supervisor:
        """For this process, as systemd started it (a no-op outside systemd)."""
        return cls(Notifier.from_env(), ready=ready, status=status)

    def start(self, stop: asyncio.Event) -> None:
        """Run in the background until ``stop`` is set or ``close`` is called."""
        self._task = asyncio.create_task(self._run(stop), name="sdnotify")

    def reloading(self) -> None:
        """A reload (SIGHUP) begins: systemd shows the unit as reloading until ``reloaded``."""
        if self.readied:  # before READY=1 systemd is still starting us: nothing to say
            self.notifier.reloading()

    def reloaded(self) -> None:
        """The reload is over, applied or refused (the log says which): READY=1 again."""
        if self.readied:
            self.notifier.ready(self._status())

    def close(self) -> None:
        """The service is ending (stopped, or failed): STOPPING=1 if not said yet."""
        if self._task is not None:
            self._task.cancel()
        self._stopping()

    def _stopping(self) -> None:
        if self.notifier.enabled and not self.stopped:
            self.stopped = True
            self.notifier.send(STOPPING="1", STATUS="stopping")

    async def _run(self, stop: asyncio.Event) -> None:
        if not self.notifier.enabled:
            return
        watchdog = asyncio.create_task(self.watchdog.run(stop), name="sdnotify.watchdog")
        try:
            await self._report(stop)
            self._stopping()
        finally:
            watchdog.cancel()

    async def _report(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        was_ready = False
        last = float("-inf")
        while not stop.is_set():
            try:
                ready = self._ready()
                if ready and not self.readied:
                    self.notifier.ready(self._status())
                    self.readied = True
                    was_ready, last = ready, loop.time()
                elif ready != was_ready or loop.time() - last >= self.every_s:
                    if self.readied:
                        self.notifier.status(self._status())
                    else:
                        # Still starting (broker or a sink unreachable): while we say so,
                        # systemd waits past TimeoutStartSec= instead of killing a process
                        # that is spooling or consuming into its WAL. The watchdog still
                        # restarts one that hangs.
                        extend = str(round(EXTEND_FACTOR * self.every_s * 1e6))
                        self.notifier.send(STATUS=_line(self._status()),
                                           EXTEND_TIMEOUT_USEC=extend)  # fmt: skip
                    was_ready, last = ready, loop.time()
            except Exception:  # a bug in a status line must not end the notifications
                log.exception("systemd status")
                last = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)
