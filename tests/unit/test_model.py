"""The report contract: what an agent encodes, an aggregator decodes; everything else is refused.

Strategies are derived from the model's own type information, so a field added to the
model is fuzzed without touching this file.
"""

from __future__ import annotations

import json
import re

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetryd.codec import DecodeError
from telemetryd.model import Report, decode_report, encode_report

_INT_BOUNDS = (-(2**63), 2**63 - 1)


def _strategy(t: msgspec.inspect.Type) -> st.SearchStrategy:
    i = msgspec.inspect
    if isinstance(t, i.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else _INT_BOUNDS[0])
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else _INT_BOUNDS[1])
        return st.integers(lo, hi)
    if isinstance(t, i.FloatType):
        return st.floats(
            min_value=t.ge if t.ge is not None else t.gt,
            max_value=t.le if t.le is not None else t.lt,
            exclude_min=t.gt is not None,
            exclude_max=t.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if isinstance(t, i.StrType):
        if t.pattern:
            return st.from_regex(t.pattern, fullmatch=True)
        return st.text(max_size=min(t.max_length or 40, 40))
    if isinstance(t, i.BoolType):
        return st.booleans()
    if isinstance(t, i.NoneType):
        return st.none()
    if isinstance(t, i.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, i.ListType):
        return st.lists(_strategy(t.item_type), max_size=3)
    if isinstance(t, i.DictType):
        return st.dictionaries(_strategy(t.key_type), _strategy(t.value_type), max_size=2)
    if isinstance(t, i.UnionType):
        return st.one_of([_strategy(x) for x in t.types])
    if isinstance(t, i.StructType):
        required = {f.name: _strategy(f.type) for f in t.fields if f.required}
        optional = {f.name: _strategy(f.type) for f in t.fields if not f.required}
        return st.builds(t.cls, **required, **{k: v for k, v in optional.items()})
    raise NotImplementedError(t)


reports = _strategy(msgspec.inspect.type_info(Report))
FAST = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@FAST
@given(reports)
def test_every_valid_report_round_trips(report):
    assert decode_report(encode_report(report)) == report


MAPS = {"absent", "host.extra"}  # free-form maps: their keys are data, not fields


def _paths(value, prefix=""):
    """Every (path, value) of a decoded JSON document, as the decoder names paths."""
    if prefix in MAPS:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _paths(item, f"{prefix}[{n}]")
    if prefix:
        yield prefix, value


def _set(doc, path, new):
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    target = doc
    for part in parts[:-1]:
        target = target[int(part[1:-1])] if part.startswith("[") else target[part]
    last = parts[-1]
    if last.startswith("["):
        target[int(last[1:-1])] = new
    else:
        target[last] = new


@FAST
@given(reports, st.data())
def test_a_wrong_type_anywhere_is_refused_naming_the_field(report, data):
    doc = json.loads(encode_report(report))
    paths = [p for p, v in _paths(doc) if not isinstance(v, dict | list)]
    path = data.draw(st.sampled_from(paths))
    _set(doc, path, {"not": "a scalar"})
    with pytest.raises(DecodeError) as info:
        decode_report(json.dumps(doc))
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: expected")


@FAST
@given(reports, st.data())
def test_an_unknown_field_anywhere_is_refused_naming_it(report, data):
    doc = json.loads(encode_report(report))
    tables = [""] + [p for p, v in _paths(doc) if isinstance(v, dict)]
    where = data.draw(st.sampled_from(tables))
    target = doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", where):
        target = target[int(part[1:-1])] if part.startswith("[") else target[part]
    target["zz_surprise"] = 1
    with pytest.raises(DecodeError, match="unknown field") as info:
        decode_report(json.dumps(doc))
    assert info.value.path == (f"{where}.zz_surprise" if where else "zz_surprise")


def _valid() -> dict:
    return {
        "schema": 1,
        "cluster": "c1",
        "node": "gpu-001",
        "boot_id": "0123456789abcdef0123456789abcdef",
        "seq": 5,
        "time_ns": 1_700_000_000_000_000_000,
        "interval_s": 10.0,
        "agent": {"version": "0.1.0"},
        "gpus": [{"index": 0, "uuid": "GPU-x", "pci_bus_id": "0:1:0.0", "name": "H100",
                  "driver": "550", "power_w": 300.5, "util_gpu_pct": 50}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("gpus[0].power_w", -1.0, "gpus[0].power_w: expected float >= 0.0"),
        ("gpus[0].util_gpu_pct", 101, "gpus[0].util_gpu_pct: expected int <= 100"),
        ("seq", -1, "seq: expected int >= 0"),
        ("schema", 3, "schema: invalid enum value 3"),
        ("node", "a/b", "node: expected str matching regex"),
        ("node", "_fleet", "node: expected str matching regex"),
        ("cluster", "x+", "cluster: expected str matching regex"),
        ("boot_id", "not-hex", "boot_id: expected str matching regex"),
        ("interval_s", 0, "interval_s: expected float > 0.0"),
        ("time_ns", 0, "time_ns: expected int >= 1"),
    ],
)
def test_out_of_range_values_are_refused_with_the_field(path, value, message):
    doc = _valid()
    _set(doc, path, value)
    with pytest.raises(DecodeError) as info:
        decode_report(json.dumps(doc))
    assert str(info.value).startswith(message)


def test_missing_required_field_and_bad_json():
    doc = _valid()
    del doc["node"]
    with pytest.raises(DecodeError, match=r"^node: missing required field"):
        decode_report(json.dumps(doc))
    with pytest.raises(DecodeError, match="truncated"):
        decode_report(b'{"schema": 1')
    with pytest.raises(DecodeError):
        decode_report(b"\xff\xfe")


def test_absent_fields_are_omitted_not_zero():
    report = decode_report(json.dumps(_valid()))
    text = encode_report(report).decode()
    assert '"fan_pct"' not in text and '"power_w":300.5' in text
    assert report.gpus[0].fan_pct is None
