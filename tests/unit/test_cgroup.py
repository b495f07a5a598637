"""cgroup attribution: every fixture runtime, the parser's edges, and the live /proc."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.cgroup import CgroupInfo, CgroupReader, parse_cgroup, parse_path

PROC = Path(__file__).parent.parent / "fixtures" / "proc"
C1 = "3f9a1c2e7b4d5f6a8091b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8"
C2 = "a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef0"
C3 = "0d4c8e2f1a3b5c7d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d"
U1 = "7c5e3f3a-9d2b-4c1e-8f6a-1b2c3d4e5f60"
U2 = "e2a9b6c4-15d7-4e3f-a8b0-9c1d2e3f4a5b"
U3 = "5b1f0c9e-3a7d-42e8-b6c5-d4e3f2a1b0c9"

# (fixture dir, pid) -> (version, runtime, container_id, pod_uid, job, step, unit)
EXPECTED: dict[tuple[str, int], tuple[object, ...]] = {
    ("k8s-systemd", 41872): ("v2", "kubernetes", C1, U1, None, None, f"cri-containerd-{C1}.scope"),
    ("k8s-systemd", 41990): ("v2", "kubernetes", C2, U2, None, None, f"crio-{C2}.scope"),
    ("k8s-systemd", 42017): ("v2", "kubernetes", C3, U3, None, None, f"docker-{C3}.scope"),
    ("k8s-cgroupfs", 3101): ("v1", "kubernetes", C1, U1, None, None, None),
    ("k8s-cgroupfs", 3155): ("v1", "kubernetes", C3, U3, None, None, None),
    ("k8s-cgroupfs", 3190): ("v1", "kubernetes", C2, U2, None, None, None),
    ("docker", 2290): ("v2", "docker", C1, None, None, None, f"docker-{C1}.scope"),
    ("docker", 2301): ("v1", "docker", C2, None, None, None, None),
    ("docker", 2342): ("hybrid", "docker", C3, None, None, None, f"docker-{C3}.scope"),
    ("containerd", 5120): ("v2", "containerd", C1, None, None, None, f"nerdctl-{C1}.scope"),
    ("containerd", 5188): ("v2", "containerd", C2, None, None, None, f"cri-containerd-{C2}.scope"),
    ("podman", 7001): ("v2", "podman", C1, None, None, None, f"libpod-{C1}.scope"),
    ("podman", 7002): ("v2", "podman", C1, None, None, None, f"libpod-conmon-{C1}.scope"),
    ("podman", 7350): ("v2", "podman", C2, None, None, None, f"libpod-{C2}.scope"),
    ("crio", 8801): ("v2", "kubernetes", C2, U2, None, None, f"crio-{C2}.scope"),
    ("crio", 8790): ("v2", "crio", C2, None, None, None, f"crio-conmon-{C2}.scope"),
    ("slurm-v2", 61234): ("v2", None, None, None, "4242", "0", "slurmstepd.scope"),
    ("slurm-v2", 61200): ("v2", None, None, None, "4242", "batch", "slurmstepd.scope"),
    ("slurm-v2", 61190): ("v2", None, None, None, "4242", "extern", "slurmstepd.scope"),
    ("slurm-v2", 61188): ("v2", None, None, None, "4242", "extern", "slurmstepd.scope"),
    ("slurm-v2", 61500): ("v2", None, None, None, "4243", "interactive", "slurmstepd.scope"),
    ("slurm-v1", 52011): ("v1", None, None, None, "977", "0", "slurmd.service"),
    ("slurm-v1", 52000): ("v1", None, None, None, "977", "batch", "slurmd.service"),
    ("systemd-service", 1404): ("v2", None, None, None, None, None, "ollama.service"),
    ("systemd-service", 1999): ("v2", None, None, None, None, None, "jupyter.service"),
    ("systemd-service", 2750): (
        "v2",
        "systemd",
        "build",
        None,
        None,
        None,
        "systemd-nspawn@build.service",
    ),
    ("user-session", 3344): ("v2", None, None, None, None, None, "session-4.scope"),
    ("lxc", 9100): ("v2", "lxc", "trainer", None, None, None, "jupyter.service"),
    ("lxc", 9050): ("v2", "lxc", "trainer", None, None, None, None),
    ("lxc", 9200): ("v1", "lxc", "builder", None, None, None, None),
    ("recorded-sandbox", 1): ("hybrid", None, None, None, None, None, None),
}


def _fields(info: CgroupInfo) -> tuple[object, ...]:
    return (info.version, info.runtime, info.container_id, info.pod_uid, info.job,
            info.step, info.unit)  # fmt: skip


@pytest.mark.parametrize(("runtime", "pid"), sorted(EXPECTED))
def test_fixture(runtime: str, pid: int) -> None:
    info = CgroupReader(PROC / runtime).read(pid)
    assert info is not None
    assert _fields(info) == EXPECTED[(runtime, pid)]


def test_every_fixture_is_checked_and_labelled() -> None:
    on_disk = {
        (d.name, int(p.name)) for d in PROC.iterdir() if d.is_dir() for p in d.iterdir()
        if p.name.isdigit()
    }  # fmt: skip
    assert on_disk == set(EXPECTED)
    for d in PROC.iterdir():
        if d.is_dir():
            label = (d / "README").read_text()
            assert label.startswith(("written by hand after ", "recorded from ")), d.name


def test_v1_slurm_path_is_kept_over_the_systemd_one() -> None:
    info = CgroupReader(PROC / "slurm-v1").read(52011)
    assert info is not None and info.path == "/slurm/uid_1000/job_977/step_0/task_0"


def test_paths_seen_from_another_cgroup_namespace() -> None:
    info = parse_path(f"/../../kubepods.slice/kubepods-pod{U3.replace('-', '_')}.slice/"
                      f"cri-containerd-{C3}.scope")  # fmt: skip
    assert (info.pod_uid, info.container_id) == (U3, C3)


def test_nested_docker_takes_the_innermost_container() -> None:
    assert parse_path(f"/docker/{C1}/docker/{C2}").container_id == C2


def test_job_segments_outside_slurm_are_not_jobs() -> None:
    info = parse_path("/user.slice/user-1000.slice/job_12/step_0")
    assert (info.job, info.step) == (None, None)


def test_a_pod_directory_outside_kubepods_is_not_a_pod() -> None:
    assert parse_path(f"/system.slice/pod{U1}/{C1}").pod_uid is None


def test_root_and_empty() -> None:
    assert parse_cgroup("") is None
    info = parse_cgroup("0::/\n")
    assert info is not None and _fields(info) == ("v2", None, None, None, None, None, None)


def test_garbage_names_the_line() -> None:
    with pytest.raises(ValueError, match=r"line 2: 'oops' is not <hierarchy id>:<controllers>"):
        parse_cgroup("0::/\noops\n")


def test_garbage_file_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for pid in (10, 11):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text("not a cgroup file\n")
    reader = CgroupReader(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert reader.read(10) is None
        assert reader.read(11) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "10/cgroup" in warnings[0].getMessage()


def test_missing_pid_is_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        assert CgroupReader(tmp_path).read(4242) is None
    assert not caplog.records


def test_live_proc_own_pid() -> None:
    info = CgroupReader("/proc").read(os.getpid())
    expected = parse_cgroup(Path("/proc/self/cgroup").read_text())
    assert info is not None and info == expected


def test_live_proc_vanished_child(caplog: pytest.LogCaptureFixture) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reader = CgroupReader("/proc")
    try:
        alive = reader.read(child.pid)
        assert alive is not None
        assert alive == reader.read(os.getpid())  # a child starts in its parent's cgroup
    finally:
        child.kill()
        child.wait()
    with caplog.at_level(logging.DEBUG):
        assert reader.read(child.pid) is None
    assert not caplog.records
