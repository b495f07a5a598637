"""The one module that imports rich: how a report looks in a terminal.

In the spirit of gpustat: one line per GPU with what an operator scans for (busy, hot,
power-capped, throttled, memory errors, who is on it), then the host, then events, then
what this node could not measure and why. Absent fields print as "-", never as 0.
"""

from __future__ import annotations

import datetime
import sys
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from telemetryd.model import Gpu, Host, Report

BENIGN_REASONS = {"gpu_idle", "clocks_setting", "display_clocks", "sync_boost"}


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f}"


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _colour(value: float | None, warn: float, crit: float) -> str:
    if value is None:
        return "dim"
    return "bold red" if value >= crit else "yellow" if value >= warn else "green"


def _health(gpu: Gpu) -> Text:
    """ECC and row-remap state in words: what an operator must act on comes first."""
    bad: list[str] = []
    if gpu.remap_failure:
        bad.append("REMAP FAILED")
    if gpu.ecc_dbe_volatile:
        bad.append(f"DBE {gpu.ecc_dbe_volatile}")
    if gpu.remap_pending:
        bad.append("remap pending")
    if gpu.retired_pages_pending:
        bad.append("page retire pending")
    if gpu.ecc_sbe_volatile:
        bad.append(f"SBE {gpu.ecc_sbe_volatile}")
    if bad:
        return Text(", ".join(bad), style="bold red" if bad[0].isupper() else "yellow")
    if gpu.ecc_enabled is False:
        return Text("ECC off", style="dim")
    return Text("ok" if gpu.ecc_enabled else "-", style="green" if gpu.ecc_enabled else "dim")


def _throttle(gpu: Gpu) -> Text:
    reasons = [r for r in gpu.clock_event_reasons or [] if r not in BENIGN_REASONS]
    if gpu.clock_event_reasons is None:
        return Text("-", style="dim")
    if not reasons:
        return Text("idle" if "gpu_idle" in (gpu.clock_event_reasons or []) else "none", "dim")
    hot = any(r in ("hw_thermal", "hw_slowdown", "hw_power_brake") for r in reasons)
    return Text(",".join(reasons), style="bold red" if hot else "yellow")


def gpu_table(report: Report) -> Table:
    """One row per GPU."""
    table = Table(
        title=f"{report.node} ({report.cluster}): {len(report.gpus)} GPU(s)",
        title_justify="left",
        expand=False,
        pad_edge=False,
    )
    for column in (
        "GPU",
        "Name",
        "Util %",
        "Mem GiB",
        "Temp °C",
        "Power W",
        "SM/Mem MHz",
        "Throttle",
        "ECC/remap",
        "Processes",
    ):
        table.add_column(column, no_wrap=column not in ("Throttle", "Processes"))
    for gpu in report.gpus:
        if gpu.error is not None:
            table.add_row(
                str(gpu.index),
                gpu.name,
                Text(f"{gpu.error.code}: {gpu.error.message}", style="bold red"),
                *[""] * 7,
            )
            continue
        util = (
            f"{_num(gpu.util_gpu_pct)}/{_num(gpu.util_mem_pct)}"
            if gpu.util_gpu_pct is not None
            else "n/a (MIG)"
            if gpu.mig_mode
            else "-"
        )
        temp = Text(
            f"{_num(gpu.temp_c)}/{_num(gpu.mem_temp_c)}",
            style=_colour(
                gpu.temp_c, (gpu.temp_slowdown_c or 90) - 10, (gpu.temp_slowdown_c or 90) - 3
            ),
        )
        ratio = (gpu.power_w / gpu.power_limit_w) if gpu.power_w and gpu.power_limit_w else None
        power = Text(
            f"{_num(gpu.power_w)}/{_num(gpu.power_limit_w)}", style=_colour(ratio, 0.9, 0.98)
        )
        procs = ", ".join(f"{p.pid}:{_gib(p.used_memory_bytes)}G" for p in gpu.processes or [])
        if gpu.mig:
            procs = f"{len(gpu.mig)} MIG instance(s)" + (f"; {procs}" if procs else "")
        table.add_row(
            str(gpu.index),
            gpu.name.removeprefix("NVIDIA "),
            Text(util, style=_colour(gpu.util_gpu_pct, 101, 101)),
            f"{_gib(gpu.fb_used_bytes)}/{_gib(gpu.fb_total_bytes)}",
            temp,
            power,
            f"{_num(gpu.sm_clock_mhz)}/{_num(gpu.mem_clock_mhz)}",
            _throttle(gpu),
            _health(gpu),
            procs or "-",
        )
    return table


def host_table(host: Host) -> Table:
    """The node's own vitals, one line each."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    if host.cpu_pct is not None:
        load = "/".join(_num(v, "{:.2f}") for v in (host.load_1, host.load_5, host.load_15))
        table.add_row("CPU", f"{host.cpu_pct:.1f}% of {host.cpu_count or '?'} cores, load {load}")
    if host.mem_total_bytes:
        table.add_row(
            "Memory",
            f"{_gib(host.mem_used_bytes)}/{_gib(host.mem_total_bytes)} GiB, "
            f"swap {_gib(host.swap_used_bytes)}/{_gib(host.swap_total_bytes)} GiB",
        )
    for disk in host.disks or []:
        table.add_row(f"Disk {disk.mount}", f"{_gib(disk.used_bytes)}/{_gib(disk.total_bytes)} GiB")
    for zone in host.power or []:
        table.add_row(f"Power {zone.name}", f"{_num(zone.power_w, '{:.1f}')} W")
    if host.sensors:
        hottest = max(host.sensors, key=lambda s: s.temp_c)
        table.add_row("Hottest sensor", f"{hottest.chip}/{hottest.label} {hottest.temp_c:.0f} °C")
    if host.fans:
        table.add_row("Fans", ", ".join(f"{f.label} {f.rpm} rpm" for f in host.fans[:6]))
    if host.uptime_s is not None:
        table.add_row("Uptime", str(datetime.timedelta(seconds=int(host.uptime_s))))
    return table


def print_report(report: Report, file: TextIO | None = None) -> None:
    """Print a report for a person."""
    out = file or sys.stdout
    console = Console(file=out, width=None if out.isatty() else 160, highlight=False)
    if report.gpus:
        console.print(gpu_table(report))
    if report.host is not None:
        console.print(host_table(report.host))
    for event in report.events:
        where = f"GPU {event.gpu_index}" if event.gpu_index is not None else "node"
        code = f" {event.code}" if event.code is not None else ""
        console.print(
            Text(
                f"event {event.kind}{code} on {where}: {event.message}"
                + (f" - {event.action}" if event.action else ""),
                style="bold red" if event.severity == "critical" else "yellow",
            )
        )
    for error in report.errors:
        console.print(Text(f"error in {error.source}: {error.message}", style="red"))
    for source, reason in (report.absent or {}).items():
        console.print(Text(f"absent: {source}: {reason}", style="dim"))
