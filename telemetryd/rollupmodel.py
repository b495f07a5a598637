"""The node rollup: what one site tells the national level about a node per rollup interval.

A rollup is the aggregate of the reports the aggregator accepted from one node during one
``[aggregator] rollup_interval``, published on ``telemetry/v1/<cluster>/_rollup/<node>``
and bridged to the national broker (docs/federation.md). It is built to cross a site's
boundary: per GPU only means, peaks, counts and the energy-counter delta; per node only
presence and the ids of the jobs and pods holding its GPUs. Process lists, command lines,
users, host metrics and events never appear here: they are raw data that stays on site.

Compact JSON (absent fields are omitted), strict decoding like every wire struct, its own
``schema`` so the national side can refuse a rollup it does not understand.
"""

from __future__ import annotations

from typing import Annotated, Literal

from telemetryd.codec import Meta, Struct, field, json_decoder
from telemetryd.model import Bytes, Celsius, Count, Name, Pct, PctF, Text, Watts

ROLLUP_SCHEMA: Literal[1] = 1

Health = Literal[
    "ok", "unknown", "gpu_lost", "reset_required", "timeout", "hung", "driver", "error"
]
"""``ok``; ``unknown`` when no reading came this interval; else the newest reading's error."""


class _Base(Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """As model.py's wire structs: absent optional fields are omitted, unknown ones refused."""


class RollupGpu(_Base):
    """One GPU over the interval; a metric is absent when no reading had it."""

    index: Count
    uuid: Text
    health: Health
    samples: Count = 0  # readings in the interval (reports that carried this GPU)
    failed: Count = 0  # readings with an error (the GPU could not be read)
    util_mean_pct: PctF | None = None
    util_max_pct: Pct | None = None
    power_mean_w: Watts | None = None
    temp_max_c: Celsius | None = None
    mem_used_max_bytes: Bytes | None = None
    mem_total_bytes: Bytes | None = None
    energy_mj: Count | None = None  # energy-counter delta over the interval (not integrated)
    xids: Count = 0  # XID events in the interval
    errors: Count = 0  # other error events (ECC, remap, lost, error)
    jobs: list[Text] = field(default_factory=list)  # job/pod ids that held it in the interval


class Rollup(_Base):
    """One node over one rollup interval (``telemetry/v1/<cluster>/_rollup/<node>``)."""

    schema: Literal[1]
    cluster: Name
    node: Name
    time_ns: Annotated[int, Meta(gt=0)]  # when the aggregator built it (the interval's end)
    start_ns: Annotated[int, Meta(gt=0)]  # the interval's start
    state: Literal["online", "offline", "silent", "unknown"]
    reports: Count = 0  # reports accepted in the interval
    last_seen_ns: Count | None = None
    gpus: list[RollupGpu] = field(default_factory=list)
    jobs: list[Text] = field(default_factory=list)  # ids only: HPC job ids, namespace/pod


decode_rollup = json_decoder(Rollup)
