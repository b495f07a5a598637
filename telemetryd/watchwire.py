"""The slice of a report a viewer needs, decoded leniently, and the ring buffers it keeps.

A viewer of 1,000 nodes reporting every second decodes 1,000 reports a second. The full
``model.Report`` is decoded strictly by the aggregator; a viewer only needs a few dozen
fields per GPU, so these structs name just those and let msgspec skip the rest unread,
which is several times cheaper. Unknown fields are ignored (not refused) on purpose: a
newer agent with more fields must still show up in an older ``top``, and an older agent
(schema 1, no owners, bare processes) in a newer one: every field added later is optional.

Who holds a GPU (``owners``: job, pod) is decoded with every report, because the node
table and the filter use it. Processes are shown only in one node's detail view, so they
are kept as raw JSON and decoded by :func:`processes` when that view draws: at 1,000
reports a second with two processes per GPU that saves about a fifth of the decoding.
"""

from __future__ import annotations

import math
from array import array

from telemetryd.codec import Raw, Struct, field, json_decoder
from telemetryd.owners import counted, pod_key


class ProcessView(Struct, kw_only=True, gc=False):
    """A process on a GPU: memory, SM share, host side and owner, each when the agent knows."""

    pid: int
    type: str = "compute"
    used_memory_bytes: int | None = None
    sm_util_pct: float | None = None
    user: str | None = None
    command: str | None = None
    cpu_pct: float | None = None
    rss_bytes: int | None = None
    job: str | None = None
    step: str | None = None
    pod: str | None = None
    namespace: str | None = None
    pod_uid: str | None = None
    container_id: str | None = None
    runtime: str | None = None

    @property
    def owner(self) -> str:
        """``81234.0`` (Slurm job.step), ``ml/llama-0`` (pod), ``docker:3f2a1b9c0d1e``, or ""."""
        if self.job:
            return f"{self.job}.{self.step}" if self.step else self.job
        pod = pod_key(self.namespace, self.pod, self.pod_uid)
        if pod:
            return pod
        if self.container_id:
            return f"{self.runtime or 'container'}:{self.container_id[:12]}"
        return ""


class OwnerView(Struct, kw_only=True, gc=False):
    """Who holds a GPU (``model.GpuOwner``): an HPC job, a pod, or both; container not read."""

    source: str = ""
    job: str | None = None
    pod: str | None = None
    namespace: str | None = None
    pod_uid: str | None = None


class ErrorView(Struct, kw_only=True, gc=False):
    """Why a GPU could not be read (gpu_lost, timeout, ...)."""

    code: str
    message: str = ""


class GpuSample(Struct, kw_only=True, gc=False):
    """One GPU in one report: identity, live values, throttling and memory health."""

    index: int
    uuid: str = ""
    name: str = ""
    error: ErrorView | None = None
    util_gpu_pct: int | None = None
    util_mem_pct: int | None = None
    temp_c: float | None = None
    mem_temp_c: float | None = None
    temp_slowdown_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_mj: int | None = None
    fb_total_bytes: int | None = None
    fb_used_bytes: int | None = None
    sm_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    clock_event_reasons: list[str] | None = None
    pstate: int | None = None
    fan_pct: int | None = None
    ecc_enabled: bool | None = None
    ecc_sbe_volatile: int | None = None
    ecc_dbe_volatile: int | None = None
    ecc_dbe_aggregate: int | None = None
    remap_correctable_rows: int | None = None
    remap_uncorrectable_rows: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    retired_pages_pending: bool | None = None
    recovery_action: str | None = None
    owners: list[OwnerView] | None = None
    processes: Raw = field(default_factory=Raw)  # JSON; decoded by processes() when shown

    @property
    def mem_pct(self) -> float | None:
        """Framebuffer used, in percent of total."""
        if self.fb_used_bytes is None or not self.fb_total_bytes:
            return None
        return 100.0 * self.fb_used_bytes / self.fb_total_bytes


