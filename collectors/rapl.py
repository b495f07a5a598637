"""The ``rapl`` collector: CPU package and DRAM energy from the Linux powercap framework.

Every zone under ``<sysfs>/class/powercap`` that has ``energy_uj`` is reported, whatever
its control type: ``intel-rapl:N`` (also used for AMD CPUs since Linux 5.8),
``intel-rapl-mmio:N``, or a future one. The raw counter wraps to 0 after
``max_energy_range_uj`` (about 262 kJ, minutes at full load on a big package), so the
reported counter is corrected here: it starts at the first raw reading and only grows,
which lets downstream take rates over any window without knowing about wraps. One wrap
per interval is all that can be detected; an interval longer than the time the package
needs to burn ``max_energy_range_uj`` loses energy, and nothing can tell.

Files are found once in ``open()``; ``collect()`` reads one small file per zone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from telemetryd.errors import CollectorError, SourceUnavailable
from telemetryd.model import PowerZone

if TYPE_CHECKING:
    from collectors.base import HostCollector
    from telemetryd.config import AgentConfig
    from telemetryd.model import Host

log = logging.getLogger(__name__)

_MAX_WATTS = 100_000.0
"""The wire model's bound for power_w; a larger mean means a counter reset, not a load."""

_UDEV_RULE = (
    'SUBSYSTEM=="powercap", ACTION=="add", '
    'RUN+="/bin/chgrp telemetryd /sys%p/energy_uj", RUN+="/bin/chmod g+r /sys%p/energy_uj"'
)
"""Lets the agent's group read the counters without root; chmod 0444 would also work but
reopens the PLATYPUS side channel to every local user."""


def _read_text(path: str) -> str:
    """Read one sysfs attribute; the one place files are opened, so tests can stand in for it."""
    with open(path, "rb") as f:
        return f.read().decode("ascii", "replace").strip()


def _read_int(path: str) -> int:
    return int(_read_text(path))


@dataclass(slots=True)
class _Zone:
    """One zone's files and the state that wrap correction and power need."""

    zone: str
    name: str
    energy_path: str
    max_range_uj: int | None
    last_raw: int | None = None
    counter_uj: int = 0
    last_t: float | None = None


def _zone_dirs(root: str) -> list[tuple[str, str]]:
    """(zone name, directory) of every powercap directory that holds energy_uj.

    ``class/powercap`` lists every zone flat, but a hand-built or bind-mounted tree may
    only nest subzones inside their parent (as /sys/devices does), so one level of
    children is searched too; a zone seen twice is kept once, by its directory name.
    """
    found: dict[str, str] = {}
    with os.scandir(root) as top:
        parents = sorted((e.name, e.path) for e in top if e.is_dir())
    for name, path in parents:
        if os.path.exists(os.path.join(path, "energy_uj")):
            found.setdefault(name, path)
        with os.scandir(path) as children:
            for child in children:
                if (
                    ":" in child.name
                    and child.is_dir()
                    and os.path.exists(os.path.join(child.path, "energy_uj"))
                ):
                    found.setdefault(child.name, child.path)
    return sorted(found.items())


