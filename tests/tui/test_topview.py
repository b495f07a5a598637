"""top's view-model without a terminal: rows, sorting, filters, cells, words, alerts, silences."""

from __future__ import annotations

import json
import math

import pytest

from telemetryd import topalerts, topdetail, topfilter, topfmt, topview
from telemetryd.alerting.wire import SilenceInfo, request_silence_id
from telemetryd.codec import DecodeError
from telemetryd.model import decode_report
from telemetryd.watchwire import EventView, GpuSample, decode_report_view, holders, processes
from tests.tui.fleet import NODES, NOW, SILENT_AFTER_ROUND, T0, S, fleet, report


def rows() -> list[topview.NodeRow]:
    watch, clock = fleet()
    return topview.build_rows(watch, clock())


def names(rs: list[topview.NodeRow]) -> list[str]:
    return [r.node for r in rs]


def test_rows_carry_state_failures_and_alerts() -> None:
    by = {r.node: r for r in rows()}
    assert by["gpu-04"].state == "offline" and by["gpu-05"].state == "silent"
    assert by["gpu-04"].util is None and by["gpu-05"].power is None  # stale: not shown live
    assert by["gpu-02"].failed == 1 and by["gpu-02"].gpus == 8
    assert (by["gpu-03"].alerts, by["gpu-03"].severity) == (1, "critical")
    assert by["dgx-a"].alerts == 0  # its only alert is silenced
    assert by["gpu-05"].seen_s == pytest.approx(30.0)
    hottest = max(g.sample.temp_c or 0 for g in fleet()[0].nodes[("c1", "gpu-03")].gpus.values())
    assert by["gpu-03"].temp == hottest


def test_sorting_each_column_in_its_natural_order() -> None:
    rs = rows()
    assert names(topview.sort_rows(rs, "node")) == [
        "gpu-01",
        "gpu-02",
        "gpu-03",
        "gpu-04",
        "gpu-05",
        "gpu-06",
        "dgx-a",
        "dgx-b",
    ]  # fmt: skip  (cluster c1 before c2)
    by_util = names(topview.sort_rows(rs, "util"))
    assert by_util[0] == "gpu-03" and by_util[-2:] == ["gpu-04", "gpu-05"]  # absent last
    assert names(topview.sort_rows(rs, "util", reverse=True))[:1] == ["gpu-06"]
    assert set(names(topview.sort_rows(rs, "util", reverse=True))[-2:]) == {"gpu-04", "gpu-05"}
    assert names(topview.sort_rows(rs, "state"))[:2] == ["gpu-04", "gpu-05"]
    assert names(topview.sort_rows(rs, "seen"))[0] == "gpu-05"
    assert names(topview.sort_rows(rs, "alerts"))[:2] == ["gpu-02", "gpu-03"]  # critical first
    with pytest.raises(ValueError, match="sort column 'bogus': expected one of node, "):
        topview.sort_rows(rs, "bogus")


def test_text_and_regex_filters() -> None:
    rs = rows()
    assert names([r for r in rs if topfilter.make_filter("DGX").matches(r)]) == ["dgx-a", "dgx-b"]
    assert names([r for r in rs if topfilter.make_filter("offline").matches(r)]) == ["gpu-04"]
    assert names([r for r in rs if topfilter.make_filter("c2/").matches(r)]) == ["dgx-a", "dgx-b"]
    regex = topfilter.make_filter("re:^gpu-0[1-3]$")
    assert names([r for r in rs if regex.matches(r)]) == ["gpu-01", "gpu-02", "gpu-03"]
    assert names([r for r in rs if topfilter.make_filter("~silent|offline").matches(r)]) == [
        "gpu-04", "gpu-05",
    ]  # fmt: skip
    alerting = topfilter.make_filter("", alerts="alerting")
    assert names([r for r in rs if alerting.matches(r)]) == ["gpu-02", "gpu-03", "gpu-04"]
    ok_c2 = topfilter.make_filter("", cluster="c2", alerts="ok")
    assert names([r for r in rs if ok_c2.matches(r)]) == ["dgx-a", "dgx-b"]
    assert ok_c2.describe() == "cluster c2, alerts: ok"
    assert regex.describe() == "regex '^gpu-0[1-3]$'"


