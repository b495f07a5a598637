"""Helpers to build NVML backends over recorded cards for tests (GPU hardware is the one fake)."""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collectors.base import GpuSample
from collectors.cards import card_path
from collectors.fakenvml import FakeNvml, load_recording
from collectors.nvml import NvmlBackend
from telemetryd.config import NvmlConfig

FIXTURES = Path(__file__).parent / "fixtures" / "nvml"
RECORDINGS = {
    "h100": card_path("h100-sxm5-80gb"),
    "a6000": FIXTURES / "rtx-a6000.json",
    "a100-mig": FIXTURES / "a100-sxm4-40gb-mig.json",
}


@functools.cache
def nvml_loads() -> bool:
    """Whether real NVML initialises on the machine running the tests."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


def recording(name: str, gpus: int = 1) -> dict[str, Any]:
    """A recording, with its first device repeated ``gpus`` times (distinct UUIDs)."""
    data = load_recording(RECORDINGS[name])
    base = data["devices"][0]
    devices = []
    for i in range(gpus):
        device = copy.deepcopy(base)
        device["nvmlDeviceGetUUID"] = f"{base['nvmlDeviceGetUUID'][:-2]}{i:02d}"
        devices.append(device)
    return {**data, "devices": devices}


def backend(lib: FakeNvml, **options: Any) -> NvmlBackend:
    """An opened NVML backend over ``lib``."""
    b = NvmlBackend(lambda: lib, NvmlConfig(**{"timeout": 2.0, **options}))
    b.open()
    return b


def sample(b: NvmlBackend) -> GpuSample:
    return asyncio.run(b.sample())


def sample_until(b: NvmlBackend, done: Callable[[GpuSample], bool], tries: int = 20) -> GpuSample:
    """Sample until ``done`` (events arrive on their own thread, a few ms later)."""
    import time

    events = []
    for _ in range(tries):
        s = sample(b)
        events += s.events
        s.events = events
        if done(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"condition not met after {tries} samples; events: {events}")
