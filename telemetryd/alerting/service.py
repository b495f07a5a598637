"""The alert engine inside the aggregator: feed it, tick it, publish and dispatch its alerts.

The aggregator calls ``on_report``/``on_status``/``on_fleet_events`` right after a batch
is durable, then ``publish`` with its MQTT session; everything else runs in ``run``.
Each change goes two ways at once: to the dispatcher (routing, hooks) and to retained
``telemetry/v1/<cluster>/_alerts/<fingerprint>`` topics, where ``telemetryd top`` reads
the firing alerts without any other API. Which fingerprints have a retained message is
saved with the state, so one that resolved while the aggregator was down is cleared.
Pending alerts and silences go out as one retained list per cluster (panel.py).

On reload (telemetryd/reload.py) the rules swap in place, so alerts of rules that stay keep
their timers and state, and the dispatcher is replaced as a restart would replace it: the
old one stops and saves what each receiver was told, the new one (new routing and hooks)
loads that and is fed the firing alerts, so nobody is paged twice nor forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telemetryd.alerting.engine import Engine
from telemetryd.alerting.expr import Value
from telemetryd.alerting.model import Alert
from telemetryd.alerting.rules import Rule, load_rules, rule_files
from telemetryd.codec import encode_json
from telemetryd.config_alerts import AlertsConfig
from telemetryd.fleet import Fleet
from telemetryd.model import EventMessage, Report, Status
from telemetryd.service import stopped_within
from telemetryd.topics import alert_topic

if TYPE_CHECKING:
    from exporters.mqtt import MqttSession
    from telemetryd.alerting.dispatch import Dispatcher
    from telemetryd.alerting.panel import Panel

log = logging.getLogger(__name__)


def configured_rules(cfg: AlertsConfig) -> list[Rule]:
    """The shipped pack (unless turned off) and the rules directory; ConfigError lists all."""
    paths = rule_files(Path(cfg.rules_dir)) if cfg.rules_dir else []
    return load_rules(paths, default_pack=cfg.default_rules, disabled=cfg.disabled_rules)


class AlertService:
    """Engine, dispatcher and retained publication of one aggregator."""

    def __init__(
        self,
        cfg: AlertsConfig,
        engine: Engine,
        *,
        dispatcher: Dispatcher | None = None,
        panel: Panel | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.dispatcher = dispatcher
        self.panel = panel  # retained _pending and _silences, silence requests
        self.published: set[str] = set()  # topics that hold a retained alert
        self._outbox: dict[str, Alert] = {}  # to publish (firing) or clear (resolved)
        self._stale: set[str] = set()  # retained topics to clear, whatever their cluster
        self._publishing = asyncio.Lock()
        self.notified = 0
        self._halt = asyncio.Event()  # stops the running dispatcher (at stop or on reload)
        # Builds the next dispatcher on reload, once the old one stopped and saved its log.
        self._next: Callable[[Dispatcher], Dispatcher] | None = None
        self._held: list[Alert] | None = None  # changes while dispatchers are swapped
        self._swapped = asyncio.Event()

    # -- inputs (called inside the aggregator's commit) ------------------------------------
    def on_report(self, report: Report, now_ns: int) -> None:
        """A report that was just made durable."""
        self.engine.on_report(report, now_ns)
        self._drain()

    def on_status(self, status: Status, now_ns: int) -> None:
        """A presence message (online, shutdown, Last Will)."""
        self.engine.on_status(status, now_ns)
        self._drain()

    def on_fleet_events(self, events: Iterable[EventMessage]) -> None:
        """Events the aggregator raised itself (a GPU gone from a node's inventory)."""
        self.engine.on_fleet_events(events)
        self._drain()

    def _drain(self) -> None:
        changed = self.engine.drain()
        if not changed:
            return
        for alert in changed:
            self._outbox[alert.fingerprint] = alert
            log.info("alert %s %s %s", alert.status, alert.name,
                     ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items())
                              if k not in ("alertname", "severity")))  # fmt: skip
        if self._held is not None:
            self._held += changed
        elif self.dispatcher is not None:
            self.dispatcher.update(changed)

    # -- retained state on MQTT ------------------------------------------------------------
    def _clusters(self, alert: Alert) -> list[str]:
        cluster = alert.labels.get("cluster")
        return [cluster] if cluster else self.engine.fleet.clusters()

    async def publish(self, session: MqttSession) -> None:
        """Publish what changed: firing alerts retained, resolved ones cleared; the panel."""
        async with self._publishing:
            await self._publish(session)
        if self.panel is not None:
            await self.panel.publish(session)  # rate-limited; never raises MqttUnavailable

    async def _publish(self, session: MqttSession) -> None:
        while self._stale:
            topic = next(iter(self._stale))
            await session.publish(topic, b"", retain=True)
            self._stale.discard(topic)
            self.published.discard(topic)
        while self._outbox:
            fp, alert = next(iter(self._outbox.items()))
            for cluster in self._clusters(alert):
                topic = alert_topic(cluster, fp)
                if alert.status == "firing":
                    await session.publish(topic, encode_json(alert), retain=True)
                    self.published.add(topic)
                elif topic in self.published:
                    await session.publish(topic, b"", retain=True)
                    self.published.discard(topic)
            if self._outbox.get(fp) is alert:
                del self._outbox[fp]

    def republish(self) -> None:
        """After (re)connecting: every firing alert again, and clear what no longer fires.

        The broker may have lost its retained messages (no persistence), and an alert may
        have resolved while this aggregator was down: the topics it published are saved
        with its state, so the ones that no longer fire are cleared exactly.
        """
        if self.panel is not None:
            self.panel.republish()
        firing = {a.fingerprint: a for a in self.engine.firing()}
        self._stale |= {t for t in self.published if t.rsplit("/", 1)[-1] not in firing}
        for fp, alert in firing.items():
            self._outbox.setdefault(fp, alert)

    # -- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, values: Callable[[], dict[str, Value]]) -> None:
        """Tick the engine; run the dispatcher; return after ``stop``."""
        if self.dispatcher is not None:
            self.dispatcher.update(self.engine.firing())
        async with asyncio.TaskGroup() as group:
            if self.dispatcher is not None:
                group.create_task(self._dispatch(stop), name="alerts.dispatch")
            while not await stopped_within(stop, self.cfg.evaluation_interval):
                self.engine.tick(time.time_ns(), values())
                self._drain()

    async def _dispatch(self, stop: asyncio.Event) -> None:
        """Run the dispatcher; on reload, stop it and run its replacement."""
        while self.dispatcher is not None:
            dispatcher, halt = self.dispatcher, self._halt
            relay = asyncio.ensure_future(_relay(stop, halt))
            try:
                await dispatcher.run(halt)
            finally:
                relay.cancel()
                await dispatcher.delivery.close()
            if stop.is_set() or self._next is None:
                return
            self.dispatcher, self._halt = self._next(dispatcher), asyncio.Event()
            self._next = None
            self.dispatcher.update(self.engine.firing())
            self.dispatcher.update(self._held or [])
            self._held = None
            self._swapped.set()

    # -- reload ----------------------------------------------------------------------------
    def prepare_reload(self, cfg: AlertsConfig) -> Callable[[], Awaitable[None]]:
        """Build rules, routing and hooks from ``cfg`` (ConfigError refuses them all).

        Returns what swaps them in. Rule files are read again even when the configuration
        file did not change: editing a rule and reloading is the usual way to change one.
        """
        from exporters.hooks import make_hook
        from telemetryd.alerting.routing import EMPTY, load_routing

        rules = configured_rules(cfg)
        routing = load_routing(Path(cfg.routing_file)) if cfg.routing_file else EMPTY
        hooks = {n: make_hook(r) for n, r in routing.receivers.items()}

        async def apply() -> None:
            self.cfg = cfg
            engine = self.engine
            engine.node_labels = cfg.node_labels
            engine.runbook_base, engine.external_url = cfg.runbook_base, cfg.external_url
            engine.set_rules(rules, time.time_ns())
            if self.panel is not None:
                self.panel.accepts_requests = cfg.mqtt_silences
            if self.dispatcher is None:
                self._drain()
                return
            from telemetryd.alerting.delivery import Delivery
            from telemetryd.alerting.dispatch import Dispatcher

            def successor(old: Dispatcher) -> Dispatcher:
                directory = old.log.path.parent
                delivery = Delivery(hooks, directory, receivers=routing.receivers)
                return Dispatcher(routing, delivery, directory, silences=old.silences,
                                  external_url=cfg.external_url)  # fmt: skip

            self._held = []
            self._swapped.clear()
            self._next = successor
            self._drain()
            self._halt.set()
            try:
                async with asyncio.timeout(10.0):
                    await self._swapped.wait()
            except TimeoutError:
                log.warning("alerts: the new routing waits for the old dispatcher to stop")

        return apply

    # -- persistence -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Engine state and the published topics (saved with the fleet snapshot)."""
        return {**self.engine.snapshot(), "published": sorted(self.published)}

    def restore(self, data: dict[str, Any]) -> None:
        """Load what ``snapshot`` saved."""
        self.engine.restore(data, time.time_ns())
        self.published = {str(t) for t in data.get("published", []) if "/_alerts/" in str(t)}


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


