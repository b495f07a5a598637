"""The MQTT topic tree, in one place.

``telemetry/v1/<cluster>/<node>/{report,event,status}`` from agents; the aggregator's own
``telemetry/v1/<cluster>/_fleet`` (retained summary), ``.../_fleet/event``,
``.../_alerts/<fingerprint>`` and ``.../_rollup/<node>`` (retained per-node rollups, the
part of a site that federation bridges out: docs/federation.md). Names were validated
before they get here (names.py), so a topic built here cannot escape its place; parsing
refuses anything else with the reason.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from telemetryd.names import name_problem

ROOT = "telemetry/v1"
Kind = Literal["report", "event", "status"]
KINDS: tuple[Kind, ...] = ("report", "event", "status")


def node_topic(cluster: str, node: str, kind: Kind) -> str:
    """Where an agent publishes ``kind``."""
    return f"{ROOT}/{cluster}/{node}/{kind}"


def fleet_topic(cluster: str) -> str:
    """The aggregator's retained fleet summary of ``cluster``."""
    return f"{ROOT}/{cluster}/_fleet"


def fleet_event_topic(cluster: str) -> str:
    """Events the aggregator itself observes (a GPU vanished from a node's inventory)."""
    return f"{ROOT}/{cluster}/_fleet/event"


def rollup_topic(cluster: str, node: str) -> str:
    """The aggregator's retained rollup of one node (rollupmodel.Rollup; empty: forgotten)."""
    return f"{ROOT}/{cluster}/_rollup/{node}"


def parse_rollup_topic(topic: str) -> tuple[str, str] | str:
    """(cluster, node) of a rollup topic, or why it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT or parts[3] != "_rollup":
        return f"expected {ROOT}/<cluster>/_rollup/<node>"
    for what, value in (("cluster", parts[2]), ("node", parts[4])):
        problem = name_problem(value)
        if problem:
            return f"{what} {value!r} {problem}"
    return parts[2], parts[4]


def subscriptions(clusters: list[str], shared_group: str = "") -> list[str]:
    """The aggregator's filters: reports, events and status of the given clusters."""
    prefix = f"$share/{shared_group}/" if shared_group else ""
    return [f"{prefix}{ROOT}/{c}/+/{kind}" for c in clusters for kind in KINDS]


class NodeTopic(NamedTuple):
    """A parsed agent topic."""

    cluster: str
    node: str
    kind: Kind


def parse_node_topic(topic: str) -> NodeTopic | str:
    """Parse an agent topic, or return why it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT:
        return f"expected {ROOT}/<cluster>/<node>/<report|event|status>"
    cluster, node, kind = parts[2], parts[3], parts[4]
    for what, value in (("cluster", cluster), ("node", node)):
        problem = name_problem(value)
        if problem:
            return f"{what} {value!r} {problem}"
    if kind not in KINDS:
        return f"unknown message kind {kind!r}; expected report, event or status"
    return NodeTopic(cluster, node, kind)


def alert_topic(cluster: str, fingerprint: str) -> str:
    """The aggregator's retained state of one firing alert (empty once it resolved)."""
    return f"{ROOT}/{cluster}/_alerts/{fingerprint}"


def pending_topic(cluster: str) -> str:
    """The aggregator's retained list of pending alerts (alerting/wire.py PendingAlerts)."""
    return f"{ROOT}/{cluster}/_pending"


def silences_topic(cluster: str) -> str:
    """The aggregator's retained list of silences (alerting/wire.py Silences)."""
    return f"{ROOT}/{cluster}/_silences"


def silence_request_topic(cluster: str) -> str:
    """Where a terminal UI asks the aggregator to add a silence (SilenceRequest)."""
    return f"{ROOT}/{cluster}/_silences/request"


def silence_request_filters(clusters: list[str]) -> list[str]:
    """The aggregator's filters for silence requests, when it accepts them.

    Never shared ($share/...), even when reports are: silences live in each aggregator's
    own state directory, so every aggregator must apply every request to mute the alerts
    it evaluates (the request id makes the silence the same everywhere).
    """
    return [silence_request_topic(c) for c in clusters]


def request_cluster(topic: str) -> str | None:
    """The cluster of a silence-request topic, or None when ``topic`` is not one."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[3:] == ["_silences", "request"] and "/".join(parts[:2]) == ROOT:
        return parts[2]
    return None


def watch_filter(cluster: str) -> str:
    """Everything a viewer (top, status) reads of ``cluster`` ("+" for all clusters)."""
    return f"{ROOT}/{cluster}/#"
