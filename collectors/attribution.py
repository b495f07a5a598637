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
from collectors.cgroup import CgroupInfo, CgroupReader
from collectors.host import ProcessInfo, ProcessInspector
from collectors.jobmap import JobMap, JobMapReader
from telemetryd.errors import SourceUnavailable
from telemetryd.model import Gpu, GpuOwner, GpuProcess

if TYPE_CHECKING:
    from collectors.kubelet import PodResourcesClient
    from telemetryd.config import AttributionConfig

log = logging.getLogger(__name__)


class Attributor:
    """Fills processes' host side and attribution, and GPU owners, in place."""

    name = "attribution"

    def __init__(self, cfg: AttributionConfig, *, real_pids: bool = True) -> None:
        """Take the sources from configuration; ``real_pids=False`` for the simulator.

        Simulated pids are made up: looking them up in /proc would pin a simulated GPU on
        whatever real process has that number, so neither psutil nor cgroups are read.
        """
        self.cfg = cfg
        self.jobmap = JobMapReader(cfg.job_map_dir) if cfg.job_map_dir else None
        self.kubelet: PodResourcesClient | None = None
        self.cgroups = CgroupReader(cfg.proc_root) if real_pids else None
        self.inspector = (
            ProcessInspector(cfg.command, cfg.command_max, cfg.proc_root)
            if cfg.host_processes and real_pids
            else None
        )

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
        """One interval: read the sources once, then set every GPU's fields.

        Each pid is read once however many GPUs it holds. Owners from the cgroups of the
        GPU's processes are added only to a GPU that neither the job map nor the kubelet
        gave an owner: the scheduler's word is the better one (it holds before the job
        starts a process, and covers jobs whose processes sit in another cgroup).
        """
        mapping: JobMap = self.jobmap.read() if self.jobmap is not None else {}
        pods: dict[str, PodRef] = self.kubelet.devices() if self.kubelet is not None else {}
        pids = {p.pid for gpu in gpus for p in gpu.processes or ()}
        host = self.inspector.inspect(pids) if self.inspector is not None else {}
        reader = self.cgroups
        cgroups = {pid: reader.read(pid) for pid in sorted(pids)} if reader is not None else {}
        for gpu in gpus:
            for proc in gpu.processes or ():
                _fill(proc, host.get(proc.pid), cgroups.get(proc.pid), _held(gpu, proc, pods))
            owners = _jobmap_owners(gpu, mapping) + _kubelet_owners(gpu, pods)
            if not owners:
                owners = _cgroup_owners(gpu)
            if owners:
                gpu.owners = owners

    def close(self) -> None:
        """Release what ``open`` took; safe to call twice."""
        if self.kubelet is not None:
            self.kubelet.close()
            self.kubelet = None


def _held(gpu: Gpu, proc: GpuProcess, pods: dict[str, PodRef]) -> PodRef | None:
    """The container the kubelet gave the GPU (or MIG instance) this process runs on."""
    if proc.gi_id is not None:
        for mig in gpu.mig:
            if mig.gi_id == proc.gi_id and mig.uuid in pods:
                return pods[mig.uuid]
    return pods.get(gpu.uuid)


def _fill(
    proc: GpuProcess, host: ProcessInfo | None, cgroup: CgroupInfo | None, held: PodRef | None
) -> None:
    """Set one process's host side, its cgroup's owner, and the kubelet's names for it.

    pod-resources says which container holds a device, but not the pod's UID: a process
    whose cgroup is a pod's, on a device the kubelet gave one container, is that
    container's (a device plugin gives a device to one container; shared GPUs keep the
    first, see collectors/kubelet.py).
    """
    if host is not None:
        proc.user, proc.command = host.user, host.command
        proc.cpu_pct, proc.rss_bytes = host.cpu_pct, host.rss_bytes
    if cgroup is None:
        return
    proc.job, proc.step, proc.unit = cgroup.job, cgroup.step, cgroup.unit
    proc.pod_uid, proc.container_id = cgroup.pod_uid, cgroup.container_id
    proc.runtime = cgroup.runtime
    if cgroup.pod_uid is not None and held is not None:
        proc.pod, proc.namespace, proc.container = held.pod, held.namespace, held.container


def _cgroup_owners(gpu: Gpu) -> list[GpuOwner]:
    """The Slurm jobs and pods the GPU's processes belong to, by their cgroups."""
    owners: list[GpuOwner] = []
    seen: set[tuple[int | None, str | None, str | None]] = set()
    for proc in gpu.processes or ():
        if proc.job is None and proc.pod_uid is None:
            continue
        key = (proc.gi_id, proc.job, proc.pod_uid)
        if key in seen:
            continue
        seen.add(key)
        owners.append(GpuOwner(source="cgroup", gi_id=proc.gi_id, job=proc.job,
                               pod=proc.pod, namespace=proc.namespace,
                               container=proc.container, pod_uid=proc.pod_uid))  # fmt: skip
    return owners


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
                                   namespace=ref.namespace,
                                   container=ref.container))  # fmt: skip
    return owners
