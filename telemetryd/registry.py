"""Name -> factory maps for collector plugins and GPU sources.

Built-ins are listed here by import path (imported only when used, so ``telemetryd
--help`` never loads NVML or psutil); third parties add theirs through the entry point
groups ``telemetryd.collectors`` and ``telemetryd.gpu_backends``. A third-party plugin
cannot silently replace a built-in of the same name: the built-in wins and we warn.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collectors.base import GpuSourceFactory, HostCollectorFactory
    from exporters.base import SinkFactory

log = logging.getLogger(__name__)

COLLECTOR_GROUP = "telemetryd.collectors"
GPU_GROUP = "telemetryd.gpu_backends"
SINK_GROUP = "telemetryd.sinks"

_BUILTIN_COLLECTORS = {
    "host": "collectors.host:create",
    "rapl": "collectors.rapl:create",
    "hwmon": "collectors.hwmon:create",
}
_BUILTIN_GPU = {
    "nvml": "collectors.nvml:create",
    "sim": "collectors.sim:create",
}
_BUILTIN_SINKS = {
    "sqlite": "exporters.sqlite:create",
    "influxdb": "exporters.influxdb:create",
    "influxdb2": "exporters.influxdb2:create",
}


def _targets(builtins: dict[str, str], group: str) -> dict[str, str]:
    found = dict(builtins)
    for ep in entry_points(group=group):
        if ep.name in builtins:
            if ep.value != builtins[ep.name]:
                log.warning(
                    "plugin %s=%s from %s ignored: %r is a built-in name",
                    ep.name,
                    ep.value,
                    group,
                    ep.name,
                )
            continue
        found[ep.name] = ep.value
    return found


def collector_names() -> list[str]:
    """Every host collector that can be named in ``agent.collectors``."""
    return sorted(_targets(_BUILTIN_COLLECTORS, COLLECTOR_GROUP))


def gpu_backend_names() -> list[str]:
    """Every GPU source that can be named in ``agent.gpu_backend`` (besides auto and none)."""
    return sorted(_targets(_BUILTIN_GPU, GPU_GROUP))


def _load(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return cast(Callable[..., Any], getattr(importlib.import_module(module), attr))


def collector_factory(name: str) -> HostCollectorFactory:
    """The factory of host collector ``name``; KeyError if none is registered."""
    return cast("HostCollectorFactory", _load(_targets(_BUILTIN_COLLECTORS, COLLECTOR_GROUP)[name]))


def gpu_factory(name: str) -> GpuSourceFactory:
    """The factory of GPU source ``name``; KeyError if none is registered."""
    return cast("GpuSourceFactory", _load(_targets(_BUILTIN_GPU, GPU_GROUP)[name]))


def sink_factory(kind: str) -> SinkFactory:
    """The factory of sink kind ``kind`` (a URL scheme); KeyError if none is registered."""
    return cast("SinkFactory", _load(_targets(_BUILTIN_SINKS, SINK_GROUP)[kind]))


def sink_kinds() -> list[str]:
    """Every sink kind (URL scheme family) that can be named in ``aggregator.sinks``."""
    return sorted(_targets(_BUILTIN_SINKS, SINK_GROUP))
