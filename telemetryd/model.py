"""The report: the versioned wire contract between agents and everything downstream.

One report per node per interval, JSON on the wire so ``mosquitto_sub`` shows it. Every
metric field is optional and *absent* when the source does not support it on this device
(fan speed on an SXM board, utilisation on a MIG instance): absent is never written as 0.
Units are in the field names (``_bytes``, ``_w``, ``_mj``, ``_mhz``, ``_c``, ``_pct``,
``_s``, ``_ns``); docs/report.md documents each field with its unit and source.

Decoding is strict: unknown fields, wrong types and out-of-range values are refused with
a message that names the field (``gpus[3].power_w: expected float >= 0.0``). A change that
adds or alters a field bumps ``SCHEMA_VERSION``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from telemetryd.codec import Meta, Struct, encode_json, field, json_decoder
from telemetryd.names import NAME_PATTERN

SCHEMA_VERSION: Literal[1] = 1
"""Version of the presence, event and fleet messages."""
REPORT_SCHEMA: Literal[2] = 2
"""Version of the report: 2 added process attribution, GPU owners and job records (issue 7).
Decoders accept 1 and 2; an agent sends 2."""

Name = Annotated[str, Meta(pattern=NAME_PATTERN)]
BootId = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}\Z")]
Count = Annotated[int, Meta(ge=0)]
Bytes = Annotated[int, Meta(ge=0)]
BytesPerS = Annotated[float, Meta(ge=0)]
Pct = Annotated[int, Meta(ge=0, le=100)]
PctF = Annotated[float, Meta(ge=0, le=100)]
Watts = Annotated[float, Meta(ge=0, le=100_000)]
Celsius = Annotated[float, Meta(ge=-273.15, le=1000)]
Mhz = Annotated[int, Meta(ge=0, le=100_000)]
Text = Annotated[str, Meta(max_length=256)]
Seconds = Annotated[float, Meta(ge=0)]
Load = Annotated[float, Meta(ge=0)]  # run-queue length averaged by the kernel; no unit


class _Base(Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """Every wire struct: absent optional fields are omitted, unknown fields refused."""


class GpuError(_Base):
    """Why a GPU could not be read this interval; its other fields may be absent."""

    code: Literal["gpu_lost", "reset_required", "timeout", "hung", "driver", "unknown"]
    message: Text


Runtime = Literal["kubernetes", "docker", "containerd", "podman", "crio", "lxc", "systemd"]
"""What a process's cgroup path says it runs under (docs/attribution.md)."""


class GpuProcess(_Base):
    """A process holding a GPU context, and who it belongs to (docs/attribution.md).

    NVML gives pid, type, memory and MIG ids; NVML's process utilisation the ``*_util_pct``
    (over the last interval, where the GPU supports it); psutil the host side; the pid's
    cgroup the attribution. Each group is absent when its source is.
    """

    pid: Annotated[int, Meta(ge=0)]
    type: Literal["compute", "graphics"]
    used_memory_bytes: Bytes | None = None
    gi_id: Count | None = None
    ci_id: Count | None = None
    # NVML process utilisation (nvmlDeviceGetProcessUtilization), max over the interval
    sm_util_pct: Pct | None = None
    mem_util_pct: Pct | None = None
    enc_util_pct: Pct | None = None
    dec_util_pct: Pct | None = None
    # host side (psutil)
    user: Text | None = None
    command: Text | None = None
    cpu_pct: Annotated[float, Meta(ge=0)] | None = None  # of one core; > 100 when threaded
    rss_bytes: Bytes | None = None
    # attribution (/proc/<pid>/cgroup, the kubelet's pod-resources API)
    job: Text | None = None  # Slurm job id
    step: Text | None = None  # Slurm step: batch, extern, interactive, 0, 1, ...
    pod_uid: Text | None = None
    pod: Text | None = None
    namespace: Text | None = None
    container: Text | None = None
    container_id: Text | None = None
    runtime: Runtime | None = None
    unit: Text | None = None  # systemd unit or scope


class GpuOwner(_Base):
    """Who holds a GPU this interval: an HPC job, a Kubernetes container, or both.

    ``source`` says how it was learned: ``jobmap`` (the job mapping directory a Slurm
    prolog writes), ``kubelet`` (pod-resources API, by GPU UUID), ``cgroup`` (the cgroup
    of a process on the GPU).
    """

    source: Literal["jobmap", "kubelet", "cgroup"]
    gi_id: Count | None = None  # the MIG GPU instance it holds, when not the whole GPU
    job: Text | None = None
    pod: Text | None = None
    namespace: Text | None = None
    container: Text | None = None
    pod_uid: Text | None = None


