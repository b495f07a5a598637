"""Which report field is served under which dcgm-exporter name, in which unit.

Why dcgm-exporter's names: most GPU sites already have its dashboards and alert rules, and
they work unchanged when the same series, with the same labels and units, come from us.
Each row says how our field (units in its name, see docs/report.md) becomes DCGM's value:

- ``raw``: same unit (MHz, °C, W, %, mJ, counts);
- ``mib``: bytes to whole MiB, rounded down, as DCGM divides NVML's bytes;
- ``ratio``: our percent 0-100 to DCGM's ratio 0-1 (the ``DCGM_FI_PROF_*`` fields);
- ``us``: our nanoseconds to DCGM's whole microseconds (the ``*_VIOLATION`` fields);
- ``bool``: 1 or 0;
- ``mask``: clock-event reason names back to NVML's bitmask;
- ``recovery``: the recovery action's name back to ``nvmlDeviceGpuRecoveryAction_t``.

DCGM's type is kept for the documentation: dcgm-exporter declares some fields
``counter``, but promtool refuses counters without ``_total`` and the names must stay
DCGM's, so every GPU series is served as a gauge (rate() and increase() work on gauges).
Names and units are from NVIDIA/DCGM ``dcgmlib/dcgm_fields.h`` and dcgm-exporter's
``etc/default-counters.csv`` (see docs/metrics.md for the whole table and its sources).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from telemetryd.clock_events import mask

Conversion = Literal["raw", "mib", "ratio", "us", "bool", "mask", "recovery"]


class DcgmField(NamedTuple):
    """One GPU series: our ``Gpu`` attribute, DCGM's name, conversion and description."""

    field: str
    name: str
    conversion: Conversion
    dcgm_type: Literal["gauge", "counter"]
    default: bool  # in dcgm-exporter's default-counters.csv
    help: str


