"""``telemetryd status``: the summary of a crafted fleet, its exit code, its JSON contract."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from telemetryd.alerting.model import Alert
from telemetryd.alerting.wire import PendingAlerts, SilenceInfo, Silences
from telemetryd.cli import main
from telemetryd.codec import encode_json, json_decoder
from telemetryd.console import print_status
from telemetryd.model import FleetNode, FleetSummary, SinkState
from telemetryd.status import _ours, expects_report, summarize
from telemetryd.statusdoc import StatusDoc
from telemetryd.watch import Watch
from tests.reports import sampled

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def report(node: str, cluster: str = "c1", gpus: dict[int, dict[str, Any]] | None = None,
           count: int = 8) -> bytes:  # fmt: skip
    """The simulated 8-GPU report as ``node``, GPU fields replaced, cut to ``count`` GPUs."""
    doc = json.loads(sampled())
    doc["node"], doc["cluster"] = node, cluster
    doc["gpus"] = doc["gpus"][:count]
    for gpu in doc["gpus"]:  # a known, calm baseline: light load, no throttling
        gpu.update(util_gpu_pct=20, power_w=100.0, temp_c=40.0, clock_event_reasons=[])
    for index, fields in (gpus or {}).items():
        doc["gpus"][index].update(fields)
    return json.dumps(doc).encode()


def status_msg(node: str, state: str, reason: str, cluster: str = "c1") -> bytes:
    return json.dumps({"schema": 1, "state": state, "cluster": cluster, "node": node,
                       "boot_id": "0" * 32, "time_ns": T0, "version": "0.1.0",
                       "interval_s": 10.0, "reason": reason}).encode()  # fmt: skip


def alert(name: str, severity: str, node: str, gpu: str | None, fired_ns: int) -> Alert:
    labels = {"alertname": name, "severity": severity, "cluster": "c1", "node": node}
    if gpu is not None:
        labels["gpu"] = gpu
    return Alert(fingerprint=f"{name}-{node}".ljust(16, "0")[:16], status="firing",
                 labels=labels, annotations={"summary": f"{name} on {node}"},
                 starts_ns=fired_ns - S, fired_ns=fired_ns)  # fmt: skip


def fleet(time_ns: int = T0, nodes: list[FleetNode] | None = None) -> bytes:
    return encode_json(FleetSummary(
        schema=1, cluster="c1", time_ns=time_ns, aggregator="agg1", nodes=nodes or [],
        received=120, accepted=118, duplicates=2, rejected={"schema": 1, "node": 2},
        broker_dropped=0,
        sinks=[SinkState(name="sqlite", state="ok", written=118),
               SinkState(name="influx", state="retrying", written=90, lag=28,
                         last_error="503 Service Unavailable")],
    ))  # fmt: skip


def fleet_watch() -> tuple[Watch, Clock]:
    """A fleet of c1 with every kind of node, GPU and alert status has to tell apart.

    n1: 8 GPUs: 0 busy and hottest, 1 lost, 2 idle, 3 without utilisation, 4 power-capped
        (and busy), 5 idle-clocked (a benign reason: not throttled), 6 and 7 light.
    n2: 2 GPUs, the largest power per GPU. n3: offline (shut down). n4: says online, the
    aggregator calls it silent. n5: says online, no report yet, unknown to the aggregator.
    """
    clock = Clock()
    w = Watch(clock=clock)
    w.ingest("telemetry/v1/c1/_fleet", fleet(nodes=[
        FleetNode(node="n4", state="silent", last_seen_ns=T0 - 100 * S),
        FleetNode(node="n3", state="online", last_seen_ns=T0 - 50 * S),
    ]))  # fmt: skip
    for node, state, reason in (("n1", "online", "connected"), ("n2", "online", "connected"),
                                ("n3", "offline", "shutdown"), ("n4", "online", "connected"),
                                ("n5", "online", "connected")):  # fmt: skip
        w.ingest(f"telemetry/v1/c1/{node}/status", status_msg(node, state, reason))
    clock.now += S
    w.ingest("telemetry/v1/c1/n1/report", report("n1", gpus={
        0: {"util_gpu_pct": 96, "power_w": 690.5, "temp_c": 81.0},
        1: {"error": {"code": "gpu_lost", "message": "fell off the bus"}},
        2: {"util_gpu_pct": 0, "power_w": 70.0},
        3: {"util_gpu_pct": None, "power_w": 150.0},
        4: {"util_gpu_pct": 70, "power_w": 300.0, "clock_event_reasons": ["sw_power_cap"]},
        5: {"util_gpu_pct": 4, "power_w": 60.0, "clock_event_reasons": ["gpu_idle"]},
    }))  # fmt: skip
    w.ingest("telemetry/v1/c1/n2/report", report("n2", count=2, gpus={
        0: {"util_gpu_pct": 100, "power_w": 700.0, "temp_c": 70.0},
        1: {"util_gpu_pct": 50, "power_w": 650.0, "temp_c": 81.0},
    }))  # fmt: skip
    firing = [
        alert("GpuHot", "warning", "n1", "0", T0 - 60 * S),
        alert("GpuLost", "critical", "n1", "1", T0 - 30 * S),
        alert("NodeOffline", "critical", "n3", None, T0 - 90 * S),
        alert("GpuHot", "warning", "n2", "1", T0 - 60 * S),  # silenced below
    ]
    for a in firing:
        w.ingest(f"telemetry/v1/c1/_alerts/{a.fingerprint}", encode_json(a))
    w.ingest("telemetry/v1/c1/_silences", encode_json(Silences(time_ns=T0, silences=[
        SilenceInfo(id="s1", matchers=['node="n2"'], starts_ns=T0 - S, ends_ns=T0 + 3600 * S,
                    created_by="op")])))  # fmt: skip
    pending = alert("GpuHot", "warning", "n2", "0", 0)
    w.ingest("telemetry/v1/c1/_pending",
             encode_json(PendingAlerts(time_ns=T0, alerts=[pending], truncated=2)))  # fmt: skip
    clock.now += S
    return w, clock


def test_counts_of_a_crafted_fleet() -> None:
    w, clock = fleet_watch()
    doc = summarize(w, clock.now, broker="mqtt://b:1883", cluster="+")
    n = doc.nodes
    assert (n.total, n.online, n.offline, n.silent, n.unknown) == (5, 2, 1, 1, 1)
    assert [(r.node, r.reason) for r in n.offline_nodes] == [("n3", "shutdown")]
    assert n.offline_nodes[0].last_seen_ns == T0 - 50 * S  # the aggregator's last report
    assert [r.node for r in n.silent_nodes] == ["n4"]
    assert [r.node for r in n.unknown_nodes] == ["n5"]
    g = doc.gpus
    assert (g.total, g.ok, g.failed) == (10, 9, 1)
    assert (g.busy, g.light, g.idle, g.util_unknown, g.throttled) == (4, 2, 2, 1, 1)
    assert g.ok == g.busy + g.light + g.idle + g.util_unknown
    assert [(f.node, f.gpu, f.error) for f in g.failed_gpus] == [("n1", 1, "gpu_lost")]
    assert g.power_w == round(690.5 + 70 + 150 + 300 + 60 + 2 * 100 + 700 + 650, 1)
    assert g.util_mean_pct == round((96 + 0 + 70 + 4 + 20 + 20 + 100 + 50) / 8, 1)
    assert doc.clusters == ["c1"]
    # n5 says it is online and has not reported: the answer says so; n4 is not waited for.
    assert [r.node for r in doc.waiting_for_reports] == ["n5"]
    assert not doc.complete


def test_firing_alerts_exit_code_and_silences() -> None:
    w, clock = fleet_watch()
    doc = summarize(w, clock.now)
    a = doc.alerts
    assert a.known
    # Worst first, then the oldest; the silenced one is counted, not listed.
    assert [(x.name, x.node, x.gpu) for x in a.firing] == [
        ("NodeOffline", "n3", None), ("GpuLost", "n1", 1), ("GpuHot", "n1", 0)]  # fmt: skip
    assert a.firing_by_severity == {"critical": 2, "warning": 1, "info": 0}
    assert (a.silenced, a.pending) == (1, 3)
    first = a.firing[0]
    assert (first.since_ns, first.since) == (T0 - 90 * S, "2023-11-14T22:11:50Z")
    assert first.summary == "NodeOffline on n3" and first.cluster == "c1"
    assert doc.exit_code == 1
    # Only silenced alerts left firing: all is well.
    for key in [k for k, v in w.firing.items() if v.labels["node"] != "n2"]:
        w.ingest(f"telemetry/v1/c1/_alerts/{key[1]}", b"")
    doc = summarize(w, clock.now)
    assert (doc.alerts.firing, doc.alerts.silenced, doc.exit_code) == ([], 1, 0)
    # The silence ends: it fires again.
    assert summarize(w, T0 + 3601 * S).exit_code == 1


def test_top_consumers_order() -> None:
    w, clock = fleet_watch()
    top = summarize(w, clock.now).top
    assert [(u.node, u.gpus, u.power_w) for u in top.nodes_by_power] == [
        ("n1", 8, 1470.5), ("n2", 2, 1350.0)]  # fmt: skip
    assert top.nodes_by_power[0].temp_max_c == 81.0
    assert top.nodes_by_power[1].util_mean_pct == 75.0
    assert [(u.node, u.gpu, u.power_w) for u in top.gpus_by_power] == [
        ("n2", 0, 700.0), ("n1", 0, 690.5), ("n2", 1, 650.0), ("n1", 4, 300.0),
        ("n1", 3, 150.0)]  # fmt: skip
    # Equal temperatures: by cluster, node, index.
    assert [(u.node, u.gpu, u.temp_c) for u in top.gpus_by_temp][:3] == [
        ("n1", 0, 81.0), ("n2", 1, 81.0), ("n2", 0, 70.0)]  # fmt: skip
    hot = top.gpus_by_temp[0]
    assert hot.uuid.startswith("GPU-") and hot.model.startswith("NVIDIA ")
    assert hot.util_pct == 96


def test_aggregator_summary_and_its_absence() -> None:
    w, clock = fleet_watch()
    doc = summarize(w, clock.now)
    assert doc.aggregator is not None
    (f,) = doc.aggregator.fleets
    assert (f.cluster, f.aggregator, f.accepted, f.rejected, f.stale) == ("c1", "agg1", 118, 3,
                                                                          False)  # fmt: skip
    assert [(s.name, s.state) for s in f.sinks] == [("sqlite", "ok"), ("influx", "retrying")]
    assert any("sink influx of agg1 is retrying: 503" in line for line in doc.warnings)
    # The summary is a minute and more old: the aggregator may be gone.
    stale = summarize(w, T0 + 120 * S)
    assert stale.aggregator is not None and stale.aggregator.fleets[0].stale
    assert any("may be down" in line for line in stale.warnings)
    # No aggregator at all: alerts are unknown, and that is said.
    bare = Watch(clock=clock)
    bare.ingest("telemetry/v1/c1/n1/report", report("n1"))
    doc = summarize(bare, clock.now, broker="mqtt://b:1883")
    assert doc.aggregator is None and not doc.alerts.known and doc.exit_code == 0
    assert doc.complete and doc.waiting_for_reports == []
    assert any("no fleet summary from an aggregator on mqtt://b:1883" in line
               for line in doc.warnings)  # fmt: skip


def test_an_empty_broker() -> None:
    doc = summarize(Watch(), T0, broker="mqtt://b:1883", cluster="c9", settled=False)
    assert (doc.nodes.total, doc.gpus.total, doc.gpus.util_mean_pct) == (0, 0, None)
    assert not doc.complete  # retained state was still arriving
    assert doc.warnings[0] == ("nothing under telemetry/v1/c9/ on mqtt://b:1883: no agent or "
                               "aggregator has published there")  # fmt: skip


FIELDS = {
    "": ["schema", "generated", "generated_ns", "broker", "cluster", "clusters", "complete",
         "waiting_for_reports", "exit_code", "nodes", "gpus", "alerts", "top", "aggregator",
         "warnings"],
    "nodes": ["total", "online", "offline", "silent", "unknown", "offline_nodes", "silent_nodes",
              "unknown_nodes"],
    "node": ["cluster", "node", "reason", "last_seen", "last_seen_ns"],
    "gpus": ["total", "ok", "failed", "busy", "light", "idle", "util_unknown", "throttled",
             "power_w", "util_mean_pct", "failed_gpus"],
    "failed_gpu": ["cluster", "node", "gpu", "uuid", "model", "error", "message"],
    "alerts": ["known", "firing", "firing_by_severity", "pending", "silenced"],
    "alert": ["name", "severity", "cluster", "node", "gpu", "summary", "since", "since_ns",
              "fingerprint"],
    "top": ["nodes_by_power", "gpus_by_power", "gpus_by_temp"],
    "node_usage": ["cluster", "node", "gpus", "power_w", "util_mean_pct", "temp_max_c"],
    "gpu_usage": ["cluster", "node", "gpu", "uuid", "model", "power_w", "temp_c", "util_pct"],
    "aggregator": ["fleets", "clusters_without_summary"],
    "fleet": ["cluster", "aggregator", "time", "time_ns", "age_s", "stale", "received",
              "accepted", "duplicates", "rejected", "broker_dropped", "sinks"],
    "sink": ["name", "state", "written", "lag", "last_error"],
}  # fmt: skip


def test_json_field_names_are_the_documented_contract() -> None:
    """Schema 1 is a contract: these names, in this order, every one always present."""
    w, clock = fleet_watch()
    doc = summarize(w, clock.now, broker="mqtt://b:1883")
    data = json.loads(encode_json(doc))
    assert data["schema"] == 1
    found = {
        "": data, "nodes": data["nodes"], "node": data["nodes"]["offline_nodes"][0],
        "gpus": data["gpus"], "failed_gpu": data["gpus"]["failed_gpus"][0],
        "alerts": data["alerts"], "alert": data["alerts"]["firing"][0], "top": data["top"],
        "node_usage": data["top"]["nodes_by_power"][0],
        "gpu_usage": data["top"]["gpus_by_power"][0], "aggregator": data["aggregator"],
        "fleet": data["aggregator"]["fleets"][0],
        "sink": data["aggregator"]["fleets"][0]["sinks"][0],
    }  # fmt: skip
    assert {k: list(v) for k, v in found.items()} == FIELDS
    assert data["waiting_for_reports"][0]["node"] == "n5"
    # Decoding it back gives the same document: nothing is lost on the way.
    again = json_decoder(StatusDoc)(encode_json(doc))
    assert again == doc
    assert encode_json(again) == encode_json(doc)


def test_documented_fields_are_the_contract() -> None:
    """Every field name of FIELDS appears in docs/status.md."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "status.md").read_text()
    missing = {name for names in FIELDS.values() for name in names if f"`{name}`" not in text}
    assert not missing


