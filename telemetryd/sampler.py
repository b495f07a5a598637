"""One node's sample: the GPU source and the host collectors, assembled into a Report.

Used by ``collect`` and by the agent. Every source runs under a deadline on its own
thread; a source that is absent on this machine is reported once (in the first report and
the log), a source that fails is reported in that interval's ``errors``, and neither
stops the others. The finished report is checked against the strict wire decoder before
it leaves: a value a collector got wrong is dropped (and logged once) rather than making
the aggregator refuse the whole report.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from copy import copy
from typing import Any

from collectors.attribution import Attributor
from collectors.base import GpuSample, GpuSource, HostCollector
from telemetryd import __version__, registry
from telemetryd.codec import DecodeError
from telemetryd.config import AgentConfig
from telemetryd.errors import CollectorError, SourceUnavailable
from telemetryd.model import (
    REPORT_SCHEMA,
    AgentStats,
    Host,
    Report,
    SourceError,
    decode_report,
    encode_report,
)
from telemetryd.names import default_node
from telemetryd.workers import Worker, WorkerBusy, WorkerTimeout

log = logging.getLogger(__name__)

NVML_HINT = 'use --gpu-backend sim (or gpu_backend = "sim") to simulate a node of 8 GPUs'
_MESSAGE_MAX = 256
_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _short(text: str) -> str:
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 1] + "…"


class NodeSampler:
    """Owns a node's sources for the life of the process and samples them on request."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        gpu: GpuSource | None,
        collectors: list[HostCollector],
        absent: dict[str, str] | None = None,
        attributor: Attributor | None = None,
    ) -> None:
        self.cfg = cfg
        self.node = cfg.node or default_node()
        self.cluster = cfg.cluster
        self.boot_id = uuid.uuid4().hex
        self.gpu = gpu
        self.collectors = collectors
        self.absent: dict[str, str] = dict(absent or {})
        self._workers = {c.name: Worker[None](f"telemetryd-{c.name}") for c in collectors}
        self.attributor = attributor
        if attributor is not None:
            self._workers[attributor.name] = Worker[None]("telemetryd-attribution")
        self._absent_sent = False
        self._dropped_fields: set[str] = set()

    async def sample(self, seq: int = 0) -> Report:
        """Sample every source once, concurrently; never raises for a source's failure."""
        started = time.monotonic()
        time_ns = time.time_ns()
        gpu_task = asyncio.ensure_future(self.gpu.sample() if self.gpu else _no_gpus())
        parts = await asyncio.gather(*(self._host_part(c) for c in self.collectors))
        gpu_sample = await gpu_task
        host = Host()
        errors: list[SourceError] = []
        if self.attributor is not None and gpu_sample.gpus:
            error = await self._attribute(self.attributor, gpu_sample)
            if error is not None:
                errors.append(error)
        for part, error in parts:
            if part is not None:
                _merge(host, part)
            if error is not None:
                errors.append(error)
        report = Report(
            schema=REPORT_SCHEMA,
            cluster=self.cluster,
            node=self.node,
            boot_id=self.boot_id,
            seq=seq,
            time_ns=time_ns,
            interval_s=self.cfg.interval,
            agent=AgentStats(
                version=__version__,
                sample_duration_s=round(time.monotonic() - started, 6),
                gpu_duration_s=round(gpu_sample.duration_s, 6) if self.gpu else None,
                events_dropped=gpu_sample.events_dropped or None,
            ),
            gpus=gpu_sample.gpus,
            host=host if self.collectors else None,
            events=gpu_sample.events,
            errors=errors,
        )
        if self.absent and not self._absent_sent:
            report.absent = {name: _short(reason) for name, reason in self.absent.items()}
            self._absent_sent = True
        return self.conform(report)

    async def _host_part(self, collector: HostCollector) -> tuple[Host | None, SourceError | None]:
        """The collector's part and its error; what it read before failing is kept.

        A part whose collector overran its deadline is never used: its thread may still be
        writing to it.
        """
        part = Host()
        worker = self._workers[collector.name]
        try:
            await worker.run(
                lambda: collector.collect(part), collector.name, self.cfg.collector_timeout
            )
        except CollectorError as exc:
            return part, SourceError(source=collector.name, message=_short(str(exc)))
        except (WorkerTimeout, WorkerBusy) as exc:
            return None, SourceError(source=collector.name, message=_short(str(exc)))
        except Exception as exc:  # a plugin's bug must not cost the report
            log.exception("collector %s failed unexpectedly", collector.name)
            return None, SourceError(source=collector.name, message=_short(f"failed: {exc!r}"))
        return part, None

    async def _attribute(self, attributor: Attributor, sample: GpuSample) -> SourceError | None:
        """Who uses the GPUs, under the collector deadline.

        On a timeout the GPUs are kept as the GPU source read them: the stage works on
        copies, so a late thread cannot write into a report that has already left.
        """
        gpus = [copy(g) for g in sample.gpus]
        for gpu in gpus:
            if gpu.processes is not None:
                gpu.processes = [copy(p) for p in gpu.processes]
        worker = self._workers[attributor.name]
        try:
            await worker.run(lambda: attributor.attribute(gpus), attributor.name,
                             self.cfg.collector_timeout)  # fmt: skip
        except (WorkerTimeout, WorkerBusy) as exc:
            return SourceError(source=attributor.name, message=_short(str(exc)))
        except Exception as exc:  # a bug here must not cost the report
            log.exception("attribution failed unexpectedly")
            return SourceError(source=attributor.name, message=_short(f"failed: {exc!r}"))
        sample.gpus = gpus
        return None

    def conform(self, report: Report) -> Report:
        """Drop any value the wire decoder would refuse, so the report is always accepted."""
        for _ in range(50):
            try:
                decode_report(encode_report(report))
            except DecodeError as exc:
                if not _drop(report, exc.path):
                    raise
                if exc.path not in self._dropped_fields:
                    self._dropped_fields.add(exc.path)
                    log.warning("dropped %s from reports: %s", exc.path, exc.problem)
                continue
            return report
        raise DecodeError("", "report still invalid after dropping 50 fields")

    def close(self) -> None:
        """Close every source; safe to call twice."""
        for worker in self._workers.values():
            worker.stop()
        for collector in self.collectors:
            collector.close()
        if self.attributor is not None:
            self.attributor.close()
        if self.gpu is not None:
            self.gpu.close()


