"""The live picture ``/metrics`` serves: each node's newest report, its recent XIDs, its age.

Why a view of its own rather than a Gauge child per series: at thousands of GPUs with
seventy series each, labelled children cost far more memory than the reports they come
from. Here a node costs its newest report (already decoded) plus the label sets of its
GPUs, built once per report; series are produced at scrape time from that.

Rules the operator relies on (docs/metrics.md):
- *live* means the newest report of a node by its own sample time; a report older than
  the one held (a spooled backlog drained after an outage) is history for the sinks, not
  the present, and changes nothing here except the XID window;
- a node whose newest report was *received* more than ``stale_after`` seconds ago is no
  longer served, and ``expire`` releases its memory;
- XIDs count from every accepted report, late ones included, while their own time is
  inside ``xid_window``;
- every GPU series carries ``hpc_job``, ``pod``, ``namespace`` and ``container``, as
  dcgm-exporter's HPC and Kubernetes mappings do (exporters/owners.py): empty when the
  GPU has no owner, which in Prometheus is the same as no label, so ``sum by (hpc_job)``
  works on any fleet; a MIG instance's series name the owners of that instance.

The event loop calls ``observe`` and ``expire``; a scrape renders in a worker thread and
calls ``snapshot``. One lock guards the two dicts, held only to copy them, and what a
snapshot hands out (``NodeView``, ``Xid``) is never mutated afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from exporters.dcgm_names import GPU_LABELS
from exporters.owners import OWNER_KEYS, owner_labels
from telemetryd.model import Gpu, MigDevice, Report

Labels = dict[str, str]
_EXPIRE_EVERY_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU of a node's newest report, with its label set built once."""

    gpu: Gpu
    labels: Labels
    nvlink_kib_s: float | None  # derived from the two newest reports; None for the first
    mig: tuple[tuple[MigDevice, Labels], ...]


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node's newest report and when the aggregator received it."""

    cluster: str
    node: str
    report: Report
    received_ns: int
    gpus: tuple[GpuView, ...]
    host_labels: Labels


@dataclass(frozen=True, slots=True)
class Xid:
    """One XID event of one GPU (by UUID when the event has one, else by index)."""

    time_ns: int
    gpu_index: int | None
    uuid: str | None
    code: int

    def of(self, gpu: Gpu) -> bool:
        """Whether this event belongs to ``gpu``."""
        return self.uuid == gpu.uuid if self.uuid else self.gpu_index == gpu.index


def mig_profile(device: MigDevice) -> str:
    """``3g.20gb`` from NVML's instance name ``NVIDIA A100-SXM4-40GB MIG 3g.20gb``."""
    name = device.name or ""
    _, sep, profile = name.rpartition(" MIG ")
    return profile.strip() if sep else ""


def _nvlink_total(gpu: Gpu) -> int | None:
    if gpu.nvlink_tx_bytes is None or gpu.nvlink_rx_bytes is None:
        return None
    return gpu.nvlink_tx_bytes + gpu.nvlink_rx_bytes


def nvlink_rate(old: Report, new: Report, old_gpu: Gpu, new_gpu: Gpu) -> float | None:
    """KiB/s of NVLink data (sent + received) between two reports of one GPU.

    DCGM's ``DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL`` is a rate in KiB/s although
    dcgm-exporter declares it a counter; the report carries the cumulative byte counters,
    so the rate is their difference over the two reports' sample times. None when either
    counter is absent or went backwards (a driver reload resets them).
    """
    before, after = _nvlink_total(old_gpu), _nvlink_total(new_gpu)
    seconds = (new.time_ns - old.time_ns) / 1e9
    if before is None or after is None or after < before or seconds <= 0:
        return None
    return (after - before) / 1024 / seconds


