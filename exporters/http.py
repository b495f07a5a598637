"""The one module that imports aiohttp: a small HTTP client and a small HTTP server.

Why one seam: the InfluxDB 1.x sink posts line protocol, the aggregator serves /metrics,
/healthz and /readyz, and on-call hooks will post JSON. Each needs a few calls of the same
library, and none of them should learn its exception tree or its server life cycle. Here a
request either returns a ``Reply`` (any status: the caller decides what a 503 means) or
raises ``HttpUnavailable`` with one line that says why no answer came (refused, reset,
timed out, TLS failed). influxdb-client's async API runs on aiohttp too; the errors it lets
through are listed in ``TRANSPORT_ERRORS`` so its module need not import aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, OSError)
"""What a request through aiohttp raises when no HTTP answer came back."""

RETRY_AFTER_MAX = 300.0
"""Seconds: a server asking for longer (or a broken header) is asked again after this."""


class HttpUnavailable(Exception):
    """No HTTP answer: connection refused or reset, DNS, TLS, or the timeout ran out."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, whatever its status."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "text/plain; charset=utf-8"

    def text(self, limit: int = 500) -> str:
        """The body as one line of at most ``limit`` characters, for error messages."""
        text = " ".join(self.body.decode("utf-8", "replace").split())
        return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """One line for a transport failure, without aiohttp's multi-line reprs."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def ssl_context(ca_file: str) -> ssl.SSLContext:
    """A verifying client context trusting ``ca_file`` (or the system store when empty)."""
    return ssl.create_default_context(cafile=ca_file or None)


class HttpClient:
    """One connection pool; made inside the event loop that uses it (aiohttp's rule)."""

    def __init__(self, *, timeout_s: float, ca_file: str = "") -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=ssl_context(self._ca_file), limit=8)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=True
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        allow_redirects: bool = True,
    ) -> Reply:
        """Send one request; any status is a Reply, no answer is HttpUnavailable.

        ``allow_redirects=False`` returns a 3xx as it is: a POST that is followed through
        a 301 or 302 turns into a GET without its body, whose 200 would look delivered.
        """
        session = self._open()
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=dict(headers or {}),
                params=params,
                allow_redirects=allow_redirects,
            ) as response:
                data = await response.read()
                return Reply(
                    status=response.status,
                    body=data,
                    headers={k.lower(): v for k, v in response.headers.items()},
                    content_type=response.headers.get("Content-Type", ""),
                )
        except TRANSPORT_ERRORS as exc:
            raise HttpUnavailable(describe(exc)) from None

    async def close(self) -> None:
        """Release the pool; safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def retry_after(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), capped; None if absent.

    Every HTTP client here (the InfluxDB sinks, the on-call hooks) reads the header the
    same way, so one server's "come back in 7 s" means the same wherever it is answered.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        seconds = (when - (now or datetime.datetime.now(datetime.UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def basic_auth(user: str, password: str) -> str:
    """The value of an ``Authorization: Basic`` header."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


Handler = Callable[[], Awaitable[Reply]]


class HttpServerError(Exception):
    """The server cannot listen (address in use, permission denied)."""


class HttpServer:
    """Serves fixed GET routes, each a coroutine returning a Reply; 404 for the rest."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Handler]) -> None:
        self.host = host
        self.port = port
        self._routes = dict(routes)
        self._runner: web.AppRunner | None = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self._routes.get(request.path)
        if handler is None:
            known = ", ".join(sorted(self._routes))
            return web.Response(status=404, text=f"not found; this server has {known}\n")
        reply = await handler()
        response = web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        response.headers["Content-Type"] = reply.content_type
        return response

    async def start(self) -> None:
        """Listen; HttpServerError with one line if the address cannot be used."""
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            # asyncio rewords the error ("error while attempting to bind on address ...");
            # the errno says it in the operator's words.
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise HttpServerError(f"cannot listen on {self.host}:{self.port}: {why}") from None
        self._runner = runner
        if self.port == 0 and runner.addresses:  # asked for any free port: say which
            self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
