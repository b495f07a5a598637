"""Run a long-lived service: signals, one stop event, a clean exit.

SIGTERM and SIGINT set the stop event, so services shut down through their own code path
(flush, offline presence, close) instead of being torn down mid-write. A second signal
while shutting down exits at once; so does a shutdown that overruns its deadline.
SIGHUP calls the service's reload callback (telemetryd/reload.py); a systemd service that
cannot reload passes ``no_reload``, so ``systemctl reload`` logs that instead of killing it
(SIGHUP's default action, kept for the demo: closing its terminal ends it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def run_until_signalled(
    main: Callable[[asyncio.Event], Awaitable[None]],
    *,
    deadline_s: float = 5.0,
    reload: Callable[[], None] | None = None,
) -> None:
    """Run ``main(stop)``; the first SIGTERM/SIGINT sets ``stop``, a second exits now.

    SIGHUP calls ``reload`` (it only asks: the re-read happens in the service's own task).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    first_at: list[float] = []

    def on_signal(signum: int) -> None:
        # The same signal often arrives twice at once (sent to the process and its group):
        # only a second one a moment later means "now".
        if stop.is_set() and loop.time() - first_at[0] < 1.0:
            return
        first_at.append(loop.time())
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()
        loop.call_later(deadline_s, _overran, deadline_s)

    def on_hangup() -> None:
        if reload is not None and not stop.is_set():
            reload()

    signals = (signal.SIGTERM, signal.SIGINT, *((signal.SIGHUP,) if reload else ()))
    for signum in signals:
        if signum == signal.SIGHUP:
            loop.add_signal_handler(signum, on_hangup)
        else:
            loop.add_signal_handler(signum, on_signal, signum)
    try:
        await main(stop)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def no_reload() -> None:
    """The SIGHUP answer of a service that cannot reload (the embedded broker)."""
    log.warning("SIGHUP: this service does not reload; restart it to apply changes")


def _overran(deadline_s: float) -> None:
    log.error("shutdown took longer than %gs: exiting", deadline_s)
    os._exit(1)


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds``; True as soon as ``stop`` is set, False when time is up."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


async def wait_any(events: tuple[asyncio.Event, ...], seconds: float | None) -> bool:
    """Wait up to ``seconds`` (None: no limit) for any of ``events``; True when one is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    timeout = None if seconds is None else max(0.0, seconds)
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
