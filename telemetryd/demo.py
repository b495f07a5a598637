"""``telemetryd demo``: the whole system on one machine, following a fault scenario.

Everything runs in this process, in one asyncio loop and one TaskGroup, on embedded
defaults (no configuration file): the embedded broker (unless ``--broker``), the
aggregator with its SQLite store and /metrics, N simulated agents (``sim-00`` ...), and
either the terminal UI (``top``) or, headless, an observer that prints alerts as they fire
and resolve. Each part is the real service, started through the same ``serve`` its own
command uses, and stopped through its own stop event, in order: observer and agents
first (they say goodbye through the broker), then the aggregator, then the broker.

The scenario (docs/demo.md) is the simulator's fault file ``demo_data/scenario.toml`` (a
GPU loses cooling and throttles; an XID 79 takes a GPU off the bus) plus one node going
silent: its agent reaches the broker through a relay (demo_link.py) that is frozen for a
while, so the node stays connected but says nothing, and its held reports arrive after.
The shipped rules it triggers are replaced by copies with short ``for`` durations
(``demo_data/rules``), so the story fits in a minute.

State (spools, WAL, SQLite) lives in a temporary directory removed at exit, unless a
directory to keep is given.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from telemetryd import agent, aggregator
from telemetryd.config import (
    AgentConfig,
    AggregatorConfig,
    AlertsConfig,
    BrokerConfig,
    SimConfig,
    TopConfig,
)
from telemetryd.connect import mqtt_settings
from telemetryd.demo_link import Link
from telemetryd.demo_parts import Parts, free_port, log_to, sim_jobs, state_dir, wait_ready
from telemetryd.demo_report import TIME_UP, AlertLog, Expected, Observer, summary
from telemetryd.demo_timeline import SILENCE, Step, timeline
from telemetryd.errors import ConfigError, TelemetrydError
from telemetryd.service import run_until_signalled, stopped_within
from telemetryd.urls import UrlError, parse_broker_url

log = logging.getLogger(__name__)

RunTop = Callable[..., Coroutine[Any, Any, None]]  # telemetryd.tui.run_top(cfg, *, title)

_DATA = resources.files("telemetryd").joinpath("demo_data")
SCENARIO = _DATA.joinpath("scenario.toml")
STOP_ORDER = ("viewer", "agents", "link", "aggregator", "broker")  # goodbyes need the broker
MIN_NODES, MIN_GPUS = 4, 6  # the scenario uses sim-00 .. sim-03 and GPU 5
EXPECTED = [
    Expected("GpuThermalThrottling", "sim-02", "3"),
    Expected("GpuFellOffBus", "sim-01", "5"),
    Expected("NodeSilent", SILENCE.node),
]
# Longer than the silent period: the silent agent keeps its connection (no Last Will) and
# waits for its held PUBACKs instead of reconnecting.
AGENT_KEEPALIVE_S = 60
AGENT_PUBLISH_TIMEOUT_S = SILENCE.duration + 30
SIGNAL_DEADLINE_S = 15.0  # after Ctrl-C, exit even if shutdown hangs


@dataclass(slots=True)
class DemoOptions:
    """What ``telemetryd demo`` was asked for."""

    nodes: int = 4
    gpus: int = 8
    broker: str | None = None  # an existing broker's URL; None: the embedded one
    headless: bool = False
    duration: float | None = None  # seconds; None: until quit (TUI) or Ctrl-C
    interval: float = 1.0
    cluster: str = "demo"
    listen: str = ""  # /metrics address; empty: a free loopback port
    state_dir: str | None = None  # kept at exit; None: a temporary directory, removed


def node_name(index: int) -> str:
    """``sim-00``, ``sim-01``, ..."""
    return f"sim-{index:02d}"


def check(opts: DemoOptions) -> None:
    """Refuse options the scenario cannot run with; ConfigError, one line each."""
    problems = []
    if opts.nodes < MIN_NODES:
        problems.append(f"--nodes {opts.nodes}: the demo scenario needs at least {MIN_NODES} "
                        "nodes (sim-00 .. sim-03)")  # fmt: skip
    if opts.gpus < MIN_GPUS:
        problems.append(f"--gpus {opts.gpus}: the demo scenario needs at least {MIN_GPUS} "
                        "GPUs per node (it loses GPU 5)")  # fmt: skip
    if opts.duration is not None and opts.duration <= 0:
        problems.append(f"--duration {opts.duration}: expected seconds > 0")
    if not 0.1 <= opts.interval <= 5:
        problems.append(f"--interval {opts.interval}: expected 0.1 to 5 seconds")
    if opts.broker is not None:
        try:
            parse_broker_url(opts.broker)
        except UrlError as exc:
            problems.append(f"--broker: {exc}")
    if problems:
        raise ConfigError(problems)


def _print(line: str) -> None:
    print(line, flush=True)  # line by line, also into a pipe


def run_demo(opts: DemoOptions, out: Callable[[str], None] = _print) -> int:
    """Run the demo; the exit code: 0 passed (or top quit), 1 failed verdict, 130 Ctrl-C.

    Raises:
        ConfigError: options the scenario cannot run with (one line each).
        TelemetrydError: a part cannot start (broker unreachable, address in use, ...).
    """
    check(opts)
    with state_dir(opts.state_dir) as directory:
        demo = Demo(opts, directory, out)
        asyncio.run(run_until_signalled(demo.run, deadline_s=SIGNAL_DEADLINE_S))
        return demo.code


class Demo:
    """One run: start the parts in order, follow the scenario, stop them in order."""

    def __init__(self, opts: DemoOptions, directory: Path, out: Callable[[str], None]) -> None:
        self.opts = opts
        self.directory = directory
        self.out = out
        self.code = 1
        self.embedded = opts.broker is None
        self.url = opts.broker or f"mqtt://127.0.0.1:{free_port()}"
        self.tls = parse_broker_url(self.url).tls
        self.version: Literal["5", "3.1.1"] = "3.1.1" if self.embedded else "5"  # amqtt: 3.1.1
        self.metrics = opts.listen or f"127.0.0.1:{free_port()}"
        self.t0 = 0.0  # loop time when the agents start: the scenario's zero
        self.alerts = AlertLog(opts.cluster, time.time_ns())
        self.printing = True  # False while the terminal UI has the screen
        self._loop: asyncio.AbstractEventLoop | None = None

    def since_start(self) -> float:
        """Seconds since the scenario began (negative before)."""
        assert self._loop is not None
        return self._loop.time() - self.t0

    def _tui(self) -> RunTop | None:
        """``telemetryd.tui.run_top`` when the terminal UI can run here, else None."""
        if self.opts.headless:
            return None
        try:  # imported by name: textual is an optional part, and may be missing
            run_top: RunTop = importlib.import_module("telemetryd.tui").run_top
        except (ImportError, AttributeError) as exc:
            self.out(f"telemetryd demo: the terminal UI cannot start here ({exc}); "
                     "running headless")  # fmt: skip
            return None
        return run_top

    # -- configuration of the parts -------------------------------------------------------
    def aggregator_config(self) -> AggregatorConfig:
        """The aggregator: SQLite in the state directory, /metrics, the demo's rules."""
        return AggregatorConfig(
            broker=self.url,
            mqtt_version=self.version,
            client_id=f"telemetryd-demo-aggregator-{self.opts.cluster}-{os.getpid()}",
            session_expiry=60,  # a demo's queue should not outlive it long on a real broker
            reconnect_max=2.0,
            clusters=[self.opts.cluster],
            state_dir=str(self.directory / "aggregator"),
            listen=self.metrics,
            fleet_interval=1.0,
            alerts=AlertsConfig(rules_dir=str(_DATA.joinpath("rules"))),
        )

    def agent_config(self, index: int, broker: str) -> AgentConfig:
        """One simulated node following the scenario file."""
        name = node_name(index)
        return AgentConfig(
            broker=broker,
            mqtt_version=self.version,
            keepalive=AGENT_KEEPALIVE_S,
            reconnect_max=2.0,
            node=name,
            cluster=self.opts.cluster,
            interval=self.opts.interval,
            gpu_backend="sim",
            collectors=["host"],
            state_dir=str(self.directory / f"agent-{name}"),
            sim=SimConfig(gpus=self.opts.gpus, scenario=str(SCENARIO), seed=0, jobs=True),
            attribution=sim_jobs(self.directory / f"agent-{name}"),
        )

    # -- the run ---------------------------------------------------------------------------
    async def run(self, signalled: asyncio.Event) -> None:
        """Start everything, wait for the end (time, quit or Ctrl-C), stop everything."""
        self._loop = asyncio.get_running_loop()
        self.t0 = self._loop.time()  # start-up until the agents start (then their start)
        try:
            async with asyncio.TaskGroup() as group:
                await self._conduct(Parts(group, STOP_ORDER), signalled)
        except* TelemetrydError as failed:
            raise failed.exceptions[0] from None

    async def _conduct(self, parts: Parts, signalled: asyncio.Event) -> None:
        run_top = self._tui()
        self.printing = run_top is None
        self._header(run_top is not None)
        if self.embedded:
            from telemetryd import broker  # amqtt: only when the broker is ours

            ready = asyncio.Event()
            cfg = BrokerConfig(listen=self.url.removeprefix("mqtt://"))
            parts.start("broker", "demo.broker",
                        lambda stop: broker.serve(cfg, ready=ready, stop=stop))  # fmt: skip
            await ready.wait()
        settings = mqtt_settings(TopConfig(broker=self.url, mqtt_version=self.version),
                                 client_id=f"telemetryd-demo-observer-{os.getpid()}")  # fmt: skip
        observer = Observer(settings, self.opts.cluster, self.alerts, clock=self.since_start,
                            out=self.out if self.printing else None)  # fmt: skip
        parts.start("viewer", "demo.observer", observer.run)
        await self._reach(observer)
        parts.start("aggregator", "demo.aggregator",
                    lambda stop: aggregator.serve(self.aggregator_config(), stop))  # fmt: skip
        await wait_ready(self.metrics)
        link = await self._link(parts)
        self.t0 = asyncio.get_running_loop().time()
        self.alerts.start_ns = time.time_ns()
        for index in range(self.opts.nodes):
            url = self.url
            if link is not None and node_name(index) == SILENCE.node:
                url = self._via(link)
            parts.start("agents", f"demo.agent.{node_name(index)}",
                        _agent(self.agent_config(index, url)))  # fmt: skip
        steps = timeline(SCENARIO, silence=link is not None)
        script = asyncio.ensure_future(self._follow(steps, link))
        ended = await self._until_end(signalled, run_top)
        script.cancel()
        if link is not None:
            link.thaw()  # a silent node's goodbye and held reports go through as it stops
        expected = [e for e in EXPECTED if link is not None or e.name != "NodeSilent"]
        verdict = summary(self.alerts, expected, observer.fleet, ended=ended)
        for line in verdict.lines:  # after top too: the screen is the terminal's again
            self.out(line)
        self.code = (
            130 if signalled.is_set() else 1 if ended == TIME_UP and not verdict.passed else 0
        )
        await parts.stop_all()

    def _header(self, tui: bool) -> None:
        opts = self.opts
        where = "embedded" if self.embedded else "existing"
        keep = "kept" if opts.state_dir is not None else "removed at exit"
        length = f"for {opts.duration:g} s" if opts.duration else "until Ctrl-C"
        for line in (
            f"telemetryd demo: {opts.nodes} nodes x {opts.gpus} GPUs in cluster "
            f"{opts.cluster!r}, a report every {opts.interval:g} s, "
            + ("until you quit top" if tui and not opts.duration else length),
            f"  broker   {self.url} ({where})",
            f"  metrics  http://{self.metrics}/metrics",
            f"  state    {self.directory} ({keep})",
        ):
            self.out(line)

    async def _reach(self, observer: Observer) -> None:
        """Wait until the observer is subscribed; a broker that cannot be reached is an error."""
        try:
            await asyncio.wait_for(observer.subscribed.wait(), timeout=10.0)
        except TimeoutError:
            raise TelemetrydError(
                f"demo: cannot reach the broker {self.url}: {observer.error or 'no answer'}"
            ) from None

    async def _link(self, parts: Parts) -> Link | None:
        """The freezable relay for the node that goes silent (not over TLS: see below)."""
        if self.tls:
            # The relay would have to present the broker's certificate for 127.0.0.1.
            self.out(f"  note     {SILENCE.node} does not go silent: its relay cannot carry "
                     "a TLS session (mqtts://)")  # fmt: skip
            return None
        broker = parse_broker_url(self.url)
        link = Link(broker.host, broker.port, name=f"link.{SILENCE.node}")
        await link.start()
        parts.start("link", "demo.link", link.serve)
        return link

    def _via(self, link: Link) -> str:
        broker = parse_broker_url(self.url)
        user = f"{broker.username}@" if broker.username else ""
        return f"mqtt://{user}127.0.0.1:{link.port}"

    async def _follow(self, steps: list[Step], link: Link | None) -> None:
        """Announce each scenario step when it happens; freeze and thaw the silent link."""
        for step in steps:
            await asyncio.sleep(max(0.0, step.at - self.since_start()))
            if step.action == "freeze" and link is not None:
                link.freeze()
            elif step.action == "thaw" and link is not None:
                link.thaw()
            if self.printing:
                self.out(f"{self.since_start():+7.1f}s SCENARIO {step.what}")

    async def _until_end(self, signalled: asyncio.Event, run_top: RunTop | None) -> str:
        """Wait for the duration, the TUI's quit or a signal; which one (as summary's ended)."""
        if run_top is None:
            if not self.opts.duration:
                await signalled.wait()
            elif not await stopped_within(signalled, self.opts.duration - self.since_start()):
                return TIME_UP
            return "interrupted"
        cfg = TopConfig(broker=self.url, mqtt_version=self.version, cluster=self.opts.cluster)
        with log_to(self.directory / "demo.log", keep=self.opts.state_dir is not None):
            top = asyncio.ensure_future(run_top(cfg, title="telemetryd demo"))
            waits: set[asyncio.Future[Any]] = {top, asyncio.ensure_future(signalled.wait())}
            if self.opts.duration:
                waits.add(
                    asyncio.ensure_future(
                        stopped_within(signalled, self.opts.duration - self.since_start())
                    )
                )
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            if top in done:
                top.result()  # the UI's own failure, if it had one
            await asyncio.gather(top, return_exceptions=True)
        return "interrupted" if signalled.is_set() else "quit" if top in done else TIME_UP


def _agent(cfg: AgentConfig) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """One agent's service; it outwaits the silent period on the same connection."""

    async def service(stop: asyncio.Event) -> None:
        await agent.serve(cfg, stop, publish_timeout=AGENT_PUBLISH_TIMEOUT_S)

    return service
