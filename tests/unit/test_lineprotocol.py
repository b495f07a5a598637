"""The line protocol encoder: escaping, types from the model, idempotence, the schema table."""

from __future__ import annotations

import math
import re

import msgspec
import pytest

from exporters import lineprotocol as lp
from telemetryd.fields import split_fields
from telemetryd.model import (
    Gpu,
    GpuOwner,
    GpuProcess,
    Host,
    JobGpu,
    JobRecord,
    Report,
    decode_report,
    encode_report,
)
from tests.reports import sampled
from tests.richreport import ODD, rich

_UNESCAPE = re.compile(r"\\([,= ])")


def _split_unescaped(text: str, sep: str) -> list[str]:
    """Split where ``sep`` is not preceded by a backslash (InfluxDB's rule for keys and tags)."""
    out, start = [], 0
    for i, c in enumerate(text):
        if c == sep and (i == 0 or text[i - 1] != "\\"):
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def split_line(line: str) -> tuple[str, dict[str, str], dict[str, str], int]:
    """(measurement, tags, raw field values, time) of one line, read as InfluxDB reads it."""
    head = _split_unescaped(line, " ")[0]
    rest = line[len(head) + 1 :]
    stamp_at = rest.rindex(" ")
    fields, stamp = rest[:stamp_at], rest[stamp_at + 1 :]
    measurement, *tag_items = _split_unescaped(head, ",")
    tags = {}
    for item in tag_items:
        key, value = _split_unescaped(item, "=")
        tags[_UNESCAPE.sub(r"\1", key)] = _UNESCAPE.sub(r"\1", value)
    values: dict[str, str] = {}
    i, quoted, start = 0, False, 0
    while i <= len(fields):
        c = fields[i] if i < len(fields) else ","
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted and (i == 0 or fields[i - 1] != "\\"):
            key = _split_unescaped(fields[start:i], "=")[0]
            values[_UNESCAPE.sub(r"\1", key)] = fields[start + len(key) + 1 : i]
            start = i + 1
        i += 1
    return measurement, tags, values, int(stamp)


def reports() -> list[Report]:
    return [decode_report(sampled()), rich(), attributed()]


def job(name: str, state: str, start_s: int, end_s: int, gpus: tuple[int, ...], **kw) -> JobRecord:
    return JobRecord(
        job=name, kind=kw.pop("kind", "hpc"), state=state,  # type: ignore[arg-type]
        start_ns=start_s * 10**9, end_ns=end_s * 10**9, samples=3,
        gpus=[JobGpu(index=i, uuid=f"GPU-{i}", start_ns=start_s * 10**9) for i in gpus], **kw,
    )  # fmt: skip


def attributed() -> Report:
    """rich() with owners on its GPUs, attributed processes and job records."""
    report = rich()
    report.schema = 2
    report.gpus[0].owners = [
        GpuOwner(source="jobmap", job="1234"),
        GpuOwner(source="kubelet", gi_id=1, pod="train-0", namespace="ml", container="main"),
        GpuOwner(source="jobmap", gi_id=2, job="1200"),
        GpuOwner(source="cgroup", job="999"),  # the scheduler's word wins over a cgroup
    ]
    report.gpus[1].owners = [GpuOwner(source="cgroup", pod_uid="0d1e", container="c0ffee")]
    report.gpus[0].processes = [
        GpuProcess(pid=4242, type="compute", sm_util_pct=87, user="alice",
                   command='python "train.py" --lr=0.1', cpu_pct=101.5, rss_bytes=1 << 30,
                   job="1234", step="0", unit="slurmstepd.scope", runtime="systemd"),
    ]  # fmt: skip
    report.jobs = [
        job("1234", "running", 1000, report.time_ns // 10**9, (0,)),
        job("ml/train-0", "ended", 1500, 1_700_000_000, (0, 2), kind="pod", energy_mj=7_250_500,
            mean_power_w=12.5, util_mean_pct=40.25, util_peak_pct=99, mem_peak_bytes=1 << 33,
            pod="train-0", namespace="ml"),
        job("1100", "ended", 900, 1_700_000_000, (3,)),  # no energy counter: no energy
    ]  # fmt: skip
    return report


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a b", "a\\ b"),
        ("a,b", "a\\,b"),
        ("a=b", "a\\=b"),
        ('say "hi"', 'say\\ "hi"'),  # quotes need no escape in tags
        ("ñü", "ñü"),
        ("tab\there", "tab\\there"),  # control characters cannot be carried raw
        ("nl\nx", "nl\\nx"),
        ("end\\", "end"),  # a trailing backslash would escape the separator: left out
        ("mid\\dle", "mid\\dle"),
    ],
)
def test_keys_and_tag_values_are_escaped(text: str, expected: str) -> None:
    assert lp.escape_key(text) == expected


