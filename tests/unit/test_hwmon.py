"""hwmon collector against hand-written trees (see tests/fixtures/sysfs/README.md)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from collectors import hwmon
from collectors.hwmon import HwmonCollector, create
from telemetryd.codec import encode_json, json_decoder
from telemetryd.config import AgentConfig
from telemetryd.errors import CollectorError, SourceUnavailable
from telemetryd.model import Fan, Host, Sensor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
SERVER = FIXTURES / "hwmon-server"


def collect(c: HwmonCollector) -> Host:
    host = Host()
    c.collect(host)
    assert json_decoder(Host)(encode_json(host)) == host
    return host


def opened(root: Path) -> HwmonCollector:
    c = HwmonCollector(str(root))
    c.open()
    return c


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_server_fixture_sensors_and_fans() -> None:
    host = collect(opened(SERVER))

    def core(label: str, temp_c: float) -> Sensor:
        return Sensor(chip="coretemp", label=label, temp_c=temp_c, high_c=90.0, crit_c=100.0)

    assert host.sensors == [
        core("Package id 0", 47.0),
        core("Core 0", 44.0),
        core("Core 1", 46.0),
        core("Core 2", 43.0),
        core("Core 3", 45.0),
        Sensor(chip="nvme", label="Composite", temp_c=38.85, high_c=81.85, crit_c=84.85),
        # temp2_max is the drive's unset 65261.85 C: outside the model, so left out.
        Sensor(chip="nvme", label="Sensor 1", temp_c=38.85),
        Sensor(chip="nct6779", label="SYSTIN", temp_c=32.0, high_c=80.0),
        Sensor(chip="nct6779", label="CPUTIN", temp_c=41.5),
    ]
    # No fanN_label: "fanN". A stopped or empty header reads 0 and is reported as 0.
    assert host.fans == [
        Fan(chip="nct6779", label="fan1", rpm=1205),
        Fan(chip="nct6779", label="fan2", rpm=0),
        Fan(chip="nct6779", label="fan3", rpm=3375),
    ]


def test_unreadable_input_is_skipped_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    c = opened(SERVER)
    real = hwmon._read_text

    def flaky(path: str) -> str:
        if path.endswith("hwmon1/temp2_input"):
            raise OSError(errno.ENODATA, "No data available", path)
        if path.endswith("hwmon2/fan3_input"):
            raise OSError(errno.EIO, "Input/output error", path)
        if path.endswith("hwmon0/temp3_input"):
            return "garbage"
        return real(path)

    monkeypatch.setattr(hwmon, "_read_text", flaky)
    host = collect(c)
    assert host.sensors is not None
    assert host.fans is not None
    labels = [(s.chip, s.label) for s in host.sensors]
    assert ("nvme", "Sensor 1") not in labels
    assert ("coretemp", "Core 1") not in labels
    assert ("nvme", "Composite") in labels
    assert len(labels) == 7
    assert [f.label for f in host.fans] == ["fan1", "fan2"]

    monkeypatch.setattr(hwmon, "_read_text", real)
    assert len(collect(c).sensors or []) == 9  # back the next interval


def test_every_input_failing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    c = opened(SERVER)

    def dead(path: str) -> str:
        raise OSError(errno.ENXIO, "No such device or address", path)

    monkeypatch.setattr(hwmon, "_read_text", dead)
    with pytest.raises(CollectorError, match="no input could be read"):
        c.collect(Host())


def test_symlinked_chips_shared_names_and_numeric_order(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    chips = {
        # hwmon numbers follow probe order; chips that share a name are numbered by device path.
        "hwmon4": devices / "pci0000:00/0000:00:1d.0/0000:3e:00.0/nvme/nvme1/hwmon4",
        "hwmon5": devices / "pci0000:00/0000:00:1b.0/0000:01:00.0/nvme/nvme0/hwmon5",
        "hwmon10": devices / "platform/coretemp.1/hwmon/hwmon10",
        "hwmon2": devices / "platform/coretemp.0/hwmon/hwmon2",
    }
    for real in chips.values():
        name = "nvme" if "nvme" in str(real) else "coretemp"
        write(real / "name", name)
    for n, milli in [(1, "30000"), (2, "31000"), (10, "40000")]:
        write(chips["hwmon2"] / f"temp{n}_input", milli)
    write(chips["hwmon2"] / "temp10_label", "Core 8")
    write(chips["hwmon10"] / "temp1_input", "50000")
    write(chips["hwmon4"] / "temp1_input", "41000")
    write(chips["hwmon5"] / "temp1_input", "42000")
    cls = tmp_path / "class" / "hwmon"
    cls.mkdir(parents=True)
    for entry, real in chips.items():
        (cls / entry).symlink_to(real, target_is_directory=True)

    host = collect(opened(tmp_path))
    assert host.sensors is not None
    assert [(s.chip, s.label, s.temp_c) for s in host.sensors] == [
        ("coretemp-0", "temp1", 30.0),
        ("coretemp-0", "temp2", 31.0),
        ("coretemp-0", "Core 8", 40.0),  # temp10 after temp2
        ("nvme-1", "temp1", 41.0),  # 0000:3e:00.0 sorts after 0000:01:00.0
        ("nvme-0", "temp1", 42.0),
        ("coretemp-1", "temp1", 50.0),
    ]
    assert host.fans is None  # no fan inputs anywhere: absent, not empty


def test_fan_labels_and_legacy_device_layout(tmp_path: Path) -> None:
    # Old drivers keep name and inputs on the parent device, hwmonN itself is bare.
    legacy = tmp_path / "class" / "hwmon" / "hwmon0" / "device"
    write(legacy / "name", "it87")
    write(legacy / "fan1_input", "2100")
    write(legacy / "fan1_label", "CPU Fan")
    write(legacy / "fan2_input", "900")
    host = collect(opened(tmp_path))
    assert host.sensors is None
    assert host.fans == [
        Fan(chip="it87", label="CPU Fan", rpm=2100),
        Fan(chip="it87", label="fan2", rpm=900),
    ]


def test_out_of_range_reading_is_left_out(tmp_path: Path) -> None:
    chip = tmp_path / "class" / "hwmon" / "hwmon0"
    write(chip / "name", "acpitz")
    write(chip / "temp1_input", "-274000")  # below absolute zero: a driver's "no reading"
    write(chip / "temp2_input", "27800")
    write(chip / "temp2_crit", "105000")
    host = collect(opened(tmp_path))
    assert host.sensors == [Sensor(chip="acpitz", label="temp2", temp_c=27.8, crit_c=105.0)]


def test_missing_hwmon_dir(tmp_path: Path) -> None:
    c = create(AgentConfig(sysfs=str(tmp_path)))
    assert c.name == "hwmon"
    with pytest.raises(SourceUnavailable) as err:
        c.open()
    assert str(tmp_path / "class" / "hwmon") in str(err.value)
    c.close()


def test_chips_without_inputs(tmp_path: Path) -> None:
    write(tmp_path / "class" / "hwmon" / "hwmon0" / "name", "acpi_fan")
    write(tmp_path / "class" / "hwmon" / "hwmon0" / "pwm1", "128")
    with pytest.raises(SourceUnavailable, match="no temp"):
        HwmonCollector(str(tmp_path)).open()


def test_inputs_are_found_once_in_open(monkeypatch: pytest.MonkeyPatch) -> None:
    c = opened(SERVER)

    def no_scan(path: str) -> None:
        raise AssertionError(f"collect listed {path}")

    monkeypatch.setattr(os, "scandir", no_scan)
    assert len(collect(c).sensors or []) == 9
