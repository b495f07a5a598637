"""Who a process belongs to, from its ``/proc/<pid>/cgroup``: pod, container, unit, Slurm job.

Every container runtime, systemd and Slurm put a process in a cgroup whose path names its
owner, and the kernel shows that path to anyone who may read ``/proc/<pid>``, without
privileges, sockets or APIs. So this is the attribution that works everywhere; the job
mapping directory and the kubelet only add names (docs/attribution.md).

The file has one line per hierarchy, ``<id>:<controllers>:<path>``: cgroup v2 has only
``0::/path``; v1 one line per controller (``4:memory:/docker/<id>``); hybrid systems both.
Each distinct path is read and the findings merged, the unified path first, because
under v1 Slurm's own hierarchies (``/slurm/uid_<u>/job_<id>/step_<n>``) and systemd's
(``name=systemd``) differ. What a path gives, segment by segment, innermost match winning:

- Kubernetes: ``kubepods[-<qos>]-pod<uid with _>.slice`` (systemd driver) or
  ``kubepods/[<qos>/]pod<uid>`` (cgroupfs driver) -> pod UID; the container is the next
  segment (``cri-containerd-<id>.scope``, ``crio-<id>.scope``, ``docker-<id>.scope``, or
  the bare id under cgroupfs). Runtime ``kubernetes`` whatever the CRI underneath.
- Docker ``docker-<id>.scope`` / ``/docker/<id>``; containerd ``cri-containerd-<id>.scope``
  and nerdctl ``nerdctl-<id>.scope``; CRI-O ``crio-<id>.scope``, ``crio-conmon-<id>.scope``;
  Podman ``libpod-<id>.scope``, ``libpod-conmon-<id>.scope``, ``/libpod_parent/libpod-<id>``;
  LXC/LXD ``/lxc/<name>``, ``lxc.payload.<name>``, ``lxc.monitor.<name>``; systemd-nspawn
  ``machine.slice/systemd-nspawn@<name>.service`` or ``machine-<name>.scope`` (runtime
  ``systemd``, the machine name as container id).
- systemd unit: the innermost ``*.service`` or ``*.scope`` segment.
- Slurm: ``job_<id>`` and ``step_<n>`` below a ``slurm*`` segment (v2:
  ``system.slice/slurmstepd.scope/job_<id>/step_<n>/user/task_<t>``; v1:
  ``/slurm/uid_<u>/job_<id>/step_<n>/task_<t>``); steps ``batch``, ``extern``,
  ``interactive`` or a number.

Paths seen from another cgroup namespace start with ``/..``; those segments are skipped.
Nothing here imports an outside library, so it is tested on recorded and hand-written
files (tests/fixtures/proc/) as well as the live /proc.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from telemetryd.model import Runtime

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 16384  # a v1 file with every controller is ~1 KiB
_LINE = re.compile(r"^(\d+):([^:]*):(/.*)$")
_HEX_ID = r"([0-9a-f]{12,128})"
_UID = r"([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
_POD_SLICE = re.compile(rf"^kubepods(?:-(?:burstable|besteffort|guaranteed))?-pod{_UID}\.slice$")
_POD_DIR = re.compile(rf"^pod{_UID}$")
_CONTAINER_SCOPES: list[tuple[re.Pattern[str], Runtime]] = [
    (re.compile(rf"^docker-{_HEX_ID}\.scope$"), "docker"),
    (re.compile(rf"^cri-containerd-{_HEX_ID}\.scope$"), "containerd"),
    (re.compile(rf"^nerdctl-{_HEX_ID}\.scope$"), "containerd"),
    (re.compile(rf"^crio-(?:conmon-)?{_HEX_ID}(?:\.scope)?$"), "crio"),
    (re.compile(rf"^libpod-(?:conmon-)?{_HEX_ID}(?:\.scope)?$"), "podman"),
]
_LXC = re.compile(r"^lxc\.(?:payload|monitor)\.(.+)$")
_NSPAWN = (re.compile(r"^systemd-nspawn@(.+)\.service$"), re.compile(r"^machine-(.+)\.scope$"))
_JOB = re.compile(r"^job_([0-9A-Za-z_.+-]{1,64})$")
_STEP = re.compile(r"^step_([0-9A-Za-z_.+-]{1,32})$")
Version = Literal["v1", "v2", "hybrid"]


@dataclass(frozen=True, slots=True)
class CgroupInfo:
    """What one process's cgroup file says about its owner; None where it says nothing."""

    path: str  # the unified path, or the first v1 path that named an owner
    version: Version
    runtime: Runtime | None = None
    container_id: str | None = None
    pod_uid: str | None = None
    job: str | None = None
    step: str | None = None
    unit: str | None = None


