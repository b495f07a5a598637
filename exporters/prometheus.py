"""The one module that imports prometheus_client: ``/metrics`` for the whole fleet.

Three kinds of series (docs/metrics.md lists every one with labels and units):
- GPU values under dcgm-exporter's names, labels and units (exporters/dcgm_names.py), so
  the dashboards and alert rules a site already has for dcgm-exporter work unchanged;
- each node's host values as ``telemetryd_host_*`` in base units;
- the aggregator's own counters (``telemetryd_*``), from a ``ServiceStats`` snapshot the
  event loop takes just before a scrape renders.

A custom collector builds every family at scrape time from the newest report of each node
(exporters/fleetview.py), not one labelled Gauge child per series, which would cost more
memory than the reports at thousands of GPUs. ``render`` writes the same bytes as
prometheus_client's ``generate_latest``, formatting each GPU's label set once instead of
once per series; the aggregator calls it in a worker thread so a scrape of a large fleet
does not stall the consumer. A field absent from a report gives no series, never a 0: a
missing fan is not a stopped fan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from exporters.dcgm_names import (
    GPU_FIELDS,
    MIG_FIELDS,
    NVLINK_BANDWIDTH,
    NVLINK_BANDWIDTH_HELP,
    SNAKE_RENAMES,
    XID_COUNT,
    XID_COUNT_HELP,
    XID_ERRORS,
    XID_ERRORS_HELP,
    to_dcgm,
)
from exporters.fleetview import (
    AlertStats,
    FleetView,
    Labels,
    NodeView,
    ServiceStats,
    SinkStats,
    Xid,
)
from telemetryd.config import PrometheusConfig
from telemetryd.model import Host, Report

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of what ``render`` returns (Prometheus text format 0.0.4)."""


class _Family:
    """A metric family with samples appended directly (label dicts shared, not copied)."""

    __slots__ = ("metric", "sample_name")

    def __init__(self, name: str, help_text: str, kind: str = "gauge") -> None:
        base = name.removesuffix("_total") if kind == "counter" else name
        self.metric = Metric(base, help_text, kind)
        self.sample_name = base + "_total" if kind == "counter" else name

    def add(self, labels: Labels, value: float) -> None:
        self.metric.samples.append(Sample(self.sample_name, labels, value))


# (our Host attribute, series name, help) for the scalar host values
_HOST_SCALARS = (
    ("cpu_pct", "telemetryd_host_cpu_percent", "CPU busy, all cores (in %)."),
    ("load_1", "telemetryd_host_load1", "Load average over 1 minute."),
    ("load_5", "telemetryd_host_load5", "Load average over 5 minutes."),
    ("load_15", "telemetryd_host_load15", "Load average over 15 minutes."),
    ("mem_total_bytes", "telemetryd_host_memory_total_bytes", "Memory installed."),
    ("mem_available_bytes", "telemetryd_host_memory_available_bytes", "Memory available."),
    ("mem_used_bytes", "telemetryd_host_memory_used_bytes", "Memory used."),
    ("swap_total_bytes", "telemetryd_host_swap_total_bytes", "Swap space."),
    ("swap_used_bytes", "telemetryd_host_swap_used_bytes", "Swap used."),
    ("uptime_s", "telemetryd_host_uptime_seconds", "Seconds since the node booted."),
)