class FleetView:
    """Newest report per (cluster, node), XIDs within the window; see the module doc."""

    def __init__(
        self,
        *,
        labels: Literal["dcgm", "snake"],
        stale_after_s: float,
        xid_window_s: float,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        style = 0 if labels == "dcgm" else 1
        self.label = {key: names[style] for key, names in GPU_LABELS.items()}
        self.stale_after_ns = int(stale_after_s * 1e9)
        self.xid_window_ns = int(xid_window_s * 1e9)
        self.clock = clock
        self._nodes: dict[tuple[str, str], NodeView] = {}
        self._xids: dict[tuple[str, str], list[Xid]] = {}
        self._lock = threading.Lock()
        self._expired_at = 0

    # -- the event loop's side -------------------------------------------------------------
    def observe(self, report: Report, received_ns: int) -> None:
        """Take a newly accepted report (each is seen once: duplicates never get here)."""
        key = (report.cluster, report.node)
        xids = [
            Xid(e.time_ns, e.gpu_index, e.uuid, e.code)
            for e in report.events
            if e.kind == "xid" and e.code is not None and (e.uuid or e.gpu_index is not None)
        ]
        held = self._nodes.get(key)
        view = None
        if held is None or report.time_ns >= held.report.time_ns:
            view = self._view(report, received_ns, held)
        with self._lock:
            if view is not None:
                self._nodes[key] = view
            if xids:
                self._xids.setdefault(key, []).extend(xids)
        if received_ns - self._expired_at >= _EXPIRE_EVERY_NS:
            self.expire(received_ns)

    def expire(self, now_ns: int | None = None) -> int:
        """Forget stale nodes and XIDs past the window; the number of nodes forgotten."""
        now = self.clock() if now_ns is None else now_ns
        self._expired_at = now
        oldest_xid = now - self.xid_window_ns
        with self._lock:
            stale = [k for k, v in self._nodes.items() if now - v.received_ns > self.stale_after_ns]
            for key in stale:
                del self._nodes[key]
            for key, events in list(self._xids.items()):
                kept = [x for x in events if x.time_ns >= oldest_xid] if key in self._nodes else []
                if kept:
                    self._xids[key] = kept
                else:
                    del self._xids[key]
        return len(stale)

    def _view(self, report: Report, received_ns: int, held: NodeView | None) -> NodeView:
        label = self.label
        host = {label["host"]: report.node, label["cluster"]: report.cluster}
        before = {g.gpu.uuid: g.gpu for g in held.gpus} if held else {}
        gpus: list[GpuView] = []
        seen: set[int] = set()
        for gpu in report.gpus:
            if gpu.index in seen:  # two GPUs with one index would be one series twice
                continue
            seen.add(gpu.index)
            labels = {
                label["gpu"]: str(gpu.index),
                label["uuid"]: gpu.uuid,
                label["pci_bus_id"]: gpu.pci_bus_id,
                label["device"]: f"nvidia{gpu.index}",
                label["model"]: gpu.name,
                **host,
                **_owners(gpu, None),
            }
            old = before.get(gpu.uuid)
            rate = nvlink_rate(held.report, report, old, gpu) if held and old else None
            mig = tuple(
                (m, {**labels, label["gi_id"]: str(m.gi_id), label["gi_profile"]: mig_profile(m),
                     **_owners(gpu, m.gi_id)})
                for m in _unique_instances(gpu.mig)
            )  # fmt: skip
            gpus.append(GpuView(gpu, labels, rate, mig))
        return NodeView(report.cluster, report.node, report, received_ns, tuple(gpus), host)

    # -- any thread ------------------------------------------------------------------------
    def snapshot(self, now_ns: int) -> tuple[list[NodeView], dict[tuple[str, str], list[Xid]]]:
        """The nodes not stale at ``now_ns``, and their XIDs inside the window."""
        with self._lock:
            nodes = list(self._nodes.values())
            xids = {k: list(v) for k, v in self._xids.items()}
        live = [n for n in nodes if now_ns - n.received_ns <= self.stale_after_ns]
        oldest = now_ns - self.xid_window_ns
        recent = {k: [x for x in v if x.time_ns >= oldest] for k, v in xids.items()}
        return live, {k: v for k, v in recent.items() if v}

    def __len__(self) -> int:
        return len(self._nodes)


def _owners(gpu: Gpu, gi_id: int | None) -> Labels:
    """The owner labels of a GPU or one of its MIG instances ("" where none)."""
    values = owner_labels(gpu.owners, gi_id)
    return {key: value or "" for key, value in zip(OWNER_KEYS, values, strict=True)}


def _unique_instances(devices: list[MigDevice]) -> list[MigDevice]:
    """MIG instances that can have a series: with a GPU instance id, each id once."""
    out: list[MigDevice] = []
    seen: set[int] = set()
    for device in devices:
        if device.gi_id is not None and device.gi_id not in seen:
            seen.add(device.gi_id)
            out.append(device)
    return out


# -- what the aggregator says about itself, copied on the event loop for one scrape ------
@dataclass(frozen=True, slots=True)
class SinkStats:
    """One sink's numbers, copied on the event loop."""

    name: str
    up: bool
    queue_reports: int
    queue_bytes: int
    written: int
    retries: int
    rejected: int
    skipped: int
    lines: Mapping[str, int] | None  # written, retried, set_aside, fields_dropped
    durations: tuple[tuple[float, int], ...]  # cumulative (upper bound, count), +Inf last
    duration_sum: float


@dataclass(frozen=True, slots=True)
class ReceiverCounts:
    """One alert receiver's delivery counters."""

    name: str
    sent: int
    retries: int
    failed: int  # dead-lettered after its retries, or refused for good
    superseded: int
    queued: int


@dataclass(frozen=True, slots=True)
class AlertStats:
    """The alert engine's numbers at one moment."""

    alerts: Mapping[tuple[str, str], int]  # (state, severity) -> alerts
    evaluations: int
    receivers: tuple[ReceiverCounts, ...]


@dataclass(frozen=True, slots=True)
class NodeStats:
    """One node as the fleet sees it."""

    cluster: str
    node: str
    up: bool
    last_report_s: float | None


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """The aggregator's own numbers at one moment."""

    received: int
    accepted: int
    duplicates: int
    rejected: Mapping[str, int]
    missing: Mapping[str, int]  # cluster -> reports missing between sequence numbers
    nodes: Mapping[tuple[str, str], int]  # (cluster, state) -> nodes
    gpus: Mapping[tuple[str, str], int]  # (cluster, "ok"|"failed") -> GPUs
    wal_bytes: int
    broker_dropped: int | None
    sinks: tuple[SinkStats, ...]
    node_list: tuple[NodeStats, ...]
    alerts: AlertStats | None = None  # None when the alert engine is turned off