class MigDevice(_Base):
    """One MIG instance of a GPU: identity and its share of memory."""

    uuid: Text
    gi_id: Count | None = None
    ci_id: Count | None = None
    name: Text | None = None
    fb_total_bytes: Bytes | None = None
    fb_used_bytes: Bytes | None = None
    fb_free_bytes: Bytes | None = None


class Gpu(_Base):
    """One physical GPU: identity, then every metric NVML gives for it (units in the names)."""

    index: Count
    uuid: Text
    pci_bus_id: Text
    name: Text
    driver: Text
    cuda_driver: Text | None = None
    serial: Text | None = None
    vbios: Text | None = None
    arch: Text | None = None
    error: GpuError | None = None
    # MIG
    mig_mode: bool | None = None
    mig_mode_pending: bool | None = None
    mig: list[MigDevice] = field(default_factory=list)
    # clocks
    sm_clock_mhz: Mhz | None = None
    mem_clock_mhz: Mhz | None = None
    graphics_clock_mhz: Mhz | None = None
    video_clock_mhz: Mhz | None = None
    sm_clock_max_mhz: Mhz | None = None
    mem_clock_max_mhz: Mhz | None = None
    clock_event_reasons: list[Text] | None = None
    throttle_power_ns: Count | None = None
    throttle_thermal_ns: Count | None = None
    pstate: Annotated[int, Meta(ge=0, le=15)] | None = None
    # temperatures and cooling
    temp_c: Celsius | None = None
    mem_temp_c: Celsius | None = None
    temp_slowdown_c: Celsius | None = None
    temp_shutdown_c: Celsius | None = None
    fan_pct: Pct | None = None
    # power and energy
    power_w: Watts | None = None
    power_limit_w: Watts | None = None
    power_enforced_limit_w: Watts | None = None
    power_default_limit_w: Watts | None = None
    power_min_limit_w: Watts | None = None
    power_max_limit_w: Watts | None = None
    energy_mj: Count | None = None
    # utilisation
    util_gpu_pct: Pct | None = None
    util_mem_pct: Pct | None = None
    util_enc_pct: Pct | None = None
    util_dec_pct: Pct | None = None
    sm_active_pct: PctF | None = None
    sm_occupancy_pct: PctF | None = None
    tensor_active_pct: PctF | None = None
    dram_active_pct: PctF | None = None
    gr_engine_active_pct: PctF | None = None
    fp64_active_pct: PctF | None = None
    fp32_active_pct: PctF | None = None
    fp16_active_pct: PctF | None = None
    # framebuffer memory
    fb_total_bytes: Bytes | None = None
    fb_used_bytes: Bytes | None = None
    fb_free_bytes: Bytes | None = None
    fb_reserved_bytes: Bytes | None = None
    # PCIe
    pcie_gen: Annotated[int, Meta(ge=1, le=16)] | None = None
    pcie_width: Annotated[int, Meta(ge=1, le=64)] | None = None
    pcie_gen_max: Annotated[int, Meta(ge=1, le=16)] | None = None
    pcie_width_max: Annotated[int, Meta(ge=1, le=64)] | None = None
    pcie_tx_bytes_per_s: BytesPerS | None = None
    pcie_rx_bytes_per_s: BytesPerS | None = None
    pcie_replay_total: Count | None = None
    # NVLink (totals over all links)
    nvlink_tx_bytes: Bytes | None = None
    nvlink_rx_bytes: Bytes | None = None
    nvlink_crc_flit_errors: Count | None = None
    nvlink_crc_data_errors: Count | None = None
    nvlink_replay_errors: Count | None = None
    nvlink_recovery_errors: Count | None = None
    # memory health
    ecc_enabled: bool | None = None
    ecc_sbe_volatile: Count | None = None
    ecc_dbe_volatile: Count | None = None
    ecc_sbe_aggregate: Count | None = None
    ecc_dbe_aggregate: Count | None = None
    remap_correctable_rows: Count | None = None
    remap_uncorrectable_rows: Count | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    retired_pages_sbe: Count | None = None
    retired_pages_dbe: Count | None = None
    retired_pages_pending: bool | None = None
    recovery_action: Text | None = None
    # who is using it
    processes: list[GpuProcess] | None = None
    owners: list[GpuOwner] | None = None


