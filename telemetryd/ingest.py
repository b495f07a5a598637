"""Validation of what arrives from the broker: accepted, or rejected with one reason.

Every refusal has a reason from a fixed set (so it can be counted by reason and alerted
on) and a detail line that names the field or value at fault. Nothing here raises: a
bad message must never stop or slow the consumer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from telemetryd.codec import DecodeError
from telemetryd.model import (
    EventMessage,
    Report,
    Status,
    decode_event_message,
    decode_report,
    decode_status,
)
from telemetryd.topics import parse_node_topic

Reason = Literal[
    "oversized",
    "topic",
    "json",
    "schema",
    "node_mismatch",
    "cluster_mismatch",
    "clock_skew",
    "too_old",
]
REASONS: tuple[Reason, ...] = (
    "oversized", "topic", "json", "schema", "node_mismatch", "cluster_mismatch", "clock_skew",
    "too_old",
)  # fmt: skip
_JSON_PROBLEMS = ("JSON is malformed", "input data was truncated", "invalid UTF-8")


@dataclass(frozen=True, slots=True)
class Limits:
    """What the aggregator accepts."""

    max_payload_bytes: int
    max_clock_skew_s: float
    max_age_s: float


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message refused, with why."""

    reason: Reason
    detail: str


Accepted = Report | EventMessage | Status


def decode_reason(exc: DecodeError) -> Reason:
    """``json`` when the bytes are not JSON at all, ``schema`` when the document is wrong."""
    json_error = not exc.path and exc.problem.startswith(_JSON_PROBLEMS)
    return "json" if json_error else "schema"


def validate(topic: str, payload: bytes, limits: Limits, now_ns: int) -> Accepted | Rejected:
    """Check a message against its topic, the schema and the clock."""
    if len(payload) > limits.max_payload_bytes:
        return Rejected("oversized", f"{len(payload)} bytes > {limits.max_payload_bytes}")
    parsed = parse_node_topic(topic)
    if isinstance(parsed, str):
        return Rejected("topic", parsed)
    try:
        message: Accepted
        if parsed.kind == "report":
            message = decode_report(payload)
        elif parsed.kind == "event":
            message = decode_event_message(payload)
        else:
            message = decode_status(payload)
    except DecodeError as exc:
        return Rejected(decode_reason(exc), str(exc))
    if message.node != parsed.node:
        return Rejected("node_mismatch", f"report from {message.node!r} on {parsed.node!r}'s topic")
    if message.cluster != parsed.cluster:
        return Rejected(
            "cluster_mismatch", f"report of cluster {message.cluster!r} on {parsed.cluster!r}"
        )
    if isinstance(message, Report | Status):
        skew = (message.time_ns - now_ns) / 1e9
        if skew > limits.max_clock_skew_s:
            return Rejected(
                "clock_skew", f"time is {skew:.0f} s ahead (limit {limits.max_clock_skew_s:g} s)"
            )
        # A status is as old as its connection (or its will, built at start): no age limit.
        if isinstance(message, Report) and -skew > limits.max_age_s:
            return Rejected(
                "too_old", f"time is {-skew:.0f} s in the past (limit {limits.max_age_s:g} s)"
            )
    return message
