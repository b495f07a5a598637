"""What the agent costs a node: CPU per sample cycle and memory, against reading the sources bare.

Method: Debian's Mosquitto on a free loopback port (the integration tests' fixture). For each
interval (1 s and 10 s by default) two processes run, one after the other, for the same number
of cycles:
  (a) the baseline: a bare loop in its own process that, once per interval, reads exactly
      the agent's sources and nothing more: the GPU backend's ``sample()`` (8 simulated H100s,
      or real NVML with ``--gpu-backend nvml``), every host collector of the default set
      (host/psutil, rapl, hwmon: those present on this machine) and the attribution stage;
      no report is built, encoded, spooled or published. Its CPU per cycle is the cost of
      the reads themselves. Taken apart: the CPU inside the GPU backend (process CPU around
      the awaited call, nothing else running in that process), and within it the NVML calls
      themselves (each ``nvml*`` function of the library timed with its thread's CPU clock;
      with the simulator, that is the simulated card answering).
  (b) ``telemetryd agent`` with its defaults (all collectors, attribution, the fsync'd
      spool, QoS 1 publish, job accounting), publishing to the broker.
Each process's CPU (user + system, all threads) is taken from /proc between the end of a
warm-up and the end of the run, divided by the cycles in between; RSS is VmRSS at the end and
VmHWM (the peak). What telemetryd adds beyond reading is (b) - (a); the issue's target is
on (b) less the NVML calls: under 2 ms of CPU per cycle, and RSS under 40 MB.

Usage: python bench/agent_cost.py [--intervals 1,10] [--cycles 60,20] [--warmup 5]
       [--gpu-backend sim|nvml]
On a GPU machine also: ``--compare-smi`` runs ``nvidia-smi --query-gpu=... -l 1`` (and gpustat
if installed) for the same time and prints their CPU beside the agent's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from top_cpu import ROOT, env, machine, peak_rss_mib, start_broker

SMI_QUERY = ("timestamp,index,utilization.gpu,utilization.memory,memory.used,temperature.gpu,"
             "power.draw,clocks.sm,clocks.mem,ecc.errors.uncorrected.volatile.total")  # fmt: skip


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss / 2**20)


# -- (a) the bare loop, run as a child process of this script ---------------------------------


class TimedLib:
    """The NVML library (pynvml, or the simulator's stand-in) with the CPU of each call counted.

    Per-thread CPU (``thread_time``) around every ``nvml*`` function: the reader calls them on
    its own worker threads, so process CPU would count whatever else ran meanwhile.
    """

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.cpu_s = 0.0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._lib, name)
        if not (name.startswith("nvml") and callable(value)):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            before = time.thread_time()
            try:
                return value(*args, **kwargs)
            finally:
                spent = time.thread_time() - before
                with self._lock:
                    self.cpu_s += spent

        return timed


async def bare_loop(interval: float, cycles: int, backend: str, out: Path) -> None:
    """Read the agent's sources once per interval; write the CPU spent inside the GPU calls."""
    from collectors.attribution import Attributor
    from telemetryd import registry
    from telemetryd.config import AgentConfig
    from telemetryd.errors import SourceUnavailable
    from telemetryd.model import Host

    cfg = AgentConfig(node="bench-bare", cluster="bench", gpu_backend=backend)
    gpu = registry.gpu_factory(backend)(cfg)
    timed: list[TimedLib] = []
    factory = gpu._lib_factory  # type: ignore[attr-defined]

    def wrapped() -> TimedLib:
        timed.append(TimedLib(factory()))
        return timed[-1]

    gpu._lib_factory = wrapped  # type: ignore[attr-defined]
    gpu.open()
    collectors = []
    for name in cfg.collectors:
        collector = registry.collector_factory(name)(cfg)
        try:
            collector.open()
        except SourceUnavailable:  # absent here: the agent skips it the same way
            collector.close()
            continue
        collectors.append(collector)
    attributor = Attributor(cfg.attribution, real_pids=backend != "sim")
    attributor.open()
    gpu_cpu = 0.0
    timed[0].cpu_s = 0.0  # opening (device discovery) is not a cycle
    start = time.monotonic()
    for k in range(cycles):
        due = start + k * interval
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        before = time.process_time()
        sample = await gpu.sample()
        gpu_cpu += time.process_time() - before
        for collector in collectors:
            collector.collect(Host())
        if sample.gpus:
            attributor.attribute(sample.gpus)
        # Per cycle: the harness stops this process whenever its window ends.
        out.write_text(  # noqa: ASYNC240 - a few bytes, nothing else runs in this process
            f"{gpu_cpu / (k + 1)}\n{','.join(c.name for c in collectors)}\n"
            f"{timed[0].cpu_s / (k + 1)}\n"
        )
    gpu.close()


# -- the harness ------------------------------------------------------------------------------


def measure(cmd: list[str], interval: float, cycles: int, warmup: int, workdir: Path,
            name: str) -> dict[str, float]:  # fmt: skip
    """CPU per cycle over ``cycles`` after ``warmup`` cycles, RSS at the end and at peak."""
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(warmup * interval)
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited:\n{(workdir / f'{name}.log').read_text()}")
        cpu0, t0 = cpu_s(proc.pid), time.monotonic()
        time.sleep(cycles * interval)
        cpu1, t1 = cpu_s(proc.pid), time.monotonic()
        rss, peak = rss_mib(proc.pid), peak_rss_mib(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    done = (t1 - t0) / interval
    return {"cpu_ms_per_cycle": 1000 * (cpu1 - cpu0) / done, "rss_mib": rss, "peak_mib": peak,
            "cycles": done}  # fmt: skip


def run_interval(args: argparse.Namespace, interval: float, url: str, workdir: Path) -> None:
    total = args.warmup + args.n + 2
    gpu_file = workdir / f"bare-{interval}.txt"
    bare = measure([sys.executable, __file__, "--bare", str(interval), str(total), args.gpu_backend,
                    str(gpu_file)], interval, args.n, args.warmup, workdir,
                   f"bare-{interval}")  # fmt: skip
    state = workdir / f"agent-{interval}"
    agent = measure([sys.executable, "-m", "telemetryd", "agent", "--broker", url,
                     "--node", "bench-agent", "--cluster", "bench", "--interval", str(interval),
                     "--gpu-backend", args.gpu_backend, "--state-dir", str(state)],
                    interval, args.n, args.warmup, workdir, f"agent-{interval}")  # fmt: skip
    lines = gpu_file.read_text().splitlines() if gpu_file.exists() else ["nan", "?", "nan"]
    gpu_ms = 1000 * float(lines[0])
    nvml_ms = 1000 * float(lines[2])
    extra = agent["cpu_ms_per_cycle"] - bare["cpu_ms_per_cycle"]
    print(f"\ninterval {interval:g} s, {agent['cycles']:.0f} cycles measured; "
          f"collectors present: {lines[1] if len(lines) > 1 else '?'}")  # fmt: skip
    print(f"  bare loop (baseline)   {bare['cpu_ms_per_cycle']:7.2f} ms CPU/cycle "
          f"(GPU backend {gpu_ms:.2f} ms, of which NVML calls {nvml_ms:.2f} ms)   "
          f"RSS {bare['rss_mib']:5.1f} MiB "
          f"(peak {bare['peak_mib']:.1f})")  # fmt: skip
    print(f"  telemetryd agent       {agent['cpu_ms_per_cycle']:7.2f} ms CPU/cycle "
          f"({agent['cpu_ms_per_cycle'] / bare['cpu_ms_per_cycle']:.2f}x the baseline)   "
          f"RSS {agent['rss_mib']:5.1f} MiB (peak {agent['peak_mib']:.1f})")  # fmt: skip
    beyond = agent["cpu_ms_per_cycle"] - nvml_ms
    print(f"  agent beyond the bare reads: {extra:+.2f} ms/cycle; beyond the NVML calls: "
          f"{beyond:.2f} ms/cycle (target < 2 ms: {'met' if beyond < 2 else 'NOT met'}); "
          f"RSS target < 40 MB ({agent['rss_mib'] * 2**20 / 1e6:.1f} MB: "
          f"{'met' if agent['rss_mib'] * 2**20 / 1e6 < 40 else 'NOT met'}); "
          f"{100 * agent['cpu_ms_per_cycle'] / 1000 / interval:.3f}% of a core")  # fmt: skip
    if args.compare_smi and shutil.which("nvidia-smi"):
        compare_tools(interval, args.n, workdir)


def compare_tools(interval: float, cycles: int, workdir: Path) -> None:
    """nvidia-smi's and gpustat's own CPU for the same number of refreshes."""
    tools = [("nvidia-smi -l", ["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv",
                                "-l", str(max(1, int(interval)))])]  # fmt: skip
    if shutil.which("gpustat"):
        tools.append(("gpustat -i", ["gpustat", "-i", str(interval), "--no-color"]))
    for name, cmd in tools:
        result = measure(cmd, interval, cycles, 2, workdir, name.split()[0])
        print(f"  {name:<22} {result['cpu_ms_per_cycle']:7.2f} ms CPU/cycle   "
              f"RSS {result['rss_mib']:5.1f} MiB")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        interval, cycles, backend, out = sys.argv[2:6]
        asyncio.run(bare_loop(float(interval), int(cycles), backend, Path(out)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--intervals", default="1,10", help="comma-separated seconds")
    parser.add_argument("--cycles", default="60,20", help="cycles measured, per interval")
    parser.add_argument("--warmup", type=int, default=5, help="cycles left out first")
    parser.add_argument("--gpu-backend", choices=["sim", "nvml"], default="sim")
    parser.add_argument("--compare-smi", action="store_true",
                        help="also nvidia-smi -l and gpustat (GPU machines)")  # fmt: skip
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"GPU backend: {args.gpu_backend} (8 simulated H100s)" if args.gpu_backend == "sim"
          else "GPU backend: real NVML")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = start_broker(workdir)
        try:
            counts = [int(x) for x in args.cycles.split(",")]
            for k, interval in enumerate(float(x) for x in args.intervals.split(",")):
                args.n = counts[min(k, len(counts) - 1)]
                run_interval(args, interval, f"mqtt://127.0.0.1:{broker.port}", workdir)
        finally:
            broker.stop()
    os.sync()


if __name__ == "__main__":
    main()
