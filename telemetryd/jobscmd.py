"""``telemetryd jobs``: who used the GPUs, from the store, with energy and utilisation.

The aggregator's SQLite store keeps every node's job records (table ``job``, one row per
job and node, replaced until the part ended); here they are read back and joined with
``telemetryd.jobs.join``, the same code the aggregator's live table uses, so a job's
numbers do not depend on where they are read. Without ``--store`` the store is the one
the aggregator of the configuration writes: its ``sqlite://`` sink, or ``telemetry.db``
in its state directory (its default sink). An ``influxdb://`` store (1.x) holds the
ended parts only (telemetryd/jobsinflux.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from exporters.base import SinkError
from exporters.sqlite_reader import SqliteReader
from telemetryd import statedir
from telemetryd.config import AggregatorConfig
from telemetryd.errors import ConfigError
from telemetryd.jobs import Job, Part, join, settle
from telemetryd.urls import SinkUrl, UrlError, parse_sink_url, redact

_EXPECTED = "expected sqlite:///ABSOLUTE/PATH (the aggregator's store) or influxdb://HOST:PORT/DB"
Fetch = Callable[[int | None, str | None], list[Part]]  # (since_ns, job) -> parts


def store_url(url: str | None, cfg: AggregatorConfig) -> SinkUrl:
    """The store to read; ConfigError (one line, exit 2) when it is not one jobs reads."""
    if url is None:
        sqlite = [u for u in cfg.sinks if u.startswith("sqlite:")]
        url = (
            sqlite[0] if sqlite else f"sqlite://{statedir.resolve(cfg.state_dir) / 'telemetry.db'}"
        )
    try:
        parsed = parse_sink_url(url)
    except UrlError as exc:
        raise ConfigError([f"--store: {exc}"]) from None
    if parsed.kind == "influxdb2":
        raise ConfigError([f"--store {redact(url)!r}: reading InfluxDB 2.x is not supported; "
                           f"{_EXPECTED}"])  # fmt: skip
    if parsed.kind == "sqlite" and not Path(parsed.path).is_file():
        raise ConfigError([f"--store: {parsed.path}: no such file; {_EXPECTED}, or -c FILE"])
    return parsed


def read_jobs(
    fetch: Fetch, *, since_ns: int | None = None, node: str | None = None, job: str | None = None
) -> list[Job]:
    """The joined jobs of a store: those that ended at or after ``since_ns`` or still run.

    A job is shown whole: once it matches, the parts of it on other nodes (which may
    have ended before ``since_ns``) and on nodes other than ``node`` are read too.
    """
    parts = fetch(since_ns, job)
    keys = {(cluster, rec.job) for cluster, n, rec in parts if node in (None, n)}
    parts = _of(parts, keys)
    lower = since_ns
    while lower is not None and parts:
        first = min(rec.start_ns for _c, _n, rec in parts)
        if first >= lower:
            break  # a part that ended before the jobs' earliest start is not theirs
        lower = first
        parts = _of(fetch(lower, job), keys)
    return join(parts)


def _of(parts: list[Part], keys: set[tuple[str, str]]) -> list[Part]:
    return [p for p in parts if (p[0], p[2].job) in keys]


def _sqlite_jobs(
    path: Path, *, since_ns: int | None, node: str | None, job: str | None
) -> list[Job]:
    try:
        reader = SqliteReader(path)
    except SinkError as exc:
        raise ConfigError([f"--store: {exc}"]) from None
    try:
        return read_jobs(lambda s, j: reader.job_parts(since_ns=s, job=j), since_ns=since_ns,
                         node=node, job=job)  # fmt: skip
    except SinkError as exc:
        raise ConfigError([f"--store: {exc}"]) from None
    finally:
        reader.close()


def write_json(jobs: list[Job], out: TextIO) -> None:
    """One JSON object: ``{"jobs": [...]}``, fields as in docs/jobs.md."""
    json.dump({"jobs": [j.to_dict() for j in jobs]}, out, indent=1)
    out.write("\n")


def run(
    cfg: AggregatorConfig,
    store: str | None,
    *,
    since_ns: int | None,
    node: str | None,
    job: str | None,
    as_json: bool,
    out: TextIO,
) -> None:
    """The whole command, after the CLI parsed its options."""
    url = store_url(store, cfg)
    if url.kind == "sqlite":
        jobs = _sqlite_jobs(Path(url.path), since_ns=since_ns, node=node, job=job)
    else:
        from telemetryd import jobsinflux

        def fetch(since: int | None, job_id: str | None) -> list[Part]:
            return jobsinflux.fetch(url, cfg, since_ns=since, job=job_id)

        jobs = read_jobs(fetch, since_ns=since_ns, node=node, job=job)
    settle(jobs, time.time_ns())
    if as_json:
        write_json(jobs, out)
        return
    from telemetryd.console import print_jobs

    print_jobs(jobs, file=out)
