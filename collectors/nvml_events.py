"""XIDs and other critical GPU events from an NVML event set, each delivered once.

A daemon thread blocks in ``nvmlEventSetWait`` (a quarter second at a time, so it can stop)
and queues each event with its meaning and recommended action from the XID table. The
sampler drains the queue into the next report: an XID is an event in one report, never a
sticky gauge that needs a restart to clear.

Limit: NVML delivers only events that happen while the set is registered; an XID raised
while the agent was down is not replayed (the kernel log still has it).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from collectors.nvml_read import RECOVERY_ACTIONS
from telemetryd.model import Event
from telemetryd.xid import describe

log = logging.getLogger(__name__)

XID, SBE, DBE = 0x8, 0x1, 0x2
REMAP, REMAP_FAILURE, RECOVERY = 0x400, 0x800, 0x8000
# GPU-unavailable is left out: reads failing with GPU_IS_LOST already raise one gpu_lost
# event, and two for one incident is a duplicate page.
WANTED = XID | SBE | DBE | REMAP | REMAP_FAILURE | RECOVERY
ERROR_TIMEOUT = 10
UINT_MAX = 0xFFFFFFFF
WAIT_MS = 250  # how long a stop may take; four wake-ups a second cost nothing
_QUEUE_LIMIT = 10_000
_RECOVERY_ADVICE = {
    "none": "Nothing to do: the GPU no longer needs recovery.",
    "gpu_reset": "Drain the GPU, stop its processes and reset it (nvidia-smi -r).",
    "node_reboot": "Drain the node and reboot it.",
    "drain_p2p": "Stop peer-to-peer (NVLink) work on this GPU.",
    "drain_and_reset": "Drain the GPU, then reset it once it is idle.",
    "bus_reset": "Drain the GPU and reset its PCIe bus (or reboot the node).",
    "system_reboot": "Drain the node and reboot it.",
}  # an event storm must not grow memory without bound


def handle_key(handle: Any) -> int:
    """A comparable key for an NVML device handle (a ctypes pointer, or a fake's object)."""
    try:
        return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


class EventWatcher:
    """Owns the event set and its thread; ``drain`` hands over what arrived since last time."""

    def __init__(
        self,
        lib: Any,
        devices: Sequence[tuple[int, Any, str]],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._lib = lib
        self._devices = {handle_key(h): (index, uuid) for index, h, uuid in devices}
        self._handles = [(index, h) for index, h, _ in devices]
        self._clock = clock
        self._events: deque[Event] = deque(maxlen=_QUEUE_LIMIT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._set: Any = None
        self.dropped = 0

    def start(self) -> dict[int, str]:
        """Register every GPU that supports events; return {gpu index: why not} for the rest."""
        unsupported: dict[int, str] = {}
        try:
            self._set = self._lib.nvmlEventSetCreate()
        except self._lib.NVMLError as exc:
            return {index: f"cannot create an NVML event set: {exc}" for index, _ in self._handles}
        registered = 0
        for index, handle in self._handles:
            try:
                supported = int(self._lib.nvmlDeviceGetSupportedEventTypes(handle))
                mask = supported & WANTED
                if not mask & XID:
                    unsupported[index] = "XID events not supported on this GPU"
                if mask:
                    self._lib.nvmlDeviceRegisterEvents(handle, mask, self._set)
                    registered += 1
            except self._lib.NVMLError as exc:
                unsupported[index] = f"event registration failed: {exc}"
        if registered:
            self._thread = threading.Thread(
                target=self._run, name="telemetryd-nvml-events", daemon=True
            )
            self._thread.start()
        return unsupported

    def _run(self) -> None:
        complained = False
        while not self._stop.is_set():
            try:
                data = self._lib.nvmlEventSetWait_v2(self._set, WAIT_MS)
            except self._lib.NVMLError as exc:
                if int(exc.value) != ERROR_TIMEOUT:
                    if not complained:
                        log.warning("NVML event wait failed (%s); retrying every second", exc)
                        complained = True
                    self._stop.wait(1.0)
                continue
            self._push(self._to_event(data))

    def _push(self, event: Event | None) -> None:
        if event is None:
            return
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(event)

    def _to_event(self, data: Any) -> Event | None:
        index, uuid = self._devices.get(handle_key(data.device), (None, None))
        kind = int(data.eventType)
        gi = int(getattr(data, "gpuInstanceId", UINT_MAX))
        ci = int(getattr(data, "computeInstanceId", UINT_MAX))
        common: dict[str, Any] = {
            "time_ns": self._clock(),
            "gpu_index": index,
            "uuid": uuid,
            "gi_id": gi if gi != UINT_MAX else None,
            "ci_id": ci if ci != UINT_MAX else None,
        }
        if kind == XID:
            xid = describe(int(data.eventData))
            return Event(
                kind="xid",
                code=xid.code,
                name=xid.mnemonic,
                message=xid.meaning,
                action=xid.action,
                severity=xid.severity,
                **common,
            )
        if kind == DBE:
            return Event(
                kind="ecc_dbe",
                severity="critical",
                message="Double-bit (uncorrectable) ECC error",
                action="Drain and reset the GPU; a row remap applies at the reset.",
                **common,
            )
        if kind == SBE:
            return Event(
                kind="ecc_sbe",
                severity="info",
                message="Single-bit (corrected) ECC error",
                **common,
            )
        if kind == REMAP:
            return Event(
                kind="remap",
                severity="info",
                message="Memory row remap pending",
                action="Reset the GPU at the next opportunity to apply it.",
                **common,
            )
        if kind == REMAP_FAILURE:
            return Event(
                kind="remap_failure",
                severity="critical",
                message="Memory row remapping failed",
                action="Drain the GPU; RMA candidate.",
                **common,
            )
        if kind == RECOVERY:
            code = int(data.eventData)
            name = RECOVERY_ACTIONS.get(code, f"action_{code}")
            return Event(
                kind="recovery_action",
                severity="info" if code == 0 else "critical",
                code=code,
                name=name,
                message=f"the driver asks for recovery action {name}",
                action=_RECOVERY_ADVICE.get(name, "See NVIDIA's GPU recovery documentation."),
                **common,
            )
        return None

    def drain(self) -> list[Event]:
        """Every event queued since the last drain, oldest first."""
        out: list[Event] = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def stop(self) -> None:
        """Stop the thread (within WAIT_MS) and free the event set."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._set is not None and (self._thread is None or not self._thread.is_alive()):
            try:
                self._lib.nvmlEventSetFree(self._set)
            except self._lib.NVMLError:
                log.debug("nvmlEventSetFree failed at shutdown", exc_info=True)
            self._set = None
