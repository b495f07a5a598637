"""The one module that imports click: the ``telemetryd`` command line.

Commands only parse and delegate. Every failure an operator can cause ends as one line on
stderr and an exit code: 2 for bad usage or configuration, 1 for a runtime failure, 130
for Ctrl-C; a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from telemetryd import __version__
from telemetryd.errors import ConfigError, TelemetrydError

LOG_LEVELS = ("debug", "info", "warning", "error")


def _setup_logging(level: str) -> None:
    from telemetryd import logsetup  # stderr as before; journald's format under systemd

    logsetup.setup(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="telemetryd")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default="warning",
    envvar="TELEMETRYD_LOG_LEVEL",
    show_default=True,
    help="Lowest level logged to stderr.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def cli(log_level: str, debug: bool) -> None:
    """GPU fleet telemetry: NVML agents, MQTT, an aggregator, stores and alerts."""
    _setup_logging("debug" if debug else log_level)


def _federation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--federation`` and ``--prefix``, shared by top and status."""
    command = click.option(
        "--prefix", default="sites", show_default=True, metavar="LEVELS",
        help="With --federation: the topic levels each site's bridge maps its summaries "
        "under (<prefix>/<site>/telemetry/v1/...).",
    )(command)  # fmt: skip
    return click.option(
        "--federation", is_flag=True,
        help="Watch a national broker: every site's summaries, rollups and alerts "
        "(docs/federation.md).",
    )(command)  # fmt: skip


def _checked_prefix(prefix: str, cluster: str | None) -> str:
    from telemetryd.watchfed import prefix_problem

    if cluster:
        raise click.UsageError("--cluster cannot be combined with --federation (every site "
                               "and cluster is shown)")  # fmt: skip
    problem = prefix_problem(prefix.strip("/"))
    if problem:
        raise click.UsageError(f"--prefix {prefix!r}: {problem}")
    return prefix.strip("/")


def _federation_status(
    ctx: click.Context, settings: Any, prefix: str, wait: float, stale: float, as_json: bool
) -> None:
    import asyncio

    from telemetryd import fedstatus
    from telemetryd.codec import encode_json
    from telemetryd.status import BrokerUnreachable

    try:
        doc = asyncio.run(fedstatus.status(settings, prefix, wait, stale))
    except BrokerUnreachable as exc:
        click.echo(f"telemetryd status: {exc}", err=True)
        ctx.exit(2)
    click.echo(encode_json(doc).decode() if as_json else fedstatus.render(doc))
    ctx.exit(doc.exit_code)


