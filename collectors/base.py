"""The two small interfaces every collector implements.

Host collectors are synchronous on purpose: psutil and sysfs reads block, and the sampler
runs each collector on its own worker thread under a deadline, so a stale NFS mount or a
wedged sysfs file becomes a reported error instead of a hung agent. GPU sources own their
threads (one per device) and their deadline, because a hung NVML call must cost only the
GPU it hangs on.

A collector's factory receives the whole agent configuration and reads its own section;
third-party plugins read ``agent.plugins.<name>`` and register under the entry point group
``telemetryd.collectors`` (host parts) or ``telemetryd.gpu_backends`` (GPU sources).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from telemetryd.config import AgentConfig
    from telemetryd.model import Event, Gpu, Host


class HostCollector(Protocol):
    """Fills its part of the report's ``host`` section.

    ``open`` raises SourceUnavailable with the reason when the source does not exist on
    this machine (no RAPL, no hwmon): the agent reports that once and stops asking.
    ``collect`` raises CollectorError when the source fails for one interval. Counters
    that need a previous reading (CPU %, RAPL power) keep it on the instance.
    """

    name: str

    def open(self) -> None:
        """Find and check the source; raise SourceUnavailable if it is absent here."""
        ...

    def collect(self, host: Host) -> None:
        """Read the source and set this collector's fields on ``host``."""
        ...

    def close(self) -> None:
        """Release what ``open`` took; safe to call after a failed or no ``open``."""
        ...


@dataclass(slots=True)
class GpuSample:
    """What a GPU source saw in one interval."""

    gpus: list[Gpu] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    duration_s: float = 0.0
    events_dropped: int = 0  # since start: events lost to a full queue (an event storm)


class GpuSource(Protocol):
    """All GPUs of a node behind one deadline-bounded, never-hanging call."""

    name: str

    def open(self) -> None:
        """Initialise once and keep device handles; raise SourceUnavailable if impossible."""
        ...

    async def sample(self) -> GpuSample:
        """Read every GPU; a GPU that fails or hangs is reported with its error."""
        ...

    def notes(self) -> dict[str, str]:
        """What this source could not set up at open (reported once, as absent)."""
        ...

    def close(self) -> None:
        """Stop event threads and shut the library down; safe after a failed ``open``."""
        ...


HostCollectorFactory = Callable[["AgentConfig"], HostCollector]
GpuSourceFactory = Callable[["AgentConfig"], GpuSource]


@dataclass(frozen=True, slots=True)
class PodRef:
    """The Kubernetes container a device is assigned to (kubelet pod-resources API)."""

    pod: str
    namespace: str
    container: str
