"""Run a long-lived service: signals, one stop event, a clean exit.

SIGTERM and SIGINT set the stop event, so services shut down through their own code path
(flush, offline presence, close) instead of being torn down mid-write. A second signal
while shutting down exits at once; so does a shutdown that overruns its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def run_until_signalled(
    main: Callable[[asyncio.Event], Awaitable[None]], *, deadline_s: float = 5.0
) -> None:
    """Run ``main(stop)``; the first SIGTERM/SIGINT sets ``stop``, a second exits now."""
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

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await main(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


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
