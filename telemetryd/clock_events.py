"""Clock-event (throttle) reasons: the names in reports and the NVML bits behind them.

Part of the wire contract: the agent turns NVML's bitmask into these names, and stores
that want a number (InfluxDB's ``clock_event_mask``, Prometheus'
``DCGM_FI_DEV_CLOCKS_EVENT_REASONS``) turn the names back into the same bitmask.
"""

from __future__ import annotations

from collections.abc import Iterable

CLOCK_EVENTS = {
    0x1: "gpu_idle",
    0x2: "clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
    0x200: "board_limit",
    0x400: "reliability",
}
_BITS = {name: bit for bit, name in CLOCK_EVENTS.items()}


def reason_name(bit: int) -> str:
    """The name of one set bit; an unknown bit is ``bit_0x...`` so it is never lost."""
    return CLOCK_EVENTS.get(bit, f"bit_{bit:#x}")


def mask(names: Iterable[str]) -> int:
    """The NVML bitmask of reason names (``bit_0x...`` names included)."""
    value = 0
    for name in names:
        bit = _BITS.get(name)
        if bit is None and name.startswith("bit_0x"):
            try:
                bit = int(name[4:], 16)
            except ValueError:
                bit = None
        if bit is not None:
            value |= bit
    return value
