"""The reload plumbing: SIGHUP handling, refusal, what counts as a change, rule swaps.

The end-to-end behaviour (real processes, Mosquitto, zero loss) is in
tests/integration/test_reload.py; these pin the pieces that decide it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from exporters.mqtt import MqttSettings
from telemetryd.config import AgentConfig
from telemetryd.errors import ConfigError
from telemetryd.reload import Reloader, ReloadRefused, changed_keys, refuse_fixed, same_broker
from telemetryd.secrets import Secret
from telemetryd.service import no_reload, run_until_signalled
from telemetryd.urls import parse_broker_url
from tests.unit.test_alert_engine import HOT, T0, S, engine, feed, report, rules


@pytest.mark.parametrize("with_reload", [False, True])
def test_sighup_reloads_or_says_it_cannot(with_reload, caplog) -> None:
    calls: list[str] = []
    seen: list[str] = []

    async def main(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.1)
        seen.append("alive")

    reload = (lambda: calls.append("reload")) if with_reload else no_reload
    with caplog.at_level(logging.WARNING):
        asyncio.run(run_until_signalled(main, reload=reload))
    assert seen == ["alive"]
    assert calls == (["reload"] if with_reload else [])
    assert ("does not reload" in caplog.text) is not with_reload


def test_reloader_refuses_with_one_error_line_and_applies_valid(caplog) -> None:
    answers: list[object] = [ConfigError(["a.toml:3: agent.interval: bad", "a.toml:4: x: bad"])]
    applied: list[int] = []

    def read() -> int:
        answer = answers.pop(0) if answers else 7
        if isinstance(answer, Exception):
            raise answer
        return int(answer)  # type: ignore[call-overload]

    async def apply(value: int) -> None:
        if value == 8:
            raise ReloadRefused("agent.node: changing it needs a restart, not a reload")
        applied.append(value)

    reloader = Reloader(read, "agent")

    async def run() -> list[bool]:
        first = await reloader.once(apply)
        answers.append(8)
        second = await reloader.once(apply)
        return [first, second, await reloader.once(apply)]

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(run()) == [False, False, True]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].endswith("a.toml:3: agent.interval: bad; a.toml:4: x: bad")
    assert "agent.node: changing it needs a restart" in errors[1]
    assert applied == [7] and reloader.refused == 2 and reloader.reloaded == 1


def test_changes_and_fixed_keys() -> None:
    old = AgentConfig()
    new = AgentConfig(interval=2.0, node="other", collectors=["host"])
    assert changed_keys(old, new) == {"interval", "node", "collectors"}
    refuse_fixed("agent", {"interval"}, {"node"})
    with pytest.raises(ReloadRefused, match=r"agent\.node: changing it needs a restart"):
        refuse_fixed("agent", changed_keys(old, new), {"node", "state_dir"})


def test_same_broker_compares_the_password_by_value() -> None:
    def settings(password: str) -> MqttSettings:
        return MqttSettings(parse_broker_url("mqtt://u@h:1883"), "id", password=Secret(password))

    assert same_broker(settings("a"), settings("a"))
    assert not same_broker(settings("a"), settings("rotated"))


def test_rule_swap_keeps_kept_alerts_and_resolves_removed_ones() -> None:
    now = HOT.replace('for = "20s"', "")
    eng, fleet = engine(now + now.replace("GpuHot", "GpuHot2"))
    fired = feed(eng, fleet, report(0, temp_c=90.0))
    assert sorted(a.labels["alertname"] for a in fired) == ["GpuHot", "GpuHot2"]
    eng.set_rules(rules(now.replace("85", "95")), T0 + S)
    assert [(a.status, a.labels["alertname"]) for a in eng.drain()] == [("resolved", "GpuHot2")]
    # GpuHot keeps firing (its resolve condition, temp_c < 80, is not met): no new page.
    assert feed(eng, fleet, report(1, temp_c=90.0)) == []
    assert [a.labels["alertname"] for a in eng.firing()] == ["GpuHot"]


def test_without_a_reload_callback_sighup_keeps_its_default_action() -> None:
    """The demo passes none: closing its terminal (SIGHUP) must still end it."""
    import subprocess
    import sys

    code = (
        "import asyncio, os, signal\n"
        "from telemetryd.service import run_until_signalled\n"
        "async def main(stop):\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    await asyncio.sleep(5)\n"
        "asyncio.run(run_until_signalled(main))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
    assert done.returncode == -signal.SIGHUP