def open_alerts(cfg: AlertsConfig, fleet: Fleet, directory: Path, *, name: str) -> AlertService:
    """The alert service of an aggregator; ConfigError lists every bad rule or route."""
    from exporters.hooks import make_hook
    from telemetryd.alerting.delivery import Delivery
    from telemetryd.alerting.dispatch import Dispatcher
    from telemetryd.alerting.panel import Panel
    from telemetryd.alerting.routing import EMPTY, load_routing
    from telemetryd.alerting.silences import SilenceStore

    engine = Engine(
        configured_rules(cfg), fleet, node_labels=cfg.node_labels,
        runbook_base=cfg.runbook_base, external_url=cfg.external_url, name=name,
    )  # fmt: skip
    routing = load_routing(Path(cfg.routing_file)) if cfg.routing_file else EMPTY
    hooks = {n: make_hook(r) for n, r in routing.receivers.items()}
    alerts_dir = directory / "alerts"
    alerts_dir.mkdir(parents=True, exist_ok=True)
    delivery = Delivery(hooks, alerts_dir, receivers=routing.receivers)
    silences = SilenceStore(alerts_dir)
    dispatcher = Dispatcher(routing, delivery, alerts_dir, silences=silences,
                            external_url=cfg.external_url)  # fmt: skip
    panel = Panel(engine, silences, accepts_requests=cfg.mqtt_silences)
    return AlertService(cfg, engine, dispatcher=dispatcher, panel=panel)