def test_string_fields_escape_quotes_and_backslashes_only() -> None:
    assert lp.escape_string('a "b" \\ c\nd') == 'a \\"b\\" \\\\ c\nd'
    assert lp.escape_measurement("gpu stats,x") == "gpu\\ stats\\,x"


def test_a_tag_whose_value_is_empty_is_left_out() -> None:
    assert lp.tag("model", "") == ""
    assert lp.tag("model", "\\\\") == ""
    assert lp.tag("model", "A 1") == ",model=A\\ 1"


def test_reserved_plugin_metric_names_are_renamed_not_refused() -> None:
    assert lp.field_key("time") == "time_"
    assert lp.field_key("_value") == "x_value"
    assert lp.field_key("ok name") == "ok\\ name"


def test_field_types_come_from_the_model_and_never_vary() -> None:
    """Every field value is written in the form of its model type, in every line."""
    kinds = {}
    for struct in (Gpu, Host, Report):
        kinds.update(dict(split_fields(struct).scalars))
    seen: dict[tuple[str, str], str] = {}
    for line in lp.Encoder().encode(reports()):
        measurement, _tags, values, _t = split_line(line)
        for key, raw in values.items():
            form = (
                "int" if re.fullmatch(r"-?\d+i", raw)
                else "bool" if raw in ("true", "false")
                else "str" if raw.startswith('"')
                else "float"
            )  # fmt: skip
            if form == "float":
                float(raw)  # parses, and has no integer suffix
            assert seen.setdefault((measurement, key), form) == form, (measurement, key)
    assert seen[("gpu", "temp_c")] == "float"
    assert seen[("gpu", "energy_mj")] == "int"
    assert seen[("gpu", "ecc_enabled")] == "bool"
    assert seen[("gpu", "driver")] == "str"
    assert seen[("host", "cpu_count")] == "int"
    assert seen[("agent", "seq")] == "int"


def test_an_integral_float_is_still_a_float() -> None:
    report = rich()
    report.gpus[0].temp_c = 71  # type: ignore[assignment]  # as if built in Python
    (gpu_line, *_) = lp.Encoder().encode([report])
    assert ",temp_c=71.0," in gpu_line


def test_every_emitted_tag_and_field_is_in_the_schema_table() -> None:
    for line in lp.Encoder().encode(reports()):
        measurement, tags, values, _t = split_line(line)
        declared_tags, declared_fields = lp.MEASUREMENTS[measurement]
        assert set(tags) <= set(declared_tags), (measurement, set(tags) - set(declared_tags))
        assert list(tags) == sorted(tags), "tags sorted by key, as InfluxDB recommends"
        if measurement != "host_plugin":
            assert set(values) <= set(declared_fields), (measurement, set(values))


def test_no_scalar_gpu_field_is_silently_left_out() -> None:
    tags, fields = lp.MEASUREMENTS["gpu"]
    stored = set(fields) | {"index", "uuid", "name"}  # the last three are the tags gpu, uuid, model
    assert {name for name, _ in split_fields(Gpu).scalars} <= stored
    assert {"cluster", "node", "gpu", "uuid", "model"} == set(tags)


def test_absent_values_are_absent_not_zero() -> None:
    report = decode_report(sampled())
    assert report.gpus[0].fan_pct is None  # an SXM board has no fan reading
    for line in lp.Encoder().encode([report]):
        assert "fan_pct=" not in line


def test_values_influxdb_cannot_hold_are_left_out_and_counted() -> None:
    report = rich()
    report.gpus[0].power_w = math.inf
    report.host.extra = {"ipmi": {"ok": 1.0, "bad": math.nan}}  # type: ignore[union-attr]
    encoder = lp.Encoder()
    lines = encoder.encode([report])
    text = "\n".join(lines)
    assert "ecc_sbe_aggregate=" not in text  # 2**64-1 does not fit InfluxDB's int64
    assert "power_w=inf" not in text and "bad=" not in text
    assert "host_plugin,cluster=site-a,node=rich-01,plugin=ipmi ok=1.0 " in text
    assert encoder.fields_dropped == 3


def test_the_same_report_always_gives_the_same_lines() -> None:
    report = rich()
    again = decode_report(encode_report(report))  # through the wire, as after a restart
    assert lp.Encoder().encode([report]) == lp.Encoder().encode([again])
    reordered = msgspec.structs.replace(report)
    reordered.gpus[0].processes = list(reversed(report.gpus[0].processes or []))
    assert lp.Encoder().encode([reordered]) == lp.Encoder().encode([report])


def test_two_processes_of_one_gpu_are_two_points() -> None:
    lines = [line for line in lp.Encoder().encode([rich()]) if line.startswith("gpu_process,")]
    parsed = [split_line(line) for line in lines]
    assert [t["slot"] for _, t, _, _ in parsed] == ["0", "1"]
    assert [v["pid"] for _, _, v, _ in parsed] == ["77i", "4242i"]  # sorted by pid
    assert all(t["gi"] == "1" and t["ci"] == "0" for _, t, _, _ in parsed)


