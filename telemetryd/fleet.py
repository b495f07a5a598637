"""The live state of the fleet: presence, sequence accounting, inventory, clock skew.

Sequence numbers are kept per (node, boot) as sorted runs of seen numbers, exact rather
than windowed: after an outage an agent drains old reports (low numbers) while new ones
(high numbers) keep arriving, and both must be recognised. Runs make a duplicate from
redelivery cost nothing, and a hole between runs is a missing report the operator sees.
The state is snapshotted to disk with the WAL index it covers, so a restarted aggregator
still knows what it has already accepted.
"""

from __future__ import annotations

import bisect
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from telemetryd.model import (
    SCHEMA_VERSION,
    Event,
    EventMessage,
    FleetNode,
    FleetSummary,
    Report,
    SinkState,
    Status,
)

_BOOTS_KEPT = 16  # per node: enough for restarts, bounded for a node that restarts often


class Seqs:
    """Seen sequence numbers as sorted, disjoint, inclusive runs ``[lo, hi]``."""

    __slots__ = ("runs",)

    def __init__(self, runs: list[list[int]] | None = None) -> None:
        self.runs: list[list[int]] = runs or []

    def add(self, seq: int) -> bool:
        """Record ``seq``; False if it was already seen (a duplicate)."""
        runs = self.runs
        i = bisect.bisect_right(runs, [seq, float("inf")]) - 1  # last run starting <= seq
        if i >= 0 and runs[i][0] <= seq <= runs[i][1]:
            return False
        joins_left = i >= 0 and runs[i][1] == seq - 1
        joins_right = i + 1 < len(runs) and runs[i + 1][0] == seq + 1
        if joins_left and joins_right:
            runs[i][1] = runs[i + 1][1]
            del runs[i + 1]
        elif joins_left:
            runs[i][1] = seq
        elif joins_right:
            runs[i + 1][0] = seq
        else:
            runs.insert(i + 1, [seq, seq])
        return True

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self.runs, [seq, float("inf")]) - 1
        return i >= 0 and self.runs[i][0] <= seq <= self.runs[i][1]

    def missing(self) -> int:
        """Numbers between the first and last seen that never arrived."""
        return sum(b[0] - a[1] - 1 for a, b in zip(self.runs, self.runs[1:], strict=False))

    @property
    def last(self) -> int | None:
        """The highest number seen."""
        return self.runs[-1][1] if self.runs else None


@dataclass(slots=True)
class NodeState:
    """What the aggregator knows of one node."""

    cluster: str
    node: str
    status: str = "unknown"
    status_boot: str = ""
    last_seen_ns: int | None = None
    last_report_ns: int | None = None
    boot_id: str | None = None  # the boot of the latest report
    interval_s: float | None = None
    version: str | None = None
    boots: dict[str, Seqs] = field(default_factory=dict)
    reports: int = 0
    duplicates: int = 0
    dropped: int = 0
    skew_s: float | None = None
    gpus: dict[str, int] = field(default_factory=dict)  # uuid -> index
    gpus_failed: int = 0


