"""What the attribution stage costs the agent per interval, against the host collector.

The stage runs once per report: a listing of the job mapping directory, then for every
GPU process a psutil lookup (user, command line, CPU times, RSS) and a read of
``/proc/<pid>/cgroup``. This measures it on real processes of this machine: ``--procs``
sleeping child processes are handed out over 8 GPUs as their NVML processes (default 2
per GPU, a busy training node), and a job map names a job per GPU. The baseline is the
``host`` collector (psutil CPU, memory, disks, NICs), which every agent already runs each
interval, measured in the same run with the same method: CPU time of this process over
``--rounds`` calls, after a warm-up.

Usage: PYTHONPATH=$PWD python bench/attribution_cost.py [--procs 16] [--rounds 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from collectors.attribution import Attributor
from collectors.host import HostPsutilCollector
from telemetryd.config import AgentConfig
from telemetryd.model import Gpu, GpuProcess, Host

GPUS = 8


def cpu_ms_per_call(fn: Callable[[], object], rounds: int) -> float:
    """Process CPU time per call, in ms, after 10 warm-up calls."""
    for _ in range(10):
        fn()
    start = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - start) * 1000.0 / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    children = [subprocess.Popen(["sleep", "100000"]) for _ in range(args.procs)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            jobs = Path(tmp)
            for i in range(GPUS):
                (jobs / str(i)).write_text(f"{81234 + i // 4}\n")
            cfg = AgentConfig()
            cfg.attribution.job_map_dir = str(jobs)
            attributor = Attributor(cfg.attribution)
            attributor.open()

            def gpus() -> list[Gpu]:
                return [
                    Gpu(index=i, uuid=f"GPU-{i}", pci_bus_id="", name="H100", driver="550",
                        processes=[GpuProcess(pid=c.pid, type="compute")
                                   for c in children[i::GPUS]])
                    for i in range(GPUS)
                ]  # fmt: skip

            host = HostPsutilCollector(cfg.host)
            host.open()
            with_procs = cpu_ms_per_call(lambda: attributor.attribute(gpus()), args.rounds)
            baseline = cpu_ms_per_call(lambda: host.collect(Host()), args.rounds)
            cfg.attribution.host_processes = False
            cgroup_only = Attributor(cfg.attribution)
            cgroup_only.jobmap = attributor.jobmap
            cgroups = cpu_ms_per_call(lambda: cgroup_only.attribute(gpus()), args.rounds)
            host.close()
            attributor.close()
    finally:
        for child in children:
            child.kill()
            child.wait()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"{args.procs} GPU processes on {GPUS} GPUs, job map of {GPUS} files, "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"attribution (psutil + cgroup + job map): {with_procs:.3f} ms CPU per interval")
    print(f"attribution without psutil (cgroup + job map): {cgroups:.3f} ms CPU per interval")
    print(f"baseline, host collector: {baseline:.3f} ms CPU per interval")
    print(f"ratio attribution / host collector: {with_procs / baseline:.2f}x")
    print(f"at a 1 s interval: {with_procs / 10:.3f}% of one core")


if __name__ == "__main__":
    main()
