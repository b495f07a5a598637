"""The aggregator's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/metrics``: the fleet's live values and the aggregator's own numbers in Prometheus
  text format (exporters/prometheus.py). The aggregator's state is copied on the event
  loop (it mutates that state), then the text is rendered in a worker thread, so a large
  fleet's scrape does not stall the consumer.
- ``/healthz``: 200 while the process serves at all ("alive"): for a liveness probe that
  restarts a hung process, so it never depends on the broker or a store.
- ``/readyz``: 200 when the broker is connected and every sink's last open or write
  succeeded, else 503; the JSON body lists each check with ``ok`` and its reason, so the
  answer says what to fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from exporters.fleetview import AlertStats, NodeStats, ReceiverCounts, ServiceStats, SinkStats
from exporters.http import HttpServer, HttpServerError, Reply
from exporters.prometheus import CONTENT_TYPE, FleetCollector, render
from telemetryd import __version__
from telemetryd.alerting.model import SEVERITIES
from telemetryd.errors import TelemetrydError
from telemetryd.urls import parse_listen

if TYPE_CHECKING:
    from telemetryd.aggregator import Aggregator
    from telemetryd.alerting.service import AlertService
    from telemetryd.sinkrunner import SinkRunner

log = logging.getLogger(__name__)

JSON = "application/json"
NODE_STATES = ("online", "offline", "silent", "unknown")


def service_stats(aggregator: Aggregator, now_ns: int) -> ServiceStats:
    """Copy the aggregator's numbers (on the event loop, which is what mutates them)."""
    fleet = aggregator.fleet
    nodes: Counter[tuple[str, str]] = Counter()
    gpus: Counter[tuple[str, str]] = Counter()
    missing: Counter[str] = Counter()
    node_list: list[NodeStats] = []
    for cluster in fleet.clusters():
        for state in NODE_STATES:
            nodes[(cluster, state)] = 0
        gpus[(cluster, "ok")] = gpus[(cluster, "failed")] = 0
        missing[cluster] = 0
    for (cluster, name), node in fleet.nodes.items():
        state = fleet.node_state(node, now_ns)
        nodes[(cluster, state)] += 1
        failed = min(node.gpus_failed, len(node.gpus))
        gpus[(cluster, "ok")] += len(node.gpus) - failed
        gpus[(cluster, "failed")] += failed
        missing[cluster] += sum(seqs.missing() for seqs in node.boots.values())
        last = node.last_report_ns / 1e9 if node.last_report_ns is not None else None
        node_list.append(NodeStats(cluster, name, state == "online", last))
    return ServiceStats(
        received=fleet.received,
        accepted=fleet.accepted,
        duplicates=fleet.duplicates,
        rejected=dict(aggregator.deadletters.counts),
        missing=dict(missing),
        nodes=dict(nodes),
        gpus=dict(gpus),
        wal_bytes=aggregator.wal.bytes,
        broker_dropped=fleet.broker_dropped,
        sinks=tuple(sink_stats(runner) for runner in aggregator.runners),
        node_list=tuple(node_list),
        alerts=alert_stats(aggregator.alerts) if aggregator.alerts is not None else None,
    )


def alert_stats(alerts: AlertService) -> AlertStats:
    """The alert engine's and the receivers' numbers."""
    counts: Counter[tuple[str, str]] = Counter()
    for state in ("pending", "firing"):
        for severity in SEVERITIES:
            counts[(state, severity)] = 0
    for alert in alerts.engine.active.values():
        counts[(alert.state, alert.labels.get("severity", ""))] += 1
    receivers: list[ReceiverCounts] = []
    if alerts.dispatcher is not None:
        for name, r in sorted(alerts.dispatcher.delivery.stats().items()):
            receivers.append(ReceiverCounts(name, r.sent, r.retries, r.failed, r.superseded,
                                            r.queued))  # fmt: skip
    return AlertStats(dict(counts), alerts.engine.evaluations, tuple(receivers))


