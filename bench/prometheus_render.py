"""How long one /metrics scrape takes to render, and how big it is, for a fleet of N nodes.

Method: N copies of one simulated 8-GPU report (with host values), each under its own node
name, are fed to the collector as the aggregator feeds it; then the exposition is rendered
the way /metrics does (exporters/prometheus.py ``render``, in the calling thread), several
times, and the median is kept. Baseline in the same run: prometheus_client's own
``generate_latest`` on the same collector, which gives the same bytes. The event loop is not
involved: this is the work a scrape puts on the worker thread (which still shares the GIL
with the loop).

Usage: python bench/prometheus_render.py [--nodes 1000] [--labels dcgm|snake] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import tracemalloc

from prometheus_client import generate_latest

from exporters.prometheus import FleetCollector, render
from telemetryd.config import AgentConfig, PrometheusConfig
from telemetryd.model import decode_report, encode_report
from telemetryd.sampler import open_sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--labels", choices=["dcgm", "snake"], default="dcgm")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    sampler = open_sampler(AgentConfig(node="n", cluster="c1", gpu_backend="sim"))
    try:
        report = asyncio.run(sampler.sample(seq=0))
    finally:
        sampler.close()
    collector = FleetCollector(PrometheusConfig(labels=args.labels, stale_after=1e9))
    now = time.time_ns()
    tracemalloc.start()
    wire = encode_report(report)
    for i in range(args.nodes):  # decoded one by one, as the aggregator holds them
        node = decode_report(wire)
        node.node = f"node-{i:05d}"
        collector.observe(node, now)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times, baseline = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        text = render(collector)
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
        same = generate_latest(collector)
        baseline.append(time.perf_counter() - started)
        assert same == text, "render() must give generate_latest's bytes"
    gpus = args.nodes * len(report.gpus)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"{args.nodes} nodes, {gpus} GPUs, labels={args.labels}")
    print(f"state held: {held / 2**20:.1f} MiB (the reports and label sets)")
    lines = text.count(b"\n")
    print(f"exposition: {len(text) / 2**20:.1f} MiB, {lines} lines")
    ours, base = statistics.median(times), statistics.median(baseline)
    print(f"generate_latest (baseline): median {base:.2f} s of {args.repeat}")
    print(f"render: median {ours:.2f} s of {args.repeat} ({ours / gpus * 1e6:.0f} µs per GPU), "
          f"{ours / base:.2f} of the baseline's time")  # fmt: skip


if __name__ == "__main__":
    main()
