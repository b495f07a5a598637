"""Record what a real card answers, so tests and the simulator can replay it.

``telemetryd collect --record FILE`` wraps pynvml in a RecordingNvml and takes two samples
(GPM needs two). Every answer the reader got, or the NVML error it got instead, is kept
under the same key FakeNvml looks up, so a recording replays exactly the calls that made
it, including the "not supported on this device" paths that matter most.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import socket
from pathlib import Path
from typing import Any

from collectors.fakenvml import ERROR_NAMES, FORMAT, call_key
from collectors.nvml_events import handle_key
from telemetryd import __version__

_UNION = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
_NOT_RECORDED = {"nvmlEventSetWait_v2", "nvmlEventSetWait", "nvmlDeviceRegisterEvents"}


def plain(value: Any) -> Any:
    """NVML answers (ctypes structs, friendly objects, bytes) as JSON-able values."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, ctypes.Structure):
        out = {}
        for name, ctype, *_ in value._fields_:
            if issubclass(ctype, ctypes._Pointer):
                continue
            out[name] = plain(getattr(value, name))
        return out
    if isinstance(value, ctypes.Array | list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "__dict__"):
        return {k: plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


def _error(exc: Any) -> dict[str, str]:
    return {"error": ERROR_NAMES.get(int(exc.value), "NVML_ERROR_UNKNOWN")}


class RecordingNvml:
    """A transparent proxy over pynvml that writes down every device answer."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.NVMLError = lib.NVMLError
        self.system: dict[str, Any] = {}
        self.devices: list[dict[str, Any]] = []
        self._tables: dict[int, dict[str, Any]] = {}
        self._samples: dict[int, int] = {}  # GPM sample buffer -> device index

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._lib, name)
        if not callable(target) or not name.startswith("nvml") or name in _NOT_RECORDED:
            return target

        def recorded(*args: Any) -> Any:
            return self._call(name, target, args)

        return recorded

    def _table(self, handle: Any) -> dict[str, Any] | None:
        return self._tables.get(handle_key(handle))

    def _call(self, name: str, target: Any, args: tuple[Any, ...]) -> Any:
        if name == "nvmlDeviceGetHandleByIndex":
            handle = target(*args)
            while len(self.devices) <= args[0]:
                self.devices.append({})
            self._tables[handle_key(handle)] = self.devices[args[0]]
            return handle
        if name == "nvmlDeviceGetMigDeviceHandleByIndex":
            parent = self._table(args[0])
            handle = target(*args)
            if parent is not None:
                slots = parent.setdefault("mig", [])
                while len(slots) <= args[1]:
                    slots.append({})
                self._tables[handle_key(handle)] = slots[args[1]]
            return handle
        if name == "nvmlGpmMetricsGet":
            return self._gpm(target, args[0])
        table = self._table(args[0]) if args else None
        if name == "nvmlGpmSampleGet" and table is not None:
            self._samples[id(args[1])] = self.devices.index(table)
        key = call_key(name, args[1:]) if table is not None else name
        store = table if table is not None else self.system
        try:
            result = target(*args)
        except self._lib.NVMLError as exc:
            store[key] = _error(exc)
            raise
        if name == "nvmlDeviceGetFieldValues" and table is not None:
            for fv in result:
                fkey = f"field:{fv.fieldId}" + (f"@{fv.scopeId}" if fv.scopeId else "")
                if fv.nvmlReturn == 0:
                    raw = getattr(fv.value, _UNION.get(fv.valueType, "ullVal"))
                    table[fkey] = {"type": int(fv.valueType), "value": raw}
                else:
                    table[fkey] = {
                        "error": ERROR_NAMES.get(int(fv.nvmlReturn), "NVML_ERROR_UNKNOWN")
                    }
        elif name not in ("nvmlGpmSampleAlloc", "nvmlEventSetCreate", "nvmlInit", "nvmlShutdown"):
            store[key] = 0 if name == "nvmlGpmSampleGet" else plain(result)
        return result

    def _gpm(self, target: Any, request: Any) -> Any:
        result = target(request)
        dev = self._samples.get(id(request.sample2))
        if dev is not None:
            for metric in request.metrics[: request.numMetrics]:
                key = f"gpm:{metric.metricId}"
                if metric.nvmlReturn == 0:
                    self.devices[dev][key] = float(metric.value)
                else:
                    self.devices[dev][key] = {
                        "error": ERROR_NAMES.get(int(metric.nvmlReturn), "NVML_ERROR_UNKNOWN")
                    }
        return result

    def dump(self, path: str | Path) -> None:
        """Write the recording in the format FakeNvml reads."""
        models = sorted({str(d.get("nvmlDeviceGetName", "?")) for d in self.devices})
        data = {
            "format": FORMAT,
            "provenance": (
                f"recorded by telemetryd {__version__} 'collect --record' on "
                f"{socket.gethostname()} at {datetime.datetime.now(datetime.UTC).isoformat()}"
            ),
            "model": ", ".join(models),
            "system": self.system,
            "devices": self.devices,
        }
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
