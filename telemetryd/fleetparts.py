"""Viewers' side of several aggregators: merge the members' retained parts into one.

With ``aggregator.members`` above 1 (docs/sharing.md) each member publishes the nodes it
owns on ``_fleet/part/<member>`` and its pending alerts on ``_pending/part/<member>``,
never the plain topics, which two members would overwrite. Every viewer (top, status,
the demo's report) merges the parts here, in one place, so they all show the same
fleet: the union of the nodes, the counters summed, and each member's sinks kept apart
under its aggregator's name (two members' "sqlite" are two different stores).
"""

from __future__ import annotations

from collections.abc import Mapping

from telemetryd.alerting.model import severity_rank
from telemetryd.alerting.wire import PendingAlerts
from telemetryd.codec import convert, to_builtins
from telemetryd.model import FleetNode, FleetSummary, SinkState


def merge_fleet(parts: Mapping[int, FleetSummary]) -> FleetSummary:
    """One summary of a cluster from its members' parts (at least one).

    A node in two parts (it changed owner when the membership changed, and the old
    owner's part is not yet republished) is taken from the part that saw it last. The
    time is the oldest part's, so a member that stopped publishing shows as stale.
    """
    ordered = [parts[m] for m in sorted(parts)]
    nodes: dict[str, FleetNode] = {}
    for part in ordered:
        for node in part.nodes:
            have = nodes.get(node.node)
            if have is None or (node.last_seen_ns or 0) > (have.last_seen_ns or 0):
                nodes[node.node] = node
    rejected: dict[str, int] = {}
    for part in ordered:
        for reason, count in part.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
    dropped = [p.broker_dropped for p in ordered if p.broker_dropped is not None]
    sinks = [_named(s, part.aggregator) for part in ordered for s in part.sinks]
    return FleetSummary(
        schema=1, cluster=ordered[0].cluster, time_ns=min(p.time_ns for p in ordered),
        aggregator="+".join(p.aggregator for p in ordered),
        nodes=[nodes[n] for n in sorted(nodes)],
        received=sum(p.received for p in ordered), accepted=sum(p.accepted for p in ordered),
        duplicates=sum(p.duplicates for p in ordered), rejected=rejected,
        broker_dropped=max(dropped) if dropped else None,  # one broker's counter, seen by all
        wal_bytes=sum(p.wal_bytes for p in ordered), sinks=sinks,
    )  # fmt: skip


def _named(sink: SinkState, aggregator: str) -> SinkState:
    named: SinkState = convert({**to_builtins(sink), "name": f"{aggregator}/{sink.name}"},
                               SinkState)  # fmt: skip
    return named


def merge_pending(parts: Mapping[int, PendingAlerts]) -> PendingAlerts:
    """One list of pending alerts from the members' parts, most severe and oldest first."""
    alerts = [a for m in sorted(parts) for a in parts[m].alerts]
    alerts.sort(key=lambda a: (severity_rank(a.severity), a.starts_ns, a.fingerprint))
    return PendingAlerts(
        time_ns=max(p.time_ns for p in parts.values()),
        alerts=alerts,
        truncated=sum(p.truncated for p in parts.values()),
    )
