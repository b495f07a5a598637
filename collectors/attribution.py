"""Who uses the GPUs: the stage that runs after the GPU source, before the report leaves.

Sources, cheapest and most certain first (docs/attribution.md):
1. the job mapping directory (collectors/jobmap.py): the scheduler says which job holds
   which GPU, even before the job has started a process on it;
2. the kubelet's pod-resources API (collectors/kubelet.py), by GPU UUID, when configured;
3. each GPU process's cgroup (collectors/cgroup.py) and host details (collectors/host.py):
   Slurm job and step, pod UID and container, runtime, systemd unit, user, command.
The result is set on the report's GPUs: ``processes[*]`` get their host side and
attribution, ``owners`` lists the jobs and pods holding each GPU. Nothing here talks to
NVML; it runs on its own worker thread under the collector deadline, so a hung /proc or
kubelet costs this stage, never the GPU metrics.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from collectors.base import PodRef
from collectors.jobmap import JobMap, JobMapReader
from telemetryd.errors import SourceUnavailable
from telemetryd.model import Gpu, GpuOwner

if TYPE_CHECKING:
    from collectors.kubelet import PodResourcesClient
    from telemetryd.config import AttributionConfig

log = logging.getLogger(__name__)


class Attributor:
    """Fills processes' host side and attribution, and GPU owners, in place."""

    name = "attribution"

    def __init__(self, cfg: AttributionConfig) -> None:
        self.cfg = cfg
        self.jobmap = JobMapReader(cfg.job_map_dir) if cfg.job_map_dir else None
        self.kubelet: PodResourcesClient | None = None

    def open(self) -> dict[str, str]:
        """Set up the optional sources; what is configured but absent, with the reason."""
        notes: dict[str, str] = {}
        if self.cfg.kubelet_socket:
            from collectors.kubelet import PodResourcesClient

            client = PodResourcesClient(self.cfg.kubelet_socket, self.cfg.kubelet_timeout)
            try:
                client.open()
            except SourceUnavailable as exc:
                client.close()
                notes["kubelet"] = str(exc)
            else:
                self.kubelet = client
        return notes

    def attribute(self, gpus: list[Gpu]) -> None:
        """One interval: read the sources once, then set every GPU's fields."""
        mapping: JobMap = self.jobmap.read() if self.jobmap is not None else {}
        pods: dict[str, PodRef] = self.kubelet.devices() if self.kubelet is not None else {}
        for gpu in gpus:
            owners = _jobmap_owners(gpu, mapping) + _kubelet_owners(gpu, pods)
            if owners:
                gpu.owners = owners

    def close(self) -> None:
        """Release what ``open`` took; safe to call twice."""
        if self.kubelet is not None:
            self.kubelet.close()
            self.kubelet = None


def _jobmap_owners(gpu: Gpu, mapping: JobMap) -> list[GpuOwner]:
    """The jobs the mapping directory gives this GPU (whole, or per MIG instance)."""
    owners = [GpuOwner(source="jobmap", job=job) for job in mapping.get((gpu.index, None), ())]
    for (index, gi), jobs in mapping.items():
        if index == gpu.index and gi is not None:
            owners += [GpuOwner(source="jobmap", gi_id=gi, job=job) for job in jobs]
    return owners


def _kubelet_owners(gpu: Gpu, pods: dict[str, PodRef]) -> list[GpuOwner]:
    """The containers the kubelet assigned this GPU, or its MIG instances, by UUID."""
    owners: list[GpuOwner] = []
    for uuid, gi in [(gpu.uuid, None), *((m.uuid, m.gi_id) for m in gpu.mig)]:
        ref = pods.get(uuid)
        if ref is not None:
            owners.append(GpuOwner(source="kubelet", gi_id=gi, pod=ref.pod,
                                   namespace=ref.namespace, container=ref.container,
                                   pod_uid=ref.uid or None))  # fmt: skip
    return owners