def test_the_fixed_fleet_sends_valid_reports() -> None:
    """Its owners and processes are what an agent may send: the aggregator's strict decoder."""
    for node in NODES:
        for seq in (0, SILENT_AFTER_ROUND):
            decoded = decode_report(report(node, seq, T0 + seq * S))
            assert decoded.node == node and len(decoded.gpus) == 8


def test_rows_name_the_jobs_and_pods_holding_each_node() -> None:
    by = {r.node: r for r in rows()}
    assert by["gpu-01"].jobs == ("81234",) and by["gpu-01"].pods == ()
    assert by["gpu-02"].jobs == ("81234", "81240")  # 4 GPUs each: by id
    assert by["dgx-a"].pods == ("ml-team/llama-train-0",)
    assert by["dgx-b"].pods == ("inference/bert-serve-7f9c",)  # the Docker half holds nothing
    assert by["gpu-06"].jobs == by["gpu-06"].pods == ()
    assert by["gpu-04"].jobs == ("81260",)  # offline: its last known job, shown dimmed
    cells = {r.node: topview.table_cells(r) for r in rows()}
    assert cells["gpu-02"][-1] == ("81234, 81240", topfmt.OWNER)
    assert cells["gpu-04"][-1] == ("81260", "dim") and cells["gpu-06"][-1] == ("-", "dim")
    assert len(topview.TABLE_COLUMNS) == len(cells["gpu-01"])
    by_job = names(topview.sort_rows(rows(), "jobs"))
    assert by_job[:3] == ["gpu-01", "gpu-02", "gpu-03"] and by_job[-1] == "gpu-06"
    assert names(topview.sort_rows(rows(), "jobs", reverse=True))[-1] == "gpu-06"


def test_filter_by_job_id_or_pod() -> None:
    rs = rows()

    def shown(text: str) -> list[str]:
        return names([r for r in rs if topfilter.make_filter(text).matches(r)])

    assert shown("81234") == ["gpu-01", "gpu-02"]  # the job's two nodes
    assert shown("8123") == []  # a job id matches whole: not 81234's nodes
    assert shown("81260") == ["gpu-04"]  # offline nodes keep their last job
    assert shown("llama") == ["dgx-a"] and shown("INFERENCE/") == ["dgx-b"]
    assert shown("~^812(40|51)$") == ["gpu-02", "gpu-03"]
    assert shown("re:bert-serve") == ["dgx-b"]
    assert shown("gpu-0") == ["gpu-01", "gpu-02", "gpu-03", "gpu-04", "gpu-05", "gpu-06"]


def test_who_holds_a_gpu_and_a_process() -> None:
    def gpu(*owners: dict[str, str]) -> GpuSample:
        return decode(json.dumps({"index": 0, "owners": list(owners)}))

    def decode(text: str) -> GpuSample:
        report = {"schema": 2, "cluster": "c", "node": "n", "boot_id": "b", "seq": 0,
                  "time_ns": 0, "interval_s": 1.0, "gpus": [json.loads(text)]}  # fmt: skip
        return decode_report_view(json.dumps(report).encode()).gpus[0]

    both = gpu({"source": "jobmap", "job": "7", "pod": "p", "namespace": "ns"})
    assert holders(both) == (["7"], [])  # a job id wins, as in the accounting
    assert holders(gpu({"source": "kubelet", "pod_uid": "u-1"})) == ([], ["u-1"])
    mixed = gpu(
        {"source": "cgroup", "job": "9"}, {"source": "kubelet", "pod": "a", "namespace": "b"}
    )
    assert holders(mixed) == ([], ["b/a"])  # cgroup owners only count alone
    assert holders(gpu({"source": "cgroup", "job": "9"}, {"source": "cgroup", "job": "9"})) == (
        ["9"], [],
    )  # fmt: skip
    assert holders(decode('{"index": 0}')) == ([], [])  # schema 1: no owners
    assert processes(decode('{"index": 0}')) == [] and processes(both) == []
    assert processes(decode('{"index": 0, "processes": null}')) == []
    docker = '{"pid": 1, "runtime": "docker", "container_id": "0123456789abcdef", "new": 1}'
    procs = processes(decode(f'{{"index": 0, "processes": [{docker}]}}'))
    assert procs[0].owner == "docker:0123456789ab"
    bad = decode('{"index": 3, "processes": [{"pid": "x"}]}')
    with pytest.raises(DecodeError, match="pid"):
        processes(bad)
    watch, _ = fleet()
    node = watch.nodes[("c1", "gpu-01")]
    node.gpus[3].sample = bad
    row = next(r for r in topdetail.process_rows(node) if r[0][0] == "3")
    assert row[1][0] == "?" and row[-1][0].startswith("unreadable: ")
    assert topfmt.holders(["81234", "81240", "81251"], ["ml/a"], width=16) == "81234, 81240 +2"
    assert topfmt.holders([], ["x" * 40], width=10) == "xxxxxxxxx…"
    assert topfmt.holders([], []) == "-"


