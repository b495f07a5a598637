"""The demo's parts that need no broker: the freezable link, the alert log, the verdict."""

from __future__ import annotations

import asyncio
from importlib import resources

import pytest
from click.testing import CliRunner

from telemetryd.alerting.model import Alert
from telemetryd.cli import cli
from telemetryd.codec import encode_json
from telemetryd.demo import EXPECTED, DemoOptions, check
from telemetryd.demo_link import Link
from telemetryd.demo_report import TIME_UP, AlertLog, Episode, event_line, summary
from telemetryd.demo_timeline import SILENCE, timeline
from telemetryd.errors import ConfigError
from telemetryd.model import SCHEMA_VERSION, FleetNode, FleetSummary

START_NS = 1_700_000_000 * 10**9
PREFIX = "telemetry/v1/demo/_alerts/"


# -- the link ---------------------------------------------------------------------------------
async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _nothing_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        await asyncio.wait_for(reader.read(1024), timeout=seconds)
    except TimeoutError:
        return True
    return False


def test_a_frozen_link_holds_bytes_both_ways_keeps_the_connection_and_delivers_after() -> None:
    async def scenario() -> None:
        upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
        link = Link("127.0.0.1", upstream.sockets[0].getsockname()[1])
        port = await link.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"

        link.freeze()
        writer.write(b"held-1")
        await writer.drain()
        assert await _nothing_within(reader, 0.5)  # nothing crosses while frozen ...
        writer.write(b"held-2")
        assert not reader.at_eof() and not writer.is_closing()  # ... and nothing is closed
        link.thaw()
        assert await asyncio.wait_for(reader.readexactly(12), 5) == b"held-1held-2"

        writer.close()
        await link.close()
        upstream.close()
        await upstream.wait_closed()

    asyncio.run(scenario())


def test_a_connection_opened_while_frozen_waits_for_the_thaw() -> None:
    async def scenario() -> None:
        upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
        link = Link("127.0.0.1", upstream.sockets[0].getsockname()[1])
        port = await link.start()
        link.freeze()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        assert await _nothing_within(reader, 0.3)
        link.thaw()
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        assert link.connections == 1
        await link.close()  # closes the relayed connection too
        assert await asyncio.wait_for(reader.read(1024), 5) == b""
        writer.close()
        upstream.close()
        await upstream.wait_closed()

    asyncio.run(scenario())


def test_stopping_a_frozen_link_thaws_it_first() -> None:
    async def scenario() -> None:
        upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
        link = Link("127.0.0.1", upstream.sockets[0].getsockname()[1])
        await link.start()
        link.freeze()
        stop = asyncio.Event()
        serving = asyncio.create_task(link.serve(stop))
        stop.set()
        await asyncio.wait_for(serving, 5)
        assert not link.frozen
        upstream.close()
        await upstream.wait_closed()

    asyncio.run(scenario())


# -- the alert log and the verdict ----------------------------------------------------------
def _alert(name: str, node: str, gpu: str | None = None, *, fired_ns: int = START_NS) -> bytes:
    labels = {"alertname": name, "severity": "critical", "cluster": "demo", "node": node}
    if gpu is not None:
        labels["gpu"] = gpu
    alert = Alert(fingerprint=f"fp-{name}", status="firing", labels=labels,
                  annotations={"summary": f"{name} on {node}"}, fired_ns=fired_ns)  # fmt: skip
    return encode_json(alert)


def test_alerts_are_news_when_they_fire_and_when_they_resolve_not_when_their_value_moves() -> None:
    log = AlertLog("demo", START_NS)
    assert log.feed(PREFIX + "fp-A", _alert("GpuFellOffBus", "sim-01", "5"), 9.0) is not None
    assert log.feed(PREFIX + "fp-A", _alert("GpuFellOffBus", "sim-01", "5"), 10.0) is None
    assert log.feed(PREFIX + "fp-B", b"", 11.0) is None  # a clear of something never seen
    assert log.feed("telemetry/v1/other/_alerts/fp-C", _alert("X", "n"), 11.0) is None
    news = log.feed(PREFIX + "fp-A", b"", 29.0)
    assert news is not None
    kind, episode = news
    assert (kind, episode.fired_at, episode.resolved_at) == ("resolved", 9.0, 29.0)
    assert log.firing == {}


def test_an_alert_left_retained_by_an_earlier_run_is_set_aside_to_be_cleared() -> None:
    log = AlertLog("demo", START_NS)
    old = _alert("NodeSilent", "sim-03", fired_ns=START_NS - 3600 * 10**9)
    assert log.feed(PREFIX + "fp-old", old, 0.0) is None
    assert log.stale == [PREFIX + "fp-old"] and log.episodes == []


def test_event_lines_say_when_what_where_and_why() -> None:
    episode = Episode("fp", "GpuFellOffBus", "critical", "sim-01", "5", "fell off", 12.34)
    assert event_line("firing", episode, 12.34) == (
        "  +12.3s FIRING   critical GpuFellOffBus sim-01 gpu 5: fell off"
    )
    assert event_line("resolved", episode, 31.0) == (
        "  +31.0s RESOLVED critical GpuFellOffBus sim-01 gpu 5 (fired for 18.7 s)"
    )