def _overrides(**options: tuple[str, Any]) -> dict[str, tuple[str, Any]]:
    return {key: value for key, value in options.items() if value[1] is not None}


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML configuration file ([agent] section).",
)
@click.option("--once", is_flag=True, help="Print one report and exit (default: every interval).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as the agent publishes it.")
@click.option(
    "--gpu-backend",
    metavar="auto|nvml|sim|none",
    help="GPU source; auto uses NVML when it loads.  [default: auto]",
)
@click.option("--gpus", type=int, help="Number of simulated GPUs (sim backend).")
@click.option("--node", help="Node name in the report.  [default: host name]")
@click.option("--cluster", help="Cluster name in the report.")
@click.option("--interval", type=float, help="Seconds between reports without --once.")
@click.option(
    "--window",
    type=click.FloatRange(0.1, 60),
    default=1.0,
    show_default=True,
    help="Seconds between the two readings that rates (CPU %, power) need.",
)
@click.option(
    "--record",
    type=click.Path(dir_okay=False, writable=True),
    help="Write what NVML answered to this file (a fixture for tests and the simulator).",
)
def collect(
    config_file: str | None,
    once: bool,
    as_json: bool,
    gpu_backend: str | None,
    gpus: int | None,
    node: str | None,
    cluster: str | None,
    interval: float | None,
    window: float,
    record: str | None,
) -> None:
    """Show what this node's GPUs and host are doing, like gpustat."""
    from telemetryd import collect as collect_mod
    from telemetryd.configload import load

    if record and gpu_backend not in (None, "nvml", "auto"):
        raise click.UsageError(
            f"--record reads real NVML; it cannot be combined with --gpu-backend {gpu_backend}"
        )
    loaded = load(
        config_file,
        overrides=_overrides(
            **{
                "agent.gpu_backend": ("--gpu-backend", gpu_backend),
                "agent.sim.gpus": ("--gpus", gpus),
                "agent.node": ("--node", node),
                "agent.cluster": ("--cluster", cluster),
                "agent.interval": ("--interval", interval),
            }
        ),
    )
    collect_mod.run(
        loaded.config.agent,
        gpu_backend=None,
        as_json=as_json,
        once=once,
        window_s=window,
        record=record,
    )


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML configuration file ([top] section).",
)
@click.option(
    "--broker", metavar="URL", help="mqtt://[user@]host[:1883] or mqtts://[user@]host[:8883]."
)
@click.option("--cluster", metavar="NAME", help="Cluster to watch; + watches every cluster.")
@click.option("--refresh", type=float, metavar="S", help="Seconds between redraws.")
@_federation_options
def top(
    config_file: str | None, broker: str | None, cluster: str | None, refresh: float | None,
    federation: bool, prefix: str,
) -> None:  # fmt: skip
    """The fleet live in the terminal: heatmap, nodes, node detail, alerts.

    With --federation, every site on a national broker, nodes from their rollups.
    """
    import os
    import socket

    from telemetryd.configload import load
    from telemetryd.connect import viewer_settings
    from telemetryd.tui import main_top

    loaded = load(config_file, overrides=_overrides(**{
        "top.broker": ("--broker", broker),
        "top.cluster": ("--cluster", cluster),
        "top.refresh": ("--refresh", refresh),
    }))  # fmt: skip
    cfg = loaded.config.top
    given = [name for name, value in (("broker", broker), ("cluster", cluster)) if value]
    client_id = f"telemetryd-top-{socket.gethostname()}-{os.getpid()}"
    settings = viewer_settings(cfg, client_id=client_id, options=given)
    if federation:
        from telemetryd import fedtop

        sys.exit(fedtop.main(cfg, settings, _checked_prefix(prefix, cluster)))
    sys.exit(main_top(cfg, settings))


def _common(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed([
        click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False),
                     help="TOML configuration file."),
        click.option("--broker", metavar="URL",
                     help="mqtt://[user@]host[:1883] or mqtts://[user@]host[:8883]."),
        click.option("--state-dir", type=click.Path(file_okay=False),
                     help="State directory.  [default: $STATE_DIRECTORY or /var/lib/telemetryd]"),
    ]):  # fmt: skip
        command = option(command)
    return command


def _serve(
    run: Callable[..., Any], section: Any, reread: Callable[[], Any] | None = None, role: str = ""
) -> None:
    """Run a service; with ``reread`` (the same file and options again), SIGHUP reloads it."""
    import asyncio

    from telemetryd.reload import Reloader
    from telemetryd.service import no_reload, run_until_signalled

    async def main() -> None:
        if reread is None:
            await run_until_signalled(lambda stop: run(section, stop), reload=no_reload)
            return
        reloader = Reloader(reread, role)
        await run_until_signalled(
            lambda stop: run(section, stop, reloader=reloader), reload=reloader.request
        )

    asyncio.run(main())


@cli.command()
@_common
@click.option("--node", help="This node's name.  [default: host name]")
@click.option("--cluster", help="Cluster this node belongs to.")
@click.option("--interval", type=float, help="Seconds between reports.")
@click.option("--gpu-backend", metavar="auto|nvml|sim|none", help="GPU source.")
def agent(
    config_file: str | None,
    broker: str | None,
    state_dir: str | None,
    node: str | None,
    cluster: str | None,
    interval: float | None,
    gpu_backend: str | None,
) -> None:
    """Sample this node every interval and publish the reports over MQTT."""
    from telemetryd import agent as agent_mod
    from telemetryd.configload import load

    overrides = _overrides(**{
        "agent.broker": ("--broker", broker),
        "agent.state_dir": ("--state-dir", state_dir),
        "agent.node": ("--node", node),
        "agent.cluster": ("--cluster", cluster),
        "agent.interval": ("--interval", interval),
        "agent.gpu_backend": ("--gpu-backend", gpu_backend),
    })  # fmt: skip
    loaded = load(config_file, overrides=overrides)
    reread = lambda: load(config_file, overrides=overrides).config.agent  # noqa: E731
    _serve(agent_mod.serve, loaded.config.agent, reread, "agent")