class DiskUsage(_Base):
    """Space on one configured mount point."""

    mount: Text
    total_bytes: Bytes
    used_bytes: Bytes
    free_bytes: Bytes
    fstype: Text | None = None


class DiskIO(_Base):
    """Cumulative IO counters of one block device since boot."""

    device: Text
    read_bytes: Bytes
    write_bytes: Bytes
    reads: Count
    writes: Count
    read_ms: Count | None = None
    write_ms: Count | None = None
    busy_ms: Count | None = None


class NetIO(_Base):
    """Cumulative counters of one network interface since boot."""

    iface: Text
    rx_bytes: Bytes
    tx_bytes: Bytes
    rx_packets: Count
    tx_packets: Count
    rx_errors: Count
    tx_errors: Count
    rx_drops: Count
    tx_drops: Count


class PowerZone(_Base):
    """One RAPL zone (CPU package, DRAM, ...): wrap-corrected energy and mean power."""

    zone: Text
    name: Text
    energy_uj: Count
    power_w: Watts | None = None


class Sensor(_Base):
    """One hwmon temperature input."""

    chip: Text
    label: Text
    temp_c: Celsius
    high_c: Celsius | None = None
    crit_c: Celsius | None = None


class Fan(_Base):
    """One hwmon fan input."""

    chip: Text
    label: Text
    rpm: Count


class Host(_Base):
    """What the node itself is doing; each part is filled by one collector plugin."""

    cpu_pct: PctF | None = None
    cpu_core_pct: list[PctF] | None = None
    cpu_count: Count | None = None
    load_1: Load | None = None
    load_5: Load | None = None
    load_15: Load | None = None
    mem_total_bytes: Bytes | None = None
    mem_available_bytes: Bytes | None = None
    mem_used_bytes: Bytes | None = None
    swap_total_bytes: Bytes | None = None
    swap_used_bytes: Bytes | None = None
    uptime_s: Seconds | None = None
    disks: list[DiskUsage] | None = None
    disk_io: list[DiskIO] | None = None
    net: list[NetIO] | None = None
    power: list[PowerZone] | None = None
    sensors: list[Sensor] | None = None
    fans: list[Fan] | None = None
    extra: dict[str, dict[str, float]] | None = None


class Event(_Base):
    """A one-off occurrence (an XID, an ECC error, a GPU lost); published once, never a gauge."""

    time_ns: Annotated[int, Meta(gt=0)]
    kind: Literal[
        "xid",
        "ecc_sbe",
        "ecc_dbe",
        "remap",
        "remap_failure",
        "gpu_lost",
        "gpu_error",
        "gpu_recovered",
        "recovery_action",
        "gpu_missing",
    ]
    message: Text
    gpu_index: Count | None = None
    uuid: Text | None = None
    code: Count | None = None
    name: Text | None = None
    action: Text | None = None
    severity: Literal["critical", "warning", "info"] | None = None
    gi_id: Count | None = None
    ci_id: Count | None = None


class JobGpu(_Base):
    """One GPU's share of a job on this node."""

    index: Count
    uuid: Text
    start_ns: Annotated[int, Meta(gt=0)]
    end_ns: Annotated[int, Meta(gt=0)] | None = None  # set when the job left this GPU
    energy_mj: Count | None = None  # energy-counter delta; absent without a counter


class JobRecord(_Base):
    """A job's use of this node's GPUs: so far (``running``) or in full (``ended``).

    ``job`` is the key: an HPC job id, or ``<namespace>/<pod>`` for a pod. Energy is the
    delta of each GPU's energy counter between the first and the last report that saw
    the job there (never an integral of sampled power); the means and peaks are over
    those reports. Every report carries the node's running jobs and, once, each job that
    ended since the previous report; the aggregator joins a job's records across nodes.
    """

    job: Text
    kind: Literal["hpc", "pod"]
    state: Literal["running", "ended"]
    start_ns: Annotated[int, Meta(gt=0)]
    end_ns: Annotated[int, Meta(gt=0)]  # last report that saw it (running: this report)
    samples: Count
    gpus: list[JobGpu]
    energy_mj: Count | None = None
    mean_power_w: Watts | None = None  # energy / (end - start), summed over GPUs
    util_mean_pct: PctF | None = None
    util_peak_pct: Pct | None = None
    mem_peak_bytes: Bytes | None = None  # largest FB used on one GPU of the job
    user: Text | None = None
    pod: Text | None = None
    namespace: Text | None = None