def test_bad_regex_is_one_clear_line() -> None:
    with pytest.raises(topfilter.FilterError) as err:
        topfilter.make_filter("re:gpu-[0")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("filter 're:gpu-[0': bad regular expression (unterminated character")
    assert "expected a Python regular expression after 're:'" in text


def test_cycles_and_clusters() -> None:
    watch, _ = fleet()
    options = topview.clusters(watch)
    assert options == [None, "c1", "c2"]
    assert topview.next_in(options, None) == "c1"
    assert topview.next_in(options, "c2") is None
    assert topview.next_in(options, "gone") is None


def test_heat_cells_levels_and_special_cells() -> None:
    def sample(**kw: object) -> GpuSample:
        return GpuSample(index=0, **kw)  # type: ignore[arg-type]

    spec = topfmt.METRIC_SPECS["util"]
    assert topfmt.heat_cell(sample(util_gpu_pct=5), "util") == ("█", spec.palette[0])
    assert topfmt.heat_cell(sample(util_gpu_pct=95), "util") == ("█", spec.palette[-1])
    assert topfmt.heat_cell(sample(temp_c=84.0), "temp") == (
        "█",
        topfmt.METRIC_SPECS["temp"].palette[4],
    )
    # power is coloured against the GPU's own limit
    assert topfmt.metric_value(sample(power_w=350.0, power_limit_w=700.0), "power") == 50.0
    assert topfmt.heat_cell(sample(power_w=350.0), "power") == topfmt.NO_VALUE
    failed = GpuSample(index=1, error={"code": "gpu_lost"})  # type: ignore[arg-type]
    assert topfmt.heat_cell(failed, "util") == topfmt.FAILED
    assert topfmt.level(10, (10, 30)) == 1 and topfmt.level(9.9, (10, 30)) == 0


def test_heatmap_layout_labels_and_states() -> None:
    watch, clock = fleet()
    rs = topview.sort_rows(topview.build_rows(watch, clock()), "node")
    lines = topview.heatmap(watch, rs, "util", width=80)
    plain = ["".join(t for t, _ in line) for line in lines]
    assert all(len(p) <= 80 for p in plain)
    assert plain[0].startswith("gpu-01 ")
    joined = "\n".join(plain)
    assert "gpu-02 █████✗██" in joined and "gpu-04 ░░░░░░░░" in joined
    styles = {s for line in lines for _, s in line}
    assert topfmt.FAILED[1] in styles and topfmt.SILENT[1] in styles
    compact = topview.heatmap(watch, rs, "temp", width=80, labels=False)
    assert "".join(t for t, _ in compact[0]).startswith("████████  █████✗██")
    assert topview.merge([("a", "x"), ("b", "x"), ("", "y"), ("c", "")]) == [("ab", "x"), ("c", "")]


def test_a_node_cleared_after_the_rows_were_made_leaves_a_blank_not_a_crash() -> None:
    # Lines are built when first read; 10,000 nodes' statuses cleared at once (the
    # generator exiting) once crashed top here with a KeyError (bench/fleet_run.py).
    watch, clock = fleet()
    rs = topview.sort_rows(topview.build_rows(watch, clock()), "node")
    lines = topview.heatmap(watch, rs, "util", width=80)
    del watch.nodes[(rs[1].cluster, rs[1].node)]
    plain = ["".join(t for t, _ in line) for line in lines]
    assert f"{rs[1].node} " in "\n".join(plain)  # its place is kept, its GPUs blank
    assert all(len(p) <= 80 for p in plain)


