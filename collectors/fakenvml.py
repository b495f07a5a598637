"""A pynvml stand-in that replays a recording of a real card, with faults on demand.

GPU hardware is the one thing telemetryd fakes, and it fakes it at the narrowest seam:
the functions of pynvml. The reader, the backend, the event thread and the hang handling
run unchanged over this object, so what tests and the simulator exercise is the code that
runs on a GPU node. Values come from a recording made by ``collect --record`` (or written
by hand in the same format, and labelled so); calls the recording marks as NVML errors
raise them, which is how "not supported on this device" paths are tested.

Faults: ``lose(dev)`` makes every call on a GPU raise GPU_IS_LOST; ``hang(dev, fn)`` makes
a call block until ``release(dev)``; ``fail(dev, fn, code)`` raises any NVML error;
``inject_event`` delivers an XID or ECC event through the event set.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ERROR_CODES = {
    "NVML_ERROR_UNINITIALIZED": 1,
    "NVML_ERROR_INVALID_ARGUMENT": 2,
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NO_PERMISSION": 4,
    "NVML_ERROR_NOT_FOUND": 6,
    "NVML_ERROR_INSUFFICIENT_SIZE": 7,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_TIMEOUT": 10,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16,
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": 25,
    "NVML_ERROR_UNKNOWN": 999,
}
ERROR_NAMES = {code: name for name, code in ERROR_CODES.items()}
FORMAT = "telemetryd.nvml-recording/1"
PROCESS_UTILIZATION = "nvmlDeviceGetProcessUtilization"


class NVMLError(Exception):
    """Same shape as pynvml's: the NVML return code is in ``value``."""

    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(ERROR_NAMES.get(value, f"NVML error {value}"))


class FakeHandle:
    """A device or MIG-instance handle; identity matters, as with real handles."""

    __slots__ = ("dev", "mig")

    def __init__(self, dev: int, mig: int | None = None) -> None:
        self.dev = dev
        self.mig = mig

    def __repr__(self) -> str:
        return f"FakeHandle({self.dev}, mig={self.mig})"


class _GpmMetricsGet:
    """Shape of pynvml's c_nvmlGpmMetricsGet_t, as far as the reader uses it."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(64)]


def call_key(fn: str, args: tuple[Any, ...]) -> str:
    """Recording key of a call: its name, and its arguments after the handle."""
    return f"{fn}({','.join(str(a) for a in args)})" if args else fn


def to_object(value: Any) -> Any:
    """Recorded JSON -> what pynvml returns (structs become attribute objects)."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: to_object(v) for k, v in value.items()})
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [to_object(v) for v in value]
    return value