def test_points_are_stamped_with_sample_and_event_times() -> None:
    report = rich()
    for line in lp.Encoder().encode([report]):
        measurement, tags, _values, stamp = split_line(line)
        if measurement == "event":
            expected = {e.kind: e.time_ns for e in report.events}[tags["kind"]]
            assert stamp == expected
        else:
            assert stamp == report.time_ns


def test_odd_names_survive_in_tags() -> None:
    (gpu_line, *_) = lp.Encoder().encode([rich()])
    _m, tags, values, _t = split_line(gpu_line)
    # A backslash before a character that gets escaped is left out (lineprotocol.escape_key).
    assert tags["model"] == ODD.replace("\\ ", " ")
    assert values["clock_event_reasons"] == '"sw_power_cap,hw_slowdown"'
    assert values["clock_event_mask"] == "12i"  # sw_power_cap 0x4 | hw_slowdown 0x8


def test_a_failed_gpu_keeps_its_error_in_words() -> None:
    lines = [line for line in lp.Encoder().encode([rich()]) if ",gpu=1," in line]
    (gpu_line,) = [line for line in lines if line.startswith("gpu,")]
    _m, _tags, values, _t = split_line(gpu_line)
    assert values["error_code"] == '"gpu_lost"'
    assert values["error_message"] == '"GPU has fallen off the bus: \\"Xid 79\\"\nsee dmesg"'


def lines_of(measurement: str, report: Report) -> list[tuple[dict, dict, int]]:
    found = [split_line(line) for line in lp.Encoder().encode([report])]
    return [(tags, values, t) for m, tags, values, t in found if m == measurement]


def test_gpu_owners_are_string_fields_joined_like_dcgm_exporter_labels() -> None:
    gpus = {tags["gpu"]: values for tags, values, _t in lines_of("gpu", attributed())}
    assert gpus["0"]["hpc_job"] == '"1200,1234"'  # sorted, each once; the cgroup 999 not
    assert (gpus["0"]["pod"], gpus["0"]["namespace"]) == ('"train-0"', '"ml"')
    assert gpus["0"]["container"] == '"main"'
    # Only a cgroup owner, with no pod name: what it has, nothing made up.
    assert gpus["1"]["container"] == '"c0ffee"'
    assert not {"hpc_job", "pod", "namespace"} & set(gpus["1"])
    # No owners: no fields (absent, not an empty string on every GPU of every site).
    plain = lines_of("gpu", decode_report(sampled()))
    assert plain and all(
        not {"hpc_job", "pod", "namespace", "container"} & set(v) for _, v, _ in plain
    )


def test_process_attribution_fields_are_fields_never_tags() -> None:
    (tags, values, _t), *_ = lines_of("gpu_process", attributed())
    assert set(tags) == {"ci", "cluster", "gi", "gpu", "node", "slot", "uuid"} - {"ci", "gi"}
    assert values["pid"] == "4242i" and values["job"] == '"1234"' and values["step"] == '"0"'
    assert values["command"] == '"python \\"train.py\\" --lr=0.1"'
    assert values["sm_util_pct"] == "87i" and values["cpu_pct"] == "101.5"
    assert values["rss_bytes"] == f"{1 << 30}i" and values["user"] == '"alice"'


def test_ended_jobs_are_one_point_each_at_their_end_running_ones_none() -> None:
    report = attributed()
    points = lines_of("job", report)
    assert [(t["slot"], v["job"]) for t, v, _ in points] == [("0", '"1100"'), ("1", '"ml/train-0"')]
    assert all(t == 1_700_000_000 * 10**9 for _, _, t in points)
    assert all(set(tags) == {"cluster", "node", "slot"} for tags, _, _ in points)
    pod = points[1][1]
    assert pod["kind"] == '"pod"' and pod["gpus"] == '"0,2"' and pod["gpu_count"] == "2i"
    assert pod["energy_mj"] == "7250500i" and pod["energy_j"] == "7250.5"
    assert (
        pod["start_ns"] == f"{1500 * 10**9}i" and pod["duration_s"] == f"{1_700_000_000 - 1500}.0"
    )
    assert pod["mean_power_w"] == "12.5" and pod["util_peak_pct"] == "99i"
    assert (pod["pod"], pod["namespace"]) == ('"train-0"', '"ml"')
    assert "energy_j" not in points[0][1] and "energy_mj" not in points[0][1]
    assert "state" not in pod  # every point is an ended job
    # The same report again (a redelivery) gives the same points: same slot, same time.
    again = decode_report(encode_report(report))
    again.jobs.reverse()
    assert lines_of("job", again) == points