def test_sparkline_scale_and_gaps() -> None:
    assert topfmt.sparkline([0, 50, 100], 0, 100, width=3) == "▁▅█"
    assert topfmt.sparkline([math.nan, 200.0], 0, 100, width=4) == "   █"
    assert topfmt.sparkline([40.0], 25, 95, width=1) == "▂"
    assert topfmt.sparkline([], 0, 100, width=2) == "  "


def test_numbers_and_ages() -> None:
    assert [topfmt.age(s) for s in (None, -1, 5, 65, 700, 3700, 90000)] == [
        "-", "0s", "5s", "1m05s", "11m", "1h01m", "1d01h",
    ]  # fmt: skip
    assert topfmt.power(658.2) == "658 W" and topfmt.power(12345) == "12.3 kW"
    assert topfmt.energy(3.6e6) == "1.0 kWh" and topfmt.energy(3.6e9 * 2) == "2.00 MWh"
    assert topfmt.num(None) == "-" and topfmt.num(math.nan) == "-" and topfmt.num(3.4) == "3"


def test_throttle_and_health_in_words() -> None:
    def s(**kw: object) -> GpuSample:
        return GpuSample(index=0, **kw)  # type: ignore[arg-type]

    assert topfmt.throttle(s()) == ("-", "dim")
    assert topfmt.throttle(s(clock_event_reasons=[])) == ("none", "green")
    assert topfmt.throttle(s(clock_event_reasons=["gpu_idle"]))[0] == "idle"
    text, style = topfmt.throttle(s(clock_event_reasons=["sw_power_cap"]))
    assert text == "power cap" and style == "#e0a000"
    text, style = topfmt.throttle(s(clock_event_reasons=["sw_thermal", "hw_thermal"]))
    assert text == "thermal (SW), thermal (HW)" and "ff5050" in style
    assert topfmt.health(s(ecc_enabled=True, ecc_sbe_volatile=0)) == ("ECC ok", "green")
    assert topfmt.health(s(ecc_enabled=False)) == ("ECC off", "dim")
    text, style = topfmt.health(
        s(ecc_enabled=True, ecc_dbe_volatile=2, ecc_sbe_volatile=14, remap_pending=True,
          remap_uncorrectable_rows=1)
    )  # fmt: skip
    assert text == (
        "2 uncorrectable ECC, remap pending (reset needed), 1 rows remapped, 14 corrected ECC"
    )
    assert "ff5050" in style
    assert topfmt.health(s(remap_failure=True))[0] == "row remap FAILED"


def test_xid_events_name_their_meaning() -> None:
    event = EventView(time_ns=NOW - 20 * S, kind="xid", gpu_index=5, code=79)
    text, style = topfmt.event_words(event)
    assert text.startswith("GPU 5 XID 79 GPU has fallen off the bus. ")
    assert style == topfmt.SEVERITY_STYLES["critical"]
    unknown = topfmt.event_words(EventView(time_ns=0, kind="xid", code=999))[0]
    assert "XID 999 (not in telemetryd's table)" in unknown
    other = EventView(time_ns=0, kind="gpu_lost", message="gone", severity="critical")
    assert topfmt.event_words(other)[0] == "gpu_lost: gone"


def test_node_detail_rows() -> None:
    watch, clock = fleet()
    node = watch.nodes[("c1", "gpu-02")]
    gpus = topdetail.gpu_rows(node)
    assert len(gpus) == 8 and all(len(r) == len(topdetail.GPU_COLUMNS) for r in gpus)
    assert gpus[5][2][0] == "✗" and gpus[5][-1][0].startswith("FAILED: gpu_lost")
    assert [g[1][0] for g in gpus] == ["81234"] * 4 + ["81240"] * 4  # failed GPU 5 keeps its job
    assert len(gpus[0][3][0]) == topdetail.SPARK_WIDTH
    procs = topdetail.process_rows(node)
    assert [p[0][0] for p in procs] == ["0", "0", "1", "2", "3", "4", "6", "7"]
    texts = [[t for t, _ in p] for p in procs]
    assert dict(zip(topdetail.PROCESS_COLUMNS, texts[0], strict=True)) == {
        "GPU": "0", "pid": "40000", "user": "alice", "job / pod": "81234.0",
        "GPU mem GiB": "20.0", "SM %": texts[0][5], "CPU %": "100", "RSS GiB": "12.0",
        "command": "python train.py --model llama-70b",
    }  # fmt: skip
    assert texts[0][5] != "-" and texts[1][3] == "81234.extern" and texts[1][5] == "-"
    assert texts[-1][3] == "81240.0" and texts[-1][2] == "bob"
    events = topdetail.event_lines(watch.nodes[("c2", "dgx-a")], clock())
    assert [e[0][0] for e in events] == ["12:00:21Z (19s ago)  ", "12:00:20Z (20s ago)  "]
    assert "XID 94" in events[0][1][0] and "XID 48" in events[1][1][0]
    header = "".join(t for t, _ in topdetail.header(watch, node, clock()))
    assert header.startswith("c1/gpu-02  online  last report 1s ago")
    assert "8 x H100 80GB HBM3" in header


