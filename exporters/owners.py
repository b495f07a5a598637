"""Who holds a GPU, as the stores show it: ``hpc_job``, ``pod``, ``namespace``, ``container``.

One rule for every way out (the ``gpu`` measurement's string fields, the SQLite gpu
columns, the Prometheus labels), so a dashboard filtering on ``hpc_job="1234"`` finds the
same GPUs in each. It is dcgm-exporter's: its HPC job mapping adds ``hpc_job``, its
Kubernetes mapping ``pod``, ``namespace`` and ``container``; a GPU shared by several
owners gets each value once, sorted and comma-joined (dcgm-exporter repeats the series
per owner instead, which double-counts a shared GPU in every ``sum``).

Which owners count is telemetryd/owners.py's rule, the same as the agent's job
accounting and top's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from telemetryd.model import GpuOwner
from telemetryd.owners import counted

OwnerLabels = tuple[str | None, str | None, str | None, str | None]
"""(hpc_job, pod, namespace, container); None where no owner gives a value."""
OWNER_KEYS = ("hpc_job", "pod", "namespace", "container")
NO_OWNER: OwnerLabels = (None, None, None, None)


def owner_labels(owners: Sequence[GpuOwner] | None, gi_id: int | None = None) -> OwnerLabels:
    """The four values of a GPU, or of its MIG instance ``gi_id``; None where unknown.

    An instance's owners are those holding it and those holding the whole GPU.
    """
    mine = counted(owners)
    if gi_id is not None:
        mine = [o for o in mine if o.gi_id is None or o.gi_id == gi_id]
    if not mine:
        return NO_OWNER
    return (
        _join(o.job for o in mine),
        _join(o.pod for o in mine),
        _join(o.namespace for o in mine),
        _join(o.container for o in mine),
    )


def _join(values: Iterable[str | None]) -> str | None:
    found = sorted({v for v in values if v})
    return ",".join(found) if found else None
