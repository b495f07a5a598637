"""The ``hwmon`` collector: temperatures and fan speeds from ``<sysfs>/class/hwmon``.

Read straight from sysfs rather than through lm-sensors: the files are the kernel's own
interface (Documentation/hwmon/sysfs-interface.rst), and a library would cost a process
dependency for what is a handful of integer reads.

Inputs, labels and limits are found once in ``open()``; limits (``tempN_max``,
``tempN_crit``) are configuration, not measurements, so they are read there too and
``collect()`` reads one file per input. Some drivers answer EIO or ENODATA for an input
whose sensor is absent or asleep (an NVMe drive in a low-power state, an empty fan
header); such an input is left out of that interval instead of failing the collector.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from telemetryd.errors import CollectorError, SourceUnavailable
from telemetryd.model import Fan, Sensor

if TYPE_CHECKING:
    from collectors.base import HostCollector
    from telemetryd.config import AgentConfig
    from telemetryd.model import Host

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^temp(\d+)_input$")
_FAN = re.compile(r"^fan(\d+)_input$")
_HWMON = re.compile(r"^hwmon(\d+)$")
_MIN_C, _MAX_C = -273.15, 1000.0
"""The wire model's range for a temperature; drivers use values outside it as 'no reading'."""
_TEXT_MAX = 256