@cli.command()
@_common
@click.option(
    "--sink",
    "sinks",
    multiple=True,
    metavar="URL",
    help="Where to write (repeatable): sqlite:///PATH, influxdb2://HOST:8086?org=O&bucket=B, "
    "influxdb://[USER@]HOST:8086/DB[?rp=RP].  [default: SQLite in the state dir]",
)
@click.option(
    "--shared-group",
    metavar="NAME",
    help="Share the load with other aggregators through $share/NAME (MQTT 5).",
)
@click.option("--members", type=int, metavar="N",
              help="Aggregators sharing the group (docs/sharing.md).  [default: 1]")  # fmt: skip
@click.option("--member", type=int, metavar="I",
              help="This aggregator's index in the group, 0..N-1.  [default: 0]")  # fmt: skip
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve /metrics (Prometheus), /healthz and /readyz here.  [default: not served]",
)
def aggregator(
    config_file: str | None,
    broker: str | None,
    state_dir: str | None,
    sinks: tuple[str, ...],
    shared_group: str | None,
    members: int | None,
    member: int | None,
    listen: str | None,
) -> None:
    """Consume reports from MQTT, keep the fleet's state and write them to the sinks."""
    from telemetryd import aggregator as aggregator_mod
    from telemetryd.configload import load

    overrides = _overrides(**{
        "aggregator.broker": ("--broker", broker),
        "aggregator.state_dir": ("--state-dir", state_dir),
        "aggregator.sinks": ("--sink", list(sinks) or None),
        "aggregator.shared_group": ("--shared-group", shared_group),
        "aggregator.members": ("--members", members),
        "aggregator.member": ("--member", member),
        "aggregator.listen": ("--listen", listen),
    })  # fmt: skip
    loaded = load(config_file, overrides=overrides)
    reread = lambda: load(config_file, overrides=overrides).config.aggregator  # noqa: E731
    _serve(aggregator_mod.serve, loaded.config.aggregator, reread, "aggregator")


@cli.command()
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML configuration file ([top] section).")  # fmt: skip
@click.option("--broker", metavar="URL",
              help="mqtt://[user@]host[:1883] or mqtts://[user@]host[:8883].")  # fmt: skip
@click.option("--cluster", metavar="NAME", help="Only this cluster.  [default: + (all)]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (docs/status.md).")
@click.option("--wait", type=float, metavar="S",
              help="Longest wait for one report from each online node.  [default: 5]")  # fmt: skip
@_federation_options
@click.option("--stale", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, metavar="S",
              help="With --federation: a site whose newest summary is older is stale "
              "(exit 3).")  # fmt: skip
@click.pass_context
def status(
    ctx: click.Context, config_file: str | None, broker: str | None, cluster: str | None,
    as_json: bool, wait: float | None, federation: bool, prefix: str, stale: float,
) -> None:  # fmt: skip
    """Summarise the fleet once: nodes, GPUs, firing alerts, top consumers.

    Exit code 0 when no alert fires (silenced ones do not count), 1 when one does, 2 on
    bad usage or when the broker cannot be reached. With --federation (a national broker,
    docs/federation.md): one line per site, and 3 when a site's summary is stale.
    """
    import asyncio
    import os
    import socket

    from telemetryd import status as status_mod
    from telemetryd.codec import encode_json
    from telemetryd.configload import load
    from telemetryd.connect import viewer_settings

    loaded = load(config_file, overrides=_overrides(**{
        "top.broker": ("--broker", broker),
        "top.cluster": ("--cluster", cluster),
        "top.wait": ("--wait", wait),
    }))  # fmt: skip
    cfg = loaded.config.top
    given = [name for name, value in (("broker", broker), ("cluster", cluster)) if value]
    client_id = f"telemetryd-status-{socket.gethostname()}-{os.getpid()}"
    settings = viewer_settings(cfg, client_id=client_id, options=given)
    if federation:
        _federation_status(ctx, settings, _checked_prefix(prefix, cluster), cfg.wait, stale,
                           as_json)  # fmt: skip
    try:
        doc = asyncio.run(status_mod.status(settings, cfg))
    except status_mod.BrokerUnreachable as exc:
        click.echo(f"telemetryd status: {exc}", err=True)
        ctx.exit(2)
    if as_json:
        click.echo(encode_json(doc).decode())
    else:
        from telemetryd.console import print_status

        print_status(doc)
    ctx.exit(doc.exit_code)


