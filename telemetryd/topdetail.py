"""One node up close, with no UI in it: its GPUs with sparklines and owners, processes, events.

The rows are tuples of (text, style) cells for ``tui.py`` to put in tables; the sparklines
come from the rings :class:`~telemetryd.watch.Watch` keeps per GPU and metric, so the
history an operator sees is the last minutes this viewer received. Each GPU names the job
or pod holding it (its owners in the report); the processes are decoded here, when this
view draws, not with every report (see ``watchwire``).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from telemetryd import topfmt as fmt
from telemetryd.codec import DecodeError
from telemetryd.topfmt import Part
from telemetryd.watch import GpuState, NodeState, Watch
from telemetryd.watchwire import holders, processes

SPARK_WIDTH = 16
OWNER_WIDTH = 24  # a GPU's job / pod cell: one pod name, or a few job ids
GPU_COLUMNS = (
    "GPU", "job / pod", "util %", f"util, last {SPARK_WIDTH}", "memory", "°C", "temperature",
    "W / limit", "power", "SM MHz", "throttle", "ECC / remap",
)  # fmt: skip
PROCESS_COLUMNS = (
    "GPU",
    "pid",
    "user",
    "job / pod",
    "GPU mem GiB",
    "SM %",
    "CPU %",
    "RSS GiB",
    "command",
)  # fmt: skip  (the command last: it is the long one)


def header(watch: Watch, node: NodeState, now_ns: int) -> list[Part]:
    """Who the node is and how it is doing: state, GPUs, host load, last report, agent."""
    state = watch.node_state(node, now_ns)
    parts: list[Part] = [
        (f"{node.cluster}/{node.node}", "bold"), ("  ", ""), (state, fmt.STATE_STYLES[state]),
    ]  # fmt: skip
    if node.status_reason and state == "offline":
        parts.append((f" ({node.status_reason})", fmt.STATE_STYLES[state]))
    report = node.report
    if node.received_ns:
        parts.append((f"  last report {fmt.age((now_ns - node.received_ns) / 1e9)} ago", "dim"))
    if report is not None:
        parts.append((f"  every {report.interval_s:g}s  seq {report.seq}", "dim"))
        host = report.host
        if host is not None:
            parts += [
                ("  CPU ", "bold"), (fmt.num(host.cpu_pct, unit="%"), ""),
                ("  load ", "bold"), (fmt.num(host.load_1, "{:.1f}"), ""),
            ]  # fmt: skip
            if host.mem_total_bytes and host.mem_used_bytes is not None:
                used = 100 * host.mem_used_bytes / host.mem_total_bytes
                parts += [("  RAM ", "bold"), (f"{used:.0f}%", "")]
    if node.gpus:
        parts.append((f"  {models(node)}", ""))
    if node.version:
        parts.append((f"  agent {node.version}", "dim"))
    return parts


def gpu_cells(gpu: GpuState, width: int = SPARK_WIDTH) -> tuple[Part, ...]:
    """One GPU: live values, sparklines of the last ``width`` samples, throttle and health."""
    s = gpu.sample
    held = fmt.holders(*holders(s), width=OWNER_WIDTH)
    owner: Part = (held, fmt.OWNER if held != "-" else "dim")
    if s.error is not None:  # its job is still named: the GPU did not leave it
        why = f"FAILED: {s.error.code} {s.error.message}".strip()
        blank = (("", ""),) * (len(GPU_COLUMNS) - 4)
        return (
            (str(s.index), "bold #ff3030"),
            owner,
            ("✗", "bold #ff3030"),
            *blank,
            (why, "bold #ff3030"),
        )
    util = None if s.util_gpu_pct is None else float(s.util_gpu_pct)
    mem = s.mem_pct
    limit = s.power_limit_w or fmt.METRIC_SPECS["power"].spark[1]
    rings = gpu.rings
    mem_text = "-"
    if s.fb_used_bytes is not None and s.fb_total_bytes:
        mem_text = f"{fmt.gib(s.fb_used_bytes)}/{fmt.gib(s.fb_total_bytes)}G"
    power_text = fmt.num(s.power_w)
    if s.power_limit_w:
        power_text += f"/{s.power_limit_w:.0f}"
    return (
        (str(s.index), "bold"),
        owner,
        (fmt.num(util), fmt.pct_style(util, 101, 101)),
        (fmt.sparkline(rings["util"].values(width), 0, 100, width), "#7ad151"),
        (mem_text, fmt.pct_style(mem, 90, 97)),
        (fmt.num(s.temp_c), fmt.pct_style(s.temp_c, 80, 88)),
        (
            fmt.sparkline(rings["temp"].values(width), *fmt.METRIC_SPECS["temp"].spark, width),
            "#f46d43",
        ),
        (power_text, fmt.pct_style(None if s.power_w is None else 100 * s.power_w / limit, 90, 98)),
        (fmt.sparkline(rings["power"].values(width), 0, limit, width), "#fee090"),
        (fmt.num(s.sm_clock_mhz), ""),
        fmt.throttle(s),
        fmt.health(s),
    )


def models(node: NodeState) -> str:
    """``8 x H100 80GB HBM3``: the node's GPU models, counted."""
    names = Counter(g.sample.name.removeprefix("NVIDIA ") for g in node.gpus.values())
    return ", ".join(f"{n} x {name or '?'}" for name, n in names.most_common())


def gpu_rows(node: NodeState) -> list[tuple[Part, ...]]:
    """Every GPU of the node in index order."""
    return [gpu_cells(node.gpus[i]) for i in sorted(node.gpus)]


def process_rows(node: NodeState) -> list[tuple[Part, ...]]:
    """Processes per GPU: pid, user, job or pod, GPU memory, SM, CPU, RSS, command.

    Each value where the agent knows it ("-" otherwise: an older agent, a GPU without
    process utilisation, a process of another user the agent may not read). A GPU whose
    process list cannot be decoded gets one row saying why.
    """
    rows: list[tuple[Part, ...]] = []
    blank = (("", ""),) * (len(PROCESS_COLUMNS) - 3)
    for index in sorted(node.gpus):
        try:
            procs = processes(node.gpus[index].sample)
        except DecodeError as exc:
            rows.append(((str(index), "bold"), ("?", ""), *blank, (f"unreadable: {exc}", "dim")))
            continue
        rows.extend(
            (
                (str(index), "bold"),
                (str(p.pid), ""),
                (p.user or "-", ""),
                (p.owner or "-", fmt.OWNER if p.owner else "dim"),
                (fmt.gib(p.used_memory_bytes), ""),
                (fmt.num(p.sm_util_pct), ""),
                (fmt.num(p.cpu_pct), ""),
                (fmt.gib(p.rss_bytes), ""),
                (p.command or ("(graphics)" if p.type == "graphics" else "-"), ""),
            )
            for p in procs
        )
    return rows


def event_lines(node: NodeState, now_ns: int, limit: int = 20) -> list[list[Part]]:
    """The node's recent events, newest first: when (UTC), and what it means (XIDs decoded)."""
    lines: list[list[Part]] = []
    for event in sorted(node.events, key=lambda e: e.time_ns, reverse=True)[:limit]:
        when = datetime.fromtimestamp(event.time_ns / 1e9, UTC).strftime("%H:%M:%SZ")
        ago = fmt.age((now_ns - event.time_ns) / 1e9)
        lines.append([(f"{when} ({ago} ago)  ", "dim"), fmt.event_words(event)])
    return lines
