"""Validation of incoming messages: accepted, or refused with one reason and a useful detail."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetryd.codec import encode_json
from telemetryd.ingest import REASONS, Limits, Rejected, validate
from telemetryd.model import (
    Event,
    EventMessage,
    GpuInventory,
    Report,
    Status,
    decode_report,
    encode_report,
)
from tests.reports import sampled

S = 1_000_000_000
NOW = 1_800_000_000 * S
LIMITS = Limits(max_payload_bytes=64 << 10, max_clock_skew_s=300.0, max_age_s=3600.0)
BOOT = "0123456789abcdef0123456789abcdef"
REPORT_TOPIC = "telemetry/v1/c1/n1/report"
STATUS_TOPIC = "telemetry/v1/c1/n1/status"
EVENT_TOPIC = "telemetry/v1/c1/n1/event"


def report(**changes: object) -> Report:
    r = decode_report(sampled())
    r.time_ns = NOW
    r.boot_id = BOOT
    for key, value in changes.items():
        setattr(r, key, value)
    return r


def report_dict(**changes: object) -> dict:
    data = json.loads(encode_report(report()))
    data.update(changes)
    return data


def status(**changes: object) -> Status:
    s = Status(
        schema=1, state="online", cluster="c1", node="n1", boot_id=BOOT, time_ns=NOW,
        version="0.1.0", interval_s=10.0, reason="connected",
        gpus=[GpuInventory(index=0, uuid="GPU-1", name="H100", pci_bus_id="0000:18:00.0")],
    )  # fmt: skip
    for key, value in changes.items():
        setattr(s, key, value)
    return s


def event_message(**changes: object) -> EventMessage:
    m = EventMessage(
        schema=1, cluster="c1", node="n1", boot_id=BOOT, seq=4,
        event=Event(time_ns=NOW, kind="xid", message="XID 79: GPU has fallen off the bus",
                    gpu_index=3, code=79, severity="critical"),
    )  # fmt: skip
    for key, value in changes.items():
        setattr(m, key, value)
    return m


def rejected(topic: str, payload: bytes, now: int = NOW, limits: Limits = LIMITS) -> Rejected:
    result = validate(topic, payload, limits, now)
    assert isinstance(result, Rejected), result
    assert result.reason in REASONS
    return result


# -- accepted -------------------------------------------------------------------------------
def test_a_report_is_accepted_whole() -> None:
    r = report()
    result = validate(REPORT_TOPIC, encode_report(r), LIMITS, NOW + 5 * S)
    assert isinstance(result, Report)
    assert result == r
    assert len(result.gpus) == 8


def test_a_status_is_accepted() -> None:
    s = status()
    result = validate(STATUS_TOPIC, encode_json(s), LIMITS, NOW)
    assert isinstance(result, Status)
    assert result == s


def test_an_event_message_is_accepted() -> None:
    m = event_message()
    result = validate(EVENT_TOPIC, encode_json(m), LIMITS, NOW)
    assert isinstance(result, EventMessage)
    assert result == m


def test_limits_are_inclusive() -> None:
    payload = encode_report(report())
    exact = Limits(max_payload_bytes=len(payload), max_clock_skew_s=300.0, max_age_s=3600.0)
    assert isinstance(validate(REPORT_TOPIC, payload, exact, NOW), Report)
    ahead = encode_report(report(time_ns=NOW + 300 * S))
    assert isinstance(validate(REPORT_TOPIC, ahead, LIMITS, NOW), Report)
    old = encode_report(report(time_ns=NOW - 3600 * S))
    assert isinstance(validate(REPORT_TOPIC, old, LIMITS, NOW), Report)


# -- each reason ----------------------------------------------------------------------------
def test_oversized_names_both_sizes_and_comes_first() -> None:
    payload = encode_report(report())
    small = Limits(max_payload_bytes=len(payload) - 1, max_clock_skew_s=300, max_age_s=3600)
    result = rejected(REPORT_TOPIC, payload, limits=small)
    assert result.reason == "oversized"
    assert result.detail == f"{len(payload)} bytes > {len(payload) - 1}"
    # Checked before anything is parsed: not even the topic.
    assert rejected("bad/topic", b"x" * 100, limits=Limits(10, 300, 3600)).reason == "oversized"


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        ("telemetry/v1/c1/n1", "expected telemetry/v1/<cluster>/<node>"),
        ("telemetry/v1/c1/n1/report/x", "expected telemetry/v1/<cluster>/<node>"),
        ("telemetry/v1/c1/n1/metrics", "'metrics'"),
        ("telemetry/v1/c1/_fleet/report", "node '_fleet'"),
        ("telemetry/v1/c 1/n1/report", "cluster 'c 1'"),
    ],
)
def test_topic_names_what_is_wrong(topic: str, fragment: str) -> None:
    result = rejected(topic, encode_report(report()))
    assert result.reason == "topic"
    assert fragment in result.detail


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b'{"schema":1,', b"\xff\xfe{}", b"not json", encode_report(report()) + b"}"],
)
def test_json_for_what_is_not_json(payload: bytes) -> None:
    result = rejected(REPORT_TOPIC, payload)
    assert result.reason == "json"
    assert result.detail


@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        (b"[1, 2]", ["expected object, got array"]),
        (b"null", ["expected object, got null"]),
        (b"{}", ["schema", "missing required field"]),
        (report_dict(seq="7"), ["seq", "expected int, got str"]),
        (report_dict(seq=-1), ["seq", ">= 0"]),
        (report_dict(color="red"), ["color", "unknown field"]),
        (report_dict(schema=3), ["schema"]),
        (report_dict(boot_id="not-a-boot-id"), ["boot_id"]),
        (report_dict(node="n1/../x"), ["node"]),
        (report_dict(time_ns=0), ["time_ns"]),
        (report_dict(interval_s=0), ["interval_s"]),
    ],
)
def test_schema_names_the_field(payload: bytes | dict, fragments: list[str]) -> None:
    raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    result = rejected(REPORT_TOPIC, raw)
    assert result.reason == "schema"
    for fragment in fragments:
        assert fragment in result.detail


def test_schema_names_a_nested_field() -> None:
    data = report_dict()
    data["gpus"][3]["power_w"] = -5
    result = rejected(REPORT_TOPIC, json.dumps(data).encode())
    assert result.reason == "schema"
    assert result.detail.startswith("gpus[3].power_w:")


def test_a_report_on_the_status_topic_is_a_schema_error() -> None:
    assert rejected(STATUS_TOPIC, encode_report(report())).reason == "schema"
    assert rejected(EVENT_TOPIC, encode_report(report())).reason == "schema"
    assert rejected(REPORT_TOPIC, encode_json(status())).reason == "schema"


def test_node_mismatch_names_both_nodes() -> None:
    result = rejected("telemetry/v1/c1/n2/report", encode_report(report()))
    assert result.reason == "node_mismatch"
    assert "'n1'" in result.detail and "'n2'" in result.detail


def test_cluster_mismatch_names_both_clusters() -> None:
    result = rejected("telemetry/v1/c9/n1/report", encode_report(report()))
    assert result.reason == "cluster_mismatch"
    assert "'c1'" in result.detail and "'c9'" in result.detail


def test_mismatch_applies_to_status_and_events_too() -> None:
    assert rejected("telemetry/v1/c1/n2/status", encode_json(status())).reason == "node_mismatch"
    assert rejected("telemetry/v1/c2/n1/event", encode_json(event_message())).reason == (
        "cluster_mismatch"
    )


def test_clock_skew_names_how_far_ahead() -> None:
    result = rejected(REPORT_TOPIC, encode_report(report(time_ns=NOW + 301 * S)))
    assert result.reason == "clock_skew"
    assert result.detail == "time is 301 s ahead (limit 300 s)"
    status_ahead = encode_json(status(time_ns=NOW + 1000 * S))
    assert rejected(STATUS_TOPIC, status_ahead).reason == "clock_skew"


def test_too_old_names_how_old() -> None:
    result = rejected(REPORT_TOPIC, encode_report(report(time_ns=NOW - 3601 * S)))
    assert result.reason == "too_old"
    assert result.detail == "time is 3601 s in the past (limit 3600 s)"


def test_event_messages_are_not_held_to_the_clock() -> None:
    m = event_message()
    m.event.time_ns = NOW - 10 * 86400 * S  # the report it belongs to is what is timed
    assert isinstance(validate(EVENT_TOPIC, encode_json(m), LIMITS, NOW), EventMessage)


def test_every_reason_is_reachable() -> None:
    payload = encode_report(report())
    seen = {
        rejected(REPORT_TOPIC, payload, limits=Limits(10, 300, 3600)).reason,
        rejected("x/y", payload).reason,
        rejected(REPORT_TOPIC, b"{").reason,
        rejected(REPORT_TOPIC, b"{}").reason,
        rejected("telemetry/v1/c1/n2/report", payload).reason,
        rejected("telemetry/v1/c2/n1/report", payload).reason,
        rejected(REPORT_TOPIC, payload, now=NOW - 3600 * S).reason,
        rejected(REPORT_TOPIC, payload, now=NOW + 7200 * S).reason,
    }
    assert seen == set(REASONS)


# -- never raises ---------------------------------------------------------------------------
@settings(max_examples=200)
@given(
    topic=st.one_of(
        st.sampled_from([REPORT_TOPIC, STATUS_TOPIC, EVENT_TOPIC]),
        st.text(max_size=60),
    ),
    payload=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_validate_never_raises(topic: str, payload: bytes) -> None:
    result = validate(topic, payload, LIMITS, NOW)
    assert isinstance(result, Rejected | Report | Status | EventMessage)
    if isinstance(result, Rejected):
        assert result.reason in REASONS
        assert result.detail


@settings(max_examples=100)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_any_truncation_of_a_report_is_refused(cut: int) -> None:
    payload = encode_report(report())
    cut = cut % len(payload)
    result = rejected(REPORT_TOPIC, payload[:cut])
    assert result.reason in ("json", "schema")


# -- found problems -------------------------------------------------------------------------
def test_a_boot_id_with_a_trailing_newline_is_refused() -> None:
    result = validate(REPORT_TOPIC, encode_report(report(boot_id=BOOT + "\n")), LIMITS, NOW)
    assert isinstance(result, Rejected)
    assert result.reason == "schema"


def test_a_retained_status_older_than_max_age_is_accepted() -> None:
    will = status(state="offline", reason="lost", time_ns=NOW - 40 * 86400 * S)
    result = validate(STATUS_TOPIC, encode_json(will), LIMITS, NOW)
    assert isinstance(result, Status)