@cli.group(invoke_without_command=True)
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML configuration file ([broker] section).",
)
@click.option(
    "--listen", metavar="HOST:PORT", help="Address to listen on.  [default: 127.0.0.1:1883]"
)
@click.pass_context
def broker(ctx: click.Context, config_file: str | None, listen: str | None) -> None:
    """Run the embedded MQTT broker (amqtt) for one machine or a small site."""
    if ctx.invoked_subcommand is not None:
        return
    from telemetryd import broker as broker_mod
    from telemetryd.configload import load

    loaded = load(config_file, overrides=_overrides(**{"broker.listen": ("--listen", listen)}))

    async def run(cfg: Any, stop: Any) -> None:
        await broker_mod.serve(cfg, stop=stop)

    _serve(run, loaded.config.broker)


@broker.command("passwd")
@click.argument("user")
def broker_passwd(user: str) -> None:
    """Print a password-file line for USER; the password is read from standard input."""
    from telemetryd import broker as broker_mod

    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise click.UsageError("no password on standard input")
    click.echo(f"{user}:{broker_mod.hash_password(password)}")


@cli.command()
@click.option(
    "--nodes",
    type=click.IntRange(4, 64),
    default=4,
    show_default=True,
    help="Simulated nodes (sim-00, sim-01, ...); the scenario needs 4.",
)
@click.option(
    "--gpus",
    type=click.IntRange(6, 64),
    default=8,
    show_default=True,
    help="Simulated GPUs per node; the scenario needs 6.",
)
@click.option(
    "--broker", metavar="URL", help="Use this broker instead of starting the embedded one."
)
@click.option(
    "--headless",
    is_flag=True,
    help="No terminal UI: print alerts as they fire and resolve, then a summary.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    metavar="S",
    help="Stop S seconds after the scenario starts.  [default: run until quit]",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 5),
    default=1.0,
    show_default=True,
    help="Seconds between a node's reports.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve the aggregator's /metrics here.  [default: a free loopback port]",
)
@click.option(
    "--keep-state",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Keep spools, WAL and the SQLite store in DIR.  [default: a temporary "
    "directory, removed at exit]",
)
def demo(
    nodes: int,
    gpus: int,
    broker: str | None,
    headless: bool,
    duration: float | None,
    interval: float,
    listen: str | None,
    keep_state: str | None,
) -> int:
    """The whole system on one machine, following a fault scenario, with top in front.

    With --headless and --duration, exits 0 only if every alert of the scenario fired and
    resolved (1 otherwise, 130 on Ctrl-C).
    """
    from telemetryd.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(nodes=nodes, gpus=gpus, broker=broker, headless=headless,
                                duration=duration, interval=interval, listen=listen or "",
                                state_dir=keep_state), out=click.echo)  # fmt: skip


