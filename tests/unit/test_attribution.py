"""The attribution stage: processes' host side and cgroup owner, kubelet names, GPU owners.

Processes come from a /proc assembled from the fixture trees (tests/fixtures/proc) and from
the live /proc of the test process; the kubelet is a PodResourcesClient whose answer is
given (its gRPC side is tested against a real server in test_kubelet.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.attribution import Attributor
from collectors.base import PodRef
from collectors.cgroup import parse_cgroup
from collectors.kubelet import PodResourcesClient
from telemetryd.config import AgentConfig, AttributionConfig
from telemetryd.model import Gpu, GpuOwner, GpuProcess, MigDevice
from telemetryd.sampler import open_sampler

FIXTURES = Path(__file__).parent.parent / "fixtures" / "proc"
U1 = "7c5e3f3a-9d2b-4c1e-8f6a-1b2c3d4e5f60"
U2 = "e2a9b6c4-15d7-4e3f-a8b0-9c1d2e3f4a5b"
C1 = "3f9a1c2e7b4d5f6a8091b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8"


class GivenKubelet(PodResourcesClient):
    """A pod-resources client whose answer the test sets."""

    def __init__(self, answer: dict[str, PodRef]) -> None:
        super().__init__("/nonexistent", 1.0)
        self.answer = answer

    def devices(self) -> dict[str, PodRef]:
        return dict(self.answer)


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    """One procfs holding every fixture pid (their numbers do not collide)."""
    root = tmp_path / "proc"
    root.mkdir()
    for runtime in FIXTURES.iterdir():
        if runtime.is_dir():
            for pid in runtime.iterdir():
                if pid.name.isdigit():
                    (root / pid.name).symlink_to(pid)
    return root


def gpu(index: int, *pids: int, mig: list[MigDevice] | None = None) -> Gpu:
    return Gpu(index=index, uuid=f"GPU-{index:04d}", pci_bus_id="", name="H100", driver="550",
               mig_mode=bool(mig), mig=mig or [],
               processes=[GpuProcess(pid=p, type="compute") for p in pids])  # fmt: skip


def attributor(proc_root: Path, **cfg: object) -> Attributor:
    return Attributor(AttributionConfig(proc_root=str(proc_root), host_processes=False, **cfg))  # type: ignore[arg-type]


def test_slurm_processes_give_the_gpu_its_job(proc_root: Path) -> None:
    g = gpu(0, 61234, 61200, 61190)
    attributor(proc_root).attribute([g])
    assert g.processes is not None
    assert [(p.job, p.step, p.unit) for p in g.processes] == [
        ("4242", "0", "slurmstepd.scope"),
        ("4242", "batch", "slurmstepd.scope"),
        ("4242", "extern", "slurmstepd.scope"),
    ]
    assert g.owners == [GpuOwner(source="cgroup", job="4242")]


def test_pod_processes_give_uid_and_container(proc_root: Path) -> None:
    g = gpu(1, 41872, 3101)  # the same pod seen through both cgroup drivers
    attributor(proc_root).attribute([g])
    assert g.processes is not None
    for p in g.processes:
        assert (p.pod_uid, p.container_id, p.runtime) == (U1, C1, "kubernetes")
        assert p.pod is None  # no kubelet configured
    assert g.owners == [GpuOwner(source="cgroup", pod_uid=U1)]


def test_kubelet_names_fill_processes_and_cgroup_owners(proc_root: Path) -> None:
    a = attributor(proc_root)
    # the kubelet knows the pod by another GPU it holds: names by pod UID still apply
    a.kubelet = GivenKubelet({"GPU-0009": PodRef("trainer-0", "ml", "worker", U1)})
    g = gpu(1, 41872)
    a.attribute([g])
    assert g.processes is not None
    p = g.processes[0]
    assert (p.pod, p.namespace, p.container) == ("trainer-0", "ml", "worker")
    assert g.owners == [GpuOwner(source="cgroup", pod="trainer-0", namespace="ml",
                                 container="worker", pod_uid=U1)]  # fmt: skip


def test_container_name_is_left_out_when_the_pod_has_several(proc_root: Path) -> None:
    a = attributor(proc_root)
    a.kubelet = GivenKubelet({"GPU-0008": PodRef("p", "ns", "a", U1),
                              "GPU-0009": PodRef("p", "ns", "b", U1)})  # fmt: skip
    g = gpu(1, 41872)
    a.attribute([g])
    assert g.processes is not None
    assert (g.processes[0].pod, g.processes[0].container) == ("p", None)
    # ...unless the kubelet says which of them holds this very GPU
    g = gpu(8, 41872)
    a.attribute([g])
    assert g.processes is not None and g.processes[0].container == "a"
    assert g.owners == [GpuOwner(source="kubelet", pod="p", namespace="ns", container="a",
                                 pod_uid=U1)]  # fmt: skip


def test_scheduler_owners_win_over_cgroup_ones(proc_root: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "2").write_text("99\n")
    g = gpu(2, 61500)  # a process of job 4243 on a GPU the scheduler gave job 99
    attributor(proc_root, job_map_dir=str(jobs)).attribute([g])
    assert g.owners == [GpuOwner(source="jobmap", job="99")]
    assert g.processes is not None and g.processes[0].job == "4243"


def test_containers_outside_pods_and_jobs_own_nothing(proc_root: Path) -> None:
    g = gpu(3, 2290, 7001, 1404)
    attributor(proc_root).attribute([g])
    assert g.processes is not None
    assert [(p.runtime, p.unit) for p in g.processes] == [
        ("docker", f"docker-{C1}.scope"),
        ("podman", f"libpod-{C1}.scope"),
        (None, "ollama.service"),
    ]
    assert g.owners is None


def test_vanished_pid_and_gpu_without_processes(proc_root: Path) -> None:
    g, empty = gpu(4, 4_000_001), gpu(5)
    empty.processes = None
    attributor(proc_root).attribute([g, empty])
    assert g.processes == [GpuProcess(pid=4_000_001, type="compute")]
    assert g.owners is None and empty.owners is None and empty.processes is None


def test_mig_instances_get_their_own_owners(proc_root: Path) -> None:
    mig = [MigDevice(uuid="MIG-a", gi_id=1), MigDevice(uuid="MIG-b", gi_id=2)]
    g = gpu(6, mig=mig)
    g.processes = [
        GpuProcess(pid=61234, type="compute", gi_id=1),
        GpuProcess(pid=52011, type="compute", gi_id=2),
        GpuProcess(pid=8801, type="compute", gi_id=2),
    ]
    attributor(proc_root).attribute([g])
    assert g.owners == [
        GpuOwner(source="cgroup", gi_id=1, job="4242"),
        GpuOwner(source="cgroup", gi_id=2, job="977"),
        GpuOwner(source="cgroup", gi_id=2, pod_uid=U2),
    ]


def test_live_processes_get_their_host_side_and_cgroup() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    child.wait()  # a pid NVML listed a moment ago, gone now
    a = Attributor(AttributionConfig(command="name"))
    g = gpu(0, os.getpid(), child.pid)
    a.attribute([g])
    assert g.processes is not None
    me, gone = g.processes
    assert me.user is not None and me.rss_bytes is not None and me.rss_bytes > 0
    assert me.command is not None and me.command.startswith("python")
    assert " " not in me.command  # 'name': no arguments
    own = parse_cgroup(Path("/proc/self/cgroup").read_text())
    assert own is not None and (me.unit, me.container_id, me.job) == (
        own.unit,
        own.container_id,
        own.job,
    )
    assert gone == GpuProcess(pid=child.pid, type="compute")


def test_host_side_off_keeps_cgroup_attribution(proc_root: Path) -> None:
    g = gpu(0, os.getpid())
    Attributor(AttributionConfig(host_processes=False)).attribute([g])
    assert g.processes is not None and g.processes[0].user is None
    assert g.processes[0].rss_bytes is None and g.processes[0].command is None


def test_made_up_pids_are_not_looked_up() -> None:
    g = gpu(0, os.getpid())
    Attributor(AttributionConfig(), real_pids=False).attribute([g])
    assert g.processes == [GpuProcess(pid=os.getpid(), type="compute")]


def test_sampler_runs_it_on_simulated_gpus(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "1").write_text("5150\n")
    cfg = AgentConfig(gpu_backend="sim", collectors=[], node="n1")
    cfg.attribution.job_map_dir = str(jobs)
    cfg.attribution.proc_root = str(tmp_path / "noproc")  # simulated pids are not real ones
    sampler = open_sampler(cfg)
    try:
        report = asyncio.run(sampler.sample())
    finally:
        sampler.close()
    by_index = {g.index: g for g in report.gpus}
    assert by_index[1].owners == [GpuOwner(source="jobmap", job="5150")]
    assert by_index[0].owners is None
    assert not [e for e in report.errors if e.source == "attribution"]
