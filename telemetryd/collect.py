"""``telemetryd collect``: what this node sees, now (like gpustat), or as a recording.

Rates and averages (CPU %, RAPL power, GPM metrics) need two readings, so a one-shot
collect samples twice, ``window`` seconds apart, and reports the second. ``--record``
wraps the real NVML in the recorder and writes what the card answered, for tests and
the simulator to replay.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from collectors.base import GpuSource
from telemetryd.config import AgentConfig
from telemetryd.errors import TelemetrydError
from telemetryd.model import Report, encode_report
from telemetryd.sampler import NodeSampler, open_sampler


def _recording_source(cfg: AgentConfig) -> tuple[GpuSource, Callable[[str], None]]:
    from collectors.nvml import NvmlBackend, import_pynvml
    from collectors.nvml_record import RecordingNvml

    recorder: list[RecordingNvml] = []

    def build() -> RecordingNvml:
        recorder.append(RecordingNvml(import_pynvml()))
        return recorder[0]

    def dump(path: str) -> None:
        if not recorder:
            raise TelemetrydError("nothing recorded: NVML did not initialise")
        recorder[0].dump(path)

    return NvmlBackend(build, cfg.nvml), dump


async def _sample(sampler: NodeSampler, window_s: float) -> Report:
    first = await sampler.sample()
    await asyncio.sleep(window_s)
    report = await sampler.sample()
    report.events = first.events + report.events
    report.absent = first.absent
    return report


async def _collect(
    sampler: NodeSampler,
    cfg: AgentConfig,
    as_json: bool,
    once: bool,
    window_s: float,
    dump: Callable[[str], None] | None,
    record: str | None,
) -> None:
    report = await _sample(sampler, window_s)
    _show(report, as_json)
    if record and dump is not None:
        dump(record)
        print(f"recorded {len(report.gpus)} GPU(s) to {record}", file=sys.stderr)
    seq = 1
    while not once:
        await asyncio.sleep(cfg.interval)
        _show(await sampler.sample(seq), as_json)
        seq += 1


def run(
    cfg: AgentConfig,
    *,
    gpu_backend: str | None,
    as_json: bool,
    once: bool,
    window_s: float,
    record: str | None,
) -> None:
    """Sample and print, once or every interval until interrupted."""
    gpu_source, dump = _recording_source(cfg) if record else (None, None)
    sampler = open_sampler(cfg, gpu_backend=gpu_backend, gpu_source=gpu_source)
    try:
        asyncio.run(_collect(sampler, cfg, as_json, once, window_s, dump, record))
    finally:
        sampler.close()


def _show(report: Report, as_json: bool) -> None:
    if as_json:
        sys.stdout.buffer.write(encode_report(report) + b"\n")
        sys.stdout.flush()
    else:
        from telemetryd.console import print_report

        print_report(report)
