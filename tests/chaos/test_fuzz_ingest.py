"""Fuzzing what arrives from the broker: decode_report and the aggregator's validate.

Why: the aggregator reads bytes anyone on the broker may publish; a message that raises
instead of being rejected would stop the consumer. Every outcome must be an accepted
message or a Rejected with a reason from REASONS and a detail that names the field.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec.structs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telemetryd.codec import DecodeError
from telemetryd.ingest import REASONS, Limits, Rejected, validate
from telemetryd.model import Report, decode_report, encode_report
from tests.chaos.conftest import size
from tests.reports import sampled

LIMITS = Limits(max_payload_bytes=256 * 1024, max_clock_skew_s=300, max_age_s=86_400)
TOPIC = "telemetry/v1/c1/n1/report"
VALID = sampled()
DOC: dict[str, Any] = json.loads(VALID)
NOW_NS = DOC["time_ns"]

FUZZ = settings(
    max_examples=size(300, 12_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _nested(leaf: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """JSON values two levels deep (st.recursive's self-check warned, wrongly, under load)."""
    one = leaf | st.lists(leaf, max_size=4) | st.dictionaries(keys, leaf, max_size=4)
    return leaf | st.lists(one, max_size=4) | st.dictionaries(keys, one, max_size=4)


json_values = _nested(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    st.text(max_size=8),
)


def check(topic: str, payload: bytes) -> Report | Rejected | object:
    """The fuzzing contract of validate: no exception, a known reason, a detail."""
    out = validate(topic, payload, LIMITS, NOW_NS)
    if isinstance(out, Rejected):
        assert out.reason in REASONS
        assert out.detail.strip()
    return out


def check_decode(payload: bytes) -> None:
    """decode_report raises only DecodeError; only whole-document problems lack a path."""
    error: DecodeError | None = None
    try:
        decode_report(payload)
    except DecodeError as exc:
        error = exc
    if error is None:
        return
    assert error.problem
    if error.path == "":
        # Not JSON, or not an object: validate calls that "json" or the top-level "schema".
        out = check(TOPIC, payload)
        assert isinstance(out, Rejected)
        assert out.reason == "json" or not payload.lstrip().startswith(b"{"), error


@FUZZ
@given(st.binary(max_size=2048))
# Found by the byte mutations: an unknown key with a space in it left the path empty.
@example(b'{" chema":2}')
@example(b'{"schema":2,"agent":{"x y":1}}')
def test_arbitrary_bytes(payload: bytes) -> None:
    check_decode(payload)
    check(TOPIC, payload)


@FUZZ
@given(st.data())
def test_byte_mutations_of_a_valid_report(data: st.DataObject) -> None:
    """Flip, drop, insert bytes of a real 8-GPU report."""
    buf = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
        i = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "drop" and buf:
            del buf[i]
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[i:]
    payload = bytes(buf)
    check_decode(payload)
    check(TOPIC, payload)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(DOC)[1:]


def _set(doc: Any, path: tuple[Any, ...], value: Any, delete: bool) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if delete:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


@FUZZ
@given(st.data())
def test_field_mutations_of_a_valid_report(data: st.DataObject) -> None:
    """Replace or delete fields of a valid report: rejected as schema naming that field."""
    doc = json.loads(VALID)
    path = data.draw(st.sampled_from(PATHS))
    delete = data.draw(st.booleans())
    value = None if delete else data.draw(json_values)
    _set(doc, path, value, delete)
    payload = json.dumps(doc).encode()
    out = check(TOPIC, payload)
    if isinstance(out, Rejected) and out.reason == "schema":
        # The detail starts with the field's path: the mutated field or one of its parents
        # (a deleted optional field may make the parent's other constraints fail).
        where = out.detail.split(": ", 1)[0]
        top = str(path[0])
        assert where.startswith(top), (path, out.detail)


@FUZZ
@given(st.dictionaries(st.sampled_from([*DOC.keys(), "extra"]), json_values, max_size=12))
def test_objects_of_report_keys(doc: dict[str, Any]) -> None:
    payload = json.dumps(doc).encode()
    check_decode(payload)
    check(TOPIC, payload)


names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")


@FUZZ
@given(
    node=names,
    cluster=names,
    seq=st.integers(0, 2**63 - 1),
    skew_s=st.floats(-200_000, 200_000),
    topic_node=names,
)
def test_valid_reports_from_a_strategy(
    node: str, cluster: str, seq: int, skew_s: float, topic_node: str
) -> None:
    """Valid documents, varied identity and time: accepted or rejected for topic/clock reasons."""
    report = decode_report(VALID)
    time_ns = max(1, NOW_NS + int(skew_s * 1e9))
    report = msgspec.structs.replace(report, node=node, cluster=cluster, seq=seq, time_ns=time_ns)
    payload = encode_report(report)
    assert decode_report(payload) == report
    out = check(f"telemetry/v1/{cluster}/{topic_node}/report", payload)
    if topic_node != node:
        assert isinstance(out, Rejected) and out.reason == "node_mismatch"
    elif skew_s > LIMITS.max_clock_skew_s + 1:
        assert isinstance(out, Rejected) and out.reason == "clock_skew"
    elif -skew_s > LIMITS.max_age_s + 1:
        assert isinstance(out, Rejected) and out.reason == "too_old"
    elif abs(skew_s) < LIMITS.max_clock_skew_s - 1:
        assert out == report


@FUZZ
@given(st.text(max_size=80), st.sampled_from([VALID, b"{}", b"x"]))
def test_arbitrary_topics(topic: str, payload: bytes) -> None:
    out = check(topic, payload)
    if isinstance(out, Rejected) and out.reason == "topic":
        assert "expected" in out.detail or "cluster" in out.detail or "node" in out.detail