def test_alert_rows_order_and_ages() -> None:
    watch, clock = fleet()
    rs = topalerts.alert_rows(watch, clock())
    assert [(r.state, r.alert.name) for r in rs] == [
        ("firing", "GpuThermalThrottle"), ("firing", "GpuLost"), ("firing", "NodeOffline"),
        ("pending", "GpuPowerNearLimit"), ("silenced", "EccUncorrectable"),
    ]  # fmt: skip
    assert [topfmt.age(r.age_s) for r in rs] == ["5m00s", "1m35s", "20s", "1m00s", "1h06m"]
    assert rs[-1].silences == ("s-1",)
    cells = topalerts.alert_cells(rs[0])
    assert [c[0] for c in cells][:6] == ["firing", "critical", "GpuThermalThrottle", "c1",
                                         "gpu-03", "3"]  # fmt: skip
    lines = topalerts.silence_lines(watch, clock())
    assert "".join(t for t, _ in lines[0]).startswith(
        'c2 node="dgx-a", alertname="EccUncorrectable"  ends in 2h00m  by bob@ops'
    )


def test_silence_gates() -> None:
    assert "allow_silence = true" in (topalerts.silence_gate(False, True, "c1") or "")
    assert "mqtt_silences = true" in (topalerts.silence_gate(True, False, "c1") or "")
    assert topalerts.silence_gate(True, True, "c1") is None


def test_silence_request_building() -> None:
    labels = {"alertname": "GpuHot", "severity": "critical", "cluster": "c1", "node": "n1",
              "gpu": "3", "uuid": "GPU-x"}  # fmt: skip
    text = topalerts.default_matchers(labels)
    assert text == 'alertname="GpuHot", cluster="c1", node="n1", gpu="3"'
    request = topalerts.build_request(text, "1h30m", " disk swap ", "op@host", "r" * 16)
    assert request.matchers == ['alertname="GpuHot"', 'cluster="c1"', 'node="n1"', 'gpu="3"']
    assert request.duration_s == 5400 and request.comment == "disk swap"
    assert topalerts.split_matchers('{a="x, y", b=~"n[0-9]+"}') == ['a="x, y"', 'b=~"n[0-9]+"']
    # a job alert has no node: silencing it must not silence every job of the cluster
    job = {"alertname": "GpuJobIdle", "severity": "warning", "scope": "job", "cluster": "c1",
           "job": "81234"}  # fmt: skip
    assert topalerts.default_matchers(job) == 'alertname="GpuJobIdle", cluster="c1", job="81234"'
    with pytest.raises(ValueError, match=r"^duration: expected a duration such as"):
        topalerts.build_request(text, "soon", "", "op@host")
    with pytest.raises(ValueError, match=r"^matchers: expected at least one"):
        topalerts.build_request(" , ", "1h", "", "op@host")
    with pytest.raises(ValueError, match=r"^silence request: .*created_by"):
        topalerts.build_request(text, "1h", "", "  ")
    with pytest.raises(ValueError, match=r"^silence request: .*duration_s"):
        topalerts.build_request(text, "40d", "", "op@host")
    with pytest.raises(ValueError, match="expected a matcher such as"):
        topalerts.build_request("node", "1h", "", "op@host")
    assert topalerts.default_created_by({"USER": "ann"}, "box") == "ann@box"
    assert topalerts.default_created_by({}, "box") == "operator@box"


