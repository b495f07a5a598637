"""psutil: the ``host`` collector, and the host side of GPU processes (ProcessInspector).

The collector reports CPU, memory, load, uptime, disk space, disk IO and NICs; the
inspector gives user, command line, CPU and RSS of the pids NVML lists on the GPUs.

This is the one module that imports psutil, so a change of library or a psutil quirk is
handled here and nowhere else.

CPU utilisation is computed from ``psutil.cpu_times()`` deltas kept on the instance rather
than with ``psutil.cpu_percent(interval=None)``: psutil keeps that baseline per *thread*,
and the sampler may run a collector on a different worker thread each interval, which
would turn every such interval into psutil's meaningless first-call 0.0 (and leak one
baseline per thread). The arithmetic is psutil's own: guest time is already counted in
user time on Linux, and iowait is idle, as top and htop count it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import psutil

from telemetryd.errors import CollectorError, SourceUnavailable
from telemetryd.model import DiskIO, DiskUsage, NetIO

if TYPE_CHECKING:
    from collectors.base import HostCollector
    from telemetryd.config import AgentConfig, HostConfig
    from telemetryd.model import Host

log = logging.getLogger(__name__)

_SKIPPED_DISK_PREFIXES = ("loop", "ram", "zram")
_LOOPBACK = "lo"
_T = TypeVar("_T")


class _CpuTimes(Protocol):
    """The part of psutil's scputimes this module relies on (the rest varies by OS)."""

    idle: float

    def __iter__(self) -> Iterator[float]: ...


_Sample = tuple[float, float]
"""(busy, total) CPU seconds since boot."""


def _sample(times: _CpuTimes) -> _Sample:
    """Reduce one cpu_times() record to (busy, total) seconds, counted as psutil counts them."""
    total = float(sum(times))
    # Guest time is already included in user/nice on Linux; counting it twice would
    # make a VM host look busier than it is.
    total -= float(getattr(times, "guest", 0.0)) + float(getattr(times, "guest_nice", 0.0))
    idle = float(times.idle) + float(getattr(times, "iowait", 0.0))
    return total - idle, total


def _percent(before: _Sample, after: _Sample) -> float | None:
    """Busy share between two samples, or None when no CPU time has passed between them."""
    busy0, total0 = before
    busy1, total1 = after
    total = total1 - total0
    if total <= 0:
        return None
    # Counters occasionally step backwards (psutil #392, #645); clamp like top does.
    pct = 100.0 * max(0.0, busy1 - busy0) / total
    return round(min(100.0, pct), 1)


def _core_samples() -> list[_Sample]:
    """One (busy, total) sample per online CPU, in /proc/stat order."""
    return [_sample(t) for t in psutil.cpu_times(percpu=True)]


def _uptime_s() -> float:
    """Seconds since boot from CLOCK_BOOTTIME, which a wall-clock step cannot bend.

    ``time.time() - psutil.boot_time()`` is the portable fallback; it jumps with NTP steps.
    """
    if hasattr(time, "CLOCK_BOOTTIME"):
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME))
    return max(0.0, time.time() - float(psutil.boot_time()))