class RaplCollector:
    """Wrap-corrected energy counters and mean power per powercap zone."""

    name: str = "rapl"

    def __init__(self, sysfs: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._root = os.path.join(sysfs, "class", "powercap")
        self._clock = clock
        self._zones: list[_Zone] = []

    def open(self) -> None:
        """Find the zones and prove energy_uj can be read, so a permission problem is said once.

        Raises:
            SourceUnavailable: no powercap directory, no zone with energy_uj, or none of
                them readable (with the reason, and the fix for the root-only case).
        """
        root = self._root
        if not os.path.isdir(root):
            raise SourceUnavailable(
                f"no RAPL: {root} not present (not an Intel/AMD CPU with the powercap "
                "driver, or sysfs not mounted)"
            )
        try:
            dirs = _zone_dirs(root)
        except OSError as exc:
            raise SourceUnavailable(f"no RAPL: cannot list {root}: {exc}") from exc
        if not dirs:
            raise SourceUnavailable(f"no RAPL: no zone under {root} has energy_uj")
        zones: list[_Zone] = []
        denied: list[str] = []
        broken: list[str] = []
        for zone, path in dirs:
            energy = os.path.join(path, "energy_uj")
            try:
                _read_int(energy)
            except PermissionError:
                denied.append(energy)
                continue
            except (OSError, ValueError) as exc:
                broken.append(f"{energy}: {exc}")
                continue
            zones.append(_Zone(zone, self._optional_name(path, zone), energy, self._range(path)))
        if denied:
            # The recipe goes to the log: the reason itself must fit the report's 256
            # characters, and the operator fixing this is reading the journal anyway.
            log.warning(
                "rapl: %s: energy_uj is readable by root only since Linux 5.10 "
                "(CVE-2020-8694, PLATYPUS); run the agent as root, or let its group read "
                "the counters with the udev rule: %s",
                ", ".join(denied),
                _UDEV_RULE,
            )
        if denied and not zones:
            raise SourceUnavailable(
                f"no RAPL: permission denied on {denied[0]} (uid {os.geteuid()}): root-only "
                "since Linux 5.10 (CVE-2020-8694); run the agent as root or grant it read "
                "access with a udev rule (see the log)"
            )
        if not zones:
            raise SourceUnavailable(f"no RAPL: no readable energy_uj ({broken[0]})")
        for problem in broken:
            log.warning("rapl: zone skipped: %s", problem)
        self._zones = zones

    @staticmethod
    def _optional_name(path: str, zone: str) -> str:
        try:
            return _read_text(os.path.join(path, "name")) or zone
        except OSError:
            return zone

    @staticmethod
    def _range(path: str) -> int | None:
        try:
            value = _read_int(os.path.join(path, "max_energy_range_uj"))
        except (OSError, ValueError):
            return None
        return value if value > 0 else None

    def close(self) -> None:
        """Drop the zones and their counters; a later open starts the counters afresh."""
        self._zones = []

    def collect(self, host: Host) -> None:
        """Set ``host.power``; zones that failed to read are named in one CollectorError.

        The zones that were read are still set first: a DRAM zone that errors must not
        hide the package energy of the same interval.
        """
        now = self._clock()
        out: list[PowerZone] = []
        failures: list[str] = []
        for z in self._zones:
            try:
                raw = _read_int(z.energy_path)
            except (OSError, ValueError) as exc:
                failures.append(f"{z.energy_path}: {exc}")
                continue
            out.append(self._advance(z, raw, now))
        host.power = out
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise CollectorError(f"rapl: cannot read {failures[0]}{more}")

    @staticmethod
    def _advance(z: _Zone, raw: int, now: float) -> PowerZone:
        """Fold one raw reading into the zone's monotonic counter and mean power."""
        power: float | None = None
        if z.last_raw is None:
            z.counter_uj = raw
        else:
            delta: int | None = raw - z.last_raw
            if raw < z.last_raw:
                # The hardware counter wrapped to 0 after max_energy_range_uj. Without a
                # range the drop is a reset of unknown size: count nothing rather than guess.
                delta = None if z.max_range_uj is None else z.max_range_uj - z.last_raw + raw
            if delta is not None:
                z.counter_uj += delta
                dt = now - z.last_t if z.last_t is not None else 0.0
                if dt > 0:
                    watts = delta / 1e6 / dt
                    power = watts if watts <= _MAX_WATTS else None
        z.last_raw = raw
        z.last_t = now
        return PowerZone(zone=z.zone, name=z.name, energy_uj=z.counter_uj, power_w=power)


def create(cfg: AgentConfig) -> HostCollector:
    """Entry point ``telemetryd.collectors:rapl``."""
    return RaplCollector(cfg.sysfs)
