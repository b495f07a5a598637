"""RAPL collector against hand-written powercap trees (see tests/fixtures/sysfs/README.md)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from collectors import rapl
from collectors.rapl import RaplCollector, create
from telemetryd.codec import encode_json, json_decoder
from telemetryd.config import AgentConfig
from telemetryd.errors import CollectorError, SourceUnavailable
from telemetryd.model import Host, PowerZone

if TYPE_CHECKING:
    from collectors.base import HostCollector

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
INTEL_2S = FIXTURES / "rapl-intel-2s"
PKG_RANGE = 262143328850


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def roundtrip(host: Host) -> None:
    assert json_decoder(Host)(encode_json(host)) == host


def collect(c: HostCollector) -> Host:
    host = Host()
    c.collect(host)
    roundtrip(host)
    return host


def by_zone(host: Host) -> dict[str, PowerZone]:
    assert host.power is not None
    return {z.zone: z for z in host.power}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A writable copy of the 2-socket tree, so a test can move the counters."""
    root = tmp_path / "sys"
    shutil.copytree(INTEL_2S, root)
    return root


def set_energy(root: Path, zone: str, value: int) -> None:
    (root / "class" / "powercap" / zone / "energy_uj").write_text(f"{value}\n")


def test_fixture_zones_names_and_first_reading() -> None:
    c = RaplCollector(str(INTEL_2S), clock=Clock())
    c.open()
    host = collect(c)
    assert host.power is not None
    assert [(z.zone, z.name, z.energy_uj) for z in host.power] == [
        ("intel-rapl:0", "package-0", 48372915042),
        ("intel-rapl:0:0", "dram", 12884523917),
        ("intel-rapl:1", "package-1", 51190287431),
        ("intel-rapl:1:0", "dram", 13019774112),
    ]
    # Power needs two readings: absent (not 0.0) on the first collect, and not on the wire.
    assert all(z.power_w is None for z in host.power)
    assert b"power_w" not in encode_json(host)


def test_power_is_energy_delta_over_injected_clock(tree: Path) -> None:
    clock = Clock(500.0)
    c = RaplCollector(str(tree), clock=clock)
    c.open()
    collect(c)
    set_energy(tree, "intel-rapl:0", 48372915042 + 50_000_000)  # +50 J
    set_energy(tree, "intel-rapl:1:0", 13019774112 + 9_000_000)  # +9 J
    clock.t = 502.5
    zones = by_zone(collect(c))
    assert zones["intel-rapl:0"].energy_uj == 48372915042 + 50_000_000
    assert zones["intel-rapl:0"].power_w == pytest.approx(20.0)
    assert zones["intel-rapl:1:0"].power_w == pytest.approx(3.6)
    assert zones["intel-rapl:1"].power_w == 0.0


def test_wrap_keeps_counter_monotonic_and_power_right(tree: Path) -> None:
    clock = Clock(0.0)
    c = RaplCollector(str(tree), clock=clock)
    c.open()
    set_energy(tree, "intel-rapl:0", 262143000000)
    first = by_zone(collect(c))["intel-rapl:0"].energy_uj
    assert first == 262143000000

    set_energy(tree, "intel-rapl:0", 1000)  # wrapped past max_energy_range_uj
    clock.t = 10.0
    z = by_zone(collect(c))["intel-rapl:0"]
    expected = (PKG_RANGE - 262143000000) + 1000  # 328850 + 1000
    assert z.energy_uj == first + expected
    assert z.power_w == pytest.approx(expected / 1e6 / 10.0)

    set_energy(tree, "intel-rapl:0", 2_001_000)
    clock.t = 20.0
    z2 = by_zone(collect(c))["intel-rapl:0"]
    assert z2.energy_uj == first + expected + 2_000_000
    assert z2.power_w == pytest.approx(0.2)


def test_repeated_wraps_accumulate(tree: Path) -> None:
    clock = Clock(0.0)
    c = RaplCollector(str(tree), clock=clock)
    c.open()
    raw = [200_000_000_000, 100_000_000_000, 250_000_000_000, 5]
    seen = []
    for i, value in enumerate(raw):
        set_energy(tree, "intel-rapl:0", value)
        clock.t = float(i)
        seen.append(by_zone(collect(c))["intel-rapl:0"].energy_uj)
    assert seen == sorted(seen)
    # Two wraps: the counter moved by raw[-1] - raw[0] + 2 * range.
    assert seen[-1] - seen[0] == raw[-1] - raw[0] + 2 * PKG_RANGE


def test_drop_without_range_counts_nothing(tmp_path: Path) -> None:
    zone = tmp_path / "class" / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("5000000\n")
    clock = Clock(0.0)
    c = RaplCollector(str(tmp_path), clock=clock)
    c.open()
    collect(c)
    (zone / "energy_uj").write_text("100\n")
    clock.t = 1.0
    z = by_zone(collect(c))["intel-rapl:0"]
    assert (z.energy_uj, z.power_w) == (5000000, None)
    (zone / "energy_uj").write_text("1000100\n")
    clock.t = 2.0
    z = by_zone(collect(c))["intel-rapl:0"]
    assert z.energy_uj == 6000000
    assert z.power_w == pytest.approx(1.0)


