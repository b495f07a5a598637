"""The simulator as the node's scheduler: its jobs in the job mapping directory.

With ``[agent.sim] jobs = true`` each busy phase of a simulated GPU (simphysics starts a
job's process with it) is a job: its id is written to ``<job_map_dir>/<gpu>`` when it
starts and the file is removed when it ends, exactly as examples/slurm/prolog.sh and
epilog.sh do on a real node. So everything downstream (attribution, energy per job, the
aggregator's join, ``top``, ``telemetryd jobs``) runs on the same path as in production.

Job ids are ``<node>-<n>``: the node name keeps two simulated nodes from sharing an id
(the aggregator would join them as one job), and ``n`` comes from a per-node counter kept
in ``<job_map_dir>/.sim-<node>-jobs`` (a dot file: the reader skips it), so a restarted
simulator does not reuse an id the accounts may still hold. A restarted simulator starts
with fresh physics, so it first removes the files it left for its GPUs: those jobs ended.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from collectors.simphysics import GpuPhysics

log = logging.getLogger(__name__)

SIM_JOBS_NEED_DIR = (
    "needs [agent.attribution] job_map_dir: the directory the simulator writes its jobs to"
    " (for example a 'jobs' folder in the state directory)"
)


class SimScheduler:
    """Keeps ``directory`` in step with the simulated GPUs' jobs; see the module docstring."""

    def __init__(self, directory: str | Path, node: str, gpus: int) -> None:
        self.directory = Path(directory)
        self.node = node
        self._counter_file = self.directory / f".sim-{node}-jobs"
        self._running: list[tuple[int, str] | None] = [None] * gpus  # (jobs_started, id)
        self._next = 1

    def open(self) -> None:
        """Create the directory, clear this node's GPUs, read the job counter (OSError)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for index in range(len(self._running)):
            for stale in [self.directory / str(index), *self.directory.glob(f"{index}.*")]:
                stale.unlink(missing_ok=True)
        try:
            self._next = int(self._counter_file.read_text().strip() or "1")
        except FileNotFoundError:
            pass
        except ValueError:
            log.warning("%s: not a job counter; numbering jobs from 1", self._counter_file)

    def sync(self, physics: Sequence[GpuPhysics]) -> None:
        """Write the jobs that started and remove those that ended since the last call."""
        for index, p in enumerate(physics):
            running = self._running[index]
            if running is not None and (not p.busy or running[0] != p.jobs_started):
                self._remove(index)
            if p.busy and self._running[index] is None:
                self._start(index, p.jobs_started)

    def _start(self, index: int, started: int) -> None:
        job = f"{self.node}-{self._next}"
        self._next += 1
        try:
            _replace(self._counter_file, f"{self._next}\n")
            _replace(self.directory / str(index), f"{job}\n")
        except OSError as exc:
            log.warning("simulated job %s on GPU %d not written: %s", job, index, exc)
            return
        self._running[index] = (started, job)

    def _remove(self, index: int) -> None:
        self._running[index] = None
        try:
            (self.directory / str(index)).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("simulated job on GPU %d not removed: %s", index, exc)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` whole: a reader sees the old file or the new one (as the prolog does)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
