"""What each XID means and what to do about it.

Source: NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html,
Ampere and newer) as transcribed in ../shared/reference/alerting.md; the severity column is
our suggestion for paging. An XID missing from the table is still published, with a
message that says it is undocumented here, so an unknown code is never dropped.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Severity = Literal["critical", "warning", "info"]


class Xid(NamedTuple):
    """One documented XID."""

    code: int
    mnemonic: str
    meaning: str
    action: str
    severity: Severity


_RESTART_APP = "Restart the application; if it recurs across jobs, investigate the GPU."
_RESET_GPU = "Drain the GPU, stop its processes and reset it (nvidia-smi -r)."
_SUPPORT = "If it persists after a reset, contact NVIDIA support (possible RMA)."
_NVLINK5 = (
    "Decode it with NVIDIA's XID 144-150 table (unit, intrinfo, status): fatal rows need a "
    "GPU reset; BER rows mean checking links and cables."
)

XIDS: dict[int, Xid] = {
    x.code: x
    for x in (
        Xid(13, "RC_GR_EXCEPTION", "Graphics engine exception", _RESTART_APP, "warning"),
        Xid(31, "RC_FIFO_ERROR_MMU_ERR_FLT", "GPU memory page fault", _RESTART_APP, "warning"),
        Xid(
            32,
            "RC_PBDMA_ERROR",
            "Invalid or corrupted push buffer stream",
            "Restart the application; check the application and CUDA version.",
            "warning",
        ),
        Xid(
            43,
            "RC_RESETCHANNEL_VERIF_ERROR",
            "GPU stopped processing",
            "Usually none (NVIDIA: ignore); the application was stopped.",
            "info",
        ),
        Xid(
            45,
            "RC_PREEMPTIVE_REMOVAL",
            "Preemptive cleanup after earlier errors",
            "Follow the XID that caused it; alone, restart the fabric manager.",
            "info",
        ),
        Xid(46, "XID_46", "GPU stopped processing", _RESET_GPU, "critical"),
        Xid(
            48,
            "RC_GPU_ECC_DBE",
            "Double-bit ECC error (uncorrectable memory)",
            f"{_RESET_GPU} The pending row remap applies at the reset. {_SUPPORT}",
            "critical",
        ),
        Xid(
            61,
            "PMU_BREAKPOINT",
            "Internal micro-controller breakpoint (unused on Ampere+)",
            "Contact NVIDIA support.",
            "warning",
        ),
        Xid(
            62,
            "PMU_HALT_ERROR",
            "Internal micro-controller halt",
            f"{_RESET_GPU} {_SUPPORT}",
            "critical",
        ),
        Xid(
            63,
            "INFOROM_DRAM_RETIREMENT_EVENT",
            "GPU memory row remapping event",
            "None now: the remap applies at the next GPU reset; schedule one.",
            "info",
        ),
        Xid(
            64,
            "INFOROM_DRAM_RETIREMENT_FAILURE",
            "GPU memory row remapping failure",
            f"{_RESET_GPU} {_SUPPORT}",
            "critical",
        ),
        Xid(68, "RC_NVDEC0_ERROR", "Video decoder (NVDEC0) exception", _RESTART_APP, "warning"),
        Xid(
            69,
            "RC_GR_CLASS_ERROR",
            "Graphics engine class error",
            "Restart the application; check the application and CUDA version.",
            "warning",
        ),
        Xid(
            74,
            "NVLINK_ERROR",
            "NVLink error",
            "Check the NVLink/NVSwitch fabric; reset the GPU. " + _SUPPORT,
            "critical",
        ),
        Xid(
            79,
            "RC_GPU_HAS_FALLEN_OFF_THE_BUS",
            "GPU has fallen off the bus",
            "Drain the node and restart it (bare-metal); if it recurs, contact NVIDIA support.",
            "critical",
        ),
        Xid(
            92,
            "EXCESSIVE_SBE_INTERRUPTS",
            "High single-bit ECC error rate",
            "Watch the SBE rate; contact NVIDIA support if it keeps rising.",
            "warning",
        ),
        Xid(
            94,
            "RC_CONTAINED_ERROR",
            "Contained memory error (one application affected)",
            "Restart the affected application; the GPU stays usable.",
            "warning",
        ),
        Xid(
            95,
            "RC_UNCONTAINED_ERROR",
            "Uncontained memory error (all GPU work affected)",
            _RESET_GPU,
            "critical",
        ),
        Xid(
            109,
            "RC_CTXSW_TIMEOUT_ERROR",
            "Context switch timeout",
            f"{_RESET_GPU} {_SUPPORT}",
            "critical",
        ),
        Xid(
            119,
            "GSP_RPC_TIMEOUT",
            "GSP firmware RPC timeout",
            f"{_RESET_GPU} Investigate driver and firmware versions.",
            "critical",
        ),
        Xid(
            120,
            "GSP_ERROR",
            "GSP firmware error",
            f"{_RESET_GPU} Investigate driver and firmware versions.",
            "critical",
        ),
        Xid(
            121,
            "C2C_ERROR",
            "Chip-to-chip (C2C) link error",
            "Watch for repeats; contact NVIDIA support if it recurs.",
            "warning",
        ),
        Xid(
            140,
            "UNRECOVERABLE_ECC_ERROR_ESCAPE",
            "Unrecovered ECC error",
            f"{_RESET_GPU} {_SUPPORT}",
            "critical",
        ),
        Xid(
            144,
            "NVLINK_SAW_ERROR",
            "NVLink (NVLink5) SAW error",
            _NVLINK5,
            "warning",
        ),
        Xid(145, "NVLINK_RLW_ERROR", "NVLink (NVLink5) RLW error", _NVLINK5, "warning"),
        Xid(146, "NVLINK_TLW_ERROR", "NVLink (NVLink5) TLW error", _NVLINK5, "warning"),
        Xid(147, "NVLINK_TREX_ERROR", "NVLink (NVLink5) TREX error (non-fatal)", _NVLINK5, "info"),
        Xid(
            148,
            "NVLINK_NVLPW_CTRL_ERROR",
            "NVLink (NVLink5) NVLPW control error",
            _NVLINK5,
            "warning",
        ),
        Xid(
            149,
            "NVLINK_NETIR_ERROR",
            "NVLink (NVLink5) NETIR error (decode: link down is fatal, BER is not)",
            _NVLINK5,
            "warning",
        ),
        Xid(150, "NVLINK_MSE_ERROR", "NVLink (NVLink5) MSE error", _NVLINK5, "critical"),
        Xid(
            154,
            "GPU_RECOVERY_ACTION_CHANGED",
            "The GPU's recovery action changed",
            "Informational: follow the XID that caused it and the recovery action reported.",
            "info",
        ),
        Xid(155, "NVLINK_SW_DEFINED_ERROR", "NVLink software-defined error", _NVLINK5, "warning"),
        Xid(158, "GPU_FATAL_TIMEOUT", "GPU fatal timeout", f"{_RESET_GPU} {_SUPPORT}", "critical"),
        Xid(
            143,
            "GPU_INIT_ERROR",
            "GPU initialization error",
            f"{_RESET_GPU} {_SUPPORT}",
            "critical",
        ),
    )
}


def describe(code: int) -> Xid:
    """The catalogue entry of ``code``, or a placeholder entry that says it is unknown."""
    known = XIDS.get(code)
    if known is not None:
        return known
    return Xid(
        code,
        f"XID_{code}",
        f"XID {code} (not in telemetryd's table)",
        "Look the code up in NVIDIA's XID catalogue and the kernel log (dmesg | grep Xid).",
        "warning",
    )