GPU_FIELDS: tuple[DcgmField, ...] = (
    # dcgm-exporter's defaults (etc/default-counters.csv)
    DcgmField("sm_clock_mhz", "DCGM_FI_DEV_SM_CLOCK", "raw", "gauge", True,
              "SM clock frequency (in MHz)."),
    DcgmField("mem_clock_mhz", "DCGM_FI_DEV_MEM_CLOCK", "raw", "gauge", True,
              "Memory clock frequency (in MHz)."),
    DcgmField("mem_temp_c", "DCGM_FI_DEV_MEMORY_TEMP", "raw", "gauge", True,
              "Memory temperature (in C)."),
    DcgmField("temp_c", "DCGM_FI_DEV_GPU_TEMP", "raw", "gauge", True,
              "GPU temperature (in C)."),
    DcgmField("power_w", "DCGM_FI_DEV_POWER_USAGE", "raw", "gauge", True,
              "Power draw (in W)."),
    DcgmField("energy_mj", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "raw", "counter", True,
              "Total energy consumption since the driver was loaded (in mJ)."),
    DcgmField("pcie_replay_total", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "raw", "counter", True,
              "Total number of PCIe retries."),
    DcgmField("util_gpu_pct", "DCGM_FI_DEV_GPU_UTIL", "raw", "gauge", True,
              "GPU utilization (in %)."),
    DcgmField("util_mem_pct", "DCGM_FI_DEV_MEM_COPY_UTIL", "raw", "gauge", True,
              "Memory utilization (in %)."),
    DcgmField("util_enc_pct", "DCGM_FI_DEV_ENC_UTIL", "raw", "gauge", True,
              "Encoder utilization (in %)."),
    DcgmField("util_dec_pct", "DCGM_FI_DEV_DEC_UTIL", "raw", "gauge", True,
              "Decoder utilization (in %)."),
    DcgmField("fb_free_bytes", "DCGM_FI_DEV_FB_FREE", "mib", "gauge", True,
              "Framebuffer memory free (in MiB)."),
    DcgmField("fb_used_bytes", "DCGM_FI_DEV_FB_USED", "mib", "gauge", True,
              "Framebuffer memory used (in MiB)."),
    DcgmField("fb_reserved_bytes", "DCGM_FI_DEV_FB_RESERVED", "mib", "gauge", True,
              "Framebuffer memory reserved (in MiB)."),
    DcgmField("remap_uncorrectable_rows", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "raw",
              "counter", True, "Number of remapped rows for uncorrectable errors."),
    DcgmField("remap_correctable_rows", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "raw",
              "counter", True, "Number of remapped rows for correctable errors."),
    DcgmField("remap_failure", "DCGM_FI_DEV_ROW_REMAP_FAILURE", "bool", "gauge", True,
              "Whether remapping of rows has failed."),
    DcgmField("gr_engine_active_pct", "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "ratio", "gauge", True,
              "Ratio of time the graphics engine is active."),
    DcgmField("tensor_active_pct", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "ratio", "gauge", True,
              "Ratio of cycles the tensor (HMMA) pipe is active."),
    DcgmField("dram_active_pct", "DCGM_FI_PROF_DRAM_ACTIVE", "ratio", "gauge", True,
              "Ratio of cycles the device memory interface is active sending or receiving "
              "data."),
    DcgmField("pcie_tx_bytes_per_s", "DCGM_FI_PROF_PCIE_TX_BYTES", "raw", "gauge", True,
              "The rate of data transmitted over the PCIe bus (in B/s)."),
    DcgmField("pcie_rx_bytes_per_s", "DCGM_FI_PROF_PCIE_RX_BYTES", "raw", "gauge", True,
              "The rate of data received over the PCIe bus (in B/s)."),
    # DCGM fields beyond the exporter's defaults that the report carries
    DcgmField("video_clock_mhz", "DCGM_FI_DEV_VIDEO_CLOCK", "raw", "gauge", False,
              "Video encoder/decoder clock frequency (in MHz)."),
    DcgmField("sm_clock_max_mhz", "DCGM_FI_DEV_MAX_SM_CLOCK", "raw", "gauge", False,
              "Maximum supported SM clock (in MHz)."),
    DcgmField("mem_clock_max_mhz", "DCGM_FI_DEV_MAX_MEM_CLOCK", "raw", "gauge", False,
              "Maximum supported memory clock (in MHz)."),
    DcgmField("clock_event_reasons", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "mask", "gauge", False,
              "Current clock event (throttle) reasons, NVML's bitmask."),
    DcgmField("throttle_power_ns", "DCGM_FI_DEV_POWER_VIOLATION", "us", "counter", False,
              "Throttling duration due to power constraints (in us)."),
    DcgmField("throttle_thermal_ns", "DCGM_FI_DEV_THERMAL_VIOLATION", "us", "counter", False,
              "Throttling duration due to thermal constraints (in us)."),
    DcgmField("pstate", "DCGM_FI_DEV_PSTATE", "raw", "gauge", False,
              "Performance state (P-State) 0-15, 0 is the highest."),
    DcgmField("temp_slowdown_c", "DCGM_FI_DEV_SLOWDOWN_TEMP", "raw", "gauge", False,
              "Slowdown temperature (in C)."),
    DcgmField("temp_shutdown_c", "DCGM_FI_DEV_SHUTDOWN_TEMP", "raw", "gauge", False,
              "Shutdown temperature (in C)."),
    DcgmField("fan_pct", "DCGM_FI_DEV_FAN_SPEED", "raw", "gauge", False,
              "Fan speed (in % of its maximum)."),
    DcgmField("power_limit_w", "DCGM_FI_DEV_POWER_MGMT_LIMIT", "raw", "gauge", False,
              "Current power limit (in W)."),
    DcgmField("power_min_limit_w", "DCGM_FI_DEV_POWER_MGMT_LIMIT_MIN", "raw", "gauge", False,
              "Minimum power management limit (in W)."),
    DcgmField("power_max_limit_w", "DCGM_FI_DEV_POWER_MGMT_LIMIT_MAX", "raw", "gauge", False,
              "Maximum power management limit (in W)."),
    DcgmField("power_default_limit_w", "DCGM_FI_DEV_POWER_MGMT_LIMIT_DEF", "raw", "gauge",
              False, "Default power management limit (in W)."),
    DcgmField("power_enforced_limit_w", "DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "raw", "gauge",
              False, "Effective power limit the driver enforces (in W)."),
    DcgmField("sm_active_pct", "DCGM_FI_PROF_SM_ACTIVE", "ratio", "gauge", False,
              "Ratio of cycles an SM has at least one warp assigned."),
    DcgmField("sm_occupancy_pct", "DCGM_FI_PROF_SM_OCCUPANCY", "ratio", "gauge", False,
              "Ratio of warps resident on an SM to the maximum."),
    DcgmField("fp64_active_pct", "DCGM_FI_PROF_PIPE_FP64_ACTIVE", "ratio", "gauge", False,
              "Ratio of cycles the fp64 pipes are active."),
    DcgmField("fp32_active_pct", "DCGM_FI_PROF_PIPE_FP32_ACTIVE", "ratio", "gauge", False,
              "Ratio of cycles the fp32 pipes are active."),
    DcgmField("fp16_active_pct", "DCGM_FI_PROF_PIPE_FP16_ACTIVE", "ratio", "gauge", False,
              "Ratio of cycles the fp16 pipes are active."),
    DcgmField("fb_total_bytes", "DCGM_FI_DEV_FB_TOTAL", "mib", "gauge", False,
              "Framebuffer memory total (in MiB)."),
    DcgmField("pcie_gen", "DCGM_FI_DEV_PCIE_LINK_GEN", "raw", "gauge", False,
              "PCIe current link generation."),
    DcgmField("pcie_width", "DCGM_FI_DEV_PCIE_LINK_WIDTH", "raw", "gauge", False,
              "PCIe current link width (lanes)."),
    DcgmField("pcie_gen_max", "DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "raw", "gauge", False,
              "PCIe maximum link generation."),
    DcgmField("pcie_width_max", "DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "raw", "gauge", False,
              "PCIe maximum link width (lanes)."),
    DcgmField("nvlink_crc_flit_errors", "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "raw",
              "counter", False, "Total number of NVLink flow-control CRC errors."),
    DcgmField("nvlink_crc_data_errors", "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", "raw",
              "counter", False, "Total number of NVLink data CRC errors."),
    DcgmField("nvlink_replay_errors", "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "raw",
              "counter", False, "Total number of NVLink retries."),
    DcgmField("nvlink_recovery_errors", "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "raw",
              "counter", False, "Total number of NVLink recovery errors."),
    DcgmField("ecc_enabled", "DCGM_FI_DEV_ECC_CURRENT", "bool", "gauge", False,
              "Current ECC mode (1 enabled, 0 disabled)."),
    DcgmField("ecc_sbe_volatile", "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "raw", "counter", False,
              "Total number of single-bit volatile ECC errors."),
    DcgmField("ecc_dbe_volatile", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "raw", "counter", False,
              "Total number of double-bit volatile ECC errors."),
    DcgmField("ecc_sbe_aggregate", "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "raw", "counter", False,
              "Total number of single-bit persistent ECC errors."),
    DcgmField("ecc_dbe_aggregate", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "raw", "counter", False,
              "Total number of double-bit persistent ECC errors."),
    DcgmField("remap_pending", "DCGM_FI_DEV_ROW_REMAP_PENDING", "bool", "gauge", False,
              "Whether remapping of rows is pending (waits for a GPU reset)."),
    DcgmField("retired_pages_sbe", "DCGM_FI_DEV_RETIRED_SBE", "raw", "counter", False,
              "Total number of retired pages due to single-bit errors."),
    DcgmField("retired_pages_dbe", "DCGM_FI_DEV_RETIRED_DBE", "raw", "counter", False,
              "Total number of retired pages due to double-bit errors."),
    DcgmField("retired_pages_pending", "DCGM_FI_DEV_RETIRED_PENDING", "bool", "gauge", False,
              "Whether pages are pending retirement (1 or 0)."),
    DcgmField("mig_mode", "DCGM_FI_DEV_MIG_MODE", "bool", "gauge", False,
              "MIG mode (1 enabled, 0 disabled)."),
    DcgmField("recovery_action", "DCGM_FI_DEV_GPU_RECOVERY_ACTION", "recovery", "gauge", False,
              "Recovery action the driver asks for (nvmlDeviceGpuRecoveryAction_t, 0 none)."),
)  # fmt: skip