class FleetCollector(Collector):
    """Serves the newest values of every live node, and the aggregator's own numbers."""

    def __init__(self, cfg: PrometheusConfig, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.cfg = cfg
        self.clock = clock
        self.view = FleetView(labels=cfg.labels, stale_after_s=cfg.stale_after,
                              xid_window_s=cfg.xid_window, clock=clock)  # fmt: skip
        self.host_label = self.view.label["host"]
        self.window_ms = str(round(cfg.xid_window * 1000))
        renames = SNAKE_RENAMES if cfg.labels == "snake" else {}
        self.gpu_fields = [(f, renames.get(f.name, f.name)) for f in GPU_FIELDS]
        self._stats: ServiceStats | None = None

    def observe(self, report: Report, received_ns: int) -> None:
        """A newly accepted report (event loop)."""
        self.view.observe(report, received_ns)

    def update(self, stats: ServiceStats) -> None:
        """The aggregator's numbers for the next scrape (event loop; replaced whole)."""
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """Every family, built from a snapshot (any thread)."""
        now = self.clock()
        nodes, xids = self.view.snapshot(now)
        yield from self._gpu_families(nodes, xids)
        if self.cfg.host:
            yield from self._host_families(nodes)
        stats = self._stats
        if stats is not None:
            yield from self._service_families(stats)

    # -- GPU series ------------------------------------------------------------------------
    def _gpu_families(
        self, nodes: list[NodeView], xids: Mapping[tuple[str, str], list[Xid]]
    ) -> Iterator[Metric]:
        fields = [(f, _Family(name, f.help)) for f, name in self.gpu_fields]
        mig_fields = [(f, family) for f, family in fields if f in MIG_FIELDS]
        nvlink = _Family(NVLINK_BANDWIDTH, NVLINK_BANDWIDTH_HELP)
        last_xid = _Family(XID_ERRORS, XID_ERRORS_HELP)
        xid_count = _Family(XID_COUNT, XID_COUNT_HELP)
        for node in nodes:
            events = xids.get((node.cluster, node.node), [])
            for view in node.gpus:
                gpu, labels = view.gpu, view.labels
                for spec, family in fields:
                    value = to_dcgm(spec.conversion, getattr(gpu, spec.field))
                    if value is not None:
                        family.add(labels, value)
                for device, mig_labels in view.mig:
                    for spec, family in mig_fields:
                        value = to_dcgm(spec.conversion, getattr(device, spec.field))
                        if value is not None:
                            family.add(mig_labels, value)
                if view.nvlink_kib_s is not None:
                    nvlink.add(labels, view.nvlink_kib_s)
                mine = [x for x in events if x.of(gpu)]
                last_xid.add(labels, float(max(mine, key=lambda x: x.time_ns).code) if mine else 0)
                counts: dict[int, int] = {}
                for x in mine:
                    counts[x.code] = counts.get(x.code, 0) + 1
                for code, n in sorted(counts.items()):
                    xid_labels = {**labels, "xid": str(code), "window_size_in_ms": self.window_ms}
                    xid_count.add(xid_labels, n)
        for _, family in fields:
            yield family.metric
        yield nvlink.metric
        yield last_xid.metric
        yield xid_count.metric

    # -- host series -----------------------------------------------------------------------
    def _host_families(self, nodes: list[NodeView]) -> Iterator[Metric]:
        scalars = [(attr, _Family(name, text)) for attr, name, text in _HOST_SCALARS]
        h = _HostFamilies()
        for node in nodes:
            host = node.report.host
            if host is None:
                continue
            base = node.host_labels
            for attr, family in scalars:
                value = getattr(host, attr)
                if value is not None:
                    family.add(base, float(value))
            h.add(host, base)
        for _, family in scalars:
            yield family.metric
        yield from h.metrics()

    # -- the aggregator's own series -------------------------------------------------------
    def _service_families(self, stats: ServiceStats) -> Iterator[Metric]:
        def single(name: str, help_text: str, value: float, kind: str = "gauge") -> Metric:
            family = _Family(name, help_text, kind)
            family.add({}, value)
            return family.metric

        def by(name: str, help_text: str, key: str | tuple[str, ...],
               values: Mapping[Any, int], kind: str = "gauge") -> Metric:  # fmt: skip
            keys = (key,) if isinstance(key, str) else key
            family = _Family(name, help_text, kind)
            for label, value in sorted(values.items()):
                parts = (label,) if isinstance(key, str) else label
                family.add(dict(zip(keys, parts, strict=True)), value)
            return family.metric

        yield single("telemetryd_aggregator_reports_received_total",
                     "Messages received on report, status and event topics.",
                     stats.received, "counter")  # fmt: skip
        yield single(
            "telemetryd_aggregator_reports_accepted_total",
            "Reports accepted (valid, new, durable).",
            stats.accepted,
            "counter",
        )
        yield single("telemetryd_aggregator_reports_duplicate_total",
                     "Reports received again (redelivery); counted, not stored twice.",
                     stats.duplicates, "counter")  # fmt: skip
        yield by("telemetryd_aggregator_messages_rejected_total",
                 "Messages set aside in the dead-letter file, by reason.", "reason",
                 stats.rejected, "counter")  # fmt: skip
        yield by("telemetryd_aggregator_reports_missing", "Reports missing between the "
                 "sequence numbers received (late reports can still fill them).", "cluster",
                 stats.missing)  # fmt: skip
        yield by("telemetryd_nodes", "Nodes by state (online, offline, silent, unknown).",
                 ("cluster", "state"), stats.nodes)  # fmt: skip
        yield by(
            "telemetryd_gpus",
            "GPUs in each node's newest report, by state (ok, failed: could not be read).",
            ("cluster", "state"),
            stats.gpus,
        )
        yield single("telemetryd_wal_bytes", "Bytes in the write-ahead log.", stats.wal_bytes)
        if stats.broker_dropped is not None:
            yield single("telemetryd_broker_dropped_messages",
                         "Messages the broker dropped ($SYS/broker/publish/messages/dropped).",
                         stats.broker_dropped)  # fmt: skip
        yield from _sink_families(stats.sinks)
        if stats.alerts is not None:
            yield from _alert_families(stats.alerts)
        up = _Family("telemetryd_node_up", "1 if the node is online, else 0.")
        last = _Family("telemetryd_node_last_report_timestamp_seconds",
                       "Sample time of the node's newest report (Unix seconds).")  # fmt: skip
        for node in stats.node_list:
            labels = {self.host_label: node.node, "cluster": node.cluster}
            up.add(labels, 1.0 if node.up else 0.0)
            if node.last_report_s is not None:
                last.add(labels, node.last_report_s)
        yield up.metric
        yield last.metric


class _HostFamilies:
    """The per-device host series (mounts, disks, interfaces, RAPL zones, sensors, fans)."""

    def __init__(self) -> None:
        f = _Family
        self.fs = [(a, f(f"telemetryd_host_filesystem_{n}_bytes", t)) for a, n, t in (
            ("total_bytes", "size", "Size of the filesystem."),
            ("used_bytes", "used", "Space used on the filesystem."),
            ("free_bytes", "free", "Space free on the filesystem."))]  # fmt: skip
        self.disk = [(a, f(n, t, "counter")) for a, n, t in (
            ("read_bytes", "telemetryd_host_disk_read_bytes_total", "Bytes read from the device."),
            ("write_bytes", "telemetryd_host_disk_write_bytes_total", "Bytes written."),
        )]  # fmt: skip
        self.net = [(a, f(f"telemetryd_host_network_{n}_total", t, "counter")) for a, n, t in (
            ("rx_bytes", "receive_bytes", "Bytes received."),
            ("tx_bytes", "transmit_bytes", "Bytes transmitted."),
            ("rx_errors", "receive_errors", "Receive errors."),
            ("tx_errors", "transmit_errors", "Transmit errors."),
            ("rx_drops", "receive_drops", "Received packets dropped."),
            ("tx_drops", "transmit_drops", "Packets dropped on transmit."))]  # fmt: skip
        self.power = f("telemetryd_host_power_watts", "Mean power of a RAPL zone.")
        self.energy = f("telemetryd_host_energy_joules_total", "Energy of a RAPL zone.", "counter")
        self.temp = f("telemetryd_host_temperature_celsius", "Temperature of a hwmon sensor.")
        self.fan = f("telemetryd_host_fan_rpm", "Speed of a hwmon fan (revolutions/minute).")
        self._seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def _once(self, kind: str, labels: Labels) -> bool:
        """False for a device a report names twice (it would be one series twice)."""
        key = (kind, tuple(labels.items()))
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def add(self, host: Host, base: Labels) -> None:
        for disk in host.disks or ():
            labels = {**base, "mount": disk.mount}
            if self._once("fs", labels):
                for attr, family in self.fs:
                    family.add(labels, float(getattr(disk, attr)))
        for io in host.disk_io or ():
            labels = {**base, "device": io.device}
            if self._once("disk", labels):
                for attr, family in self.disk:
                    family.add(labels, float(getattr(io, attr)))
        for net in host.net or ():
            labels = {**base, "iface": net.iface}
            if self._once("net", labels):
                for attr, family in self.net:
                    family.add(labels, float(getattr(net, attr)))
        for zone in host.power or ():
            labels = {**base, "zone": zone.zone, "name": zone.name}
            if self._once("power", labels):
                self.energy.add(labels, zone.energy_uj / 1e6)
                if zone.power_w is not None:
                    self.power.add(labels, zone.power_w)
        for sensor in host.sensors or ():
            labels = {**base, "chip": sensor.chip, "sensor": sensor.label}
            if self._once("temp", labels):
                self.temp.add(labels, sensor.temp_c)
        for fan in host.fans or ():
            labels = {**base, "chip": fan.chip, "sensor": fan.label}
            if self._once("fan", labels):
                self.fan.add(labels, float(fan.rpm))

    def metrics(self) -> Iterator[Metric]:
        for _, family in (*self.fs, *self.disk, *self.net):
            yield family.metric
        for family in (self.power, self.energy, self.temp, self.fan):
            yield family.metric


def _alert_families(stats: AlertStats) -> Iterator[Metric]:
    f = _Family
    alerts = f("telemetryd_alerts", "Alerts by state (pending, firing) and severity.")
    for (state, severity), count in sorted(stats.alerts.items()):
        alerts.add({"state": state, "severity": severity}, float(count))
    yield alerts.metric
    evaluations = f("telemetryd_alert_evaluations_total", "Rule evaluations.", "counter")
    evaluations.add({}, float(stats.evaluations))
    yield evaluations.metric
    per = [(a, f(n, t, k)) for a, n, t, k in (
        ("sent", "telemetryd_alert_notifications_total", "Notifications delivered.", "counter"),
        ("retries", "telemetryd_alert_notification_retries_total",
         "Delivery attempts after a failed one.", "counter"),
        ("failed", "telemetryd_alert_notifications_failed_total",
         "Notifications not delivered (kept in the alerts dead-letter file).", "counter"),
        ("superseded", "telemetryd_alert_notifications_superseded_total",
         "Queued notifications replaced by a newer one of the same group.", "counter"),
        ("queued", "telemetryd_alert_notifications_queued", "Notifications waiting.", "gauge"),
    )]  # fmt: skip
    for receiver in stats.receivers:
        for attr, family in per:
            family.add({"receiver": receiver.name}, float(getattr(receiver, attr)))
    for _, family in per:
        yield family.metric


def _sink_families(sinks: Iterable[SinkStats]) -> Iterator[Metric]:
    f = _Family
    up = f("telemetryd_sink_up", "1 if the sink's last write or open succeeded, else 0.")
    plain = [(a, f(n, t, k)) for a, n, t, k in (
        ("queue_reports", "telemetryd_sink_queue_reports",
         "Accepted reports this sink has not written yet.", "gauge"),
        ("queue_bytes", "telemetryd_sink_queue_bytes",
         "Bytes of write-ahead log behind this sink's cursor.", "gauge"),
        ("written", "telemetryd_sink_reports_written_total", "Reports written.", "counter"),
        ("retries", "telemetryd_sink_retries_total", "Failed writes or opens (retried).",
         "counter"),
        ("rejected", "telemetryd_sink_reports_rejected_total",
         "Reports the store refused for good (set aside as dead letters).", "counter"),
        ("skipped", "telemetryd_sink_reports_skipped_total",
         "Records lost to write-ahead log damage, never written.", "counter"),
    )]  # fmt: skip
    lines = [(a, f(n, t, "counter")) for a, n, t in (
        ("written", "telemetryd_sink_lines_written_total", "Lines the store accepted."),
        ("retried", "telemetryd_sink_lines_retried_total", "Lines sent again after a failure."),
        ("set_aside", "telemetryd_sink_lines_set_aside_total",
         "Lines the store refused (set aside as dead letters with its reason)."),
        ("fields_dropped", "telemetryd_sink_fields_dropped_total",
         "Field values the store cannot hold (not finite, beyond int64), left out."),
    )]  # fmt: skip
    duration = Metric(
        "telemetryd_sink_write_duration_seconds",
        "Duration of each write attempt, failed ones included.",
        "histogram",
    )
    for sink in sinks:
        labels = {"sink": sink.name}
        up.add(labels, 1.0 if sink.up else 0.0)
        for attr, family in plain:
            family.add(labels, float(getattr(sink, attr)))
        if sink.lines is not None:
            for key, family in lines:
                family.add(labels, float(sink.lines[key]))
        name = "telemetryd_sink_write_duration_seconds"
        for bound, count in sink.durations:
            le = {**labels, "le": "+Inf" if bound == float("inf") else repr(float(bound))}
            duration.samples.append(Sample(name + "_bucket", le, count))
        count = sink.durations[-1][1] if sink.durations else 0
        duration.samples.append(Sample(name + "_count", labels, count))
        duration.samples.append(Sample(name + "_sum", labels, sink.duration_sum))
    yield up.metric
    for _, family in (*plain, *lines):
        yield family.metric
    yield duration


_go_float = cast(Callable[[float], str], floatToGoString)  # untyped in prometheus_client


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(collector: Collector) -> bytes:
    """The Prometheus text exposition of ``collector`` (blocking: run in a worker thread).

    The same bytes as prometheus_client's ``generate_latest`` (a unit test holds them
    equal), written here because that function formats the label set of every sample
    again: a GPU's seventy series share one label dict, so each set is formatted once per
    scrape, which makes a large fleet's scrape several times cheaper.
    """
    out: list[str] = []
    formatted: dict[int, tuple[Labels, str]] = {}  # id(labels) -> (labels kept alive, text)
    for metric in collector.collect():
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        kind = "untyped" if metric.type == "unknown" else metric.type
        text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")
        for sample in metric.samples:
            labels = sample.labels
            if not labels:
                out.append(f"{sample.name} {_go_float(sample.value)}\n")
                continue
            held = formatted.get(id(labels))
            if held is None or held[0] is not labels:
                pairs = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items()))
                held = formatted[id(labels)] = (labels, "{" + pairs + "}")
            out.append(f"{sample.name}{held[1]} {_go_float(sample.value)}\n")
    return "".join(out).encode()
