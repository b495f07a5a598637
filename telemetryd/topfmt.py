"""How ``top`` spells numbers, colours a heatmap cell and puts GPU health into words.

No UI here (nvitop's split): these functions turn a :class:`~telemetryd.watchwire.GpuSample`
into text and a style name, so every threshold and word can be tested without a terminal.
A style is a plain string in the syntax Textual's ``Content`` reads (``"bold red"``,
``"#fde725"``); ``tui.py`` only hands them over.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from telemetryd.watchwire import EventView, GpuSample, sampled_value
from telemetryd.xid import describe

Part = tuple[str, str]  # (text, style)

# Cells of the heatmap that are not a value: shape and colour say why at a glance.
FAILED: Part = ("✗", "bold #ff3030")
NO_VALUE: Part = ("·", "#707070")
OFFLINE: Part = ("░", "#606060")
SILENT: Part = ("░", "#d08a00")
UNKNOWN: Part = ("?", "#707070")
STATE_STYLES = {
    "online": "green",
    "offline": "bold #ff5050",
    "silent": "bold #e0a000",
    "unknown": "#909090",
}
OWNER = "#6fa8dc"  # a job or pod holding a GPU
SEVERITY_STYLES = {"critical": "bold #ff5050", "warning": "#e0a000", "info": "#6fa8dc"}
BLOCKS = "▁▂▃▄▅▆▇█"

_VIRIDIS = ("#3e2a6b", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725")
_HEAT = ("#4575b4", "#74add1", "#abd9e9", "#fee090", "#f46d43", "#d73027")


@dataclass(frozen=True)
class MetricSpec:
    """One heatmap metric: its name, unit, level thresholds and palette.

    ``bounds`` are the upper edges of the first levels (a value at or above the last one
    takes the last colour). Utilisation is busy-is-fine (viridis, no alarm colour);
    temperature, power against the limit and memory use a cool-to-hot scale whose top
    levels mean "look at this": 83 C is where H100/A100 start to slow down, 95 % of the
    power limit means the cap is biting, 95 % of memory means the next allocation fails.
    """

    name: str
    label: str
    unit: str
    bounds: tuple[float, ...]
    palette: tuple[str, ...]
    spark: tuple[float, float]  # its sparkline scale (power: up to the limit when known)


METRIC_SPECS = {
    "util": MetricSpec("util", "utilisation", "%", (10, 30, 50, 70, 90), _VIRIDIS, (0, 100)),
    "temp": MetricSpec("temp", "temperature", "°C", (40, 55, 70, 83, 88), _HEAT, (25, 95)),
    "power": MetricSpec("power", "power", "% of limit", (20, 40, 60, 80, 95), _HEAT, (0, 700)),
    "mem": MetricSpec("mem", "memory", "%", (25, 50, 75, 90, 95), _HEAT, (0, 100)),
}
METRIC_ORDER = tuple(METRIC_SPECS)


def metric_value(sample: GpuSample, metric: str) -> float | None:
    """The value a heatmap cell is coloured by; power is in percent of the limit."""
    if metric == "power" and sample.error is None:
        if sample.power_w is None or not sample.power_limit_w:
            return None
        return 100.0 * sample.power_w / sample.power_limit_w
    return sampled_value(sample, metric)


def level(value: float, bounds: Sequence[float]) -> int:
    """Index of the band ``value`` falls in: 0 below bounds[0], len(bounds) at the top."""
    return bisect_right(bounds, value)


def heat_cell(sample: GpuSample, metric: str) -> Part:
    """One GPU's heatmap cell: a coloured block, a red ✗ when failed, a dot when unknown."""
    if sample.error is not None:
        return FAILED
    value = metric_value(sample, metric)
    if value is None or math.isnan(value):
        return NO_VALUE
    spec = METRIC_SPECS[metric]
    return ("█", spec.palette[level(value, spec.bounds)])


def legend(metric: str) -> list[Part]:
    """The colour key of one metric, e.g. ``█<10 █<30 ... █≥90 %``."""
    spec = METRIC_SPECS[metric]
    parts: list[Part] = [(f"{spec.label} ({spec.unit}) ", "bold")]
    for i, colour in enumerate(spec.palette):
        edge = f"<{spec.bounds[i]:g}" if i < len(spec.bounds) else f"≥{spec.bounds[-1]:g}"
        parts += [("█", colour), (f"{edge} ", "")]
    return [*parts, FAILED, (" failed ", ""), OFFLINE, (" offline ", ""), SILENT, (" silent", "")]


def sparkline(values: Sequence[float], low: float, high: float, width: int = 30) -> str:
    """The newest ``width`` values as ▁▂▃▄▅▆▇█ on a ``low``..``high`` scale; a gap is a space.

    The scale is fixed per metric (not the values' own range), so a flat line means
    steady and one bar's height means the same on every GPU.
    """
    out = []
    span = high - low
    for value in values[-width:]:
        if math.isnan(value):
            out.append(" ")
            continue
        share = 0.0 if span <= 0 else min(max((value - low) / span, 0.0), 1.0)
        out.append(BLOCKS[min(int(share * len(BLOCKS)), len(BLOCKS) - 1)])
    return "".join(out).rjust(width)


# -- numbers ------------------------------------------------------------------------------
def num(value: float | None, fmt: str = "{:.0f}", unit: str = "") -> str:
    """A number, or "-" when absent (never 0 for a value the GPU does not report)."""
    return "-" if value is None or math.isnan(value) else fmt.format(value) + unit


