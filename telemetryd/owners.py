"""Who holds a GPU, named one way everywhere: the agent's job accounting, the stores, top.

``GpuOwner`` (telemetryd/model.py) says how an owner was learned. Two rules follow from
docs/attribution.md and every consumer must apply them alike, or a job would have one
name in the agent's records, another in the stores and a third in ``top``:
- owners learned from a process's cgroup count only when the GPU has no owner from the job
  mapping directory or the kubelet (the scheduler's word beats a guess from what runs);
- a job is keyed by its HPC job id, else by ``<namespace>/<pod>``, else by the pod's UID.
The functions take anything with the owner's attributes, so ``top``'s lenient views
(telemetryd/watchwire.py) use them as the strict wire structs do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, TypeVar

KEY_MAX = 256  # the wire's text limit (model.Text): a key is sent as JobRecord.job


class Owner(Protocol):
    """The attributes of ``model.GpuOwner`` the rules read."""

    @property
    def source(self) -> str:
        """How it was learned: jobmap, kubelet or cgroup."""

    @property
    def job(self) -> str | None:
        """The HPC job id."""

    @property
    def pod(self) -> str | None:
        """The pod's name."""

    @property
    def namespace(self) -> str | None:
        """The pod's namespace."""

    @property
    def pod_uid(self) -> str | None:
        """The pod's UID (from a cgroup)."""


OwnerT = TypeVar("OwnerT", bound=Owner)


def counted(owners: Sequence[OwnerT] | None) -> list[OwnerT]:
    """The owners that count: the scheduler's (jobmap, kubelet), else the cgroup ones."""
    if not owners:
        return []
    sure = [o for o in owners if o.source != "cgroup"]
    return sure or list(owners)


def pod_key(namespace: str | None, pod: str | None, uid: str | None) -> str:
    """A pod as a job key: ``namespace/pod``, else its UID ("" when neither is known)."""
    if pod:
        return f"{namespace}/{pod}" if namespace else pod
    return uid or ""


def job_key(owner: Owner) -> tuple[str, Literal["hpc", "pod"]] | None:
    """(key, kind) of the job an owner stands for; None for an owner naming nothing."""
    if owner.job:
        return owner.job[:KEY_MAX], "hpc"
    pod = pod_key(owner.namespace, owner.pod, owner.pod_uid)
    return (pod[:KEY_MAX], "pod") if pod else None
