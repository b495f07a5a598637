"""The HPC job mapping directory, as dcgm-exporter reads it (``--hpc-job-mapping-dir``).

A Slurm prolog writes one file per GPU the job was given, named by the GPU's index (or
``<gpu>.<gi>`` for a MIG instance), holding the job id, one per line when several jobs
share the GPU; the epilog removes the files (examples/slurm/). Reading it each interval
costs a directory listing and a few tiny reads, and it needs no scheduler API, no
privileges and no network, which is why both dcgm-exporter and telemetryd use it.

What is tolerated, because a prolog and the agent race: a file being written (read as
what it holds now), a file removed between listing and reading (skipped), blank lines and
surrounding spaces. What is refused, with one warning per file name: names that are not
``<int>`` or ``<int>.<int>``, and job ids that are not printable or longer than 128
characters. A missing directory means no job runs (the prolog creates it).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{1,4})(?:\.(\d{1,4}))?\Z")
_JOB = re.compile(r"^[\x21-\x7e]{1,128}\Z")
MAX_FILE_BYTES = 4096

JobMap = dict[tuple[int, int | None], list[str]]
"""(GPU index, MIG GPU-instance id or None) -> job ids on it, in file order."""


class JobMapReader:
    """Reads the directory on request; remembers which bad names it already warned about."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._warned: set[str] = set()

    def read(self) -> JobMap:
        """The mapping now; {} when the directory does not exist."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn("", f"job mapping directory {self.directory} is unreadable: {exc}")
            return {}
        found: JobMap = {}
        for name in sorted(names):
            m = _NAME.match(name)
            if m is None:
                if not name.startswith("."):  # editors' and scripts' temporary files
                    hint = "expected a GPU index such as 0, or <gpu>.<gi> for MIG"
                    self._warn(name, f"{self.directory / name}: not a job mapping file ({hint})")
                continue
            jobs = self._jobs(name)
            if jobs:
                gi = int(m.group(2)) if m.group(2) is not None else None
                found[(int(m.group(1)), gi)] = jobs
        return found

    def _jobs(self, name: str) -> list[str]:
        try:
            with open(self.directory / name, "rb") as f:
                data = f.read(MAX_FILE_BYTES)
        except (FileNotFoundError, IsADirectoryError):
            return []  # removed by an epilog since the listing
        except OSError as exc:
            self._warn(name, f"{self.directory / name}: unreadable ({exc})")
            return []
        jobs: list[str] = []
        for raw in data.decode("utf-8", "replace").splitlines():
            job = raw.strip()
            if not job:
                continue
            if _JOB.match(job) is None:
                self._warn(name, f"{self.directory / name}: job id {job[:40]!r} refused "
                           "(expected up to 128 printable characters without spaces)")  # fmt: skip
                continue
            if job not in jobs:
                jobs.append(job)
        return jobs

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)