class Fleet:
    """All nodes; fed by the aggregator after each batch is durable."""

    def __init__(self, *, silent_after: float, name: str = "aggregator") -> None:
        self.silent_after = silent_after
        self.name = name
        self.nodes: dict[tuple[str, str], NodeState] = {}
        self.received = 0
        self.accepted = 0
        self.duplicates = 0
        self.broker_dropped: int | None = None

    def _node(self, cluster: str, node: str) -> NodeState:
        key = (cluster, node)
        state = self.nodes.get(key)
        if state is None:
            state = self.nodes[key] = NodeState(cluster, node)
        return state

    def seen(self, report: Report) -> bool:
        """Whether (node, boot, seq) was accepted before; changes nothing."""
        state = self.nodes.get((report.cluster, report.node))
        seqs = state.boots.get(report.boot_id) if state else None
        return seqs is not None and report.seq in seqs

    def count_duplicate(self, report: Report) -> None:
        """Count a redelivered report (it changes nothing else)."""
        self._node(report.cluster, report.node).duplicates += 1
        self.duplicates += 1

    def claim(self, report: Report) -> bool:
        """Mark (node, boot, seq) as accepted, once it is durable; False if it already was."""
        state = self._node(report.cluster, report.node)
        seqs = state.boots.get(report.boot_id)
        if seqs is None:
            seqs = state.boots[report.boot_id] = Seqs()
            while len(state.boots) > _BOOTS_KEPT:
                del state.boots[next(iter(state.boots))]
        return seqs.add(report.seq)

    def on_report(self, report: Report, received_ns: int) -> list[EventMessage]:
        """Update the node from a newly accepted report; return fleet events it implies."""
        state = self._node(report.cluster, report.node)
        state.reports += 1
        self.accepted += 1
        newest = state.last_report_ns is None or report.time_ns >= state.last_report_ns
        if not newest:
            return []  # a late report from the spool: it is history, not the present
        state.last_seen_ns = received_ns
        state.last_report_ns = report.time_ns
        if state.status == "offline" and report.boot_id != state.status_boot:
            state.status, state.status_boot = "online", report.boot_id  # a newer boot reports
        state.boot_id = report.boot_id
        state.interval_s = report.interval_s
        state.version = report.agent.version
        state.dropped = report.agent.dropped or 0
        state.skew_s = round((received_ns - report.time_ns) / 1e9, 3)
        state.gpus_failed = sum(1 for g in report.gpus if g.error is not None)
        current = {g.uuid: g.index for g in report.gpus}
        events = [
            EventMessage(
                schema=SCHEMA_VERSION, cluster=report.cluster, node=report.node,
                boot_id=report.boot_id, seq=report.seq,
                event=Event(
                    time_ns=received_ns, kind="gpu_missing", severity="critical",
                    gpu_index=index, uuid=uuid,
                    message=f"GPU {index} ({uuid}) is no longer in the node's inventory",
                    action="Check the node: a GPU that vanishes fell off the bus or was unbound.",
                ),
            )
            for uuid, index in state.gpus.items()
            if uuid not in current
        ]  # fmt: skip
        state.gpus = current
        return events

    def on_status(self, status: Status, received_ns: int) -> None:
        """Presence from an agent's retained status (or its Last Will)."""
        state = self._node(status.cluster, status.node)
        if (
            status.state == "offline"
            and state.status == "online"
            and state.status_boot
            not in (
                "",
                status.boot_id,
            )
        ):
            return  # the will of an older boot, delivered late: a newer boot is online
        if (
            status.state == "offline"
            and state.boot_id
            and not state.status_boot
            and status.boot_id != state.boot_id
        ):
            return  # no status seen yet, and a newer boot is reporting
        state.status = status.state
        state.status_boot = status.boot_id
        state.interval_s = state.interval_s or status.interval_s
        state.version = state.version or status.version
        if status.state == "online":
            state.last_seen_ns = max(state.last_seen_ns or 0, received_ns)
            for gpu in status.gpus:
                state.gpus.setdefault(gpu.uuid, gpu.index)

    def node_state(
        self, state: NodeState, now_ns: int
    ) -> Literal["online", "offline", "silent", "unknown"]:
        """online, offline (by its status), silent (no report for silent_after intervals)."""
        if state.status == "offline":
            return "offline"
        if state.last_seen_ns is None:
            return "unknown"
        limit = self.silent_after * (state.interval_s or 10.0)
        return "silent" if (now_ns - state.last_seen_ns) / 1e9 > limit else "online"

    def clusters(self) -> list[str]:
        """Every cluster with at least one node."""
        return sorted({cluster for cluster, _ in self.nodes})

    def summary(
        self, cluster: str, *, rejected: dict[str, int], wal_bytes: int, sinks: list[SinkState]
    ) -> FleetSummary:
        """The retained summary of one cluster."""
        now = time.time_ns()
        nodes = [
            FleetNode(
                node=s.node, state=self.node_state(s, now), last_seen_ns=s.last_seen_ns,
                boot_id=s.boot_id, seq=s.boots[s.boot_id].last if s.boot_id in s.boots else None,
                interval_s=s.interval_s, gpus=len(s.gpus), gpus_failed=s.gpus_failed,
                reports=s.reports, duplicates=s.duplicates,
                missing=sum(q.missing() for q in s.boots.values()), dropped=s.dropped,
                skew_s=s.skew_s, version=s.version,
            )
            for (c, _), s in sorted(self.nodes.items())
            if c == cluster
        ]  # fmt: skip
        return FleetSummary(
            schema=SCHEMA_VERSION, cluster=cluster, time_ns=now, aggregator=self.name,
            nodes=nodes, received=self.received, accepted=self.accepted,
            duplicates=self.duplicates, rejected=dict(rejected),
            broker_dropped=self.broker_dropped, wal_bytes=wal_bytes, sinks=sinks,
        )  # fmt: skip

    # -- persistence -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The sequence accounting and counters, JSON-able (presence is re-learnt live)."""
        return {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "nodes": [
                {"cluster": s.cluster, "node": s.node, "reports": s.reports,
                 "duplicates": s.duplicates,
                 "boots": {boot: seqs.runs for boot, seqs in s.boots.items()}}
                for s in self.nodes.values()
            ],
        }  # fmt: skip

    def restore(self, data: dict[str, Any]) -> None:
        """Load a snapshot written by ``snapshot``."""
        self.received = int(data.get("received", 0))
        self.accepted = int(data.get("accepted", 0))
        self.duplicates = int(data.get("duplicates", 0))
        for item in data.get("nodes", []):
            state = self._node(item["cluster"], item["node"])
            state.reports = int(item.get("reports", 0))
            state.duplicates = int(item.get("duplicates", 0))
            state.boots = {b: Seqs([list(r) for r in runs]) for b, runs in item["boots"].items()}


def dumps(data: dict[str, Any]) -> bytes:
    """Snapshot bytes."""
    return json.dumps(data, separators=(",", ":")).encode()
