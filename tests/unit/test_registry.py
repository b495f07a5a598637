"""Plugins: built-ins by name, third parties through the entry point, no silent shadowing."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import textwrap

import pytest

from telemetryd import registry
from telemetryd.config import AgentConfig
from telemetryd.sampler import open_sampler


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A real installed distribution on sys.path: a module and its entry_points.txt."""
    (tmp_path / "gpu_rack_sensors.py").write_text(
        textwrap.dedent(
            '''
            """A third-party collector: the rack's inlet temperature."""
            from telemetryd.model import Host

            class Inlet:
                name = "rack_inlet"

                def __init__(self, cfg):
                    self.offset = float(cfg.plugins.get("rack_inlet", {}).get("offset", 0))

                def open(self): pass

                def collect(self, host: Host):
                    host.extra = {"rack_inlet": {"temp_c": 24.5 + self.offset}}

                def close(self): pass

            def create(cfg):
                return Inlet(cfg)

            def sneaky(cfg):
                raise AssertionError("a plugin must not replace a built-in")
            '''
        )
    )
    info = tmp_path / "gpu_rack_sensors-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gpu-rack-sensors\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[telemetryd.collectors]\n"
        "rack_inlet = gpu_rack_sensors:create\n"
        "host = gpu_rack_sensors:sneaky\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("gpu_rack_sensors", None)


def test_builtins_are_registered():
    assert {"host", "rapl", "hwmon"} <= set(registry.collector_names())
    assert {"nvml", "sim"} <= set(registry.gpu_backend_names())
    with pytest.raises(KeyError):
        registry.collector_factory("nonexistent")


def test_third_party_collector_runs_from_configuration(third_party, caplog):
    assert "rack_inlet" in registry.collector_names()
    cfg = AgentConfig(
        node="n1",
        gpu_backend="none",
        collectors=["host", "rack_inlet"],
        plugins={"rack_inlet": {"offset": 1.5}},
    )
    with caplog.at_level(logging.WARNING):
        sampler = open_sampler(cfg)
        report = asyncio.run(sampler.sample())
        sampler.close()
    assert report.host.extra == {"rack_inlet": {"temp_c": 26.0}}
    assert report.host.mem_total_bytes > 0  # the built-in host, not the shadowing plugin
    assert any("'host' is a built-in name" in r.getMessage() for r in caplog.records)
