"""A STAND-IN for InfluxDB 2's write API, storing into a real InfluxDB 1.x.

InfluxDB 2 has no server packaged for these machines, so the v2 sink is tested against
this small, strict imitation of the documented ``/api/v2/write`` contract
(../shared/reference/transport.md §4.4-4.5; influxdb ``http/write_handler.go``):

- ``GET|HEAD /ping`` answers 204.
- ``POST /api/v2/write`` checks, in InfluxDB 2's order: ``Authorization: Token <token>``
  (else 401 ``{"code":"unauthorized","message":"unauthorized access"}``); ``precision``
  absent or ``ns`` (else 400; the sink always sends ``ns``, so we accept nothing coarser);
  ``bucket`` present (else 404 ``bucket not found``); ``Content-Encoding`` gzip or
  identity (a bad gzip body is a 400); ``org`` (or ``orgID``) known (404
  ``organization name "x" not found``); ``bucket`` known (404 ``bucket "x" not found``).
  Stricter than the server where the docs only recommend: ``Content-Type`` must be
  ``text/plain`` (400 naming it), since that is what we promise to send.
- The lines are then written to a REAL InfluxDB 1.x, ``/write?db=<bucket>&precision=ns``,
  and its answer is mapped to InfluxDB 2's: 204; a 1.x partial write (field type conflict,
  ``... dropped=N``) becomes 422 ``{"code":"unprocessable entity","message":"failure
  writing points to database: partial write: ..."}``; a 1.x parse error becomes 400
  ``{"code":"invalid",...}`` (note: 1.x keeps the good lines of such a request where 2.x
  keeps none; our encoder never writes such lines, and the sink bisects either way); 413
  stays 413; anything else from 1.x is a 500 ``internal error`` carrying its text.

A fault plan makes it answer what a busy or misconfigured server answers (``fail``: the
next N write requests, optionally after letting K through, get 503/429/401/... with or
without ``Retry-After``, before any check; ``max_lines``: 413 for a body of more lines).
Every request is recorded (method, path, query, headers, raw body, decompressed lines,
the status given) for the tests to assert on.

It runs its own event loop on a thread, so tests may drive the sink with ``asyncio.run``
and an aggregator process may write to it at the same time.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.integration.influxdb import InfluxDB
from tests.integration.mosquitto import TLSFiles

JSON = "application/json; charset=utf-8"
ORG_ID = "0123456789abcdef"  # what ``orgID=`` may name instead of ``org=``


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the stand-in received it, and the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # keys lowercased
    body: bytes  # as it came over the wire (compressed when it was)
    lines: list[str]  # the decompressed body's lines, without the newlines
    status: int


@dataclass(slots=True)
class Fault:
    """Answer ``status`` to ``times`` write requests, after letting ``after`` through."""

    status: int
    times: int = 1
    after: int = 0
    retry_after: str | None = None


@dataclass(slots=True)
class _Answer:
    status: int
    body: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _error(status: int, code: str, message: str, **headers: str) -> _Answer:
    return _Answer(status, {"code": code, "message": message}, dict(headers))


_FAULT_BODIES = {
    400: ("invalid", "unable to parse points"),
    401: ("unauthorized", "unauthorized access"),
    403: ("forbidden", "insufficient permissions for write"),
    413: ("request too large", "unable to read data: points batch is too large"),
    429: ("too many requests", "write limit exceeded; try again later"),
    500: ("internal error", "unexpected error writing points to database"),
    503: ("unavailable", "service unavailable; try again later"),
}


class Influx2StandIn:
    """InfluxDB 2's write API imitated on 127.0.0.1:<free port>, storing into ``backend``."""

    def __init__(
        self,
        backend: InfluxDB,
        *,
        token: str = "stand-in-token",
        org: str = "telemetry",
        buckets: Iterable[str] = ("gpus",),
        tls: TLSFiles | None = None,
    ) -> None:
        self.backend = backend
        self.tls = tls  # the server's identity: https only
        self.token = token
        self.org = org
        self.buckets: set[str] = set()
        self.max_lines: int | None = None
        self.port = 0
        self._plan: list[Fault] = []
        self._records: list[Recorded] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        for bucket in buckets:
            self.add_bucket(bucket)

    # -- set-up and fault plan (called from the test's thread) -----------------------------
    def add_bucket(self, name: str) -> None:
        """Create the bucket: a database of the same name in the 1.x backend."""
        self.backend.create_database(name)
        with self._lock:
            self.buckets.add(name)

    def fail(
        self, status: int, *, times: int = 1, after: int = 0, retry_after: str | None = None
    ) -> None:
        """Plan ``times`` answers of ``status`` once ``after`` more write requests went through."""
        with self._lock:
            self._plan.append(Fault(status, times, after, retry_after))

    def planned(self) -> int:
        """Faults not yet served."""
        with self._lock:
            return sum(f.times for f in self._plan)

    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def sink_url(self, bucket: str = "gpus", org: str | None = None) -> str:
        """A telemetryd ``influxdb2://`` (``influxdb2s://`` with TLS) URL for ``bucket``."""
        scheme = "influxdb2s" if self.tls else "influxdb2"
        return f"{scheme}://127.0.0.1:{self.port}?org={org or self.org}&bucket={bucket}"

    def requests(self) -> list[Recorded]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._records)

    def writes(self, status: int | None = None) -> list[Recorded]:
        """The write requests so far (only those answered ``status`` when given)."""
        return [
            r
            for r in self.requests()
            if r.path == "/api/v2/write" and (status is None or r.status == status)
        ]

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> Influx2StandIn:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="influx2-standin", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress off: the test must see the body exactly as it came over the wire.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
        await runner.setup()
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=context)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    def stop(self) -> None:
        """Stop listening (the port stays ours for ``start`` again) and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
        self._loop = self._thread = None

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        client, self._client = self._client, None
        if runner is not None:
            await runner.cleanup()
        if client is not None:
            await client.close()

    def __enter__(self) -> Influx2StandIn:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- the API ----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        lines: list[str] = []
        if request.method in ("GET", "HEAD") and request.path == "/ping":
            answer = _Answer(204, headers={"X-Influxdb-Build": "OSS (stand-in)"})
        elif request.path == "/api/v2/write" and request.method == "POST":
            answer, lines = await self._write(request, body)
        elif request.path == "/api/v2/write":
            answer = _error(405, "method not allowed", f"method {request.method} not allowed")
        else:
            answer = _error(404, "not found", "path not found")
        with self._lock:
            self._records.append(
                Recorded(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    lines=lines,
                    status=answer.status,
                )
            )
        text = None if answer.body is None else json.dumps(answer.body)
        headers = dict(answer.headers)
        if text is not None:
            headers["Content-Type"] = JSON
        return web.Response(status=answer.status, text=text, headers=headers)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if not self._plan:
                return None
            fault = self._plan[0]
            if fault.after > 0:
                fault.after -= 1
                return None
            fault.times -= 1
            if fault.times <= 0:
                self._plan.pop(0)
            return fault

    async def _write(self, request: web.Request, raw: bytes) -> tuple[_Answer, list[str]]:
        body, bad_body = _decode(request.headers.get("Content-Encoding", "identity"), raw)
        lines = [line for line in body.decode("utf-8", "replace").split("\n") if line]
        fault = self._next_fault()
        if fault is not None:
            code, message = _FAULT_BODIES.get(fault.status, ("internal error", "fault"))
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return _error(fault.status, code, message, **headers), lines
        if request.headers.get("Authorization") != f"Token {self.token}":
            return _error(401, "unauthorized", "unauthorized access"), lines
        query = request.query
        if query.get("precision", "ns") != "ns":
            message = "stand-in takes precision=ns only (what the sink sends)"
            return _error(400, "invalid", message), lines
        bucket = query.get("bucket", "")
        if not bucket:
            return _error(404, "not found", "bucket not found"), lines
        if bad_body is not None:
            return bad_body, lines
        content_type = request.headers.get("Content-Type", "")
        if not content_type.startswith("text/plain"):
            message = f"stand-in: Content-Type {content_type!r}, expected text/plain"
            return _error(400, "invalid", message), lines
        if self.max_lines is not None and len(lines) > self.max_lines:
            return _error(413, *_FAULT_BODIES[413]), lines
        org, org_id = query.get("org"), query.get("orgID")
        if not org and not org_id:
            return _error(400, "invalid", "Please provide either orgID or org"), lines
        if (org and org != self.org) or (org_id and org_id != ORG_ID):
            return _error(404, "not found", f'organization name "{org or org_id}" not found'), lines
        with self._lock:
            known = bucket in self.buckets
        if not known:
            return _error(404, "not found", f'bucket "{bucket}" not found'), lines
        return await self._forward(bucket, body), lines

    async def _forward(self, bucket: str, body: bytes) -> _Answer:
        """Write into the 1.x database named like the bucket; map 1.x's answer to 2.x's."""
        assert self._client is not None
        params = {"db": bucket, "precision": "ns"}
        if self.backend.admin:
            params.update(u=self.backend.admin[0], p=self.backend.admin[1])
        try:
            async with self._client.post(
                f"{self.backend.url}/write", params=params, data=body
            ) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _error(503, "unavailable", f"storage unavailable: {exc}")
        if 200 <= status < 300:
            return _Answer(204)
        message = _v1_error(text)
        if status == 400 and "unable to parse" in message:
            return _error(400, "invalid", message)
        if status == 400 and "partial write" in message:
            return _error(
                422, "unprocessable entity", f"failure writing points to database: {message}"
            )
        if status == 400:
            return _error(400, "invalid", message)
        if status == 413:
            return _error(413, *_FAULT_BODIES[413])
        return _error(500, "internal error", f"unexpected error writing points: {message}")


def _decode(encoding: str, raw: bytes) -> tuple[bytes, _Answer | None]:
    """The body as sent before compression, or an empty one and InfluxDB 2's 400."""
    encoding = encoding.strip().lower()
    if encoding == "identity":
        return raw, None
    if encoding == "gzip":
        try:
            return gzip.decompress(raw), None
        except (OSError, EOFError, zlib.error):
            return b"", _error(400, "invalid", "gzipped HTTP body contains an invalid header")
    return b"", _error(400, "invalid", f"unsupported Content-Encoding {encoding!r}")


def _v1_error(text: str) -> str:
    """The ``error`` of a 1.x JSON error body."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return text.strip()