async def _no_gpus() -> GpuSample:
    return GpuSample()


def _merge(host: Host, part: Host) -> None:
    for name in part.__struct_fields__:
        value = getattr(part, name)
        if value is not None:
            setattr(host, name, value)


def _optional(parent: Any, attr: str) -> bool:
    """Whether ``attr`` of a wire struct defaults to None (may be absent)."""
    fields = type(parent).__struct_fields__
    defaults = type(parent).__struct_defaults__
    first_default = len(fields) - len(defaults)
    if attr not in fields or fields.index(attr) < first_default:
        return False
    return defaults[fields.index(attr) - first_default] is None


def _drop(report: Report, path: str) -> bool:
    """Unset the deepest optional field on ``path``; a GPU itself is never dropped."""
    steps: list[tuple[Any, str]] = []
    target: Any = report
    for m in _PATH_PART.finditer(path):
        name, index = m.group(1), m.group(2)
        if target is None:
            break
        if name:
            steps.append((target, name))
            target = getattr(target, name, None)
        elif isinstance(target, list) and int(index) < len(target):
            target = target[int(index)]
    for parent, attr in reversed(steps):
        if _optional(parent, attr):
            setattr(parent, attr, None)
            return True
    return False


def open_sampler(
    cfg: AgentConfig, *, gpu_backend: str | None = None, gpu_source: GpuSource | None = None
) -> NodeSampler:
    """Build and open a node's sources from configuration.

    ``auto`` falls back to no GPUs when NVML does not load, saying so once; an explicitly
    named backend (or a given ``gpu_source``) that cannot open raises SourceUnavailable.
    """
    backend = "nvml" if gpu_source is not None else (gpu_backend or cfg.gpu_backend)
    absent: dict[str, str] = {}
    gpu: GpuSource | None = None
    if backend != "none":
        name = "nvml" if backend == "auto" else backend
        gpu = gpu_source or registry.gpu_factory(name)(cfg)
        try:
            gpu.open()
        except SourceUnavailable as exc:
            gpu.close()
            gpu = None
            if backend != "auto":
                raise
            absent["gpu"] = f"{exc}; {NVML_HINT}"
            log.warning("no GPUs: %s", absent["gpu"])
        else:
            for source, reason in gpu.notes().items():
                absent[source] = reason
                log.warning("%s: %s", source, reason)
    collectors: list[HostCollector] = []
    for name in cfg.collectors:
        collector = registry.collector_factory(name)(cfg)
        try:
            collector.open()
        except SourceUnavailable as exc:
            collector.close()
            absent[name] = str(exc)
            log.info("collector %s absent: %s", name, exc)
            continue
        collectors.append(collector)
    attributor: Attributor | None = None
    if gpu is not None:
        # Simulated pids are not processes of this machine: never look them up in /proc.
        attributor = Attributor(cfg.attribution, real_pids=gpu.name != "sim")
        for source, reason in attributor.open().items():
            absent[source] = reason
            log.warning("%s: %s", source, reason)
    return NodeSampler(cfg, gpu=gpu, collectors=collectors, absent=absent, attributor=attributor)