def age(seconds: float | None) -> str:
    """``4s``, ``12m``, ``3h05m``, ``2d``: how long ago, in the fewest characters."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def power(watts: float | None) -> str:
    """``658 W`` below a kilowatt, ``12.3 kW`` above."""
    if watts is None:
        return "-"
    return f"{watts:.0f} W" if watts < 1000 else f"{watts / 1000:.1f} kW"


def energy_label(since_ns: int | None) -> str:
    """``energy today``, or ``energy since 14:02`` when this viewer started after midnight.

    Energy is the GPUs' own counters since the first report of the local day the viewer
    saw: a viewer started mid-afternoon must not call that the day's energy.
    """
    if since_ns is None:
        return "energy today"
    since = datetime.fromtimestamp(since_ns / 1e9)
    midnight = since.replace(hour=0, minute=0, second=0, microsecond=0)
    return (
        "energy today" if (since - midnight).total_seconds() < 60 else f"energy since {since:%H:%M}"
    )


def energy(joules: float) -> str:
    """Energy in kWh (or MWh for a large fleet's day)."""
    kwh = joules / 3.6e6
    return f"{kwh / 1000:.2f} MWh" if kwh >= 1000 else f"{kwh:.1f} kWh"


def gib(value: int | None) -> str:
    """Bytes as GiB with one decimal."""
    return "-" if value is None else f"{value / 2**30:.1f}"


def holders(jobs: Sequence[str], pods: Sequence[str], width: int = 32) -> str:
    """Who holds the GPUs in at most ``width`` characters: ``81234, 81240 +2``; "-" if none.

    Job ids first, then pods, in the order given (most GPUs first); what does not fit is
    counted, not cut, so an id on screen is always a whole one (the first alone may be cut
    with an ellipsis when even it is too long).
    """
    keys = [*jobs, *pods]
    if not keys:
        return "-"
    text = keys[0] if len(keys[0]) <= width else keys[0][: width - 1] + "…"
    for i, key in enumerate(keys[1:], start=1):
        rest = len(keys) - i - 1
        longer = f"{text}, {key}"
        if len(longer) + (len(f" +{rest}") if rest else 0) > width:
            return f"{text} +{len(keys) - i}"
        text = longer
    return text


def pct_style(value: float | None, warn: float, crit: float) -> str:
    """Green, yellow or red for a value against two thresholds; dim when absent."""
    if value is None or math.isnan(value):
        return "dim"
    return "bold #ff5050" if value >= crit else "#e0a000" if value >= warn else "green"


# -- words --------------------------------------------------------------------------------
REASON_WORDS = {
    "gpu_idle": "idle",
    "clocks_setting": "app clocks",
    "sw_power_cap": "power cap",
    "hw_slowdown": "HW slowdown",
    "sync_boost": "sync boost",
    "sw_thermal": "thermal (SW)",
    "hw_thermal": "thermal (HW)",
    "hw_power_brake": "power brake",
    "display_clocks": "display clocks",
    "board_limit": "board limit",
    "reliability": "reliability",
}
BENIGN = {"gpu_idle", "clocks_setting", "display_clocks", "sync_boost"}
_SERIOUS = {"hw_slowdown", "hw_thermal", "hw_power_brake", "sw_thermal"}


def throttle(sample: GpuSample) -> Part:
    """Why the clocks are held back, in words; red when it is heat or the hardware."""
    reasons = sample.clock_event_reasons
    if reasons is None:
        return ("-", "dim")
    if not reasons:
        return ("none", "green")
    words = ", ".join(REASON_WORDS.get(r, r) for r in reasons)
    if any(r in _SERIOUS for r in reasons):
        return (words, "bold #ff5050")
    if all(r in BENIGN for r in reasons):
        return (words, "dim")
    return (words, "#e0a000")


def health(sample: GpuSample) -> Part:
    """ECC and row-remap state in words: what needs action first, in red."""
    urgent: list[str] = []
    notes: list[str] = []
    if sample.remap_failure:
        urgent.append("row remap FAILED")
    if sample.ecc_dbe_volatile:
        urgent.append(f"{sample.ecc_dbe_volatile} uncorrectable ECC")
    if sample.remap_uncorrectable_rows:
        notes.append(f"{sample.remap_uncorrectable_rows} rows remapped")
    if sample.remap_pending:
        urgent.append("remap pending (reset needed)")
    if sample.retired_pages_pending:
        urgent.append("page retirement pending")
    if sample.recovery_action and sample.recovery_action != "none":
        urgent.append(f"recovery: {sample.recovery_action}")
    if sample.ecc_sbe_volatile:
        notes.append(f"{sample.ecc_sbe_volatile} corrected ECC")
    if urgent:
        return (", ".join(urgent + notes), "bold #ff5050")
    if notes:
        return (", ".join(notes), "#e0a000")
    if sample.ecc_enabled is False:
        return ("ECC off", "dim")
    return ("ECC ok", "green") if sample.ecc_enabled else ("-", "dim")


def event_words(event: EventView) -> Part:
    """An event in words; an XID names its meaning and what to do from the XID table."""
    where = f"GPU {event.gpu_index} " if event.gpu_index is not None else ""
    if event.kind == "xid" and event.code is not None:
        xid = describe(event.code)
        style = SEVERITY_STYLES.get(event.severity or xid.severity, "")
        return (f"{where}XID {xid.code} {xid.meaning}. {xid.action}", style)
    style = SEVERITY_STYLES.get(event.severity or "", "")
    return (f"{where}{event.kind}: {event.message or event.name or ''}".rstrip(": "), style)
