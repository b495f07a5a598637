"""Blocking reads on their own daemon threads, awaited under a deadline.

NVML and sysfs calls can block for seconds or forever (a GPU in trouble, a stale NFS
mount). Each source gets one Worker; a read is submitted and awaited with a timeout. A
read that overruns is reported, and while the worker is still stuck the next read is not
queued behind it (that would stack samples up) but answered at once as "hung since".

Why not ThreadPoolExecutor: its threads are joined at interpreter exit, so one call that
never returns would keep the agent from exiting. These threads are daemons.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class WorkerBusy(Exception):
    """The worker is still inside an earlier call that overran its deadline."""

    def __init__(self, call: str, since_s: float) -> None:
        self.call = call
        self.since_s = since_s
        super().__init__(f"{call} has not returned for {since_s:.1f} s")


class WorkerTimeout(Exception):
    """A call did not return within its deadline; it may still be running."""

    def __init__(self, call: str, timeout_s: float) -> None:
        self.call = call
        self.timeout_s = timeout_s
        super().__init__(f"{call} did not return within {timeout_s:g} s")


class Worker(Generic[T]):
    """One daemon thread that runs one call at a time for one source."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.current = ""  # the call in progress, set by the task for precise messages
        self._started_at = 0.0
        self._busy = threading.Event()
        self._queue: queue.SimpleQueue[tuple[Callable[[], T], Future[T]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, future = item
            if not future.set_running_or_notify_cancel():
                self._busy.clear()  # cancelled before it started: the worker is free again
                continue
            # Idle again *before* the waiter wakes, or its next submit would see "busy".
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                self._busy.clear()
                future.set_exception(exc)
            else:
                self._busy.clear()
                future.set_result(result)

    def busy_for(self) -> float | None:
        """Seconds the current call has run, or None when idle."""
        return time.monotonic() - self._started_at if self._busy.is_set() else None

    def submit(self, fn: Callable[[], T], label: str) -> Future[T]:
        """Queue ``fn``; raise WorkerBusy if an earlier call is still stuck."""
        running = self.busy_for()
        if running is not None:
            raise WorkerBusy(self.current or label, running)
        self.current = label
        self._started_at = time.monotonic()
        self._busy.set()
        future: Future[T] = Future()
        self._queue.put((fn, future))
        return future

    async def run(self, fn: Callable[[], T], label: str, timeout_s: float) -> T:
        """Run ``fn`` on this worker; WorkerBusy, WorkerTimeout or ``fn``'s own error."""
        future = self.submit(fn, label)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            raise WorkerTimeout(self.current or label, timeout_s) from None

    def stop(self) -> None:
        """Ask the thread to exit after its current call (it is a daemon either way)."""
        self._queue.put(None)