def test_request_recognised_once_active() -> None:
    request = topalerts.build_request('node="n1", alertname="A"', "2h", "", "op@h", "x" * 8)
    made = request_silence_id(request.request_id)
    info = SilenceInfo(id=made, matchers=["alertname=A", 'node="n1"'], starts_ns=NOW,
                       ends_ns=NOW + 10 * S, created_by="op@h")  # fmt: skip
    assert topalerts.is_active(request, [info], NOW)
    assert not topalerts.is_active(request, [info], NOW + 11 * S)
    # Someone else's silence with the very same matchers is not this request's.
    other = SilenceInfo(id="s8", matchers=["alertname=A", 'node="n1"'], starts_ns=NOW,
                        ends_ns=NOW + 10 * S, created_by="op@h")  # fmt: skip
    assert not topalerts.is_active(request, [other], NOW)
    assert topalerts.describe_request(request) == 'node="n1", alertname="A" for 2h'


def test_totals_and_status_lines() -> None:
    watch, clock = fleet()
    text = "".join(t for t, _ in topview.totals_line(watch.totals(clock())))
    assert text.startswith("GPUs 47/48 (1 failed)  util ")
    assert "nodes 6 online 1 offline 1 silent" in text
    assert "alerts 2 critical 1 warning 1 pending 1 silenced" in text
    status = "".join(t for t, _ in topview.status_line(watch, clock(), 1234.4))
    assert status.startswith("connected to mqtt://broker.example:1883  1234 msg/s  data age 1s")
    assert status.endswith("/ filter: node, job, pod  ? help  q quit")
    watch.ingest("telemetry/v1/c1/x/report", b"{")
    status = "".join(t for t, _ in topview.status_line(watch, clock(), None))
    assert "- msg/s" in status and "1 rejected: telemetry/v1/c1/x/report" in status


def test_keys_change_the_state() -> None:
    from telemetryd.topstate import TopState, viewbar

    watch, _ = fleet()
    st = TopState()
    st.cycle("sort", watch)
    st.cycle("reverse", watch)
    st.cycle("cluster", watch)
    st.cycle("alerts", watch)
    st.cycle("metric", watch)
    st.cycle("view", watch)
    assert (st.sort, st.reverse, st.row_filter.cluster, st.row_filter.alerts, st.metric,
            st.view) == ("state", True, "c1", "alerting", "temp", "nodes")  # fmt: skip
    st.sort_by("state")
    assert st.reverse is False
    st.sort_by("util")
    assert (st.sort, st.reverse) == ("util", False)
    st.set_filter(" ~^gpu ")
    with pytest.raises(topfilter.FilterError):
        st.set_filter("~(")
    assert st.filter_text == "~^gpu" and st.row_filter.cluster == "c1"
    bar = "".join(t for t, _ in viewbar(st))
    assert bar == (
        " 1 fleet  2 nodes  3 alerts    sort util ↓   "
        "filter: regex '^gpu', cluster c1, alerts: alerting"
    )
    with pytest.raises(ValueError, match="cycle 'x': expected view"):
        st.cycle("x", watch)


def test_log_lines_go_to_the_status_bar_not_the_screen(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from telemetryd.logcapture import logs_into

    watch, clock = fleet()
    logging.getLogger().addHandler(handler := logging.StreamHandler())
    try:
        with logs_into(watch.note):
            logging.getLogger("telemetryd.x").warning("broker %s refused MQTT 5\nmore", "b1")
            logging.getLogger("telemetryd.x").info("not shown")
    finally:
        logging.getLogger().removeHandler(handler)
    assert capsys.readouterr().err == ""
    status = "".join(t for t, _ in topview.status_line(watch, clock(), 1.0))
    assert "broker b1 refused MQTT 5" in status and "more" not in status


def test_energy_is_labelled_with_when_the_viewer_began_counting() -> None:
    from datetime import datetime

    from telemetryd import topfmt

    midnight = int(datetime(2026, 12, 1, 0, 0, 20).timestamp() * 1e9)
    afternoon = int(datetime(2026, 12, 1, 14, 2, 5).timestamp() * 1e9)
    assert topfmt.energy_label(None) == "energy today"
    assert topfmt.energy_label(midnight) == "energy today"
    assert topfmt.energy_label(afternoon) == "energy since 14:02"
