"""Jobs across nodes: the agents' per-node job records joined into one view per job.

Each agent accounts only for its own GPUs (telemetryd/jobacct.py) and sends one
``JobRecord`` per job it holds: ``running`` in every report, ``ended`` once. A job that
spans nodes is therefore several records, one per node, and only here do they become one
job: its nodes and GPUs, the earliest start and latest end, the energy summed (exact,
since each part is an energy-counter delta), utilisation weighted by how many GPU-samples
each part saw. ``join`` is pure so the aggregator's live table (``JobTable``, which feeds
the ``job`` alert scope) and ``telemetryd jobs`` (which reads the store) give the same
numbers for the same records.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from telemetryd.codec import DecodeError, convert, to_builtins
from telemetryd.model import JobRecord, Report

Part = tuple[str, str, JobRecord]  # (cluster, node, record)

KEEP_ENDED_S = 3600.0  # how long the live table shows a job after its last record


@dataclass(slots=True)
class Job:
    """One job over every node that ran it (fields in docs/jobs.md)."""

    job: str
    kind: Literal["hpc", "pod"]
    cluster: str
    state: Literal["running", "ended", "silent"]
    nodes: list[str]
    gpus: list[str]  # "node:index", in node then index order
    start_ns: int
    end_ns: int
    samples: int
    energy_mj: int | None = None
    mean_power_w: float | None = None
    util_mean_pct: float | None = None
    util_peak_pct: int | None = None
    mem_peak_bytes: int | None = None
    user: str | None = None
    pod: str | None = None
    namespace: str | None = None

    @property
    def duration_s(self) -> float:
        """Seconds from the first GPU's start to the last one's end."""
        return (self.end_ns - self.start_ns) / 1e9

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with the duration and energy in joules added for readers."""
        out = asdict(self)
        out["duration_s"] = self.duration_s
        out["energy_j"] = None if self.energy_mj is None else self.energy_mj / 1000
        return out


SILENT_INTERVALS = 5  # a running job unheard of for this many of its intervals is silent
SILENT_MIN_S = 60.0


def settle(jobs: list[Job], now_ns: int) -> None:
    """Mark ``silent`` the running jobs no record has come for in a while.

    A store only learns that a job ended from its node's agent. When that agent stops (or
    its node dies) the job's last record says ``running`` for ever; a reader of the store
    says ``silent`` instead once no record came for five of the job's intervals (estimated
    from its samples, at least a minute). The aggregator's live table needs no such guess:
    a node's newest report lists every job running there (``JobTable``).
    """
    for job in jobs:
        if job.state != "running":
            continue
        interval_s = job.duration_s * len(job.nodes) / max(1, job.samples)
        quiet_s = (now_ns - job.end_ns) / 1e9
        if quiet_s > max(SILENT_MIN_S, SILENT_INTERVALS * interval_s):
            job.state = "silent"


def _newest(parts: Iterable[Part]) -> dict[tuple[str, str, str, int], Part]:
    """One record per (cluster, job, node, start): the ended one, else the latest.

    A store holds a part's running rows until its ended row replaces them, but a reader
    may see both (two sinks, a replayed report); counting both would double the energy.
    """
    out: dict[tuple[str, str, str, int], Part] = {}
    for part in parts:
        cluster, node, rec = part
        key = (cluster, rec.job, node, rec.start_ns)
        old = out.get(key)
        if old is None or _rank(rec) > _rank(old[2]):
            out[key] = part
    return out


def _rank(rec: JobRecord) -> tuple[bool, int]:
    return (rec.state == "ended", rec.end_ns)  # an ended record always wins


def join(parts: Iterable[Part]) -> list[Job]:
    """Join per-node job records into jobs, ordered by start time then job key."""
    grouped: dict[tuple[str, str], list[tuple[str, JobRecord]]] = {}
    for (cluster, job, _node, _start), (_, node, rec) in _newest(parts).items():
        grouped.setdefault((cluster, job), []).append((node, rec))
    jobs = [_join_one(cluster, job, items) for (cluster, job), items in grouped.items()]
    jobs.sort(key=lambda j: (j.start_ns, j.cluster, j.job))
    return jobs


def _join_one(cluster: str, key: str, items: list[tuple[str, JobRecord]]) -> Job:
    items.sort(key=lambda item: (item[0], item[1].start_ns))
    recs = [rec for _, rec in items]
    start = min(r.start_ns for r in recs)
    end = max(r.end_ns for r in recs)
    energies = [r.energy_mj for r in recs if r.energy_mj is not None]
    energy = sum(energies) if energies else None
    power = energy / 1e3 / ((end - start) / 1e9) if energy is not None and end > start else None
    weighted = [(r.util_mean_pct, r.samples * len(r.gpus)) for r in recs]
    weight = sum(w for u, w in weighted if u is not None)
    util_mean = sum(u * w for u, w in weighted if u is not None) / weight if weight else None
    gpus = sorted({(node, g.index) for node, rec in items for g in rec.gpus})
    return Job(
        job=key, kind=recs[0].kind, cluster=cluster,
        state="running" if any(r.state == "running" for r in recs) else "ended",
        nodes=sorted({node for node, _ in items}),
        gpus=[f"{node}:{index}" for node, index in gpus],
        start_ns=start, end_ns=end, samples=sum(r.samples for r in recs),
        energy_mj=energy,
        mean_power_w=power,
        util_mean_pct=util_mean,
        util_peak_pct=_max(r.util_peak_pct for r in recs),
        mem_peak_bytes=_max(r.mem_peak_bytes for r in recs),
        user=_first(r.user for r in recs), pod=_first(r.pod for r in recs),
        namespace=_first(r.namespace for r in recs),
    )  # fmt: skip


