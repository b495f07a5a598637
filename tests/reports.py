"""Realistic reports for tests: one simulated 8-GPU node, sampled once per run."""

from __future__ import annotations

import asyncio
import functools

from telemetryd.config import AgentConfig
from telemetryd.model import encode_report
from telemetryd.sampler import open_sampler


@functools.cache
def sampled() -> bytes:
    """One simulated 8-GPU report of node n1 in cluster c1, as it goes on the wire."""
    sampler = open_sampler(AgentConfig(node="n1", cluster="c1", gpu_backend="sim", collectors=[]))
    try:
        return encode_report(asyncio.run(sampler.sample(seq=0)))
    finally:
        sampler.close()