def parse_cgroup(text: str) -> CgroupInfo | None:
    """Read a ``/proc/<pid>/cgroup`` text; None when it has no line (an exiting process).

    Raises ValueError naming the first line that is not ``<id>:<controllers>:<path>``.
    """
    unified: list[str] = []
    legacy: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(
                f"line {number}: {line[:80]!r} is not <hierarchy id>:<controllers>:<path>"
            )
        if m.group(1) == "0" and m.group(2) == "":
            unified.append(m.group(3))
        elif m.group(3) not in legacy:
            legacy.append(m.group(3))
    if not unified and not legacy:
        return None
    version: Version = "hybrid" if unified and legacy else "v2" if unified else "v1"
    merged: CgroupInfo | None = None
    for path in unified + legacy:  # the unified hierarchy first
        found = parse_path(path, version=version)
        if merged is None:
            merged = found
            continue
        merged = replace(
            merged,
            path=found.path if _owned(found) and not _owned(merged) else merged.path,
            runtime=merged.runtime or found.runtime,
            container_id=merged.container_id or found.container_id,
            pod_uid=merged.pod_uid or found.pod_uid,
            job=merged.job or found.job,
            step=merged.step or found.step,
            unit=merged.unit or found.unit,
        )
    return merged


def _owned(info: CgroupInfo) -> bool:
    return bool(info.container_id or info.pod_uid or info.job)


def parse_path(path: str, *, version: Version = "v2") -> CgroupInfo:
    """What one cgroup path says (see the module docstring for the shapes known)."""
    parts = [p for p in path.split("/") if p and p != ".."]
    runtime: Runtime | None = None
    container: str | None = None
    pod_uid: str | None = None
    job: str | None = None
    step: str | None = None
    unit: str | None = None
    in_kubepods = in_slurm = False
    for i, part in enumerate(parts):
        if part.endswith((".service", ".scope")):
            unit = part
        if part.startswith("kubepods"):
            in_kubepods = True
        if part.startswith("slurm"):
            in_slurm = True
        pod = _POD_SLICE.match(part) or (_POD_DIR.match(part) if in_kubepods else None)
        if pod is not None:
            pod_uid = pod.group(1).replace("_", "-")
            runtime, container = "kubernetes", None
            if i + 1 < len(parts):
                container = _container(parts[i + 1])[1] or _bare_id(parts[i + 1])
            continue
        kind, ident = _container(part)
        if kind is not None and pod_uid is None:
            runtime, container = kind, ident
        elif parts[i - 1 : i] == ["docker"] and _bare_id(part):
            runtime, container = "docker", part
        elif parts[i - 1 : i] == ["lxc"] and i == 1:
            runtime, container = "lxc", part
        elif m := _LXC.match(part):
            runtime, container = "lxc", m.group(1)
        elif (m := _NSPAWN[0].match(part) or _NSPAWN[1].match(part)) and "machine.slice" in parts:
            runtime, container = "systemd", m.group(1)
        elif in_slurm and (m := _JOB.match(part)):
            job, step = m.group(1), None
        elif job is not None and (m := _STEP.match(part)):
            step = m.group(1)
    return CgroupInfo(path=path, version=version, runtime=runtime, container_id=container,
                      pod_uid=pod_uid, job=job, step=step, unit=unit)  # fmt: skip


def _container(part: str) -> tuple[Runtime | None, str | None]:
    for pattern, kind in _CONTAINER_SCOPES:
        m = pattern.match(part)
        if m is not None:
            return kind, m.group(1)
    return None, None


def _bare_id(part: str) -> str | None:
    return part if re.fullmatch(_HEX_ID, part) else None


class CgroupReader:
    """Reads ``<proc_root>/<pid>/cgroup``; quiet about vanished pids, warns once on garbage."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc_root = Path(proc_root)
        self._warned = False

    def read(self, pid: int) -> CgroupInfo | None:
        """The pid's cgroup owner, or None when the pid is gone, hidden or unreadable."""
        path = self.proc_root / str(pid) / "cgroup"
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES)
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            return None  # exited, hidden by hidepid, or another user's under a strict LSM
        except OSError as exc:
            log.debug("%s: unreadable (%s)", path, exc)
            return None
        try:
            return parse_cgroup(data.decode("utf-8", "replace"))
        except ValueError as exc:
            if not self._warned:
                self._warned = True
                log.warning("%s: %s; processes with such files get no cgroup attribution",
                            path, exc)  # fmt: skip
            return None