def _max(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _first(values: Iterable[str | None]) -> str | None:
    return next((v for v in values if v is not None), None)


class JobTable:
    """The aggregator's live view of jobs, fed every accepted report.

    Only the newest record per (cluster, job, node) counts, so a late report from an
    agent's spool does not turn an ended part back into a running one. The newest report
    of a node lists every job running there, so a running part it no longer lists is
    taken as ended (its ended record was lost or the agent stopped accounting). A job is
    dropped ``keep_s`` after its last record; ``snapshot``/``restore`` carry the table
    over an aggregator restart (with the fleet snapshot; the WAL replay adds the rest).
    """

    def __init__(self, keep_s: float = KEEP_ENDED_S) -> None:
        self.keep_ns = int(keep_s * 1e9)
        # Per node, so a report touches only its own node's parts: (report time, record).
        self.by_node: dict[tuple[str, str], dict[str, tuple[int, JobRecord]]] = {}
        self.latest: dict[tuple[str, str], int] = {}  # newest report time per node

    def _parts(self) -> Iterator[tuple[str, str, int, JobRecord]]:
        for (cluster, node), parts in self.by_node.items():
            for t, rec in parts.values():
                yield cluster, node, t, rec

    def observe(self, report: Report) -> None:
        """Take the job records of an accepted report."""
        node_key = (report.cluster, report.node)
        parts = self.by_node.get(node_key)
        if parts is None:
            if not report.jobs:
                return  # a node without job accounting costs nothing
            parts = self.by_node[node_key] = {}
        t = report.time_ns
        for rec in report.jobs:
            old = parts.get(rec.job)
            if old is None or t >= old[0]:
                parts[rec.job] = (t, rec)
        if t < self.latest.get(node_key, 0):
            return
        self.latest[node_key] = t
        listed = {rec.job for rec in report.jobs}
        for job, (seen, rec) in list(parts.items()):
            if rec.state == "running" and job not in listed:
                parts[job] = (seen, convert({**to_builtins(rec), "state": "ended"}, JobRecord))

    def prune(self, now_ns: int) -> None:
        """Drop jobs whose newest record is older than ``keep_s``."""
        newest: dict[tuple[str, str], int] = {}
        for cluster, _node, _t, rec in self._parts():
            newest[(cluster, rec.job)] = max(newest.get((cluster, rec.job), 0), rec.end_ns)
        for (cluster, node), parts in list(self.by_node.items()):
            for job in [j for j in parts if newest[(cluster, j)] < now_ns - self.keep_ns]:
                del parts[job]
            if not parts:
                del self.by_node[(cluster, node)]

    def jobs(self, now_ns: int | None = None) -> list[Job]:
        """Every job in the table, joined (pruned first when ``now_ns`` is given)."""
        if now_ns is not None:
            self.prune(now_ns)
        return join((cluster, node, rec) for cluster, node, _t, rec in self._parts())

    def running(self, now_ns: int | None = None) -> list[Job]:
        """The jobs with at least one running part."""
        return [j for j in self.jobs(now_ns) if j.state == "running"]

    def held(self, now_ns: int) -> list[tuple[Job, list[tuple[str, int]]]]:
        """The running jobs, each with the (node, GPU index) pairs it holds now."""
        holding: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for cluster, node, _t, rec in self._parts():
            if rec.state == "running":
                gpus = [(node, g.index) for g in rec.gpus if g.end_ns is None]
                holding.setdefault((cluster, rec.job), []).extend(gpus)
        return [(j, sorted(holding[(j.cluster, j.job)])) for j in self.running(now_ns)]

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for the fleet snapshot."""
        return {
            "parts": [[c, n, t, to_builtins(rec)] for c, n, t, rec in self._parts()],
            "latest": [[c, n, t] for (c, n), t in self.latest.items()],
        }

    def restore(self, data: object) -> None:
        """Load a ``snapshot``; entries that do not decode are skipped (a newer format)."""
        if not isinstance(data, dict):
            return
        for item in data.get("parts", []):
            try:
                cluster, node, t, raw = item
                rec: JobRecord = convert(raw, JobRecord)
            except (ValueError, TypeError, DecodeError):
                continue
            self.by_node.setdefault((str(cluster), str(node)), {})[rec.job] = (int(t), rec)
        for item in data.get("latest", []):
            try:
                cluster, node, t = item
            except (ValueError, TypeError):
                continue
            self.latest[(str(cluster), str(node))] = int(t)
