"""The NVML GPU source: the only module that imports pynvml.

NVML is initialised once and device handles are kept for the life of the process (never
re-initialised per sample, never a fork of nvidia-smi: gpustat's 80 % CPU came from
exactly that). Each GPU has its own worker thread, so a call that hangs on one GPU costs
that GPU a "timeout"/"hung" error while the others are reported on time.

The same class drives the simulator and the test fakes: they hand in a library object
with pynvml's functions instead of pynvml itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from collectors.base import GpuSample
from collectors.nvml_events import EventWatcher
from collectors.nvml_read import DeviceFatal, DeviceReader
from telemetryd.config import AgentConfig, NvmlConfig
from telemetryd.errors import SourceUnavailable
from telemetryd.model import Event, Gpu, GpuError
from telemetryd.workers import Worker, WorkerBusy, WorkerTimeout

log = logging.getLogger(__name__)
_LOST_ACTION = "Drain the node and restart it; if it recurs, contact NVIDIA support."


def import_pynvml() -> Any:
    """Import the real bindings (nvidia-ml-py); kept lazy so --help never loads NVML."""
    import pynvml

    return pynvml


def _cuda_version(value: Any) -> str | None:
    if not isinstance(value, int) or value <= 0:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


class _Device:
    """A GPU's reader, its worker, and whether its identity has been read."""

    def __init__(self, reader: DeviceReader, worker: Worker[Any]) -> None:
        self.reader = reader
        self.worker = worker
        self.ready = False
        self.pending: Future[Any] | None = None
        self.last_error: str | None = None


