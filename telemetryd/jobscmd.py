"""``telemetryd jobs``: who used the GPUs, from the store, with energy and utilisation.

The aggregator's SQLite store keeps every node's job records (table ``job``, one row per
job and node, replaced until the part ended); here they are read back and joined with
``telemetryd.jobs.join``, the same code the aggregator's live table uses, so a job's
numbers do not depend on where they are read. Without ``--store`` the store is the one
the aggregator of the configuration writes: its ``sqlite://`` sink, or ``telemetry.db``
in its state directory (its default sink).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from exporters.base import SinkError
from exporters.sqlite_reader import SqliteReader
from telemetryd import statedir
from telemetryd.config import AggregatorConfig
from telemetryd.errors import ConfigError
from telemetryd.jobs import Job, Part, join
from telemetryd.urls import UrlError, parse_sink_url, redact

_EXPECTED = "expected sqlite:///ABSOLUTE/PATH (the aggregator's store)"


def store_path(url: str | None, cfg: AggregatorConfig) -> Path:
    """The SQLite file to read; ConfigError (one line, exit 2) when it is not one."""
    if url is None:
        sqlite = [u for u in cfg.sinks if u.startswith("sqlite:")]
        url = (
            sqlite[0] if sqlite else f"sqlite://{statedir.resolve(cfg.state_dir) / 'telemetry.db'}"
        )
    try:
        parsed = parse_sink_url(url)
    except UrlError as exc:
        raise ConfigError([f"--store: {exc}"]) from None
    if parsed.kind != "sqlite":
        raise ConfigError([f"--store {redact(url)!r}: jobs reads the SQLite store; {_EXPECTED}"])
    path = Path(parsed.path)
    if not path.is_file():
        raise ConfigError([f"--store: {path}: no such file; {_EXPECTED}, or -c with its config"])
    return path


def read_jobs(
    path: Path, *, since_ns: int | None = None, node: str | None = None, job: str | None = None
) -> list[Job]:
    """The joined jobs of the store: those that ended at or after ``since_ns`` or still run.

    A job is shown whole: once it matches, the parts of it on other nodes (which may
    have ended before ``since_ns``) and on nodes other than ``node`` are read too.
    """
    try:
        reader = SqliteReader(path)
    except SinkError as exc:
        raise ConfigError([f"--store: {exc}"]) from None
    try:
        parts = reader.job_parts(since_ns=since_ns, job=job)
        keys = {(cluster, rec.job) for cluster, n, rec in parts if node in (None, n)}
        parts = _of(parts, keys)
        lower = since_ns
        while lower is not None and parts:
            first = min(rec.start_ns for _c, _n, rec in parts)
            if first >= lower:
                break  # a part that ended before the jobs' earliest start is not theirs
            lower = first
            parts = _of(reader.job_parts(since_ns=lower, job=job), keys)
    except SinkError as exc:
        raise ConfigError([f"--store: {exc}"]) from None
    finally:
        reader.close()
    return join(parts)


def _of(parts: list[Part], keys: set[tuple[str, str]]) -> list[Part]:
    return [p for p in parts if (p[0], p[2].job) in keys]


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
    jobs = read_jobs(store_path(store, cfg), since_ns=since_ns, node=node, job=job)
    if as_json:
        write_json(jobs, out)
        return
    from telemetryd.console import print_jobs

    print_jobs(jobs, file=out)
