"""The processes on one GPU (or its MIG instances) and their utilisation, through NVML.

Lists come from ``nvmlDeviceGetComputeRunningProcesses`` and ``...GraphicsRunningProcesses``
(pid, used memory, MIG ids); on a MIG GPU from each instance's handle, since the parent
handle lists none. Utilisation per pid comes from ``nvmlDeviceGetProcessUtilization``:
the driver keeps a ring of samples (pid, CPU timestamp in µs, SM/memory/encoder/decoder
percent, one every ~1/6 s on recent drivers) and returns those newer than the timestamp
passed in. So each handle keeps the newest timestamp it has seen and asks once per
interval; a pid's figure is the highest of its samples since the previous read, which is
what someone looking for "who is loading this GPU" needs (a mean would be diluted by the
sampling gaps). NOT_FOUND means no sample in the interval: the fields are absent, not 0.
NOT_SUPPORTED (most MIG instances, older GPUs, vGPU guests) means absent for the life of
the agent, and the call is not repeated. Values over 100 from some drivers are clamped.
"""

from __future__ import annotations

from typing import Any, Protocol

from telemetryd.model import GpuProcess

# nvml.h
NOT_SUPPORTED, NOT_FOUND, FUNCTION_NOT_FOUND = 3, 6, 13
NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId outside MIG
PROCESS_UTILIZATION = "nvmlDeviceGetProcessUtilization"
_Util = tuple[int, int, int, int]  # sm, mem, enc, dec (percent)


class Caller(Protocol):
    """The part of collectors/nvml_read.DeviceReader this module calls through."""

    def call(self, fn: str, *args: Any, handle: Any = None) -> Any:
        """``fn(handle, *args)``; None when NVML says no, DeviceFatal when the GPU is gone."""
        ...

    def attempt(self, fn: str, *args: Any, handle: Any = None) -> tuple[Any, int]:
        """Like ``call`` but gives the NVML return code (0: success) instead of None."""
        ...


class ProcessReader:
    """Per GPU: the newest utilisation sample seen per handle, and which handles lack it."""

    def __init__(self, device: Caller) -> None:
        self.device = device
        self._last_seen: dict[str, int] = {}  # handle's UUID -> newest sample (µs)
        self._unsupported: set[str] = set()

    def read(self, handles: list[tuple[str, Any]]) -> list[GpuProcess] | None:
        """The processes of these (UUID, handle) pairs; None when no list is supported."""
        found: list[GpuProcess] | None = None
        for uuid, handle in handles:
            listed: list[GpuProcess] = []
            supported = False
            for fn, kind in (
                ("nvmlDeviceGetComputeRunningProcesses", "compute"),
                ("nvmlDeviceGetGraphicsRunningProcesses", "graphics"),
            ):
                procs = self.device.call(fn, handle=handle)
                if procs is None:
                    continue
                supported = True
                listed += [_process(p, kind) for p in procs]
            if not supported:
                continue
            found = found if found is not None else []
            util = self.utilisation(uuid, handle) if listed else {}
            for proc in listed:
                sample = util.get(proc.pid)
                if sample is not None:
                    proc.sm_util_pct, proc.mem_util_pct, proc.enc_util_pct, proc.dec_util_pct = (
                        sample
                    )
            found += listed
        return found

    def utilisation(self, uuid: str, handle: Any) -> dict[int, _Util]:
        """Pid -> highest (sm, mem, enc, dec) % over the samples since the previous call."""
        if uuid in self._unsupported:
            return {}
        last = self._last_seen.get(uuid, 0)
        samples, code = self.device.attempt(PROCESS_UTILIZATION, last, handle=handle)
        if code in (NOT_SUPPORTED, FUNCTION_NOT_FOUND):
            self._unsupported.add(uuid)
        if code != 0 or not samples:
            return {}
        out: dict[int, _Util] = {}
        newest = last
        for s in samples:
            stamp = int(s.timeStamp)
            if stamp <= last:
                continue  # already counted in an earlier interval
            newest = max(newest, stamp)
            now = (_pct(s.smUtil), _pct(s.memUtil), _pct(s.encUtil), _pct(s.decUtil))
            before = out.get(int(s.pid))
            out[int(s.pid)] = now if before is None else _max(before, now)
        self._last_seen[uuid] = newest
        return out


def _process(p: Any, kind: str) -> GpuProcess:
    used = getattr(p, "usedGpuMemory", None)
    gi = getattr(p, "gpuInstanceId", None)
    ci = getattr(p, "computeInstanceId", None)
    return GpuProcess(
        pid=int(p.pid),
        type=kind,  # type: ignore[arg-type]
        used_memory_bytes=int(used) if used is not None else None,
        gi_id=gi if gi is not None and gi != NO_INSTANCE else None,
        ci_id=ci if ci is not None and ci != NO_INSTANCE else None,
    )


def _pct(value: Any) -> int:
    return min(100, max(0, int(value)))


def _max(a: _Util, b: _Util) -> _Util:
    return (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
