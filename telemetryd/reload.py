"""SIGHUP: re-read the configuration and apply it to the running service, or refuse it.

``systemctl reload`` (``ExecReload=/bin/kill -HUP $MAINPID``) must never cost data nor a
running service: the file is re-read with the same command-line overrides, validated as
fully as at start (``configload.load`` with its semantic checks), and only then applied.
A file that does not load, or a change that cannot be applied to a running process (the
node's name, the state directory), is refused with one ERROR line naming file, line and
reason, and the old configuration keeps running untouched.

What is applied, and what survives (docs/operations.md lists the same):
- agent: interval, collectors and GPU backend (the sampler is re-opened, keeping its
  boot id so seq numbering goes on), attribution, spool bounds, backlog rate, broker
  settings (reconnects only when they changed); the spool, the publisher's queue and the
  job accounts are kept.
- aggregator: alert rules (re-read from disk even when the file did not change), routing
  and hooks, sinks (new ones start from the oldest record in the WAL, removed ones stop,
  unchanged ones keep running with their cursor), limits; WAL, fleet and alert state kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from telemetryd.errors import TelemetrydError
from telemetryd.service import wait_any

if TYPE_CHECKING:
    from pathlib import Path

    from exporters.mqtt import MqttSettings
    from telemetryd.agent import Agent
    from telemetryd.aggregator import Aggregator
    from telemetryd.config import AgentConfig, AggregatorConfig

log = logging.getLogger(__name__)

S = TypeVar("S")


class ReloadRefused(TelemetrydError):
    """A valid file with a change the running process cannot take; a restart applies it."""


class Reloader(Generic[S]):
    """Turns SIGHUP requests into re-reads and applies, one at a time, in the service's loop.

    ``read`` loads the section again (raising ConfigError); ``apply`` installs it (raising
    TelemetrydError to refuse). Requests that arrive during a reload fold into one more.
    """

    def __init__(self, read: Callable[[], S], role: str) -> None:
        self._read = read
        self.role = role
        self._requested = asyncio.Event()
        self.reloaded = 0
        self.refused = 0
        self.last_error = ""
        # systemd's reload protocol (set by the service's notifier): RELOADING=1 before,
        # READY=1 after, whether the new configuration was applied or refused.
        self.on_start: Callable[[], None] = lambda: None
        self.on_done: Callable[[], None] = lambda: None

    def request(self) -> None:
        """Ask for a reload (the SIGHUP handler's whole job)."""
        self._requested.set()

    async def run(self, stop: asyncio.Event, apply: Callable[[S], Awaitable[None]]) -> None:
        """Serve requests until ``stop``."""
        while not stop.is_set():
            await wait_any((stop, self._requested), None)
            if stop.is_set():
                return
            if self._requested.is_set():
                self._requested.clear()
                await self.once(apply)

    async def once(self, apply: Callable[[S], Awaitable[None]]) -> bool:
        """Re-read and apply now; False (and one ERROR line) when refused."""
        log.info("SIGHUP: reloading the %s configuration", self.role)
        self.on_start()
        try:
            section = await asyncio.to_thread(self._read)
            await apply(section)
        except TelemetrydError as exc:
            self.refused += 1
            self.last_error = "; ".join(str(exc).splitlines())
            log.error("reload refused, the running configuration stays: %s", self.last_error)
            return False
        except Exception as exc:  # a bug in a reload must not stop the service
            self.refused += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("reload failed, part of it may be applied: %s", self.last_error,
                      exc_info=log.isEnabledFor(logging.DEBUG))  # fmt: skip
            return False
        finally:
            self.on_done()
        self.reloaded += 1
        self.last_error = ""
        log.info("reloaded the %s configuration", self.role)
        return True


def changed_keys(old: Any, new: Any) -> set[str]:
    """Top-level keys of a section (a config Struct) whose value differs."""
    keys: tuple[str, ...] = type(old).__struct_fields__
    return {key for key in keys if getattr(old, key) != getattr(new, key)}


def refuse_fixed(section: str, changed: Iterable[str], fixed: Iterable[str]) -> None:
    """Raise ReloadRefused naming every changed key that needs a restart."""
    keys = sorted(set(changed) & set(fixed))
    if keys:
        listed = ", ".join(f"{section}.{key}" for key in keys)
        raise ReloadRefused(f"{listed}: changing it needs a restart, not a reload")


# -- the agent -------------------------------------------------------------------------------

#: Keys that name the agent or its state: a running agent cannot become another one.
AGENT_FIXED = frozenset({"node", "cluster", "state_dir"})
#: Keys that do not touch the sources; a change to any other key re-opens the sampler.
AGENT_NOT_SAMPLER = frozenset({
    "broker", "password_file", "tls", "mqtt_version", "keepalive", "reconnect_max", "client_id",
    "interval", "backlog_rate", "spool_max_bytes", "spool_max_age",
})  # fmt: skip


def same_broker(a: MqttSettings, b: MqttSettings) -> bool:
    """Equal settings, the password compared by value (a rotated one means reconnect)."""
    import dataclasses

    def key(s: MqttSettings) -> tuple[Any, ...]:
        values = [getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "will"]
        return (*values[:4], s.password.reveal() if s.password else None, *values[5:])

    return key(a) == key(b)


class AgentReload:
    """Applies a re-read ``[agent]`` to a running agent (the Reloader's ``apply``)."""

    def __init__(
        self,
        agent: Agent,
        cfg: AgentConfig,
        directory: Path,
        settings: Callable[[AgentConfig], MqttSettings],
    ) -> None:
        self.agent, self.cfg, self.directory, self._settings = agent, cfg, directory, settings

    async def __call__(self, cfg: AgentConfig) -> None:
        """Build what changed (a sampler that does not open refuses it), then swap it in."""
        from telemetryd.jobacct import JobAccountant
        from telemetryd.sampler import open_sampler

        agent = self.agent
        changed = changed_keys(self.cfg, cfg)
        refuse_fixed("agent", changed, AGENT_FIXED)
        settings: MqttSettings | None = self._settings(cfg)  # ConfigError: password unreadable
        if settings is not None and same_broker(settings, agent.settings):
            settings = None
        sampler = None
        if changed - AGENT_NOT_SAMPLER:
            sampler = await asyncio.to_thread(open_sampler, cfg)  # SourceUnavailable: refused
        accountant = agent.accountant
        if cfg.attribution.jobs and accountant is None:
            accountant = JobAccountant(self.directory / "jobs.json")
        elif not cfg.attribution.jobs:
            accountant = None
        agent.spool.max_bytes, agent.spool.max_age_s = cfg.spool_max_bytes, cfg.spool_max_age
        await agent.reload(sampler=sampler, settings=settings, interval=cfg.interval,
                           backlog_rate=cfg.backlog_rate, accountant=accountant)  # fmt: skip
        self.cfg = cfg
        log.info(
            "agent: every %gs to %s%s%s", cfg.interval, agent.settings.broker,
            "; sources re-opened" if sampler else "", "; reconnecting" if settings else "",
        )  # fmt: skip


# -- the aggregator --------------------------------------------------------------------------

#: What a running aggregator can take; any other changed key is refused.
AGGREGATOR_APPLIED = frozenset({
    "sinks", "influxdb", "prometheus", "alerts", "max_payload_bytes", "max_clock_skew",
    "max_report_age", "sink_retry_max", "fleet_interval", "silent_after", "rollup_interval",
})  # fmt: skip


async def reload_aggregator(aggregator: Aggregator, cfg: AggregatorConfig) -> None:
    """Apply a re-read ``[aggregator]``: everything is built first, then swapped in."""
    from telemetryd.aggregator import make_sink
    from telemetryd.ingest import Limits

    old = aggregator.cfg
    changed = changed_keys(old, cfg)
    refuse_fixed("aggregator", changed, set(changed) - AGGREGATOR_APPLIED)
    if old.alerts.enabled != cfg.alerts.enabled:
        raise ReloadRefused("aggregator.alerts.enabled: changing it needs a restart, not a reload")
    alerts_apply: Callable[[], Awaitable[None]] | None = None
    if aggregator.alerts is not None:
        alerts_apply = aggregator.alerts.prepare_reload(cfg.alerts)  # ConfigError: refused
    sinks_changed = bool(changed & {"sinks", "influxdb", "prometheus"})
    built: list[tuple[str, Any]] = []
    if sinks_changed:
        urls = cfg.sinks or [f"sqlite://{aggregator.snapshot_path.parent / 'telemetry.db'}"]
        built = [(url, make_sink(url, cfg)) for url in urls]
    # From here on nothing is refused: apply.
    aggregator.cfg = cfg
    aggregator.limits = Limits(cfg.max_payload_bytes, cfg.max_clock_skew, cfg.max_report_age)
    aggregator.fleet.silent_after = cfg.silent_after
    aggregator.rollups.interval_s = cfg.rollup_interval
    if alerts_apply is not None:
        await alerts_apply()
    aggregator.runners.retry_max = cfg.sink_retry_max  # for the runners started from here
    if sinks_changed:
        await _replace_sinks(aggregator, built, keep=changed.isdisjoint({"influxdb", "prometheus"}))
    for runner in aggregator.runners:
        runner.retry_max = cfg.sink_retry_max


async def _replace_sinks(
    aggregator: Aggregator, sinks: list[tuple[str, Any]], *, keep: bool
) -> None:
    """New sinks get runners, removed ones stop (cursor saved), the others keep running.

    With ``keep`` False (the sinks' options changed) every sink restarts, each from its
    saved cursor: a sink is known by its name (its location), as its cursor file is.
    """
    wanted = {sink.name: sink for _url, sink in sinks}
    runners = aggregator.runners
    running = {runner.sink.name: runner for runner in runners}
    for name, runner in running.items():
        if name not in wanted or not keep:
            await runners.stop(runner)
            log.info("sink %s stopped", name)
    for name, sink in wanted.items():
        if not (keep and name in running):
            log.info("sink %s started at record %d", name, runners.add(sink).cursor)
