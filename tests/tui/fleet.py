"""A fixed fleet for top's tests, snapshots and docs screenshots: same data, same pictures.

Realistic reports (tests/reports.py ``sampled()``, one simulated 8-GPU node) changed per
node, fed to a Watch on a fake clock: busy, idle and hot nodes, one offline, one silent,
one with a failed GPU and an XID, alerts firing, pending and silenced. Who holds the GPUs
(OWNERS): Slurm job 81234 spans gpu-01 and half of gpu-02, job 81240 the other half (its
GPU 5 failed under it), a Kubernetes pod all of dgx-a and half of dgx-b, whose other half
runs a plain Docker container no scheduler knows of; gpu-06 is idle.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from telemetryd.alerting.model import Alert, fingerprint
from telemetryd.alerting.wire import PendingAlerts, SilenceInfo, Silences
from telemetryd.codec import encode_json
from telemetryd.watch import Watch
from tests.reports import sampled

T0 = 1_767_268_800_000_000_000  # 2026-01-01T12:00:00Z
S = 1_000_000_000
ROUNDS = 40  # seconds of history fed to every node
NOW = T0 + ROUNDS * S

# node -> (cluster, utilisation base, temperature base, power share of the limit)
NODES = {
    "gpu-01": ("c1", 92, 71, 0.86),
    "gpu-02": ("c1", 55, 62, 0.55),
    "gpu-03": ("c1", 97, 86, 0.97),
    "gpu-04": ("c1", 40, 55, 0.40),  # goes offline
    "gpu-05": ("c1", 60, 60, 0.60),  # falls silent
    "gpu-06": ("c1", 0, 33, 0.10),  # idle
    "dgx-a": ("c2", 75, 68, 0.70),
    "dgx-b": ("c2", 30, 48, 0.33),
}
SILENT_AFTER_ROUND = 10

# node -> per GPU index range: (owner as in the report, process user, command); jobs come
# from the Slurm job map, pods from the kubelet; None: no owner (a bare Docker container)
Owner = tuple[dict[str, str] | None, str | None, str]


def _job(job: str) -> dict[str, str]:
    return {"source": "jobmap", "job": job}


def _pod(namespace: str, pod: str, container: str, uid: str) -> dict[str, str]:
    return {"source": "kubelet", "pod": pod, "namespace": namespace, "container": container,
            "pod_uid": uid}  # fmt: skip


_TRAIN = "python train.py --model llama-70b"
_LLAMA = _pod("ml-team", "llama-train-0", "trainer", "6a1f0c2e-8d5b-4e7a-9c3d-2b1e0f4a5c6d")
_BERT = _pod("inference", "bert-serve-7f9c", "server", "0d9e8f7a-6b5c-4d3e-8f1a-9b8c7d6e5f4a")
OWNERS: dict[str, list[tuple[range, Owner]]] = {
    "gpu-01": [(range(8), (_job("81234"), "alice", _TRAIN))],
    "gpu-02": [
        (range(4), (_job("81234"), "alice", _TRAIN)),
        (range(4, 8), (_job("81240"), "bob", "torchrun --nproc-per-node 4 finetune.py --lr 3e-5")),
    ],
    "gpu-03": [(range(8), (_job("81251"), "carol", "./lammps -in in.lj"))],
    "gpu-04": [(range(8), (_job("81260"), "dave", "python sweep.py"))],
    "gpu-05": [(range(8), (_job("81262"), "erin", "python eval.py"))],
    "gpu-06": [(range(8), (None, None, ""))],  # idle: no owner, no process
    "dgx-a": [(range(8), (_LLAMA, None, "python -m torch.distributed.run train.py"))],
    "dgx-b": [
        (range(4), (_BERT, None, "tritonserver --model-repository=/models")),
        (range(4, 8), (None, "svc", "python bench.py")),
    ],
}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


_BASE: dict[str, Any] = json.loads(sampled())


def report(node: str, seq: int, now: int) -> bytes:
    """One report of ``node`` at round ``seq``: values follow a fixed wave per GPU."""
    cluster, util, temp, share = NODES[node]
    doc = copy.deepcopy(_BASE)
    doc.update(cluster=cluster, node=node, seq=seq, time_ns=now, interval_s=1.0, events=[])
    doc["boot_id"] = "b" * 32
    for gpu in doc["gpus"]:
        i = gpu["index"]
        wave = math.sin((seq + 3 * i) / 3)
        u = 0 if util == 0 else max(0, min(100, round(util + 20 * wave - 2 * i)))
        gpu.update(
            uuid=f"GPU-{node}-{i}", util_gpu_pct=u, util_mem_pct=u // 2,
            temp_c=float(round(temp + 8 * wave + (i % 3))), mem_temp_c=float(temp + 5),
            power_w=round(min(700, max(60, 700 * share + 120 * wave)), 1),
            energy_mj=1_000_000 * (100 + seq),
            fb_used_bytes=int(gpu["fb_total_bytes"] * (0.1 + 0.8 * u / 100)),
            sm_clock_mhz=1980 if u else 345, pstate=0 if u else 8,
            clock_event_reasons=[] if u else ["gpu_idle"],
        )  # fmt: skip
        owner, user, command = next(o for gpus, o in OWNERS[node] if i in gpus)
        gpu.pop("owners", None)  # whatever the simulator's report had: this fleet's own
        if owner is not None:
            gpu["owners"] = [owner]
        gpu["processes"] = [process(node, i, u, owner, user, command)] if u else []
        if node == "gpu-03" and i in (2, 3):
            gpu["clock_event_reasons"] = ["sw_thermal", "hw_thermal"]
            gpu["temp_c"] = 91.0
        if node == "gpu-01" and i == 0:
            gpu["clock_event_reasons"] = ["sw_power_cap"]
        if node == "dgx-a" and i == 1:
            gpu.update(ecc_dbe_volatile=2, ecc_sbe_volatile=14, remap_pending=True,
                       remap_uncorrectable_rows=1)  # fmt: skip
    if node == "gpu-02":
        lost = {"code": "gpu_lost", "message": "GPU has fallen off the bus"}
        kept = ("name", "pci_bus_id", "driver", "owners")
        doc["gpus"][5] = {"index": 5, "uuid": "GPU-gpu-02-5", "error": lost,
                          **{k: doc["gpus"][5][k] for k in kept}}  # fmt: skip
        doc["gpus"][0]["processes"].append(
            {"pid": 41999, "type": "compute", "used_memory_bytes": 512 * 2**20, "user": "alice",
             "command": "python -m torch.utils.bottleneck", "job": "81234", "step": "extern",
             "cpu_pct": 3.0, "rss_bytes": 2**30, "unit": "slurmstepd.scope"}
        )  # fmt: skip
    return json.dumps(doc).encode()


def process(
    node: str, i: int, util: int, owner: dict[str, str] | None, user: str | None, command: str
) -> dict[str, Any]:
    """The one process on a busy GPU, with what the agent learns of it (attribution)."""
    p: dict[str, Any] = {"pid": 40000 + 10 * i, "type": "compute", "used_memory_bytes": 20 * 2**30,
                         "sm_util_pct": max(0, util - 3), "command": command,
                         "cpu_pct": 99.5 + i, "rss_bytes": (12 + i) * 2**30}  # fmt: skip
    if user is not None:
        p["user"] = user
    if owner is None:
        p.update(runtime="docker", container_id=f"9c1d2e3f4a5b{node[-1]}{i}" + "0" * 50)
    elif "job" in owner:
        p.update(job=owner["job"], step="0", unit="slurmstepd.scope")
    else:
        p.update({k: owner[k] for k in ("pod", "namespace", "container", "pod_uid")},
                 runtime="kubernetes", container_id=f"{i}e4b7c1" + "a" * 57)  # fmt: skip
    return p


def status(node: str, state: str, now: int, reason: str) -> bytes:
    return json.dumps({"schema": 1, "state": state, "cluster": NODES[node][0], "node": node,
                       "boot_id": "b" * 32, "time_ns": now, "version": "0.1.0",
                       "interval_s": 1.0, "reason": reason}).encode()  # fmt: skip


def event(node: str, gpu: int, code: int, now: int) -> bytes:
    return json.dumps({"schema": 1, "cluster": NODES[node][0], "node": node,
                       "boot_id": "b" * 32, "seq": 0,
                       "event": {"time_ns": now, "kind": "xid", "message": f"XID {code}",
                                 "gpu_index": gpu, "code": code}}).encode()  # fmt: skip


def alert(name: str, severity: str, node: str, gpu: int, summary: str, since_s: int) -> Alert:
    labels = {"alertname": name, "severity": severity, "cluster": NODES[node][0],
              "node": node, "gpu": str(gpu)}  # fmt: skip
    return Alert(fingerprint=fingerprint(labels), status="firing", labels=labels,
                 annotations={"summary": summary}, starts_ns=NOW - (since_s + 60) * S,
                 fired_ns=NOW - since_s * S)  # fmt: skip


FIRING = [
    alert("GpuThermalThrottle", "critical", "gpu-03", 3, "GPU 3 of gpu-03 throttles for heat", 300),
    alert("GpuLost", "critical", "gpu-02", 5, "GPU 5 of gpu-02 fell off the bus (XID 79)", 95),
    alert("EccUncorrectable", "critical", "dgx-a", 1, "2 uncorrectable ECC errors on GPU 1", 4000),
    alert("NodeOffline", "warning", "gpu-04", 0, "gpu-04 went offline", 20),
]
PENDING = alert("GpuPowerNearLimit", "warning", "gpu-01", 0, "GPU 0 at 98% of its power limit", 0)


def fleet(*, accepts: bool = True) -> tuple[Watch, Clock]:
    """The fixed fleet at NOW; ``accepts``: whether c1's aggregator takes silence requests."""
    clock = Clock()
    watch = Watch(clock=clock, silent_after=3.0, history=180)
    for node in NODES:
        watch.ingest(f"telemetry/v1/{NODES[node][0]}/{node}/status",
                     status(node, "online", clock.now, "connected"))  # fmt: skip
    for seq in range(ROUNDS):
        for node, (cluster, *_) in NODES.items():
            if node == "gpu-05" and seq > SILENT_AFTER_ROUND:
                continue
            watch.ingest(f"telemetry/v1/{cluster}/{node}/report", report(node, seq, clock.now))
        if seq == 20:
            watch.ingest("telemetry/v1/c1/gpu-02/event", event("gpu-02", 5, 79, clock.now))
            watch.ingest("telemetry/v1/c2/dgx-a/event", event("dgx-a", 1, 48, clock.now))
            watch.ingest("telemetry/v1/c2/dgx-a/event", event("dgx-a", 1, 94, clock.now + S))
        clock.now += S
    clock.now = NOW - S // 2
    watch.ingest("telemetry/v1/c1/gpu-04/status", status("gpu-04", "offline", clock.now, "will"))
    clock.now = NOW
    for a in [*FIRING]:
        watch.ingest(f"telemetry/v1/{a.labels['cluster']}/_alerts/{a.fingerprint}", encode_json(a))
    pending = PendingAlerts(time_ns=NOW, alerts=[PENDING])
    watch.ingest("telemetry/v1/c1/_pending", encode_json(pending))
    silence = SilenceInfo(id="s-1", matchers=['node="dgx-a"', 'alertname="EccUncorrectable"'],
                          starts_ns=NOW - 3600 * S, ends_ns=NOW + 7200 * S,
                          created_by="bob@ops", comment="RMA ticket 4711")  # fmt: skip
    c2 = Silences(time_ns=NOW, silences=[silence], accepts_requests=True)
    watch.ingest("telemetry/v1/c2/_silences", encode_json(c2))
    c1 = Silences(time_ns=NOW, accepts_requests=accepts)
    watch.ingest("telemetry/v1/c1/_silences", encode_json(c1))
    watch.connection, watch.connected = "connected to mqtt://broker.example:1883", True
    return watch, clock