def _fleet() -> FleetSummary:
    nodes = [FleetNode(node=f"sim-0{i}", state="online", gpus=8) for i in range(4)]
    return FleetSummary(schema=SCHEMA_VERSION, cluster="demo", time_ns=START_NS,
                        aggregator="a", nodes=nodes, accepted=236)  # fmt: skip


def _run(log: AlertLog, name: str, node: str, gpu: str | None, fired: float, ended: float | None):
    log.feed(PREFIX + f"fp-{name}", _alert(name, node, gpu), fired)
    if ended is not None:
        log.feed(PREFIX + f"fp-{name}", b"", ended)


def test_the_verdict_passes_only_when_every_expected_alert_fired_and_resolved() -> None:
    log = AlertLog("demo", START_NS)
    _run(log, "GpuThermalThrottling", "sim-02", "3", 20.0, 38.0)
    _run(log, "GpuFellOffBus", "sim-01", "5", 9.0, 29.0)
    _run(log, "GpuLost", "sim-01", "5", 14.0, 29.0)
    _run(log, "NodeSilent", "sim-03", None, 15.0, 32.0)
    verdict = summary(log, EXPECTED, _fleet(), ended=TIME_UP)
    assert verdict.passed
    text = "\n".join(verdict.lines)
    assert "GpuFellOffBus sim-01 gpu 5" in text and "+9.0s" in text and "+29.0s" in text
    assert "also fired:" in text and "GpuLost sim-01 gpu 5 +14.0s .. +29.0s" in text
    assert "4 nodes (4 online), 32 GPUs; reports: 236 accepted, 0 missing" in text
    assert text.endswith("verdict: PASS, every expected alert fired and resolved")


def test_a_missing_or_unresolved_alert_fails_the_verdict_and_says_which() -> None:
    log = AlertLog("demo", START_NS)
    _run(log, "GpuThermalThrottling", "sim-02", "3", 20.0, None)  # still firing
    _run(log, "GpuFellOffBus", "sim-01", "5", 9.0, 29.0)
    _run(log, "NodeSilent", "sim-02", None, 15.0, 32.0)  # the wrong node
    verdict = summary(log, EXPECTED, None, ended=TIME_UP)
    assert not verdict.passed
    rows = {line.split()[0]: line for line in verdict.lines[2:5]}
    assert rows["GpuThermalThrottling"].endswith("STILL FIRING")
    assert rows["GpuFellOffBus"].endswith("ok")
    assert rows["NodeSilent"].endswith("MISSING")
    assert "fleet: no summary from the aggregator" in verdict.lines[-2]
    assert verdict.lines[-1].startswith("  verdict: FAIL")
    interrupted = summary(log, EXPECTED, None, ended="interrupted")
    assert interrupted.lines[0] == "summary (interrupted):"
    assert "1 of 3 expected alerts fired and resolved so far" in interrupted.lines[-1]


def test_a_run_without_expectations_passes() -> None:
    assert summary(AlertLog("demo", START_NS), [], None, ended=TIME_UP).passed


# -- the scenario and the options -----------------------------------------------------------
def test_the_timeline_tells_the_story_in_order_and_the_expected_alerts_match_it() -> None:
    scenario = resources.files("telemetryd").joinpath("demo_data/scenario.toml")
    steps = timeline(scenario)
    assert [s.at for s in steps] == sorted(s.at for s in steps)
    said = [s.what for s in steps]
    assert said[0].startswith("sim-02 GPU 3: cooling fails")
    assert any(s.startswith("sim-01 GPU 5: XID 79") for s in said)
    assert [s.action for s in steps if s.action != "say"] == ["freeze", "thaw"]
    assert steps[-1].at <= 40  # everything is over well before a 60 s run ends
    assert {(e.node, e.gpu) for e in EXPECTED} == {("sim-02", "3"), ("sim-01", "5"),
                                                     (SILENCE.node, None)}  # fmt: skip
    assert "freeze" not in [s.action for s in timeline(scenario, silence=False)]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (DemoOptions(nodes=2), "--nodes 2: the demo scenario needs at least 4"),
        (DemoOptions(gpus=4), "--gpus 4: the demo scenario needs at least 6"),
        (DemoOptions(duration=0), "--duration 0: expected seconds > 0"),
        (DemoOptions(broker="http://x"), "--broker: 'http://x': scheme must be mqtt or mqtts"),
    ],
)
def test_options_the_scenario_cannot_run_with_are_refused_in_one_line(
    options: DemoOptions, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        check(options)
    assert caught.value.problems[0].startswith(words)


def test_the_command_line_refuses_too_few_nodes_before_starting_anything() -> None:
    result = CliRunner().invoke(cli, ["demo", "--nodes", "2", "--headless"])
    assert result.exit_code == 2
    assert "--nodes" in result.output and "4<=x<=64" in result.output
    assert "--headless" in CliRunner().invoke(cli, ["demo", "--help"]).output
