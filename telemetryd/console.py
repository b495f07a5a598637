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
from telemetryd.owners import counted, job_key

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
        "Job/pod",
        "Processes",
    ):
        table.add_column(column, no_wrap=column not in ("Throttle", "Job/pod", "Processes"))
    for gpu in report.gpus:
        if gpu.error is not None:
            table.add_row(
                str(gpu.index),
                gpu.name,
                Text(f"{gpu.error.code}: {gpu.error.message}", style="bold red"),
                *[""] * 6,
                _holders(gpu),
                "",
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
        procs = ", ".join(
            f"{p.pid}{' ' + p.user if p.user else ''}:{_gib(p.used_memory_bytes)}G"
            for p in gpu.processes or []
        )
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
            _holders(gpu),
            procs or "-",
        )
    return table


def _holders(gpu: Gpu) -> str:
    """The jobs and pods holding a GPU, named as the job records name them."""
    keys = [k[0] for o in counted(gpu.owners) if (k := job_key(o)) is not None]
    return ", ".join(dict.fromkeys(keys)) or "-"


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


# -- telemetryd status ---------------------------------------------------------------------------
from typing import TYPE_CHECKING  # noqa: E402 - this section was appended; see print_status

if TYPE_CHECKING:
    from telemetryd.statusdoc import NodeRef, StatusDoc

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _ago(ns: int | None, now_ns: int) -> str:
    if not ns:
        return "-"
    seconds = max(0, round((now_ns - ns) / 1e9))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def status_lines(doc: StatusDoc) -> list[Text | Table]:
    """``telemetryd status`` for a person: counts, then what needs a look, then who uses most.

    Node names carry their cluster only when the answer spans several clusters.
    """
    qualify = len(doc.clusters) > 1

    def name(cluster: str | None, node: str | None) -> str:
        return f"{cluster}/{node}" if qualify and cluster else node or "-"

    def listed(refs: list[NodeRef], why: bool) -> str:
        names = [name(r.cluster, r.node) + (f" ({r.reason})" if why and r.reason else "")
                 for r in refs]  # fmt: skip
        return ": " + ", ".join(names[:8]) + (f" +{len(names) - 8}" if len(names) > 8 else "")

    a, n, g = doc.alerts, doc.nodes, doc.gpus
    out: list[Text | Table] = []
    if not a.known:
        verdict = Text("ALERTS UNKNOWN", style="yellow")
    elif a.firing:
        by = ", ".join(f"{c} {s}" for s, c in a.firing_by_severity.items() if c)
        verdict = Text(f"FIRING {len(a.firing)} ({by})", style="bold red")
    else:
        verdict = Text("OK", style="bold green")
    where = "all clusters" if doc.cluster == "+" else f"cluster {doc.cluster}"
    header = Text.assemble(
        verdict,
        f"  {n.online}/{n.total} nodes online, {g.ok}/{g.total} GPUs ok, {g.power_w:,.0f} W"
        f"  ({doc.broker}, {where}, {doc.generated}" + (")" if doc.complete else ", incomplete)"),
    )
    out.append(header)
    nodes = Text(f"nodes   {n.online} online")
    for count, state, refs, style in (
        (n.offline, "offline", n.offline_nodes, "bold red"),
        (n.silent, "silent", n.silent_nodes, "yellow"),
        (n.unknown, "unknown", n.unknown_nodes, "dim"),
    ):
        nodes.append(", ")
        shown = listed(refs, why=state == "offline") if refs else ""
        nodes.append(f"{count} {state}{shown}", style if count else "")
    out.append(nodes)
    util = "-" if g.util_mean_pct is None else f"{g.util_mean_pct:.0f}%"
    gpus = Text(f"GPUs    {g.busy} busy, {g.light} light, {g.idle} idle")
    if g.util_unknown:
        gpus.append(f", {g.util_unknown} without utilisation")
    gpus.append(f"; {g.throttled} throttled", "yellow" if g.throttled else "")
    gpus.append(f"; {g.failed} failed", "bold red" if g.failed else "")
    if g.failed_gpus:
        gpus.append(": " + ", ".join(f"{name(f.cluster, f.node)} GPU {f.gpu} ({f.error})"
                                     for f in g.failed_gpus[:8]), "bold red")  # fmt: skip
    gpus.append(f"; mean util {util}")
    out.append(gpus)
    out.append(Text(f"alerts  {len(a.firing)} firing, {a.pending} pending, {a.silenced} silenced"
                    if a.known else "alerts  unknown (no aggregator summary)"))  # fmt: skip
    if a.firing:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("SEVERITY", "ALERT", "NODE", "GPU", "SINCE", "SUMMARY"):
            table.add_column(column, no_wrap=column != "SUMMARY")
        for alert in a.firing:
            table.add_row(
                Text(alert.severity, style=_SEVERITY_STYLE.get(alert.severity, "")),
                alert.name, name(alert.cluster, alert.node),
                "-" if alert.gpu is None else str(alert.gpu),
                _ago(alert.since_ns, doc.generated_ns), alert.summary,
            )  # fmt: skip
        out.append(table)
    top = doc.top
    if top.nodes_by_power or top.gpus_by_power:
        table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left",
                      title="top consumers by power: nodes, then GPUs")  # fmt: skip
        for column in ("NODE", "GPU", "MODEL", "POWER W", "TEMP °C", "UTIL %"):
            right = column.endswith(("W", "C", "%"))
            table.add_column(column, no_wrap=True, justify="right" if right else "left")
        for u in top.nodes_by_power:
            table.add_row(name(u.cluster, u.node), f"all {u.gpus}", "", _num(u.power_w),
                          _num(u.temp_max_c), _num(u.util_mean_pct))  # fmt: skip
        if top.nodes_by_power and top.gpus_by_power:
            table.add_section()
        for gu in top.gpus_by_power:
            table.add_row(name(gu.cluster, gu.node), str(gu.gpu), gu.model.removeprefix("NVIDIA "),
                          _num(gu.power_w), _num(gu.temp_c), _num(gu.util_pct))  # fmt: skip
        out.append(table)
    if top.gpus_by_temp:
        hottest = ", ".join(f"{name(t.cluster, t.node)} GPU {t.gpu} {_num(t.temp_c)} °C"
                            for t in top.gpus_by_temp)  # fmt: skip
        out.append(Text(f"hottest {hottest}"))
    out.extend(Text(f"warning: {w}", style="yellow") for w in doc.warnings)
    return out


