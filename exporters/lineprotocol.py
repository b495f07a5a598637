r"""InfluxDB line protocol: what each measurement holds, and reports turned into lines.

One encoder for every InfluxDB sink (2.x through influxdb-client, 1.x through ``/write``)
and for ``telemetryd export``, so the same report always becomes the same points, whoever
writes it and however often: a point is its measurement, tag set and timestamp, and the
timestamp is the agent's sample time (an event's own time), never the server's clock.
Writing a batch again after a crash or a retry therefore overwrites with equal values.

Tags come only from bounded sets (cluster, node, GPU index, UUID, model, MIG instance,
and per-host devices such as mounts and interfaces); pids, job ids, pod names, boot ids
and sequence numbers are fields. Who holds a GPU is four string fields of its ``gpu``
point (exporters/owners.py), written when it has owners; a process's attribution is
fields of its ``gpu_process`` point. A job is a ``job`` point written once, when its
record says it ended (time: its end): the running part of a job is in the ``gpu`` points
already, and a point per interval per job would only repeat them. Its ``slot`` tag keeps
two jobs of one node that ended in the same report apart, as ``slot`` does for processes.

Field types come from the wire model (telemetryd/fields.py), so an integer is always
written as an integer and a field cannot change type by accident; a value
InfluxDB cannot hold (a float that is not finite, an integer beyond int64) is left out of
its line and counted in ``fields_dropped``, never written as something else.

The full list of measurements, tags and fields with units is docs/schema.md. Escaping
follows the line protocol reference: measurement names escape comma and space; tag keys,
tag values and field keys escape comma, equals sign and space (and a tab, carriage return
or newline is written as ``\t``, ``\r``, ``\n``, which line protocol cannot carry raw
there); string field values escape double quote and backslash.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from math import isfinite
from typing import Any

from exporters.owners import OWNER_KEYS, owner_labels
from telemetryd.clock_events import mask
from telemetryd.codec import Struct
from telemetryd.fields import Scalar, split_fields
from telemetryd.model import (
    AgentStats,
    DiskIO,
    DiskUsage,
    Event,
    Fan,
    Gpu,
    GpuProcess,
    Host,
    JobRecord,
    MigDevice,
    NetIO,
    PowerZone,
    Report,
    Sensor,
)

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ ", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


_BACKSLASH_BEFORE_ESCAPE = re.compile(r"\\+(?=[,= \n\r\t]|\Z)")


def escape_measurement(name: str) -> str:
    """A measurement name as line protocol writes it."""
    return name.translate(_MEASUREMENT)


@functools.lru_cache(maxsize=1 << 16)
def escape_key(text: str) -> str:
    r"""A tag key, tag value or field key as line protocol writes it.

    Cached: the same node names, models and UUIDs come back every interval. Line protocol
    cannot end a key or tag value with a backslash (InfluxDB reads it as escaping the
    separator after it and refuses the line), and InfluxDB 1.x's parsers misread a
    backslash written before an escaped character (``a\,`` written ``a\\,``): a field key
    ``k\,0`` is "invalid field format", a last tag ``\ \,`` with a newline in a string
    field "unbalanced quotes", tags ``\ 0`` and ``\,0`` "point is invalid" (found by
    tests/chaos/test_fuzz_lineprotocol.py). So backslashes at the end or before a comma,
    ``=``, space, tab, CR or newline are left out; other backslashes are kept.
    """
    return _BACKSLASH_BEFORE_ESCAPE.sub("", text).translate(_KEY)


def escape_string(text: str) -> str:
    """A string field value, without its surrounding quotes."""
    if "\\" in text or '"' in text:
        return text.replace("\\", "\\\\").replace('"', '\\"')
    return text


def tag(key: str, value: str | None) -> str:
    """``,key=value`` for a tag whose value we do not choose, or "" when it is empty.

    Line protocol has no empty tag values: such a tag is left out instead.
    """
    escaped = escape_key(value) if value else ""
    return f",{key}={escaped}" if escaped else ""


def field_key(name: str) -> str:
    r"""A field key from a name we do not choose (a collector plugin's metric).

    InfluxDB refuses the key ``time`` and reserves keys starting with ``_`` (2.x and 3
    use ``_field``, ``_value``...): those get a trailing or leading ``x`` instead of being
    refused, so one odd plugin metric cannot make a whole line fail. A name that escapes
    to "" (empty, or only backslashes) gives "": the caller leaves that field out and
    counts it.
    """
    if name == "time" or name.startswith("_"):
        name = "x" + name if name.startswith("_") else name + "_"
    return escape_key(name)


Add = Callable[[Any, list[str]], int]
"""Appends ``key=value`` for each present field of an object; returns how many it dropped."""


def _compile(scalars: tuple[tuple[str, Scalar], ...]) -> Add:
    """The ``Add`` of one struct type, generated once, like dataclasses' ``__init__``.

    Why generated: this is the InfluxDB sinks' hot loop (some 50 fields per GPU per report),
    and unrolled attribute reads with the formatting of each field's type written out run
    twice as fast as a loop over (key, type) pairs (measured: 17 -> 9 us per GPU). The
    source is made only from the model's field names (identifiers) and ``repr`` of keys.
    """
    lines = ["def add(o, out):", "    dropped = 0"]
    for name, kind in scalars:
        key = escape_key(name) + "="
        lines += [f"    x = o.{name}", "    if x is not None:"]
        if kind is int:
            lines += [
                f"        if {INT64_MIN} <= x <= {INT64_MAX}:",
                f"            out.append({key!r} + str(x) + 'i')",
                "        else:",
                "            dropped += 1",
            ]
        elif kind is float:
            lines += [
                "        if isfinite(x):",
                f"            out.append({key!r} + repr(float(x)))",
                "        else:",
                "            dropped += 1",
            ]
        elif kind is bool:
            lines.append(f"        out.append({key!r} + ('true' if x else 'false'))")
        else:
            lines.append(f"        out.append({key!r} + '\"' + escape_string(x) + '\"')")
    lines.append("    return dropped")
    namespace: dict[str, Any] = {"isfinite": isfinite, "escape_string": escape_string}
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from field names above
    return typing.cast(Add, namespace["add"])


class _Fields:
    """The scalar fields of one struct type, minus those stored as tags or elsewhere."""

    def __init__(self, struct: type[Struct], skip: Iterable[str] = ()) -> None:
        fields = split_fields(struct, skip=set(skip))
        self.names = fields.names()
        self.add = _compile(fields.scalars)


_GPU = _Fields(Gpu, skip=("index", "uuid", "name", "error", "clock_event_reasons"))
_MIG = _Fields(MigDevice, skip=("uuid", "gi_id", "ci_id", "name"))
_PROCESS = _Fields(GpuProcess, skip=("gi_id", "ci_id"))
_HOST = _Fields(Host)
_DISK = _Fields(DiskUsage, skip=("mount",))
_DISKIO = _Fields(DiskIO, skip=("device",))
_NET = _Fields(NetIO, skip=("iface",))
_POWER = _Fields(PowerZone, skip=("zone", "name"))
_SENSOR = _Fields(Sensor, skip=("chip", "label"))
_FAN = _Fields(Fan, skip=("chip", "label"))
_EVENT = _Fields(Event, skip=("time_ns", "kind", "gpu_index", "uuid", "code", "severity"))
_REPORT = _Fields(Report, skip=("cluster", "node", "time_ns"))
_AGENT = _Fields(AgentStats)
_JOB = _Fields(JobRecord, skip=("state",))
_JOB_EXTRA = ("duration_s", "gpus", "gpu_count", "energy_j")

_ERROR = ("error_code", "error_message")
MEASUREMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # measurement: (tag keys, field keys) - what docs/schema.md documents, checked by tests
    "gpu": (
        ("cluster", "gpu", "model", "node", "uuid"),
        (*_GPU.names, "clock_event_reasons", "clock_event_mask", "failed", *_ERROR, *OWNER_KEYS),
    ),
    "gpu_mig": (
        ("ci", "cluster", "gi", "gpu", "node", "profile", "uuid"),
        (*_MIG.names, "gpu_uuid"),
    ),
    "gpu_process": (("ci", "cluster", "gi", "gpu", "node", "slot", "uuid"), _PROCESS.names),
    "host": (("cluster", "node"), _HOST.names),
    "host_cpu": (("cluster", "cpu", "node"), ("cpu_pct",)),
    "host_disk": (("cluster", "mount", "node"), _DISK.names),
    "host_diskio": (("cluster", "device", "node"), _DISKIO.names),
    "host_net": (("cluster", "iface", "node"), _NET.names),
    "host_power": (("cluster", "name", "node", "zone"), _POWER.names),
    "host_sensor": (("chip", "cluster", "label", "node"), _SENSOR.names),
    "host_fan": (("chip", "cluster", "label", "node"), _FAN.names),
    "host_plugin": (("cluster", "node", "plugin"), ()),  # fields: the plugin's own metrics
    "event": (("cluster", "code", "gpu", "kind", "node", "severity", "uuid"), _EVENT.names),
    "agent": (("cluster", "node"), (*_REPORT.names, *_AGENT.names, "errors", "error_message")),
    "job": (("cluster", "node", "slot"), (*_JOB.names, *_JOB_EXTRA)),
}


class Encoder:
    """Turns reports into lines; counts the field values InfluxDB could not hold."""

    def __init__(self) -> None:
        self.fields_dropped = 0

    def encode(self, reports: Sequence[Report]) -> list[str]:
        """Every point of ``reports``, one line each (without the newline)."""
        lines: list[str] = []
        for report in reports:
            self._report(report, lines)
        return lines

    def _report(self, r: Report, lines: list[str]) -> None:
        base = f"cluster={escape_key(r.cluster)}"
        node = f"node={escape_key(r.node)}"
        t = f" {r.time_ns}"
        for g in r.gpus:
            self._gpu(g, base, node, t, lines)
        if r.host is not None:
            self._host(r.host, base, node, t, lines)
        for e in r.events:
            tags = [base]
            if e.code is not None:
                tags.append(f"code={e.code}")
            if e.gpu_index is not None:
                tags.append(f"gpu={e.gpu_index}")
            tags.append(f"kind={e.kind}")
            tags.append(node)
            if e.severity is not None:
                tags.append(f"severity={e.severity}")
            fields: list[str] = []
            self.fields_dropped += _EVENT.add(e, fields)
            lines.append(f"event,{','.join(tags)}{tag('uuid', e.uuid)} {','.join(fields)} "
                         f"{e.time_ns}")  # fmt: skip
        fields = []
        self.fields_dropped += _REPORT.add(r, fields)
        self.fields_dropped += _AGENT.add(r.agent, fields)
        if r.errors:
            fields.append(f"errors={len(r.errors)}i")
            text = "; ".join(f"{e.source}: {e.message}" for e in r.errors)
            fields.append(f'error_message="{escape_string(text)}"')
        lines.append(f"agent,{base},{node} {','.join(fields)}{t}")
        ended = sorted((j for j in r.jobs if j.state == "ended"), key=lambda j: (j.job, j.start_ns))
        for slot, j in enumerate(ended):
            self._job(j, f"job,{base},{node},slot={slot}", lines)

    def _job(self, j: JobRecord, tags: str, lines: list[str]) -> None:
        fields: list[str] = []
        self.fields_dropped += _JOB.add(j, fields)
        fields.append(f"duration_s={(j.end_ns - j.start_ns) / 1e9!r}")
        fields.append(f'gpus="{",".join(str(g.index) for g in j.gpus)}"')
        fields.append(f"gpu_count={len(j.gpus)}i")
        if j.energy_mj is not None:
            fields.append(f"energy_j={j.energy_mj / 1000!r}")
        lines.append(f"{tags} {','.join(fields)} {j.end_ns}")

    def _gpu(self, g: Gpu, base: str, node: str, t: str, lines: list[str]) -> None:
        uuid = tag("uuid", g.uuid)
        tags = f"{base},gpu={g.index}{tag('model', g.name)},{node}"
        fields: list[str] = []
        self.fields_dropped += _GPU.add(g, fields)
        reasons = g.clock_event_reasons
        if reasons is not None:
            fields.append(f'clock_event_reasons="{escape_string(",".join(reasons))}"')
            fields.append(f"clock_event_mask={mask(reasons)}i")
        # Always written, so "is this GPU failing now" is the last value of one field.
        if g.error is None:
            fields.append("failed=0i")
        else:
            fields.append("failed=1i")
            fields.append(f'error_code="{g.error.code}"')
            fields.append(f'error_message="{escape_string(g.error.message)}"')
        if g.owners:
            for key, value in zip(OWNER_KEYS, owner_labels(g.owners), strict=True):
                if value is not None:
                    fields.append(f'{key}="{escape_string(value)}"')
        if fields:
            lines.append(f"gpu,{tags}{uuid} {','.join(fields)}{t}")
        for m in g.mig:
            mig_tags = _instance(m.ci_id, base, m.gi_id, g.index, node) + tag("profile", m.name)
            fields = []
            self.fields_dropped += _MIG.add(m, fields)
            fields.append(f'gpu_uuid="{escape_string(g.uuid)}"')
            lines.append(f"gpu_mig,{mig_tags}{tag('uuid', m.uuid)} {','.join(fields)}{t}")
        # A slot tag keeps two processes of one GPU apart (one point per tag set and time)
        # without making the pid a tag; sorted by pid so the same report gives the same slots.
        for slot, p in enumerate(sorted(g.processes or (), key=lambda p: (p.pid, p.type))):
            ptags = _instance(p.ci_id, base, p.gi_id, g.index, node)
            fields = []
            self.fields_dropped += _PROCESS.add(p, fields)
            lines.append(f"gpu_process,{ptags},slot={slot}{uuid} {','.join(fields)}{t}")

    def _host(self, h: Host, base: str, node: str, t: str, lines: list[str]) -> None:
        fields: list[str] = []
        self.fields_dropped += _HOST.add(h, fields)
        if fields:
            lines.append(f"host,{base},{node} {','.join(fields)}{t}")
        for i, pct in enumerate(h.cpu_core_pct or ()):
            if isfinite(pct):
                lines.append(f"host_cpu,{base},cpu={i},{node} cpu_pct={float(pct)!r}{t}")
        parts: list[tuple[str, _Fields, Iterable[Any], Callable[[Any], str]]] = [
            ("host_disk", _DISK, h.disks or (), lambda d: f"{base}{tag('mount', d.mount)}"),
            ("host_diskio", _DISKIO, h.disk_io or (), lambda d: f"{base}{tag('device', d.device)}"),
            ("host_net", _NET, h.net or (), lambda n: f"{base}{tag('iface', n.iface)}"),
        ]  # fmt: skip
        for measurement, spec, items, tags in parts:
            for item in items:
                fields = []
                self.fields_dropped += spec.add(item, fields)
                if fields:
                    lines.append(f"{measurement},{tags(item)},{node} {','.join(fields)}{t}")
        for z in h.power or ():
            fields = []
            self.fields_dropped += _POWER.add(z, fields)
            where = f"{base}{tag('name', z.name)},{node}{tag('zone', z.zone)}"
            lines.append(f"host_power,{where} {','.join(fields)}{t}")
        for kind, spec, chips in (("host_sensor", _SENSOR, h.sensors), ("host_fan", _FAN, h.fans)):
            for s in chips or ():
                fields = []
                self.fields_dropped += spec.add(s, fields)
                where = f"chip={escape_key(s.chip)},{base}" if s.chip else base
                where += f"{tag('label', s.label)},{node}"
                lines.append(f"{kind},{where} {','.join(fields)}{t}")
        for plugin, metrics in sorted((h.extra or {}).items()):
            # A metric whose key is empty once escaped ("" or only backslashes) would make
            # InfluxDB refuse the whole line: it is left out and counted, like a non-finite value.
            fields = [
                f"{key}={float(v)!r}"
                for k, v in metrics.items()
                if isfinite(v) and (key := field_key(k))
            ]
            self.fields_dropped += len(metrics) - len(fields)
            if fields:
                lines.append(f"host_plugin,{base},{node}{tag('plugin', plugin)} "
                             f"{','.join(fields)}{t}")  # fmt: skip


def _instance(ci: int | None, base: str, gi: int | None, index: int, node: str) -> str:
    """Tags of something on a GPU, with its MIG instance when it has one (sorted keys)."""
    tags = [] if ci is None else [f"ci={ci}"]
    tags.append(base)
    if gi is not None:
        tags.append(f"gi={gi}")
    tags.append(f"gpu={index}")
    tags.append(node)
    return ",".join(tags)
