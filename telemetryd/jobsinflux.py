"""``telemetryd jobs --store influxdb://...``: the ended job parts from InfluxDB 1.x.

The sinks write one ``job`` point per node's ended part (time: its end; tags cluster,
node, slot; the record's scalar fields, and its GPU indices comma-joined in ``gpus``),
never running parts: InfluxDB answers "what ran", SQLite also "what runs now". The
points become ``JobRecord``s again (GPU UUIDs and per-GPU energy are not in the point,
and ``join`` does not need them), so both stores are joined by the same code.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from exporters.http import HttpClient, HttpUnavailable, basic_auth
from exporters.influx_write import server
from telemetryd.codec import DecodeError, convert
from telemetryd.config import AggregatorConfig
from telemetryd.errors import TelemetrydError
from telemetryd.jobs import Part
from telemetryd.model import JobRecord
from telemetryd.secrets import read_secret, secret_path
from telemetryd.urls import SinkUrl

CREDENTIAL = "influxdb-password"  # as the 1.x sink reads it (exporters/influxdb.py)
_NOT_FIELDS = {"time", "cluster", "node", "slot", "gpus", "gpu_count", "duration_s", "energy_j"}


class InfluxReadError(TelemetrydError):
    """The server could not be asked, or refused the query."""


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def query(url: SinkUrl, *, since_ns: int | None, job: str | None) -> str:
    """The InfluxQL for the parts that ended at or after ``since_ns`` (of ``job``)."""
    source = f'"{url.retention_policy}"."job"' if url.retention_policy else '"job"'
    where = [f"time >= {since_ns}"] if since_ns is not None else []
    if job is not None:
        where.append(f'"job" = {_quote(job)}')
    condition = " WHERE " + " AND ".join(where) if where else ""
    return f"SELECT * FROM {source}{condition} GROUP BY *"  # noqa: S608 - values quoted above


def records(answer: dict[str, Any], where: str) -> list[Part]:
    """The parts of a ``/query`` answer; a point that does not decode is one clear error."""
    parts: list[Part] = []
    for result in answer.get("results", []):
        if "error" in result:
            raise InfluxReadError(f"{where}: the query was refused: {result['error']}")
        for series in result.get("series", []):
            tags = series.get("tags", {})
            for values in series["values"]:
                row = dict(zip(series["columns"], values, strict=True))
                doc = {k: v for k, v in row.items() if k not in _NOT_FIELDS and v is not None}
                indices = [int(i) for i in str(row.get("gpus") or "").split(",") if i]
                start = row.get("start_ns")
                gpus = [{"index": i, "uuid": "", "start_ns": start} for i in indices]
                doc |= {"state": "ended", "gpus": gpus}
                try:
                    rec: JobRecord = convert(doc, JobRecord)
                except (DecodeError, ValueError) as exc:
                    raise InfluxReadError(
                        f"{where}: a job point of node {tags.get('node')!r} is not a job "
                        f"record: {exc}"
                    ) from None
                parts.append((str(tags.get("cluster", "")), str(tags.get("node", "")), rec))
    return parts


def fetch(
    url: SinkUrl, cfg: AggregatorConfig, *, since_ns: int | None, job: str | None
) -> list[Part]:
    """Ask the server (``GET /query``); InfluxReadError names what failed."""
    return asyncio.run(_fetch(url, cfg, since_ns=since_ns, job=job))


async def _fetch(
    url: SinkUrl, cfg: AggregatorConfig, *, since_ns: int | None, job: str | None
) -> list[Part]:
    base, where = server(url)
    where = f"influxdb://{where}/{url.database}"
    headers: dict[str, str] = {}
    if url.username:
        path = secret_path(cfg.influxdb.password_file, CREDENTIAL)
        if path is None:
            raise InfluxReadError(f"{where}: user {url.username!r} but no password: set "
                                  "aggregator.influxdb.password_file (-c FILE)")  # fmt: skip
        try:
            password = read_secret(path).reveal()
        except OSError as exc:
            raise InfluxReadError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
        headers["Authorization"] = basic_auth(url.username, password)
    params = {"db": url.database, "epoch": "ns", "q": query(url, since_ns=since_ns, job=job)}
    client = HttpClient(timeout_s=cfg.influxdb.timeout, ca_file=cfg.influxdb.ca_file)
    try:
        reply = await client.request("GET", f"{base}/query", headers=headers, params=params)
    except HttpUnavailable as exc:
        raise InfluxReadError(f"{where}: {exc}") from None
    finally:
        await client.close()
    try:
        answer = json.loads(reply.body)
    except ValueError:
        answer = None
    if reply.status >= 300 or not isinstance(answer, dict):
        raise InfluxReadError(f"{where}: /query answered {reply.status} {reply.text()[:300]}")
    return records(answer, where)