def load_recording(path: str | Path) -> dict[str, Any]:
    """Read and check a recording file; ValueError names what is wrong."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a telemetryd NVML recording (expected format {FORMAT!r})")
    if not isinstance(data.get("devices"), list) or not data["devices"]:
        raise ValueError(f"{path}: a recording needs a non-empty 'devices' list")
    return data


class FakeNvml:
    """The replaying library; see the module docstring."""

    NVMLError = NVMLError
    c_nvmlGpmMetricsGet_t = _GpmMetricsGet

    def __init__(self, recording: dict[str, Any]) -> None:
        self.recording = recording
        self.system: dict[str, Any] = recording.get("system", {})
        self.devices: list[dict[str, Any]] = recording["devices"]
        self.calls: Counter[str] = Counter()
        self.unrecorded: set[str] = set()  # keys asked for that the recording lacks
        self.initialised = 0
        self._handles = [FakeHandle(i) for i in range(len(self.devices))]
        self._mig_handles: dict[tuple[int, int], FakeHandle] = {}
        self._lost: set[int] = set()
        self._failures: dict[tuple[int, str], int] = {}
        self._hangs: dict[int, tuple[str, threading.Event, float | None]] = {}
        self._event_sets: list[tuple[queue.SimpleQueue[Any], dict[int, int]]] = []

    # -- faults ----------------------------------------------------------------------------
    def lose(self, dev: int, lost: bool = True) -> None:
        """Make every call on GPU ``dev`` fail with GPU_IS_LOST (or stop doing so)."""
        (self._lost.add if lost else self._lost.discard)(dev)

    def fail(self, dev: int, fn: str, code: int | None) -> None:
        """Make ``fn`` on GPU ``dev`` raise NVML error ``code`` (None clears it)."""
        if code is None:
            self._failures.pop((dev, fn), None)
        else:
            self._failures[(dev, fn)] = code

    def hang(self, dev: int, fn: str = "*", seconds: float | None = None) -> threading.Event:
        """Make ``fn`` (any call with "*") on GPU ``dev`` block until released.

        With ``seconds`` the hang ends by itself after that long, as a scenario's does.
        """
        release = threading.Event()
        until = time.monotonic() + seconds if seconds is not None else None
        self._hangs[dev] = (fn, release, until)
        return release

    def release(self, dev: int) -> None:
        """Let a hung call on GPU ``dev`` return."""
        hang = self._hangs.pop(dev, None)
        if hang is not None:
            hang[1].set()

    def inject_event(self, dev: int, event_type: int, data: int = 0) -> None:
        """Deliver an NVML event (0x8 = XID with ``data`` its code) to registered sets."""
        for q, masks in self._event_sets:
            if masks.get(dev, 0) & event_type:
                q.put(
                    SimpleNamespace(
                        device=self._handles[dev],
                        eventType=event_type,
                        eventData=data,
                        gpuInstanceId=0xFFFFFFFF,
                        computeInstanceId=0xFFFFFFFF,
                    )
                )

    # -- the recorded answers --------------------------------------------------------------
    def answer(self, dev: int, mig: int | None, key: str) -> Any:
        """The recorded answer to ``key`` (a subclass animates it); raises NVMLError."""
        table = self.devices[dev] if mig is None else self.devices[dev]["mig"][mig]
        if key not in table:
            self.unrecorded.add(key)
            raise NVMLError(ERROR_CODES["NVML_ERROR_NOT_SUPPORTED"])
        value = table[key]
        if isinstance(value, dict) and set(value) == {"error"}:
            raise NVMLError(ERROR_CODES[value["error"]])
        return value

    def _faults(self, fn: str, handle: FakeHandle) -> None:
        """Apply injected faults to a call: hang first, then loss, then a set error."""
        self.calls[fn] += 1
        hang = self._hangs.get(handle.dev)
        if hang is not None and hang[0] in ("*", fn):
            _, release, until = hang
            release.wait(None if until is None else max(0.0, until - time.monotonic()))
            if self._hangs.get(handle.dev) is hang:
                del self._hangs[handle.dev]
        if handle.dev in self._lost:
            raise NVMLError(ERROR_CODES["NVML_ERROR_GPU_IS_LOST"])
        code = self._failures.get((handle.dev, fn))
        if code is not None:
            raise NVMLError(code)

    def _device_call(self, fn: str, handle: FakeHandle, args: tuple[Any, ...]) -> Any:
        self._faults(fn, handle)
        return to_object(self.answer(handle.dev, handle.mig, call_key(fn, args)))

    def __getattr__(self, fn: str) -> Any:
        if not fn.startswith(("nvmlDevice", "nvmlGpmQuery")):
            raise AttributeError(fn)

        def device_function(handle: FakeHandle, *args: Any) -> Any:
            return self._device_call(fn, handle, args)

        return device_function

    # -- system ----------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        """Count initialisations: the agent must do it once per process."""
        self.initialised += 1
        self.calls["nvmlInit"] += 1

    def nvmlShutdown(self) -> None:
        """Nothing to release."""
        self.calls["nvmlShutdown"] += 1

    def _system(self, key: str) -> Any:
        self.calls[key] += 1
        value = self.system.get(key)
        if value is None or (isinstance(value, dict) and "error" in value):
            code = ERROR_CODES[value["error"]] if isinstance(value, dict) else 3
            raise NVMLError(code)
        return value

    def nvmlSystemGetDriverVersion(self) -> str:
        """Recorded driver version."""
        return str(self._system("nvmlSystemGetDriverVersion"))

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        """Recorded CUDA driver version (e.g. 12040)."""
        return int(self._system("nvmlSystemGetCudaDriverVersion_v2"))

    def nvmlDeviceGetCount(self) -> int:
        """Number of recorded devices."""
        self.calls["nvmlDeviceGetCount"] += 1
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        """The stable handle of device ``index``."""
        self.calls["nvmlDeviceGetHandleByIndex"] += 1
        if not 0 <= index < len(self.devices):
            raise NVMLError(ERROR_CODES["NVML_ERROR_INVALID_ARGUMENT"])
        return self._handles[index]

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, slot: int) -> FakeHandle:
        """Handle of MIG slot ``slot``; NOT_FOUND for an empty slot."""
        self._faults("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if slot >= len(self.devices[handle.dev].get("mig", [])):
            raise NVMLError(ERROR_CODES["NVML_ERROR_NOT_FOUND"])
        return self._mig_handles.setdefault((handle.dev, slot), FakeHandle(handle.dev, slot))

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, ids: list[Any]) -> list[Any]:
        """Per-field answers, each with its own return code, as NVML gives them."""
        self._faults("nvmlDeviceGetFieldValues", handle)
        out = []
        for item in ids:
            fid, scope = item if isinstance(item, tuple) else (item, 0)
            key = f"field:{fid}" if scope == 0 else f"field:{fid}@{scope}"
            try:
                recorded = self.answer(handle.dev, handle.mig, key)
                out.append(
                    SimpleNamespace(
                        fieldId=fid,
                        scopeId=scope,
                        nvmlReturn=0,
                        valueType=recorded["type"],
                        value=_union(recorded["type"], recorded["value"]),
                    )
                )
            except NVMLError as exc:
                out.append(
                    SimpleNamespace(
                        fieldId=fid,
                        scopeId=scope,
                        nvmlReturn=exc.value,
                        valueType=3,
                        value=_union(3, 0),
                    )
                )
        return out

    # -- process utilisation -------------------------------------------------------------
    def nvmlDeviceGetProcessUtilization(self, handle: FakeHandle, last_seen_us: int) -> list[Any]:
        """Per-pid samples newer than ``last_seen_us``; NOT_FOUND when there is none."""
        self._faults(PROCESS_UTILIZATION, handle)
        samples = self.process_samples(handle.dev, handle.mig, int(last_seen_us))
        if not samples:
            raise NVMLError(ERROR_CODES["NVML_ERROR_NOT_FOUND"])
        return [SimpleNamespace(**sample) for sample in samples]

    def process_samples(self, dev: int, mig: int | None, since_us: int) -> list[dict[str, int]]:
        """The recorded samples, replayed as if the card kept taking them (a subclass animates).

        A recording holds one read's samples (pid, timeStamp in µs, smUtil, memUtil,
        encUtil, decUtil); they are shifted so the newest is now, so every interval sees
        the same load again, as a replayed GPU keeps its recorded utilisation. ``collect
        --record`` keys the call by its timestamp argument; any such key is accepted.
        """
        table = self.devices[dev] if mig is None else self.devices[dev]["mig"][mig]
        key = next((k for k in table if k.startswith(PROCESS_UTILIZATION + "(")), None)
        recorded = self.answer(dev, mig, key or PROCESS_UTILIZATION)
        if not recorded:
            return []
        shift = time.time_ns() // 1000 - max(int(s["timeStamp"]) for s in recorded)
        moved = [{**s, "timeStamp": int(s["timeStamp"]) + shift} for s in recorded]
        return [s for s in moved if s["timeStamp"] > since_us]

    # -- GPM -------------------------------------------------------------------------------
    def nvmlGpmSampleAlloc(self) -> SimpleNamespace:
        """An empty GPM sample buffer."""
        return SimpleNamespace(dev=None, time=0.0)

    def nvmlGpmSampleGet(self, handle: FakeHandle, sample: SimpleNamespace) -> SimpleNamespace:
        """Fill a GPM sample of ``handle``."""
        self._faults("nvmlGpmSampleGet", handle)
        sample.dev, sample.time = handle.dev, time.monotonic()
        return sample

    def gpm_value(self, dev: int, metric: int) -> float:
        """Recorded value of GPM metric ``metric`` (a subclass animates it)."""
        return float(self.answer(dev, None, f"gpm:{metric}"))

    def nvmlGpmMetricsGet(self, request: _GpmMetricsGet) -> _GpmMetricsGet:
        """Compute metrics between two samples, per metric return codes included."""
        self.calls["nvmlGpmMetricsGet"] += 1
        dev = request.sample2.dev
        for metric in request.metrics[: request.numMetrics]:
            try:
                metric.value, metric.nvmlReturn = self.gpm_value(dev, metric.metricId), 0
            except NVMLError as exc:
                metric.nvmlReturn = exc.value
        return request

    # -- events ----------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> tuple[queue.SimpleQueue[Any], dict[int, int]]:
        """A new event set."""
        event_set: tuple[queue.SimpleQueue[Any], dict[int, int]] = (queue.SimpleQueue(), {})
        self._event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(
        self, handle: FakeHandle, mask: int, event_set: tuple[Any, dict[int, int]]
    ) -> None:
        """Register ``mask`` of ``handle`` with the set."""
        self._faults("nvmlDeviceRegisterEvents", handle)
        event_set[1][handle.dev] = event_set[1].get(handle.dev, 0) | mask

    def nvmlEventSetWait_v2(self, event_set: tuple[queue.SimpleQueue[Any], Any], ms: int) -> Any:
        """Next event, or NVML_ERROR_TIMEOUT after ``ms``."""
        try:
            return event_set[0].get(timeout=ms / 1000)
        except queue.Empty:
            raise NVMLError(ERROR_CODES["NVML_ERROR_TIMEOUT"]) from None

    def nvmlEventSetFree(self, event_set: Any) -> None:
        """Forget the set."""
        self._event_sets = [s for s in self._event_sets if s is not event_set]


def _union(value_type: int, value: Any) -> SimpleNamespace:
    attr = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    return SimpleNamespace(**{attr.get(value_type, "ullVal"): value})
