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


# -- several aggregators on one shared subscription (docs/sharing.md) ------------------------
FORWARD_ROOT = "telemetryd/fwd"


def fleet_part_topic(cluster: str, member: int | str) -> str:
    """One member's retained share of the fleet summary ("+": every member's)."""
    return f"{ROOT}/{cluster}/_fleet/part/{member}"


def pending_part_topic(cluster: str, member: int) -> str:
    """One member's retained pending alerts (viewers merge the parts)."""
    return f"{ROOT}/{cluster}/_pending/part/{member}"


def forward_topic(group: str, member: int, original: str) -> str:
    """Where a member hands a message of a node it does not own to the owner ``member``.

    A root of its own, outside ``telemetry/v1``: viewers watching ``telemetry/v1/+/#``
    never see the copies, and the original topic rides along so the owner validates the
    message exactly as if it had come straight from the agent.
    """
    return f"{FORWARD_ROOT}/{group}/{member}/{original}"


def forward_filter(group: str, member: int) -> str:
    """The (not shared) filter of everything forwarded to ``member``."""
    return f"{FORWARD_ROOT}/{group}/{member}/#"


def parse_forward_topic(topic: str) -> str | None:
    """The original topic of a forwarded message, or None when ``topic`` is not one."""
    if not topic.startswith(FORWARD_ROOT + "/"):
        return None
    parts = topic[len(FORWARD_ROOT) + 1 :].split("/", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].startswith(ROOT + "/"):
        return None
    return parts[2]


def part_member(rest: list[str]) -> int | None:
    """The member of ``[part, <member>]`` after ``_fleet``/``_pending``, else None."""
    if len(rest) == 2 and rest[0] == "part" and rest[1].isdigit():
        return int(rest[1])
    return None