def test_who_is_waited_for() -> None:
    w, _ = fleet_watch()
    waited = {n.node for n in w.nodes.values() if expects_report(n)}
    assert waited == {"n5"}  # n1, n2 reported; n3 offline; n4 silent by the aggregator
    assert _ours("telemetry/v1/c1/n1/report", "c1")
    assert _ours("telemetry/v1/c2/n1/report", "+")
    assert not _ours("telemetry/v1/c2/n1/report", "c1")
    assert not _ours("$SYS/broker/uptime", "+")
    assert not _ours("telemetry/v1/c1", "+")


def test_text_output() -> None:
    w, clock = fleet_watch()
    out = io.StringIO()
    print_status(summarize(w, clock.now, broker="mqtt://b:1883"), out)
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].startswith("FIRING 3 (2 critical, 1 warning)  2/5 nodes online, 9/10 GPUs ok")
    assert "incomplete" in lines[0]
    assert lines[1] == ("nodes   2 online, 1 offline: n3 (shutdown), 1 silent: n4, "
                        "1 unknown: n5")  # fmt: skip
    assert lines[2].startswith("GPUs    4 busy, 2 light, 2 idle, 1 without utilisation; "
                               "1 throttled; 1 failed: n1 GPU 1 (gpu_lost)")  # fmt: skip
    assert any(line.split()[:3] == ["critical", "NodeOffline", "n3"] for line in lines)
    assert "warning: no report yet from 1 node(s) that say they are online: c1/n5" in text
    assert all(line == line.rstrip() for line in lines)  # no padding left at line ends
    assert "\x1b[" not in text  # no colour outside a terminal


@pytest.mark.parametrize(("args", "line"), [
    (["--cluster", "a/b"], "option --cluster: cluster 'a/b' contains '/'"),
    (["--broker", "http://h"], "option --broker: 'http://h': scheme must be mqtt or mqtts"),
    (["--wait", "0"], "option --wait: top.wait: expected float > 0.0"),
    (["--wait", "soon"], "telemetryd status: Invalid value for '--wait'"),
])  # fmt: skip
def test_bad_usage_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], line: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["status", *args])
    out, err = capsys.readouterr()
    assert (exit_.value.code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith(line), err