class HostPsutilCollector:
    """Whole-node counters; keeps only the previous CPU sample and which warnings it gave."""

    name: str = "host"

    def __init__(self, host: HostConfig) -> None:
        self._mounts = list(host.mounts)
        self._interfaces = set(host.interfaces)
        self._disks = set(host.disks)
        self._per_core = host.per_core
        self._cpu_prev: _Sample | None = None
        self._core_prev: list[_Sample] | None = None
        self._cpu_last: float | None = None
        self._fstypes: dict[str, str] = {}
        self._warned: set[str] = set()
        self._looked_up: set[str] = set()

    def open(self) -> None:
        """Take the first CPU sample so the first collect reports real utilisation.

        The mount table is read here once, not every interval: a node with hundreds of
        container mounts would otherwise pay for parsing it on every collect.
        """
        try:
            self._cpu_prev = _sample(psutil.cpu_times())
            self._core_prev = _core_samples() if self._per_core else None
            self._refresh_fstypes()
        except OSError as exc:
            # psutil needs /proc; without it there is nothing this collector can do.
            raise SourceUnavailable(f"host: cannot read /proc through psutil: {exc}") from exc

    def close(self) -> None:
        """Forget the CPU baseline; psutil holds nothing that needs releasing."""
        self._cpu_prev = None
        self._core_prev = None
        self._cpu_last = None

    def collect(self, host: Host) -> None:
        """Fill every host field; a failed part is named in one CollectorError at the end.

        Parts are independent, so a stale NFS mount must not cost the memory and CPU
        numbers of the same interval: everything readable is set on ``host`` first.
        """
        failures: list[str] = []
        for part, fill in (
            ("cpu", self._collect_cpu),
            ("memory", self._collect_memory),
            ("disks", self._collect_disks),
            ("disk_io", self._collect_disk_io),
            ("net", self._collect_net),
        ):
            try:
                fill(host)
            except (OSError, RuntimeError, CollectorError) as exc:
                failures.append(f"{part}: {exc}")
        if failures:
            raise CollectorError("host: " + "; ".join(failures))

    def _collect_cpu(self, host: Host) -> None:
        now = _sample(psutil.cpu_times())
        if self._cpu_prev is None:
            self._cpu_prev = now
        pct = _percent(self._cpu_prev, now)
        if pct is not None:
            # Keep the old baseline when no tick has passed, so a too-early collect
            # neither reports 0.0 nor shortens the next averaging window.
            self._cpu_prev = now
            self._cpu_last = pct
        if self._cpu_last is not None:
            host.cpu_pct = self._cpu_last
        count = psutil.cpu_count(logical=True)
        if count:
            host.cpu_count = int(count)
        if self._per_core:
            host.cpu_core_pct = self._core_percents(_core_samples())
        load1, load5, load15 = psutil.getloadavg()
        host.load_1, host.load_5, host.load_15 = float(load1), float(load5), float(load15)
        host.uptime_s = _uptime_s()

    def _core_percents(self, now: list[_Sample]) -> list[float] | None:
        prev = self._core_prev
        if prev is None or len(prev) != len(now):
            # CPU hotplug renumbers /proc/stat; deltas against the old list would be lies.
            self._core_prev = now
            return None
        pcts = [_percent(a, b) for a, b in zip(prev, now, strict=True)]
        if any(p is None for p in pcts):
            return None
        self._core_prev = now
        return [p for p in pcts if p is not None]

    def _collect_memory(self, host: Host) -> None:
        vm = psutil.virtual_memory()
        host.mem_total_bytes = int(vm.total)
        host.mem_available_bytes = int(vm.available)
        host.mem_used_bytes = int(vm.used)
        sw = psutil.swap_memory()
        host.swap_total_bytes = int(sw.total)
        host.swap_used_bytes = int(sw.used)

    def _refresh_fstypes(self) -> None:
        # fstype is a nicety: an unreadable mount table must not cost the space numbers.
        try:
            parts = psutil.disk_partitions(all=True)
        except OSError as exc:
            log.debug("host: cannot read the mount table: %s", exc)
            return
        # Later lines in the mount table shadow earlier ones at the same point.
        self._fstypes = {p.mountpoint: p.fstype for p in parts}

    def _is_mount(self, mount: str) -> bool:
        if os.path.ismount(mount):
            if mount not in self._fstypes and mount not in self._looked_up:
                # Mounted after open(): learn its fstype once, not on every interval.
                self._looked_up.add(mount)
                self._refresh_fstypes()
            return True
        # A bind mount of a directory of the same filesystem shares its device number, so
        # ismount() says no; the mount table is the authority for those.
        return mount in self._fstypes and os.path.isdir(mount)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _collect_disks(self, host: Host) -> None:
        disks: list[DiskUsage] = []
        failed: list[str] = []
        for configured in self._mounts:
            mount = os.path.normpath(configured)
            if not self._is_mount(mount):
                self._warn_once(
                    f"mount:{mount}",
                    "host: configured mount %s does not exist or is not a mount point; "
                    "its space is not reported",
                    mount,
                )
                continue
            try:
                usage = psutil.disk_usage(mount)
            except OSError as exc:
                # One stale NFS mount (ESTALE, EIO) must not hide the others' space.
                failed.append(f"{mount}: {exc}")
                continue
            self._warned.discard(f"mount:{mount}")
            disks.append(
                DiskUsage(
                    mount=configured,
                    total_bytes=int(usage.total),
                    used_bytes=int(usage.used),
                    free_bytes=int(usage.free),
                    fstype=self._fstypes.get(mount) or None,
                )
            )
        host.disks = disks
        if failed:
            raise CollectorError("; ".join(failed))

    def _selected(self, kind: str, present: Sequence[str], wanted: set[str]) -> list[str]:
        """Return the configured names that exist, warning once about each that does not."""
        for missing in sorted(wanted.difference(present)):
            self._warn_once(f"{kind}:{missing}", "host: configured %s %s not found", kind, missing)
        return [n for n in present if n in wanted]

    def _collect_disk_io(self, host: Host) -> None:
        counters: dict[str, Any] = psutil.disk_io_counters(perdisk=True) or {}
        if self._disks:
            names = self._selected("disk", list(counters), self._disks)
        else:
            names = [n for n in counters if not n.startswith(_SKIPPED_DISK_PREFIXES)]
        out: list[DiskIO] = []
        for name in sorted(names):
            c = counters[name]
            busy = getattr(c, "busy_time", None)
            out.append(
                DiskIO(
                    device=name,
                    read_bytes=int(c.read_bytes),
                    write_bytes=int(c.write_bytes),
                    reads=int(c.read_count),
                    writes=int(c.write_count),
                    read_ms=int(c.read_time),
                    write_ms=int(c.write_time),
                    busy_ms=int(busy) if busy is not None else None,
                )
            )
        host.disk_io = out

    def _collect_net(self, host: Host) -> None:
        counters: dict[str, Any] = psutil.net_io_counters(pernic=True) or {}
        if self._interfaces:
            names = self._selected("interface", list(counters), self._interfaces)
        else:
            names = [n for n in counters if n != _LOOPBACK]
        out: list[NetIO] = []
        for name in sorted(names):
            c = counters[name]
            out.append(
                NetIO(
                    iface=name,
                    rx_bytes=int(c.bytes_recv),
                    tx_bytes=int(c.bytes_sent),
                    rx_packets=int(c.packets_recv),
                    tx_packets=int(c.packets_sent),
                    rx_errors=int(c.errin),
                    tx_errors=int(c.errout),
                    rx_drops=int(c.dropin),
                    tx_drops=int(c.dropout),
                )
            )
        host.net = out


