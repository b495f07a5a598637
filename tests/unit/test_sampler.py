"""Assembling a node's report: failures stay local, nothing invalid leaves the node."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from collectors.fakenvml import FakeNvml
from collectors.nvml import NvmlBackend
from telemetryd.config import AgentConfig, NvmlConfig
from telemetryd.errors import CollectorError, SourceUnavailable
from telemetryd.model import Host, decode_report, encode_report
from telemetryd.sampler import NodeSampler, open_sampler
from tests.nvmlfakes import nvml_loads, recording


class Steady:
    name = "steady"

    def open(self) -> None: ...

    def collect(self, host: Host) -> None:
        host.cpu_pct = 12.5
        host.mem_total_bytes = 1 << 30

    def close(self) -> None: ...


class Failing(Steady):
    name = "failing"

    def collect(self, host: Host) -> None:
        host.load_1 = 3.0  # read before the failure: kept
        raise CollectorError("sensor bus went away " + "x" * 400)


class Hanging(Steady):
    name = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()

    def collect(self, host: Host) -> None:
        self.release.wait()
        host.uptime_s = 1.0


def make(collectors, gpu=None, **agent) -> NodeSampler:
    cfg = AgentConfig(node="n1", cluster="c1", collector_timeout=0.3, **agent)
    return NodeSampler(cfg, gpu=gpu, collectors=collectors, absent={"rapl": "no RAPL here"})


def test_a_failing_collector_is_reported_and_the_rest_is_kept():
    sampler = make([Steady(), Failing()])
    report = asyncio.run(sampler.sample(seq=3))
    sampler.close()
    assert report.seq == 3 and report.node == "n1" and report.cluster == "c1"
    assert report.host is not None and report.host.cpu_pct == 12.5
    assert report.host.load_1 == 3.0
    (error,) = report.errors
    assert error.source == "failing" and error.message.startswith("sensor bus went away")
    assert len(error.message) <= 256  # the wire limit: long messages are cut, not refused
    assert decode_report(encode_report(report)) == report


def test_a_hanging_collector_times_out_then_reports_hung():
    hanging = Hanging()
    sampler = make([Steady(), hanging])
    first = asyncio.run(sampler.sample())
    second = asyncio.run(sampler.sample())
    hanging.release.set()
    sampler.close()
    assert first.host.cpu_pct == 12.5 and second.host.cpu_pct == 12.5
    assert "did not return within 0.3 s" in first.errors[0].message
    assert "has not returned" in second.errors[0].message


def test_absent_sources_are_reported_once():
    sampler = make([Steady()])
    first = asyncio.run(sampler.sample(seq=0))
    second = asyncio.run(sampler.sample(seq=1))
    sampler.close()
    assert first.absent == {"rapl": "no RAPL here"}
    assert second.absent is None


def test_a_value_the_wire_would_refuse_is_dropped_and_logged_once(caplog):
    lib = FakeNvml(recording("h100", gpus=2))
    lib.devices[1]["nvmlDeviceGetCurrPcieLinkGeneration"] = 99  # a driver answering nonsense
    gpu = NvmlBackend(lambda: lib, NvmlConfig())
    gpu.open()
    sampler = make([], gpu=gpu)
    with caplog.at_level(logging.WARNING):
        first = asyncio.run(sampler.sample())
        second = asyncio.run(sampler.sample())
    sampler.close()
    assert first.gpus[1].pcie_gen is None and first.gpus[1].power_w is not None
    assert first.gpus[0].pcie_gen == 5
    assert second.gpus[1].pcie_gen is None
    drops = [r for r in caplog.records if "gpus[1].pcie_gen" in r.getMessage()]
    assert len(drops) == 1


def test_a_bad_element_drops_its_list_not_the_report():
    sampler = make([])
    report = asyncio.run(sampler.sample())
    report.host = Host(cpu_pct=5.0, cpu_core_pct=[10.0, 250.0])
    fixed = sampler.conform(report)
    sampler.close()
    assert fixed.host.cpu_core_pct is None and fixed.host.cpu_pct == 5.0


@pytest.mark.skipif(nvml_loads(), reason="NVML loads on this machine: the fallback is not taken")
def test_auto_without_nvml_says_so_once_and_points_to_sim():
    sampler = open_sampler(AgentConfig(node="n1", collectors=["host"]))
    report = asyncio.run(sampler.sample())
    sampler.close()
    assert report.gpus == []
    assert "NVML" in report.absent["gpu"] and "--gpu-backend sim" in report.absent["gpu"]


@pytest.mark.skipif(nvml_loads(), reason="NVML loads on this machine")
def test_explicit_nvml_without_nvml_is_an_error():
    with pytest.raises(SourceUnavailable, match="NVML"):
        open_sampler(AgentConfig(node="n1", gpu_backend="nvml", collectors=[]))


def test_sim_node_report_carries_gpus_host_and_agent_stats():
    sampler = open_sampler(AgentConfig(node="sim-07", gpu_backend="sim", collectors=["host"]))
    report = asyncio.run(sampler.sample(seq=9))
    sampler.close()
    assert len(report.gpus) == 8 and report.host.mem_total_bytes > 0
    assert report.agent.sample_duration_s >= report.agent.gpu_duration_s > 0
    assert report.interval_s == 10.0 and len(report.boot_id) == 32
    assert decode_report(encode_report(report)) == report