def sink_stats(runner: SinkRunner) -> SinkStats:
    """One sink's numbers; the line counters only for sinks that count lines."""
    state = runner.report()
    lines = None
    if state.lines_written is not None:
        lines = {
            "written": state.lines_written,
            "retried": state.lines_retried or 0,
            "set_aside": state.lines_set_aside or 0,
            "fields_dropped": state.fields_dropped or 0,
        }
    histogram = runner.write_seconds
    return SinkStats(
        name=state.name,
        up=state.state == "ok",
        queue_reports=state.lag,
        queue_bytes=state.lag_bytes,
        written=state.written,
        retries=state.retries,
        rejected=state.rejected,
        skipped=state.skipped,
        lines=lines,
        durations=tuple(histogram.cumulative()),
        duration_sum=histogram.sum,
    )


def readiness(aggregator: Aggregator) -> tuple[bool, list[dict[str, Any]]]:
    """Each check with ``ok`` and its reason; ready when every check is ok."""
    broker = str(aggregator.settings.broker)
    if aggregator.connected.is_set():
        checks = [{"check": "broker", "ok": True, "reason": f"connected to {broker}"}]
    else:
        why = aggregator.mqtt_error or "not connected yet"
        checks = [{"check": "broker", "ok": False, "reason": f"{broker}: {why}"}]
    for runner in aggregator.runners:
        state = runner.state
        if state.state == "ok":
            reason = "writing"
        elif state.state == "starting":
            reason = state.last_error or "not opened yet"
        else:
            reason = state.last_error or state.state
        checks.append({"check": f"sink {state.name}", "ok": state.state == "ok",
                       "reason": reason})  # fmt: skip
    return all(c["ok"] for c in checks), checks


def _json(status: int, data: dict[str, Any]) -> Reply:
    body = json.dumps(data, indent=1).encode() + b"\n"
    return Reply(status, body, content_type=JSON)


class HttpApi:
    """The endpoints of one aggregator, served on ``aggregator.listen``."""

    def __init__(self, aggregator: Aggregator, listen: str) -> None:
        host, port = parse_listen(listen)  # checked with the configuration already
        self.aggregator = aggregator
        self.collector = FleetCollector(aggregator.cfg.prometheus)
        self.started = time.monotonic()
        # True while the fleet is rebuilt from the WAL in a worker thread: reading it then
        # could see it change mid-iteration, so /metrics waits for the end (503 till then).
        self.recovering = True
        self.server = HttpServer(host, port, {
            "/metrics": self.metrics,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
        })  # fmt: skip

    async def start(self) -> None:
        """Listen; a busy or forbidden address is one line (a runtime error, exit 1)."""
        try:
            await self.server.start()
        except HttpServerError as exc:
            raise TelemetrydError(f"aggregator.listen: {exc}") from None
        log.info("serving /metrics, /healthz and /readyz on %s:%d", self.server.host,
                 self.server.port)  # fmt: skip

    def ready(self) -> FleetCollector:
        """The WAL replay is over: serve /metrics; the collector to feed new reports to."""
        self.recovering = False
        return self.collector

    async def stop(self) -> None:
        """Stop listening."""
        await self.server.stop()

    async def metrics(self) -> Reply:
        """The Prometheus exposition (503 while the state is being recovered)."""
        if self.recovering:
            return Reply(503, b"recovering the fleet state from the write-ahead log\n")
        now = time.time_ns()
        self.collector.update(service_stats(self.aggregator, now))
        self.collector.view.expire(now)
        body = await asyncio.to_thread(render, self.collector)
        return Reply(200, body, content_type=CONTENT_TYPE)

    async def healthz(self) -> Reply:
        """Alive, with uptime and version."""
        return _json(200, {
            "status": "alive",
            "uptime_s": round(time.monotonic() - self.started, 3),
            "version": __version__,
        })  # fmt: skip

    async def readyz(self) -> Reply:
        """200 when the broker is connected and every sink writes, else 503 with reasons."""
        ready, checks = readiness(self.aggregator)
        if self.recovering:
            ready = False
            checks.insert(0, {"check": "recovery", "ok": False,
                              "reason": "replaying the write-ahead log"})  # fmt: skip
        status = "ready" if ready else "not ready"
        return _json(200 if ready else 503, {"status": status, "checks": checks})
