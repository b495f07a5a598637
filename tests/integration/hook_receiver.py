"""A local HTTP receiver for the on-call hooks' tests: records every request, answers a plan.

PagerDuty, Slack, Teams and Opsgenie cannot be reached from the test machines and cannot
be run locally, so the hooks are tested against this real HTTP server (aiohttp, on a free
port of 127.0.0.1, optionally over TLS) and their payloads checked against the services'
documented schemas (tests/integration/hook_schemas.py). Run it inside the test's own
event loop::

    async with HookReceiver(Answer(202)) as server:
        server.plan(Answer(429, headers={"Retry-After": "7"}))   # the next request only
        await hook.send(n)
        (seen,) = server.requests
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver answers one request (``delay`` seconds late, to force timeouts)."""

    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as it arrived."""

    method: str
    path: str  # as sent, percent-encoding kept
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HookReceiver:
    """Answers every path with the planned answers in order, then with ``default``."""

    def __init__(self, default: Answer | None = None, *, tls: ssl.SSLContext | None = None):
        self.default = default or Answer()
        self.tls = tls
        self.requests: list[Seen] = []
        self._plan: list[Answer] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def plan(self, *answers: Answer) -> None:
        self._plan.extend(answers)

    def url(self, path: str = "/hook") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Seen(
                method=request.method,
                path=request.raw_path.split("?", 1)[0],
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        answer = self._plan.pop(0) if self._plan else self.default
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)

    async def __aenter__(self) -> HookReceiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def __aexit__(self, *_: object) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