class NvmlBackend:
    """All GPUs of the node through an NVML-shaped library."""

    def __init__(
        self,
        lib_factory: Callable[[], Any],
        options: NvmlConfig,
        *,
        name: str = "nvml",
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.name = name
        self.options = options
        self._lib_factory = lib_factory
        self._clock = clock
        self._lib: Any = None
        self._devices: list[_Device] = []
        self._events: EventWatcher | None = None
        self._pending_events: list[Event] = []
        self.driver = ""
        self.unsupported_events: dict[int, str] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        """Initialise NVML, take every device handle and read identities (under deadline)."""
        try:
            lib = self._lib_factory()
        except ImportError as exc:
            raise SourceUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
        try:
            lib.nvmlInit()
        except lib.NVMLError as exc:
            raise SourceUnavailable(f"NVML is not available ({exc})") from None
        self._lib = lib
        try:
            self.driver = _str(lib.nvmlSystemGetDriverVersion())
            cuda = _cuda_version(_safe(lib, "nvmlSystemGetCudaDriverVersion_v2"))
            count = int(lib.nvmlDeviceGetCount())
        except lib.NVMLError as exc:
            self.close()
            raise SourceUnavailable(f"NVML initialised but cannot list GPUs ({exc})") from None
        for index in range(count):
            try:
                handle = lib.nvmlDeviceGetHandleByIndex(index)
            except lib.NVMLError as exc:
                log.warning("GPU %d: no handle (%s); it is reported with that error", index, exc)
                handle = None
            reader = DeviceReader(
                lib,
                handle,
                index,
                processes=self.options.processes,
                pcie_throughput=self.options.pcie_throughput,
                driver=self.driver,
                cuda_driver=cuda,
            )
            self._devices.append(_Device(reader, Worker(f"telemetryd-gpu{index}")))
        self._read_identities()
        if self.options.events and self._devices:
            self._events = EventWatcher(
                lib,
                [
                    (d.reader.index, d.reader.handle, d.reader.static.get("uuid", ""))
                    for d in self._devices
                    if d.reader.handle is not None
                ],
                clock=self._clock,
            )
            self.unsupported_events = self._events.start()

    def _read_identities(self) -> None:
        """Read every GPU's identity in parallel, each bounded by the sample timeout."""
        for device in self._devices:
            if device.reader.handle is not None:
                device.pending = device.worker.submit(device.reader.read_static, "identity")
        deadline = time.monotonic() + self.options.timeout
        for device in self._devices:
            if device.pending is None:
                continue
            try:
                device.pending.result(timeout=max(0.0, deadline - time.monotonic()))
                device.ready = True
            except FutureTimeout:
                log.warning(
                    "GPU %d: identity read still running after %gs",
                    device.reader.index,
                    self.options.timeout,
                )
            except DeviceFatal as exc:
                log.warning("GPU %d: %s", device.reader.index, exc)
            device.pending = None

    def close(self) -> None:
        """Stop the event thread and workers; shut NVML down unless a call is still stuck."""
        if self._events is not None:
            self._events.stop()
            self._events = None
        stuck = any(d.worker.busy_for() is not None for d in self._devices)
        for device in self._devices:
            device.worker.stop()
        self._devices = []
        if self._lib is not None and not stuck:
            try:
                self._lib.nvmlShutdown()
            except self._lib.NVMLError:
                log.debug("nvmlShutdown failed", exc_info=True)
        self._lib = None

    # -- sampling --------------------------------------------------------------------------
    async def sample(self) -> GpuSample:
        """Read all GPUs concurrently; never raises for a GPU's failure, never hangs."""
        started = time.monotonic()
        gpus = list(await asyncio.gather(*(self._read(d) for d in self._devices)))
        events = self._events.drain() if self._events is not None else []
        events += self._transitions(gpus)
        return GpuSample(
            gpus=gpus,
            events=events,
            duration_s=time.monotonic() - started,
            events_dropped=self._events.dropped if self._events is not None else 0,
        )

    def notes(self) -> dict[str, str]:
        """GPUs whose XID/ECC events cannot be watched, with the reason."""
        if not self.unsupported_events:
            return {}
        detail = "; ".join(f"GPU {i}: {why}" for i, why in sorted(self.unsupported_events.items()))
        return {"gpu_events": detail}

    def _read_once(self, device: _Device) -> Gpu:
        if not device.ready:
            device.reader.read_static()
            device.ready = True
        return device.reader.read()

    async def _read(self, device: _Device) -> Gpu:
        reader = device.reader
        if reader.handle is None:
            return reader.identity(GpuError(code="unknown", message="no NVML handle for this GPU"))
        try:
            gpu: Gpu = await device.worker.run(
                lambda: self._read_once(device), "sample", self.options.timeout
            )
        except WorkerBusy as exc:
            message = f"NVML call {reader.current} has not returned for {exc.since_s:.1f} s"
            return reader.identity(GpuError(code="hung", message=message))
        except WorkerTimeout:
            message = f"NVML call {reader.current} did not return within {self.options.timeout:g} s"
            return reader.identity(GpuError(code="timeout", message=message))
        except DeviceFatal as exc:
            return reader.identity(exc.error)
        except Exception as exc:  # a bug reading one GPU must not cost the others
            log.exception("GPU %d: unexpected error while reading", reader.index)
            return reader.identity(GpuError(code="unknown", message=f"read failed: {exc!r}"[:256]))
        return gpu

    def _transitions(self, gpus: list[Gpu]) -> list[Event]:
        """One event when a GPU starts failing, one when it recovers; not one per interval."""
        events: list[Event] = []
        now = self._clock()
        for device, gpu in zip(self._devices, gpus, strict=True):
            code = gpu.error.code if gpu.error else None
            if code == "hung":  # still the same stuck call that timed out: one incident
                code = "timeout"
            if code == device.last_error:
                continue
            if code is not None and gpu.error is not None:
                lost = code == "gpu_lost"
                events.append(
                    Event(
                        time_ns=now,
                        kind="gpu_lost" if lost else "gpu_error",
                        severity="critical",
                        gpu_index=gpu.index,
                        uuid=gpu.uuid,
                        message=gpu.error.message,
                        action=_LOST_ACTION
                        if lost
                        else "Check the driver and kernel log (dmesg | grep -i nvrm).",
                    )
                )
            elif device.last_error is not None:
                events.append(
                    Event(
                        time_ns=now,
                        kind="gpu_recovered",
                        severity="info",
                        gpu_index=gpu.index,
                        uuid=gpu.uuid,
                        message=f"GPU readable again after {device.last_error}",
                    )
                )
            device.last_error = code
        return events


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe(lib: Any, fn: str) -> Any:
    try:
        return getattr(lib, fn)()
    except (lib.NVMLError, AttributeError):
        return None


def create(cfg: AgentConfig) -> NvmlBackend:
    """Factory for ``gpu_backend = "nvml"``."""
    return NvmlBackend(import_pynvml, cfg.nvml)
