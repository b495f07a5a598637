"""The InfluxDB 1.x sink: ``influxdb://[USER@]host:8086/DB[?rp=RP]`` through ``POST /write``.

1.x has no token API; its ``/write`` endpoint takes line protocol with ``db``, ``rp`` and
``precision`` parameters and, when authentication is on, HTTP Basic credentials. The
password comes from ``aggregator.influxdb.password_file`` or the systemd credential
``influxdb-password``, never from the URL. The same encoder and answer policy as the 2.x
sink (exporters/lineprotocol.py, exporters/influx_write.py) make both write the same
points. InfluxDB 1.8+ and 3.x also accept this endpoint.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from exporters.base import SinkError
from exporters.http import HttpClient, HttpUnavailable, Reply, basic_auth
from exporters.influx_write import LineSink, WriteReply, retry_after, server
from telemetryd.secrets import Secret, read_secret, secret_path

if TYPE_CHECKING:
    from telemetryd.config import AggregatorConfig, InfluxConfig
    from telemetryd.urls import SinkUrl

CREDENTIAL = "influxdb-password"


def create(url: SinkUrl, cfg: AggregatorConfig) -> InfluxV1Sink:
    """The factory registered for ``influxdb://`` (and ``influxdbs://``); no I/O here."""
    return InfluxV1Sink(url, cfg.influxdb)


def server_error(reply: Reply) -> str:
    """The ``error`` of an InfluxDB JSON error body, else the body's first 500 characters."""
    try:
        data = json.loads(reply.body)
    except ValueError:
        return reply.text()
    if isinstance(data, dict):
        message = data.get("error") or data.get("message")
        if isinstance(message, str):
            return " ".join(message.split())[:2000]
    return reply.text()


class InfluxV1Sink(LineSink):
    """Writes to one 1.x database (and retention policy) over HTTP(S)."""

    def __init__(self, url: SinkUrl, cfg: InfluxConfig) -> None:
        self.base, where = server(url)
        self.database = url.database
        self.username = url.username
        self.cfg = cfg
        self.params = {"db": url.database, "precision": "ns"}
        if url.retention_policy:
            self.params["rp"] = url.retention_policy
        # The name keys the sink's cursor in the WAL: the destination, not how we log in.
        rp = f"?rp={url.retention_policy}" if url.retention_policy else ""
        what = f"database {url.database!r}" + (
            f" or retention policy {url.retention_policy!r}" if url.retention_policy else ""
        )
        super().__init__(f"influxdb://{where}/{url.database}{rp}", self._post, cfg, what)
        self._client: HttpClient | None = None
        self._headers: dict[str, str] = {}

    def _password(self) -> Secret | None:
        if not self.username:
            return None
        path = secret_path(self.cfg.password_file, CREDENTIAL)
        if path is None:
            raise SinkError(
                f"{self.name}: user {self.username!r} but no password: set "
                f"aggregator.influxdb.password_file or the systemd credential {CREDENTIAL}",
                retry_after=self.cfg.auth_retry,
            )
        try:
            return read_secret(path)
        except OSError as exc:
            raise SinkError(
                f"{self.name}: cannot read the password file {path}: {exc.strerror or exc}",
                retry_after=self.cfg.auth_retry,
            ) from None

    async def open(self) -> None:
        """Read the password (again, after a refusal) and check ``/ping``; SinkError if not."""
        password = self._password()
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.cfg.gzip:
            self._headers["Content-Encoding"] = "gzip"
        if password is not None and self.username:
            self._headers["Authorization"] = basic_auth(self.username, password.reveal())
        if self._client is None:
            self._client = HttpClient(timeout_s=self.cfg.timeout, ca_file=self.cfg.ca_file)
        try:
            reply = await self._client.request("GET", f"{self.base}/ping")
        except HttpUnavailable as exc:
            await self.close()  # the runner opens again, and may stop, without closing
            raise SinkError(f"{self.name}: {exc}") from None
        if reply.status >= 300:
            await self.close()
            raise SinkError(f"{self.name}: /ping answered {reply.status} {reply.text()}")

    async def _post(self, body: bytes) -> WriteReply:
        if self._client is None:
            raise SinkError(f"{self.name}: not open")
        try:
            reply = await self._client.request(
                "POST", f"{self.base}/write", body=body, headers=self._headers, params=self.params
            )
        except HttpUnavailable as exc:
            raise SinkError(f"{self.name}: {exc}") from None
        if 200 <= reply.status < 300:
            return WriteReply(reply.status)
        return WriteReply(
            reply.status, server_error(reply), retry_after(reply.headers.get("retry-after"))
        )

    async def close(self) -> None:
        """Close the connection pool; safe after a failed or no ``open``."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