@dataclass(slots=True)
class ProcessInfo:
    """The host side of one process; a field is None when it could not be read."""

    user: str | None = None
    command: str | None = None
    cpu_pct: float | None = None  # of one core since the previous call; > 100 when threaded
    rss_bytes: int | None = None


class _Tracked:
    """A pid's psutil handle, its previous CPU reading, its user and command line.

    The CPU reading is (busy seconds, monotonic time). User and command line are read
    once per process: they were almost half the cost of a lookup (bench/attribution_cost.py:
    3.8 to 2.6 ms per interval for 16 processes), and a process keeps them (a setuid or a
    setproctitle after the first sample is not followed).
    """

    __slots__ = ("command", "cpu", "named", "proc", "user")

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.cpu: tuple[float, float] | None = None
        self.named = False
        self.user: str | None = None
        self.command: str | None = None


class ProcessInspector:
    """User, command line, CPU % and RSS of GPU processes, for collectors/attribution.py.

    psutil.Process objects are kept per (pid, create time), so a recycled pid is a new
    process, and CPU % comes from cpu_times deltas between calls (the first call has none),
    as the host CPU code does. A process that exits mid-read gives what was read before
    it went; one whose details another user may not read (hidepid, ptrace rules) gives
    what is readable. Pids not asked for again are forgotten.

    ``procfs`` other than /proc (the host's procfs mounted into the agent's container)
    becomes psutil's for the whole agent: the host collector then reads the same kernel
    through the host's mount, and a GPU pid is never looked up in the wrong namespace.
    """

    def __init__(
        self, command: str = "full", command_max: int = 128, procfs: str = "/proc"
    ) -> None:
        self.command = command
        self.command_max = command_max
        self._tracked: dict[int, _Tracked] = {}
        self.procfs: str | None = procfs
        if os.path.normpath(procfs) == os.path.normpath(psutil.PROCFS_PATH):
            return
        if not os.path.isfile(os.path.join(procfs, "stat")):
            log.warning("attribution proc_root %s is not a procfs (no stat file); the user, "
                        "command, CPU and RSS of GPU processes are not read", procfs)  # fmt: skip
            self.procfs = None
            return
        log.info("psutil reads processes from %s (attribution proc_root)", procfs)
        psutil.PROCFS_PATH = procfs

    def inspect(self, pids: Iterable[int]) -> dict[int, ProcessInfo]:
        """What is known of each pid now; a pid that does not exist is left out."""
        wanted = set(pids) if self.procfs is not None else set()
        for gone in set(self._tracked) - wanted:
            del self._tracked[gone]
        found: dict[int, ProcessInfo] = {}
        for pid in sorted(wanted):
            info = ProcessInfo()
            try:
                self._read(pid, info)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                self._tracked.pop(pid, None)  # exited: keep what was read before it went
            except (psutil.AccessDenied, OSError) as exc:
                log.debug("process %d: %s", pid, exc)
            if info != ProcessInfo():
                found[pid] = info
        return found

    def _read(self, pid: int, info: ProcessInfo) -> None:
        tracked = self._tracked.get(pid)
        if tracked is None or not tracked.proc.is_running():
            # psutil.Process records the create time: is_running() is False for a pid reused
            tracked = self._tracked[pid] = _Tracked(psutil.Process(pid))
        proc = tracked.proc
        with proc.oneshot():
            info.rss_bytes = int(proc.memory_info().rss)
            times = proc.cpu_times()
            now = (float(times.user) + float(times.system), time.monotonic())
            if tracked.cpu is not None and now[1] > tracked.cpu[1]:
                busy = max(0.0, now[0] - tracked.cpu[0])
                info.cpu_pct = round(100.0 * busy / (now[1] - tracked.cpu[1]), 1)
            tracked.cpu = now
            if not tracked.named:
                tracked.user = _quiet(proc.username)
                tracked.command = self._command(proc) if self.command != "off" else None
                tracked.named = True
            info.user, info.command = tracked.user, tracked.command

    def _command(self, proc: psutil.Process) -> str | None:
        text: str | None
        if self.command == "name":
            text = _quiet(proc.name)
        else:
            argv = _quiet(proc.cmdline)
            text = " ".join(argv) if argv else _quiet(proc.name)  # kernel threads have none
        if not text:
            return None
        return text if len(text) <= self.command_max else text[: self.command_max - 1] + "…"


def _quiet(read: Callable[[], _T]) -> _T | None:
    """One field; None when the kernel refuses it (the process itself may still be read)."""
    try:
        return read()
    except psutil.AccessDenied:
        return None


def create(cfg: AgentConfig) -> HostCollector:
    """Entry point ``telemetryd.collectors:host``."""
    return HostPsutilCollector(cfg.host)
