"""The viewer's fleet model: what it keeps from each message, and what it refuses."""

from __future__ import annotations

import json
import math
import sys

from telemetryd.alerting.model import Alert
from telemetryd.alerting.wire import PendingAlerts, SilenceInfo, Silences
from telemetryd.codec import encode_json
from telemetryd.watch import Watch
from telemetryd.watchwire import Ring, processes
from tests.reports import sampled

T0 = 1_700_000_000_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def report(node: str = "n1", seq: int = 0, **gpu0: object) -> bytes:
    doc = json.loads(sampled())
    doc["node"], doc["seq"] = node, seq
    doc["gpus"][0].update(gpu0)
    return json.dumps(doc).encode()


def test_report_fills_gpus_and_rings() -> None:
    clock = Clock()
    w = Watch(clock=clock, history=4)
    for i in range(6):
        w.ingest("telemetry/v1/c1/n1/report", report(seq=i, util_gpu_pct=10 * i))
        clock.now += 1_000_000_000
    node = w.nodes[("c1", "n1")]
    assert len(node.gpus) == 8
    assert node.reports == 6
    assert node.gpus[0].rings["util"].values() == [20.0, 30.0, 40.0, 50.0]
    assert node.gpus[0].rings["util"].values(2) == [40.0, 50.0]


def test_node_states_follow_presence_and_silence() -> None:
    clock = Clock()
    w = Watch(clock=clock, silent_after=3)
    status = {"schema": 1, "state": "online", "cluster": "c1", "node": "n1",
              "boot_id": "0" * 32, "time_ns": T0, "version": "x", "interval_s": 1.0,
              "reason": "connected"}  # fmt: skip
    w.ingest("telemetry/v1/c1/n1/status", json.dumps(status).encode())
    node = w.nodes[("c1", "n1")]
    assert w.node_state(node) == "unknown"
    w.ingest("telemetry/v1/c1/n1/report", report())
    assert w.node_state(node) == "online"
    interval = json.loads(sampled())["interval_s"]
    clock.now += int(3.5 * interval * 1e9)
    assert w.node_state(node) == "silent"
    clock.now += 1
    w.ingest("telemetry/v1/c1/n1/status", json.dumps({**status, "state": "offline"}).encode())
    assert w.node_state(node) == "offline"
    clock.now += 1
    w.ingest("telemetry/v1/c1/n1/report", report(seq=1))
    assert w.node_state(node) == "online"


def test_bad_messages_are_counted_not_raised() -> None:
    w = Watch()
    w.ingest("telemetry/v1/c1/n1/report", b"{not json")
    w.ingest("telemetry/v1/c1/n2/report", report(node="n1"))
    assert w.last_problem == "telemetry/v1/c1/n2/report: report of c1/n1 on the topic of n2"
    w.ingest("telemetry/v1/c1/bad+name/report", report())
    w.ingest("elsewhere/x", b"")
    assert w.rejected == {"payload": 3, "topic": 1}
    assert not w.nodes


def test_alerts_pending_and_silences() -> None:
    clock = Clock()
    w = Watch(clock=clock)
    alert = Alert(fingerprint="ab" * 8, status="firing",
                  labels={"alertname": "GpuHot", "severity": "critical", "cluster": "c1",
                          "node": "n1", "gpu": "0"})  # fmt: skip
    w.ingest(f"telemetry/v1/c1/_alerts/{alert.fingerprint}", encode_json(alert))
    assert [a.name for a in w.alerts_of("c1", "n1")] == ["GpuHot"]
    assert w.totals().firing == {"critical": 1}
    silences = Silences(time_ns=T0, accepts_requests=True, silences=[
        SilenceInfo(id="s1", matchers=['node="n1"'], starts_ns=T0 - 1, ends_ns=T0 + 10**12,
                    created_by="op")])  # fmt: skip
    w.ingest("telemetry/v1/c1/_silences", encode_json(silences))
    assert w.silenced_by(alert) == ["s1"]
    assert w.totals().silenced == 1 and w.totals().firing == {}
    assert w.accepts_silences("c1")
    w.ingest("telemetry/v1/c1/_pending", encode_json(PendingAlerts(time_ns=T0, alerts=[alert])))
    assert len(w.pending_alerts()) == 1
    w.ingest(f"telemetry/v1/c1/_alerts/{alert.fingerprint}", b"")
    assert w.alerts_of("c1", "n1") == []


def test_totals_energy_from_the_counter() -> None:
    clock = Clock()
    w = Watch(clock=clock)
    w.ingest("telemetry/v1/c1/n1/report", report(energy_mj=1_000_000))
    clock.now += 10**9
    w.ingest("telemetry/v1/c1/n1/report", report(seq=1, energy_mj=1_500_000))
    t = w.totals()
    assert t.gpus == 8 and t.online == 1
    assert math.isclose(t.energy_today_j, 500.0)


def test_events_kept_once() -> None:
    w = Watch()
    doc = json.loads(report())
    doc["events"] = [{"time_ns": T0, "kind": "xid", "message": "XID 79", "gpu_index": 5,
                      "code": 79}]  # fmt: skip
    event = {"schema": 1, "cluster": "c1", "node": "n1", "boot_id": doc["boot_id"], "seq": 0,
             "event": doc["events"][0]}  # fmt: skip
    w.ingest("telemetry/v1/c1/n1/event", json.dumps(event).encode())
    w.ingest("telemetry/v1/c1/n1/report", json.dumps(doc).encode())
    assert [e.code for e in w.nodes[("c1", "n1")].events] == [79]


def test_ring_gaps_are_nan() -> None:
    ring = Ring(3)
    ring.push(1.0)
    ring.push(None)
    assert ring.values()[0] == 1.0 and math.isnan(ring.values()[1])


def test_jobs_and_pods_follow_the_newest_report() -> None:
    w = Watch(clock=Clock())
    job = [{"source": "jobmap", "job": "81234"}]
    pod = [{"source": "kubelet", "pod": "llama-0", "namespace": "ml"}]
    w.ingest("telemetry/v1/c1/n1/report", report(owners=pod))
    node = w.nodes[("c1", "n1")]
    assert (node.jobs, node.pods) == ((), ("ml/llama-0",))
    doc = json.loads(report(seq=1, owners=job))
    for gpu in doc["gpus"][1:3]:
        gpu["owners"] = [{"source": "jobmap", "job": "9"}]
    w.ingest("telemetry/v1/c1/n1/report", json.dumps(doc).encode())
    assert (node.jobs, node.pods) == (("9", "81234"), ())  # most GPUs first
    w.ingest("telemetry/v1/c1/n1/report", report(seq=2))  # the jobs ended
    assert (node.jobs, node.pods) == ((), ())
    bad = report(seq=3, owners=[{"source": "jobmap", "job": 5}])
    w.ingest("telemetry/v1/c1/n1/report", bad)
    assert w.rejected["payload"] == 1 and "owners" in w.last_problem


def test_processes_are_kept_raw_without_holding_the_payload() -> None:
    w = Watch(clock=Clock())
    procs = [{"pid": 7, "type": "compute", "user": "alice", "job": "81234", "step": "0"}]
    payload = report(processes=procs)
    before = sys.getrefcount(payload)
    w.ingest("telemetry/v1/c1/n1/report", payload)
    assert sys.getrefcount(payload) == before  # only its slice is kept, copied
    sample = w.nodes[("c1", "n1")].gpus[0].sample
    assert [(p.pid, p.user, p.owner) for p in processes(sample)] == [(7, "alice", "81234.0")]
