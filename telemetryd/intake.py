"""Step 2 of the aggregator's batch (aggregator.py): sort what the broker delivered.

Each message goes one or more ways: to the write-ahead log and the sinks (``payloads``,
``stored``), to the live state (``fed``: fleet, jobs, metrics, alerts), to another
aggregator (``forwards``), to the dead letters, or to the silence-request handler. Alone,
an aggregator stores and feeds every new report. In a group (shard.py) it stores every
report that came through the shared subscription, feeds only its own nodes' and forwards
the rest (reports and presence) to their owner; what comes forwarded was stored by the
sender, so it is only fed - after the same validation and deduplication as any report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporters.mqtt import Message
from telemetryd.deadletter import DeadLetters
from telemetryd.fleet import Fleet
from telemetryd.ingest import Limits, Rejected, validate
from telemetryd.model import Report, Status
from telemetryd.shard import Shard
from telemetryd.topics import parse_forward_topic, request_cluster


@dataclass(slots=True)
class Sorted:
    """One batch, by where each message goes."""

    payloads: list[bytes] = field(default_factory=list)  # to the WAL, in arrival order
    stored: list[Report] = field(default_factory=list)  # the reports of ``payloads``
    fed: list[Report] = field(default_factory=list)  # new reports of nodes owned here
    statuses: list[Status] = field(default_factory=list)  # presence of nodes owned here
    forwards: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, payload)
    requests: list[Message] = field(default_factory=list)  # silence requests
    counters: list[Message] = field(default_factory=list)  # the broker's $SYS topics
    events: int = 0
    own: int = 0  # aggregators' own publications the node filters also match: skipped


def is_aggregator_topic(topic: str) -> bool:
    """``telemetry/v1/<cluster>/_<something>/<kind>``: published by an aggregator, not a node.

    The node filters (``telemetry/v1/+/+/event``) also match ``.../_fleet/event`` and the
    rollup of a node named ``report``; node names never start with "_" (names.py), so such a
    message is ours coming back, not a bad report to dead-letter.
    """
    parts = topic.split("/", 4)
    return len(parts) == 5 and parts[3].startswith("_")


def sort_batch(
    batch: list[Message],
    *,
    fleet: Fleet,
    limits: Limits,
    deadletters: DeadLetters,
    shard: Shard | None,
    now: int,
) -> Sorted:
    """Validate and deduplicate ``batch``; refused messages join the dead letters."""
    out = Sorted()
    in_batch: set[tuple[str, str, str, int]] = set()
    for message in batch:
        if message.topic.startswith("$SYS/"):
            out.counters.append(message)
            continue
        if request_cluster(message.topic) is not None:
            out.requests.append(message)  # an operator's silence request, never a report
            continue
        original = parse_forward_topic(message.topic)
        forwarded = original is not None
        topic = original if original is not None else message.topic
        if is_aggregator_topic(topic):
            out.own += 1  # our own .../_fleet/event (or a rollup of a node named "event")
            continue
        if not forwarded:
            fleet.received += 1  # a forwarded copy was counted by the member that got it
        result = validate(topic, message.payload, limits, now)
        if isinstance(result, Rejected):
            deadletters.add(topic, result.reason, result.detail, message.payload, now)
            continue
        if isinstance(result, Report):
            mine = forwarded or shard is None or shard.owns(result.cluster, result.node)
            key = (result.cluster, result.node, result.boot_id, result.seq)
            if key in in_batch or (mine and fleet.seen(result)):
                if mine:
                    fleet.count_duplicate(result)
                continue
            in_batch.add(key)
            if not forwarded:
                out.payloads.append(message.payload)
                out.stored.append(result)
            if mine:
                out.fed.append(result)
            elif shard is not None:
                out.forwards.append((shard.forward_to(result.cluster, result.node, topic),
                                     message.payload))  # fmt: skip
        elif isinstance(result, Status):
            if forwarded or shard is None or shard.owns(result.cluster, result.node):
                out.statuses.append(result)
            else:
                out.forwards.append((shard.forward_to(result.cluster, result.node, topic),
                                     message.payload))  # fmt: skip
        else:
            out.events += 1  # only counted: nothing per node to keep in one place
    return out