def _read_text(path: str) -> str:
    """Read one sysfs attribute; the one place files are opened, so tests can stand in for it."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace").strip()


def _celsius(millidegrees: int) -> float | None:
    value = millidegrees / 1000.0
    return value if _MIN_C <= value <= _MAX_C else None


def _optional_text(path: str, default: str) -> str:
    try:
        text = _read_text(path)
    except OSError:
        return default
    return text[:_TEXT_MAX] if text else default


def _optional_celsius(path: str) -> float | None:
    try:
        return _celsius(int(_read_text(path)))
    except (OSError, ValueError):
        return None


@dataclass(slots=True, frozen=True)
class _Input:
    """One tempN_input or fanN_input, with what open() learned about it."""

    chip: str
    label: str
    path: str
    high_c: float | None = None
    crit_c: float | None = None


@dataclass(slots=True)
class _Chip:
    name: str
    attrs: str
    order: str
    temps: list[int]
    fans: list[int]


def _attr_dir(entry: str) -> str:
    """Where a chip's attributes live: in hwmonN itself, or in device/ for old drivers.

    Before Linux 3.x's hwmon rework some drivers put ``name`` and the inputs on the parent
    device; lm-sensors still looks there, so this does too.
    """
    if os.path.exists(os.path.join(entry, "name")):
        return entry
    legacy = os.path.join(entry, "device")
    if os.path.exists(os.path.join(legacy, "name")):
        return legacy
    return entry


def _scan_chip(entry: str, dirname: str) -> _Chip:
    attrs = _attr_dir(entry)
    temps: list[int] = []
    fans: list[int] = []
    with os.scandir(attrs) as files:
        for f in files:
            if m := _TEMP.match(f.name):
                temps.append(int(m.group(1)))
            elif m := _FAN.match(f.name):
                fans.append(int(m.group(1)))
    name = _optional_text(os.path.join(attrs, "name"), dirname)
    # hwmonN numbers follow driver probe order and change between boots; the device path
    # behind the symlink does not, so it orders chips that share a name.
    return _Chip(name, attrs, os.path.realpath(entry), sorted(temps), sorted(fans))


def _chip_names(chips: list[_Chip]) -> list[str]:
    """The chip name to report for each chip: its ``name``, numbered when it is shared.

    Two sockets both have a ``coretemp`` chip with a "Core 0", two drives both an ``nvme``
    chip with a "Composite"; without a number their series would be indistinguishable.
    """
    groups: defaultdict[str, list[int]] = defaultdict(list)
    for i, chip in enumerate(chips):
        groups[chip.name].append(i)
    names = [c.name for c in chips]
    for name, members in groups.items():
        if len(members) > 1:
            for n, i in enumerate(sorted(members, key=lambda i: chips[i].order)):
                names[i] = f"{name}-{n}"
    return names


class HwmonCollector:
    """Every temperature and fan input of every hwmon chip."""

    name: str = "hwmon"

    def __init__(self, sysfs: str) -> None:
        self._root = os.path.join(sysfs, "class", "hwmon")
        self._temps: list[_Input] = []
        self._fans: list[_Input] = []

    def open(self) -> None:
        """Find every input and read its label and limits.

        Raises:
            SourceUnavailable: there is no hwmon directory, or no chip has an input.
        """
        root = self._root
        if not os.path.isdir(root):
            raise SourceUnavailable(
                f"no hwmon: {root} not present (no hardware-monitoring driver loaded, "
                "or sysfs not mounted)"
            )
        try:
            with os.scandir(root) as entries:
                # is_dir() follows the symlinks real sysfs has here into /sys/devices.
                found = [(e.name, e.path) for e in entries if _HWMON.match(e.name) and e.is_dir()]
        except OSError as exc:
            raise SourceUnavailable(f"no hwmon: cannot list {root}: {exc}") from exc
        found.sort(key=lambda item: int(item[0][5:]))
        chips: list[_Chip] = []
        for name, path in found:
            try:
                chips.append(_scan_chip(path, name))
            except OSError as exc:
                # A device unplugged while we look costs its own inputs, not everyone's.
                log.warning("hwmon: %s skipped: %s", path, exc)
        temps: list[_Input] = []
        fans: list[_Input] = []
        for chip, name in zip(chips, _chip_names(chips), strict=True):
            for n in chip.temps:
                base = os.path.join(chip.attrs, f"temp{n}")
                temps.append(
                    _Input(
                        chip=name,
                        label=_optional_text(f"{base}_label", f"temp{n}"),
                        path=f"{base}_input",
                        high_c=_optional_celsius(f"{base}_max"),
                        crit_c=_optional_celsius(f"{base}_crit"),
                    )
                )
            for n in chip.fans:
                base = os.path.join(chip.attrs, f"fan{n}")
                label = _optional_text(f"{base}_label", f"fan{n}")
                fans.append(_Input(chip=name, label=label, path=f"{base}_input"))
        if not temps and not fans:
            raise SourceUnavailable(f"no hwmon: no temp*_input or fan*_input under {root}")
        self._temps, self._fans = temps, fans
        log.debug("hwmon: %d temperature and %d fan inputs", len(temps), len(fans))

    def close(self) -> None:
        """Forget the inputs; nothing is held open between collects."""
        self._temps, self._fans = [], []

    def collect(self, host: Host) -> None:
        """Set ``host.sensors`` and ``host.fans`` from every input that answers.

        Raises:
            CollectorError: not one input could be read, which is the chip or sysfs
                failing rather than a sensor being absent.
        """
        failed: list[str] = []
        sensors: list[Sensor] = []
        for t in self._temps:
            try:
                temp = _celsius(int(_read_text(t.path)))
            except (OSError, ValueError) as exc:
                failed.append(f"{t.path}: {exc}")
                continue
            if temp is not None:
                sensors.append(
                    Sensor(
                        chip=t.chip, label=t.label, temp_c=temp, high_c=t.high_c, crit_c=t.crit_c
                    )
                )
        fans: list[Fan] = []
        for f in self._fans:
            try:
                rpm = int(_read_text(f.path))
            except (OSError, ValueError) as exc:
                failed.append(f"{f.path}: {exc}")
                continue
            if rpm >= 0:
                fans.append(Fan(chip=f.chip, label=f.label, rpm=rpm))
        if self._temps:
            host.sensors = sensors
        if self._fans:
            host.fans = fans
        if failed and len(failed) == len(self._temps) + len(self._fans):
            raise CollectorError(f"hwmon: no input could be read ({failed[0]})")


def create(cfg: AgentConfig) -> HostCollector:
    """Entry point ``telemetryd.collectors:hwmon``."""
    return HwmonCollector(cfg.sysfs)
