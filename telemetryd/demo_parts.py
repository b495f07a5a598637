"""The plumbing of a demo run: parts started in one TaskGroup and stopped in a given order.

Each part (broker, aggregator, agents, ...) is a real service coroutine with its own stop
event, so it shuts down through its own code path: agents announce ``offline`` through a
broker that is still there, the aggregator acknowledges what it received, the broker goes
last. A part that overruns its share of the shutdown is cancelled, named in a warning.
Also here: free loopback ports, waiting for an HTTP readiness probe, the temporary state
directory, the simulated jobs of each agent, and sending log lines to a file while a
terminal UI owns the screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from telemetryd.config import AttributionConfig
from telemetryd.errors import TelemetrydError

log = logging.getLogger(__name__)

STOP_PHASE_S = 4.0  # each part gets this long to stop before it is cancelled


class Parts:
    """Named tasks of one TaskGroup, grouped into parts that stop one after another."""

    def __init__(self, group: asyncio.TaskGroup, order: tuple[str, ...]) -> None:
        self.group = group
        self.order = order
        self.stops = {part: asyncio.Event() for part in order}
        self.tasks: dict[str, list[asyncio.Task[None]]] = {part: [] for part in order}

    def start(
        self,
        part: str,
        name: str,
        service: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    ) -> asyncio.Task[None]:
        """Run ``service(stop)`` as task ``name``, stopped with ``part``."""
        task = self.group.create_task(service(self.stops[part]), name=name)
        self.tasks[part].append(task)
        return task

    async def stop_all(self) -> None:
        """Stop every part in order; each gets STOP_PHASE_S before it is cancelled."""
        for part in self.order:
            self.stops[part].set()
            tasks = self.tasks[part]
            if not tasks:
                continue
            _, late = await asyncio.wait(tasks, timeout=STOP_PHASE_S)
            for task in late:
                log.warning("demo: %s did not stop within %g s; cancelled", task.get_name(),
                            STOP_PHASE_S)  # fmt: skip
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)


def sim_jobs(agent_dir: Path) -> AttributionConfig:
    """Attribution for a demo agent whose simulator schedules jobs (``[agent.sim] jobs``).

    Each agent gets its own job mapping directory (files are named by GPU index), so
    ``top`` and ``telemetryd jobs`` show jobs, with their energy, as on a Slurm cluster.
    """
    return AttributionConfig(job_map_dir=str(agent_dir / "jobs"))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the service binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_ready(address: str, timeout_s: float = 20.0) -> None:
    """Poll ``http://address/readyz`` until it answers 200; TelemetrydError with its reason."""
    from exporters.http import HttpClient, HttpUnavailable

    client = HttpClient(timeout_s=2.0)
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    last = "no answer"
    try:
        while loop.time() < until:
            try:
                reply = await client.request("GET", f"http://{address}/readyz")
            except HttpUnavailable as exc:
                last = str(exc)
            else:
                if reply.status == 200:
                    return
                last = reply.body.decode(errors="replace")
            await asyncio.sleep(0.1)
    finally:
        await client.close()
    raise TelemetrydError(f"demo: the aggregator was not ready within {timeout_s:g} s: {last}")


@contextlib.contextmanager
def state_dir(keep: str | None) -> Iterator[Path]:
    """``keep`` (created, left in place), else a temporary directory removed at exit."""
    if keep is not None:
        path = Path(keep)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TelemetrydError(f"--keep-state {keep}: {exc.strerror or exc}") from None
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="telemetryd-demo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def log_to(path: Path, *, keep: bool) -> Iterator[None]:
    """While the terminal UI has the screen, log lines go to ``path`` instead of stderr."""
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = saved
        handler.close()
        if keep and path.stat().st_size:
            print(f"telemetryd demo: the log of the run is in {path}", file=sys.stderr)