def test_implausible_power_is_left_out(tree: Path) -> None:
    clock = Clock(0.0)
    c = RaplCollector(str(tree), clock=clock)
    c.open()
    collect(c)
    set_energy(tree, "intel-rapl:0", 48372915042 + 500_000_000_000)
    clock.t = 1.0  # 500 kJ in one second: not a CPU, the model refuses > 100 kW
    assert by_zone(collect(c))["intel-rapl:0"].power_w is None


def test_missing_powercap_dir_names_the_path(tmp_path: Path) -> None:
    c = create(AgentConfig(sysfs=str(tmp_path)))
    with pytest.raises(SourceUnavailable) as err:
        c.open()
    message = str(err.value)
    assert str(tmp_path / "class" / "powercap") in message
    assert "not present" in message
    c.close()


def test_no_zone_with_energy(tmp_path: Path) -> None:
    control = tmp_path / "class" / "powercap" / "intel-rapl"
    control.mkdir(parents=True)
    (control / "enabled").write_text("0\n")
    with pytest.raises(SourceUnavailable, match="energy_uj"):
        RaplCollector(str(tmp_path)).open()


def test_permission_denied_says_root_and_how(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = rapl._read_text

    def denied(path: str) -> str:
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(rapl, "_read_text", denied)
    with (
        caplog.at_level(logging.WARNING, logger="collectors.rapl"),
        pytest.raises(SourceUnavailable) as err,
    ):
        RaplCollector(str(INTEL_2S)).open()
    message = str(err.value)
    path = str(INTEL_2S / "class" / "powercap" / "intel-rapl:0" / "energy_uj")
    assert path in message
    assert "permission denied" in message
    assert "root" in message
    assert "CVE-2020-8694" in message
    assert "udev" in message
    # The reason travels in the report, whose messages are at most 256 characters.
    assert len(message.replace(path, "/sys/class/powercap/intel-rapl:0/energy_uj")) <= 256
    # The full recipe is in the log.
    assert 'RUN+="/bin/chmod g+r /sys%p/energy_uj"' in caplog.text


def test_one_denied_zone_is_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = rapl._read_text

    def denied(path: str) -> str:
        if path.endswith("intel-rapl:1:0/energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(rapl, "_read_text", denied)
    c = RaplCollector(str(INTEL_2S), clock=Clock())
    with caplog.at_level(logging.WARNING, logger="collectors.rapl"):
        c.open()
    assert "intel-rapl:1:0" in caplog.text
    assert list(by_zone(collect(c))) == ["intel-rapl:0", "intel-rapl:0:0", "intel-rapl:1"]


def test_read_failure_is_a_collector_error_and_recovers(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(0.0)
    c = RaplCollector(str(tree), clock=clock)
    c.open()
    collect(c)
    real = rapl._read_text

    def eio(path: str) -> str:
        if "intel-rapl:0:0" in path:
            raise OSError(5, "Input/output error", path)
        return real(path)

    monkeypatch.setattr(rapl, "_read_text", eio)
    clock.t = 1.0
    host = Host()
    with pytest.raises(CollectorError, match=r"intel-rapl:0:0/energy_uj"):
        c.collect(host)
    # The zones that answered are still reported for that interval.
    assert list(by_zone(host)) == ["intel-rapl:0", "intel-rapl:1", "intel-rapl:1:0"]

    monkeypatch.setattr(rapl, "_read_text", real)
    set_energy(tree, "intel-rapl:0:0", 12884523917 + 4_000_000)
    clock.t = 2.0
    z = by_zone(collect(c))["intel-rapl:0:0"]
    # The delta spans both intervals, since the last good reading.
    assert z.power_w == pytest.approx(2.0)


def test_other_control_types_and_nested_subzones(tmp_path: Path) -> None:
    pc = tmp_path / "class" / "powercap"
    for rel, name, energy in [
        ("intel-rapl-mmio:0", "package-0", "111"),
        ("intel-rapl-mmio/intel-rapl-mmio:0", "package-0", "111"),  # same zone seen twice
        ("dtpm-soc:0", "soc", "222"),
        ("dtpm-soc:0/dtpm-soc:0:0", "cpu-cluster", "333"),  # only nested, as in /sys/devices
    ]:
        (pc / rel).mkdir(parents=True, exist_ok=True)
        (pc / rel / "name").write_text(name + "\n")
        (pc / rel / "energy_uj").write_text(energy + "\n")
    c = RaplCollector(str(tmp_path), clock=Clock())
    c.open()
    host = collect(c)
    assert host.power is not None
    assert [(z.zone, z.name, z.energy_uj) for z in host.power] == [
        ("dtpm-soc:0", "soc", 222),
        ("dtpm-soc:0:0", "cpu-cluster", 333),
        ("intel-rapl-mmio:0", "package-0", 111),
    ]


def test_close_then_open_restarts_the_counters(tree: Path) -> None:
    clock = Clock(0.0)
    c = RaplCollector(str(tree), clock=clock)
    c.open()
    collect(c)
    c.close()
    assert collect(c).power == []
    c.open()
    clock.t = 5.0
    assert all(z.power_w is None for z in by_zone(collect(c)).values())


def test_create_reads_sysfs_from_config() -> None:
    c = create(AgentConfig(sysfs=str(INTEL_2S)))
    assert c.name == "rapl"
    c.open()
    assert len(by_zone(collect(c))) == 4
    c.close()