def holders(sample: GpuSample) -> tuple[list[str], list[str]]:
    """The HPC job ids and the pods (``namespace/pod`` or UID) holding a GPU, each once.

    Keys as the agent's job accounting makes them: a job id when the owner has one, else
    the pod. Owners learned from a process's cgroup count only when the GPU has no owner
    from the job map or the kubelet, as in the accounting.
    """
    jobs: list[str] = []
    pods: list[str] = []
    for owner in counted(sample.owners):
        if owner.job:
            if owner.job not in jobs:
                jobs.append(owner.job)
            continue
        pod = pod_key(owner.namespace, owner.pod, owner.pod_uid)
        if pod and pod not in pods:
            pods.append(pod)
    return jobs, pods


def sampled_value(sample: GpuSample, metric: str) -> float | None:
    """A GPU's util (%), temp (°C), power (W) or mem (% used); None when not read."""
    if sample.error is not None:
        return None
    if metric == "util":
        return None if sample.util_gpu_pct is None else float(sample.util_gpu_pct)
    if metric == "temp":
        return sample.temp_c
    if metric == "power":
        return sample.power_w
    return sample.mem_pct


class HostView(Struct, kw_only=True, gc=False):
    """The node's own load."""

    cpu_pct: float | None = None
    cpu_count: int | None = None
    load_1: float | None = None
    mem_total_bytes: int | None = None
    mem_used_bytes: int | None = None
    mem_available_bytes: int | None = None


class EventView(Struct, kw_only=True, gc=False):
    """A one-off event (XID, ECC, GPU lost) as the agent described it."""

    time_ns: int
    kind: str
    message: str = ""
    gpu_index: int | None = None
    code: int | None = None
    name: str | None = None
    action: str | None = None
    severity: str | None = None


class ReportView(Struct, kw_only=True, gc=False):
    """A report, as much of it as a viewer shows."""

    schema: int
    cluster: str
    node: str
    boot_id: str
    seq: int
    time_ns: int
    interval_s: float
    gpus: list[GpuSample] = field(default_factory=list)
    host: HostView | None = None
    events: list[EventView] = field(default_factory=list)


class EventMessageView(Struct, kw_only=True, gc=False):
    """``.../event``: one event, published as soon as the agent saw it."""

    node: str
    event: EventView


class StatusView(Struct, kw_only=True, gc=False):
    """``.../status``: online at connect, offline at shutdown or as the Last Will."""

    state: str
    node: str
    time_ns: int = 0
    version: str = ""
    interval_s: float = 0.0
    reason: str = ""


decode_report_view = json_decoder(ReportView)
_decode_processes = json_decoder(list[ProcessView])


def processes(sample: GpuSample) -> list[ProcessView]:
    """The GPU's processes, decoded now (none when the report had none).

    Raises:
        DecodeError: the report's process list is not one (naming the field).
    """
    data = bytes(sample.processes)
    return _decode_processes(data) if data and data != b"null" else []


decode_event_view = json_decoder(EventMessageView)
decode_status_view = json_decoder(StatusView)


class Ring:
    """The last ``size`` samples of one metric, as 4-byte floats (NaN: no value).

    At 1,000 nodes x 8 GPUs x 4 metrics x 180 samples this is 23 MB; Python floats in a
    deque would take ten times that.
    """

    __slots__ = ("_data", "_pos", "count")

    def __init__(self, size: int) -> None:
        self._data = array("f", [math.nan]) * size
        self._pos = 0
        self.count = 0

    def push(self, value: float | None) -> None:
        """Add the newest sample (None is kept as a gap)."""
        self._data[self._pos] = math.nan if value is None else value
        self._pos = (self._pos + 1) % len(self._data)
        self.count = min(self.count + 1, len(self._data))

    def values(self, last: int | None = None) -> list[float]:
        """The newest ``last`` samples (all kept when None), oldest first; NaN for gaps."""
        n = self.count if last is None else min(last, self.count)
        size = len(self._data)
        start = (self._pos - n) % size
        if start + n <= size:
            return list(self._data[start : start + n])
        return list(self._data[start:]) + list(self._data[: (start + n) % size])