NVLINK_BANDWIDTH = "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"
NVLINK_BANDWIDTH_HELP = (
    "NVLink data received and transmitted over all links (in KiB/s), between the two "
    "newest reports."
)
XID_ERRORS = "DCGM_FI_DEV_XID_ERRORS"
XID_ERRORS_HELP = "Value of the last XID error within the window (0: none)."
XID_COUNT = "DCGM_EXP_XID_ERRORS_COUNT"
XID_COUNT_HELP = "Count of XID errors within the window, per XID."

SNAKE_RENAMES = {"DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "DCGM_FI_DEV_PCIE_REPLAY_TOTAL"}
"""With ``labels = "snake"`` (for sites that lint), DCGM's canonical name where the legacy
one fails promtool's lint ("metric name should not include type 'counter'")."""

MIG_FIELDS: tuple[DcgmField, ...] = tuple(
    f for f in GPU_FIELDS if f.field in ("fb_total_bytes", "fb_used_bytes", "fb_free_bytes")
)
"""The ``MigDevice`` fields served per MIG instance (with ``GPU_I_ID``/``GPU_I_PROFILE``)."""

RECOVERY_ACTIONS: dict[str, int] = {
    "none": 0,
    "gpu_reset": 1,
    "node_reboot": 2,
    "drain_p2p": 3,
    "drain_and_reset": 4,
    "recover_imex_domain": 5,
    "bus_reset": 6,
    "system_reboot": 7,
}
"""Recovery action names (the wire contract, docs/report.md §6.11) to NVML's numbers;
an unknown number travels as ``action_<n>``."""

GPU_LABELS = {
    # key: dcgm name, snake name
    "gpu": ("gpu", "gpu"),
    "uuid": ("UUID", "uuid"),
    "pci_bus_id": ("pci_bus_id", "pci_bus_id"),
    "device": ("device", "device"),
    "model": ("modelName", "model_name"),
    "host": ("Hostname", "hostname"),
    "cluster": ("cluster", "cluster"),
    "gi_id": ("GPU_I_ID", "gpu_i_id"),
    "gi_profile": ("GPU_I_PROFILE", "gpu_i_profile"),
}
"""Label names of GPU series for ``[aggregator.prometheus] labels`` = "dcgm" or "snake"."""


def to_dcgm(conversion: Conversion, value: Any) -> float | None:
    """Our field's value in DCGM's unit; None when it has no number."""
    if value is None:
        return None
    if conversion == "raw":
        return float(value)
    if conversion == "mib":
        return float(value >> 20)
    if conversion == "ratio":
        return float(value) / 100.0
    if conversion == "us":
        return float(value // 1000)
    if conversion == "bool":
        return 1.0 if value else 0.0
    if conversion == "mask":
        return float(mask(value))
    # recovery: a known name, or action_<n> for a number this version has no name for
    number = RECOVERY_ACTIONS.get(value)
    if number is None and value.startswith("action_") and value[7:].isdigit():
        number = int(value[7:])
    return None if number is None else float(number)