def _when(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from telemetryd.timespec import TimeSpecError, parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except TimeSpecError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@cli.command("export")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="URL",
    help="The store to read: sqlite:///PATH (the aggregator's embedded store).",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL",
    help="The store to write: influxdb2://host:8086?org=O&bucket=B, "
    "influxdb://[USER@]host:8086/DB[?rp=RP] or sqlite:///PATH.",
)
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file whose [aggregator.influxdb] has the target's credentials.",
)
@click.option(
    "--since",
    callback=_when,
    metavar="T",
    help="Only reports from T on: 2026-11-30, 2026-11-30T08:00:00Z, 24h, 7d...",
)
@click.option("--until", callback=_when, metavar="T", help="Only reports before T.")
@click.option("--node", metavar="NAME", help="Only this node's reports.")
@click.option(
    "--rollups/--no-rollups",
    default=True,
    show_default=True,
    help="Also export the 1-minute rollups (InfluxDB targets: gpu_1m, host_1m).",
)
@click.option(
    "--dead-letters",
    type=click.Path(dir_okay=False),
    default="telemetryd-export-deadletter.jsonl",
    show_default=True,
    help="Where lines the target refuses for good are kept, with its reason.",
)
@click.option(
    "--retry-for",
    type=click.FloatRange(0, 86400),
    default=300.0,
    show_default=True,
    help="Seconds to keep retrying a failing target before stopping.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="Reports per write.",
)
def export_cmd(
    source: str, target: str, config_file: str | None, since: int | None, until: int | None,
    node: str | None, rollups: bool, dead_letters: str, retry_for: float, batch: int,
) -> None:  # fmt: skip
    """Copy reports from the SQLite store into another store (a backfill).

    Writes are idempotent: exporting what a store already holds changes nothing, so an
    interrupted export is resumed by running it again (with --since to skip ahead).
    """
    import asyncio
    import time
    from pathlib import Path

    from telemetryd import export as export_mod
    from telemetryd.configload import load
    from telemetryd.deadletter import DeadLetters

    cfg = load(config_file).config.aggregator
    letters = DeadLetters(Path(dead_letters), max_bytes=cfg.deadletter_max_bytes)
    started = time.monotonic()
    shown = [started]

    def progress(stats: export_mod.ExportStats) -> None:
        now = time.monotonic()
        if now - shown[0] >= 2.0:
            shown[0] = now
            rate = stats.reports / max(now - started, 1e-9)
            click.echo(f"telemetryd export: {stats.line()} so far ({rate:.0f} reports/s)",
                       err=True)  # fmt: skip

    stats = asyncio.run(export_mod.export(
        source, target, cfg, letters, since_ns=since, until_ns=until, node=node, batch=batch,
        rollups=rollups, retry_for=retry_for, progress=progress,
    ))  # fmt: skip
    click.echo(f"exported {stats.line()} in {time.monotonic() - started:.1f} s")
    if stats.lines_set_aside or stats.reports_refused:
        click.echo(f"refused items are in {dead_letters}, with the target's reason", err=True)


@cli.command("jobs")
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file whose [aggregator] names the store (its sqlite sink or state_dir).",
)
@click.option(
    "--store",
    metavar="URL",
    help="sqlite:///PATH or influxdb://[USER@]HOST:PORT/DB (1.x: ended jobs only).  "
    "[default: the configured aggregator's SQLite store]",
)
@click.option(
    "--since",
    callback=_when,
    metavar="T",
    help="Jobs running or ended from T on: 2026-11-30, 24h, 7d...",
)
@click.option("--node", metavar="NAME", help="Only jobs that ran on this node (shown whole).")
@click.option("--job", "job_id", metavar="ID", help="Only this job (id, or namespace/pod).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (docs/jobs.md).")
def jobs_cmd(config_file: str | None, store: str | None, since: int | None, node: str | None,
             job_id: str | None, as_json: bool) -> None:  # fmt: skip
    """List jobs with their nodes, GPUs, energy and utilisation, from the store."""
    from telemetryd import jobscmd
    from telemetryd.configload import load

    cfg = load(config_file).config.aggregator
    jobscmd.run(cfg, store, since_ns=since, node=node, job=job_id, as_json=as_json,
                out=sys.stdout)  # fmt: skip


@cli.group()
def config() -> None:
    """Check configuration files and print documented samples."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate FILE; print the effective configuration, or every problem (exit 2)."""
    from telemetryd.configload import load
    from telemetryd.configrender import render

    loaded = load(file)
    click.echo(render(loaded.config, loaded.sections), nl=False)


@config.command("sample")
@click.argument("role", type=click.Choice(["agent", "aggregator", "broker", "top"]))
def config_sample(role: str) -> None:
    """Print a commented configuration documenting every key of ROLE."""
    from telemetryd.config import Config
    from telemetryd.configrender import render

    click.echo(render(Config(), (role,), sample=True), nl=False)


@cli.group()
def alerts() -> None:
    """List alerts, silence them, test receivers and check rule files."""


_CONFIG = click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False),
                       help="The aggregator's TOML configuration file.")  # fmt: skip
_STATE_DIR = click.option("--state-dir", type=click.Path(file_okay=False),
                          help="The aggregator's state directory.  [default: its own]")  # fmt: skip


