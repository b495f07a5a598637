"""A real HTTP server that receives notifications, for tests of the whole alert path.

On-call services (PagerDuty, Slack, ...) cannot be reached from a test machine, so the
scenarios send to this: a small aiohttp server on a free port, on its own thread, that
records every JSON body with the time it arrived and answers what the test asks for
(``fail_with(503)`` makes it refuse until ``recover()``; ``stop()`` takes it off the
network entirely, ``start()`` brings it back on the same port).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.integration.mosquitto import free_port


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted request."""

    path: str
    body: Any
    at: float  # time.time() when it arrived
    headers: dict[str, str]


class Receiver:
    """Records POSTs; answers 200 unless told otherwise."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.refused = 0
        self.status = 200
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL (add a path per receiver: /webhook, /slack ...)."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.status != 200:
            with self._lock:
                self.refused += 1
            return web.Response(status=self.status, text="refused by the test")
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.received.append(
                Received(
                    request.path,
                    body,
                    time.time(),
                    {k.lower(): v for k, v in request.headers.items()},
                )
            )
        return web.Response(status=200, text="ok")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> Receiver:
        """Listen (again) on the same port."""
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused."""
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def fail_with(self, status: int) -> None:
        """Answer ``status`` to every request until ``recover``."""
        self.status = status

    def recover(self) -> None:
        """Answer 200 again."""
        self.status = 200

    def bodies(self, path: str = "") -> list[Any]:
        """Bodies received on ``path`` (all when empty), in order."""
        with self._lock:
            return [r.body for r in self.received if not path or r.path == path]

    def close(self) -> None:
        """Stop and end the thread."""
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