def print_status(doc: StatusDoc, file: TextIO | None = None) -> None:
    """Print the status summary for a person (see ``_emit``)."""
    _emit(status_lines(doc), file)


def _emit(parts: list[Text | Table], file: TextIO | None) -> None:
    """Print for a person: in colour and as wide as a terminal, else plain text.

    Elsewhere than a terminal (a pipe, a file, an SSH command in a script): 160 columns,
    without the padding rich leaves at line ends.
    """
    import io

    out = file or sys.stdout
    tty = out.isatty()
    target: TextIO = out if tty else io.StringIO()
    console = Console(file=target, width=None if tty else 160, highlight=False)
    for part in parts:
        console.print(part)
    if isinstance(target, io.StringIO):
        out.write("".join(line.rstrip() + "\n" for line in target.getvalue().splitlines()))


# -- telemetryd jobs -----------------------------------------------------------------------------
if TYPE_CHECKING:
    from telemetryd.jobs import Job


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s < 86400
        else f"{s // 86400}d{s % 86400 // 3600:02d}h"
    )


def _energy(mj: int | None, kwh: bool) -> str:
    """In the table's unit: kWh (what a bill uses), or kJ when every job is under 1 kWh."""
    if mj is None:
        return "-"
    return f"{mj / 3.6e9:,.2f}" if kwh else f"{mj / 1e6:,.1f}"


def _listed(names: list[str], room: int = 3) -> str:
    return ",".join(names[:room]) + (f" +{len(names) - room}" if len(names) > room else "")


def jobs_table(jobs: list[Job]) -> Table:
    """One row per job; absent numbers are "-", never 0."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    kwh = any(j.energy_mj is not None and j.energy_mj >= 3.6e9 for j in jobs)
    energy = "energy kWh" if kwh else "energy kJ"
    for name in ("job", "state", "nodes", "GPUs", "start (UTC)", "duration", energy, "power W",
                 "util % mean/peak", "mem peak GiB", "user/pod"):  # fmt: skip
        right = name in ("GPUs", energy, "power W")
        table.add_column(name, justify="right" if right else "left")
    for j in jobs:
        start = datetime.datetime.fromtimestamp(j.start_ns / 1e9, datetime.UTC)
        owner = j.user or (f"{j.namespace}/{j.pod}" if j.pod else "-")
        table.add_row(
            j.job if j.cluster == jobs[0].cluster else f"{j.cluster}/{j.job}",
            Text(j.state, style={"running": "green", "silent": "yellow"}.get(j.state, "")),
            _listed(j.nodes), str(len(j.gpus)), start.strftime("%Y-%m-%d %H:%M"),
            _duration(j.duration_s), _energy(j.energy_mj, kwh), _num(j.mean_power_w),
            f"{_num(j.util_mean_pct)}/{_num(j.util_peak_pct)}", _gib(j.mem_peak_bytes), owner,
        )  # fmt: skip
    return table


def print_jobs(jobs: list[Job], file: TextIO | None = None) -> None:
    """``telemetryd jobs`` for a person: the table, or one line when there is none."""
    _emit([jobs_table(jobs) if jobs else Text("no jobs in the store for this selection")], file)