def _parsed(parser: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: admin.<parser>(value), None kept; its ValueError is bad usage."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        from telemetryd.alerting import admin

        try:
            return None if value is None else getattr(admin, parser)(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


@alerts.command("list")
@_CONFIG
@_STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def alerts_list(config_file: str | None, state_dir: str | None, as_json: bool) -> None:
    """Firing and pending alerts, active silences and undelivered notifications.

    As the aggregator last saved them (every 5 s). MUTED names the silences muting an
    alert; inhibition is known only to the running aggregator and is not shown. NOTIFIED
    names the receivers the aggregator told that the alert fires. The newest 20
    undelivered notifications are shown; the dead-letter file has them all.
    """
    from telemetryd.alerting import admin

    view = admin.overview(admin.load_config(config_file, state_dir))
    click.echo(admin.to_json(view) if as_json else admin.render(view), nl=False)


@alerts.command("silence")
@_CONFIG
@_STATE_DIR
@click.argument("matchers", nargs=-1, required=True, metavar="MATCHER...",
                callback=_parsed("parse_matchers"))  # fmt: skip
@click.option("--duration", metavar="D", help="How long: 2h, 1h30m, 3d.",
              callback=_parsed("parse_duration"))  # fmt: skip
@click.option("--until", metavar="T", help="When it ends: 2026-11-30T18:00:00Z, Unix seconds.",
              callback=_parsed("parse_moment"))  # fmt: skip
@click.option("--start", metavar="T", help="When it starts.  [default: now]",
              callback=_parsed("parse_moment"))  # fmt: skip
@click.option("--author", help="Who sets it.  [default: $USER]")
@click.option("--comment", required=True, help="Why: the maintenance, the ticket.")
def alerts_silence(
    config_file: str | None, state_dir: str | None, matchers: Any, duration: float | None,
    until: int | None, start: int | None, author: str | None, comment: str,
) -> None:  # fmt: skip
    """Mute the alerts that MATCHER... match ('node="n17"' 'gpu=~"0|1"'); print its id.

    Matchers are Alertmanager's: = != =~ !~. Give --duration or --until. The running
    aggregator reads the silence within a second.
    """
    if (duration is None) == (until is None):
        raise click.UsageError("give one of --duration and --until")
    from telemetryd.alerting import admin

    silence = admin.add_silence(admin.load_config(config_file, state_dir), matchers,
                                starts_ns=start, ends_ns=until, duration_s=duration,
                                author=author, comment=comment)  # fmt: skip
    click.echo(silence.id)


@alerts.command("unsilence")
@_CONFIG
@_STATE_DIR
@click.argument("silence_id", metavar="ID")
def alerts_unsilence(config_file: str | None, state_dir: str | None, silence_id: str) -> None:
    """End the silence ID (or a unique prefix of it) now."""
    from telemetryd.alerting import admin

    silence = admin.expire_silence(admin.load_config(config_file, state_dir), silence_id)
    click.echo(f"expired {admin.describe(silence)}")


@alerts.command("test-hook")
@_CONFIG
@click.option("--no-resolve", is_flag=True, help="Send only the firing notification.")
@click.argument("name")
def alerts_test_hook(config_file: str | None, no_resolve: bool, name: str) -> None:
    """Send a test alert, then its resolve, to the receiver NAME of the routing file.

    One attempt each, no retries; exits 1 with the receiver's answer if it refused.
    """
    from telemetryd.alerting import admin

    admin.send_test(admin.load_config(config_file, None), name, resolve=not no_resolve,
                    echo=click.echo)  # fmt: skip


@alerts.command("check-rules")
@_CONFIG
@click.option("--with-defaults", is_flag=True, help="With DIR: also load the shipped rule pack.")
@click.argument("directory", metavar="[DIR]", required=False)
def alerts_check_rules(config_file: str | None, with_defaults: bool, directory: str | None) -> None:
    """Check every *.toml rule file of DIR; print every problem (exit 2).

    Without DIR: the rules the configuration loads (the shipped pack by default).
    """
    from telemetryd.alerting import admin

    cfg = admin.load_config(config_file, None)
    click.echo(admin.check_rules(directory, cfg, with_defaults=with_defaults))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = cli.main(args=args, prog_name="telemetryd", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        if exc.ctx is not None:
            click.echo(exc.ctx.get_help(), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx else "telemetryd"
        click.echo(f"{path}: {exc.format_message()} (see '{path} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"telemetryd: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(130)
    except ConfigError as exc:
        if debug:
            raise
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(2)
    except TelemetrydError as exc:
        if debug:
            raise
        click.echo(f"telemetryd: error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
