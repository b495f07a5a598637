"""The InfluxDB 2 sink: ``influxdb2://host:8086?org=O&bucket=B`` through influxdb-client.

The one module that imports influxdb_client. We use its asynchronous client (aiohttp
underneath) and its generated ``WriteService`` directly rather than the batching write
API: that API retries on its own timer and *drops* a batch after ``max_retry_time``
(../shared/reference/transport.md §4.7), where we must retry until the WAL says stop and
set aside only what the server refuses. The body is compressed here (gzip level 1) and
sent with ``Content-Encoding: gzip``, because the client's own gzip runs at level 9 on the
event loop. Precision is always ``ns``: the agent's sample time, never the server's.

The token comes from ``aggregator.influxdb.token_file`` or the systemd credential
``influxdb-token`` and only ever reaches the client's Authorization header.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from influxdb_client import PingService, WriteService
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.rest import ApiException

from exporters.base import SinkError
from exporters.http import TRANSPORT_ERRORS, describe
from exporters.influx_write import LineSink, WriteReply, retry_after, server
from telemetryd.secrets import read_secret, secret_path

if TYPE_CHECKING:
    from telemetryd.config import AggregatorConfig, InfluxConfig
    from telemetryd.urls import SinkUrl

CREDENTIAL = "influxdb-token"


def create(url: SinkUrl, cfg: AggregatorConfig) -> InfluxV2Sink:
    """The factory registered for ``influxdb2://`` (and ``influxdb2s://``); no I/O here."""
    return InfluxV2Sink(url, cfg.influxdb)


def _message(body: Any) -> str:
    """The ``message`` of an InfluxDB 2 JSON error body, else the body as one line."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = str(body or "")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        text = data["message"]
    return " ".join(text.split())[:2000]


class InfluxV2Sink(LineSink):
    """Writes to one bucket of one organisation."""

    def __init__(self, url: SinkUrl, cfg: InfluxConfig) -> None:
        self.url, where = server(url)
        self.org = url.org
        self.bucket = url.bucket
        self.cfg = cfg
        name = f"influxdb2://{where}?org={url.org}&bucket={url.bucket}"
        super().__init__(name, self._post, cfg, f"bucket {url.bucket!r} of org {url.org!r}")
        self._client: Any = None
        self._writes: Any = None

    def _token(self) -> str:
        path = secret_path(self.cfg.token_file, CREDENTIAL)
        if path is None:
            raise SinkError(
                f"{self.name}: no token: set aggregator.influxdb.token_file or the systemd "
                f"credential {CREDENTIAL}",
                retry_after=self.cfg.auth_retry,
            )
        try:
            return read_secret(path).reveal()
        except OSError as exc:
            raise SinkError(
                f"{self.name}: cannot read the token file {path}: {exc.strerror or exc}",
                retry_after=self.cfg.auth_retry,
            ) from None

    async def open(self) -> None:
        """Make the client (inside the loop, as aiohttp wants) and ping the server."""
        token = self._token()
        await self.close()
        options: dict[str, Any] = {"ssl_ca_cert": self.cfg.ca_file} if self.cfg.ca_file else {}
        self._client = InfluxDBClientAsync(
            url=self.url, token=token, org=self.org, timeout=int(self.cfg.timeout * 1000),
            enable_gzip=False, **options,
        )  # fmt: skip
        self._writes = WriteService(self._client.api_client)
        try:
            await PingService(self._client.api_client).get_ping_async()
        except ApiException as exc:
            await self.close()  # the runner opens again, and may stop, without closing
            raise SinkError(
                f"{self.name}: /ping answered {exc.status} {_message(exc.body)}"
            ) from None
        except TRANSPORT_ERRORS as exc:
            await self.close()
            raise SinkError(f"{self.name}: {describe(exc)}") from None

    async def _post(self, body: bytes) -> WriteReply:
        if self._writes is None:
            raise SinkError(f"{self.name}: not open")
        options = {"content_encoding": "gzip"} if self.cfg.gzip else {}
        try:
            await self._writes.post_write_async(
                org=self.org, bucket=self.bucket, body=body, precision="ns",
                content_type="text/plain; charset=utf-8", **options,
            )  # fmt: skip
        except ApiException as exc:
            headers = exc.headers or {}
            return WriteReply(
                int(exc.status or 0), _message(exc.body), retry_after(headers.get("Retry-After"))
            )
        except TRANSPORT_ERRORS as exc:
            raise SinkError(f"{self.name}: {describe(exc)}") from None
        return WriteReply(204)

    async def close(self) -> None:
        """Close the client's connection pool; safe after a failed or no ``open``."""
        client, self._client, self._writes = self._client, None, None
        if client is not None:
            await client.close()
