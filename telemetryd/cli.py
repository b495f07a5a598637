"""The one module that imports click: the ``telemetryd`` command line.

Commands only parse and delegate. Every failure an operator can cause ends as one line on
stderr and an exit code: 2 for bad usage or configuration, 1 for a runtime failure, 130
for Ctrl-C; a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from telemetryd import __version__
from telemetryd.errors import ConfigError, TelemetrydError

LOG_LEVELS = ("debug", "info", "warning", "error")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="telemetryd: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


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
@click.argument("role", type=click.Choice(["agent", "aggregator", "broker"]))
def config_sample(role: str) -> None:
    """Print a commented configuration documenting every key of ROLE."""
    from telemetryd.config import Config
    from telemetryd.configrender import render

    click.echo(render(Config(), (role,), sample=True), nl=False)


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