class SourceError(_Base):
    """A collector that failed this interval, with its reason."""

    source: Text
    message: Text


class AgentStats(_Base):
    """The agent's own health, carried in every report so loss and cost are visible."""

    version: Text
    sample_duration_s: Seconds | None = None
    gpu_duration_s: Seconds | None = None
    overruns: Count | None = None
    spool_reports: Count | None = None
    spool_bytes: Bytes | None = None
    published: Count | None = None
    dropped: Count | None = None
    reconnects: Count | None = None
    spool_errors: Count | None = None
    events_dropped: Count | None = None


class Report(_Base):
    """One node's sample of one interval."""

    schema: Literal[1, 2]
    cluster: Name
    node: Name
    boot_id: BootId
    seq: Count
    time_ns: Annotated[int, Meta(gt=0)]
    interval_s: Annotated[float, Meta(gt=0, le=86_400)]
    agent: AgentStats
    gpus: list[Gpu] = field(default_factory=list)
    host: Host | None = None
    events: list[Event] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)
    absent: dict[str, Text] | None = None
    jobs: list[JobRecord] = field(default_factory=list)


decode_report = json_decoder(Report)


def encode_report(report: Report) -> bytes:
    """Encode a report exactly as it goes on the wire."""
    return encode_json(report)


class GpuInventory(_Base):
    """A GPU as the agent announces it in its presence message."""

    index: Count
    uuid: Text
    name: Text
    pci_bus_id: Text


class Status(_Base):
    """Retained presence of an agent: online at connect, offline on shutdown or as its will."""

    schema: Literal[1]
    state: Literal["online", "offline"]
    cluster: Name
    node: Name
    boot_id: BootId
    time_ns: Annotated[int, Meta(gt=0)]
    version: Text
    interval_s: Annotated[float, Meta(gt=0, le=86_400)]
    reason: Literal["connected", "shutdown", "lost"]
    gpus: list[GpuInventory] = field(default_factory=list)
    absent: dict[str, Text] | None = None


class EventMessage(_Base):
    """One event on ``.../event``, with the report it belongs to (for deduplication)."""

    schema: Literal[1]
    cluster: Name
    node: Name
    boot_id: BootId
    seq: Count
    event: Event


decode_status = json_decoder(Status)
decode_event_message = json_decoder(EventMessage)


class FleetNode(_Base):
    """One node as the aggregator sees it."""

    node: Name
    state: Literal["online", "offline", "silent", "unknown"]
    last_seen_ns: Count | None = None
    boot_id: Text | None = None
    seq: Count | None = None
    interval_s: Annotated[float, Meta(gt=0)] | None = None
    gpus: Count = 0
    gpus_failed: Count = 0
    reports: Count = 0
    duplicates: Count = 0
    missing: Count = 0
    dropped: Count = 0
    skew_s: float | None = None
    version: Text | None = None


class SinkState(_Base):
    """One sink's progress and health."""

    name: Text
    state: Literal["ok", "retrying", "starting"]
    written: Count = 0
    retries: Count = 0
    rejected: Count = 0
    skipped: Count = 0  # records lost to WAL corruption, never written
    lag: Count = 0
    lag_bytes: Count = 0  # of WAL behind this sink's cursor: its durable queue
    last_error: Text | None = None
    # Sinks that write lines (InfluxDB): absent for the others.
    lines_written: Count | None = None
    lines_retried: Count | None = None
    lines_set_aside: Count | None = None
    fields_dropped: Count | None = None


class FleetSummary(_Base):
    """The aggregator's retained picture of one cluster (``telemetry/v1/<cluster>/_fleet``)."""

    schema: Literal[1]
    cluster: Name
    time_ns: Annotated[int, Meta(gt=0)]
    aggregator: Text
    nodes: list[FleetNode] = field(default_factory=list)
    received: Count = 0
    accepted: Count = 0
    duplicates: Count = 0
    rejected: dict[str, Count] = field(default_factory=dict)
    broker_dropped: Count | None = None
    wal_bytes: Count = 0
    sinks: list[SinkState] = field(default_factory=list)


decode_fleet_summary = json_decoder(FleetSummary)
