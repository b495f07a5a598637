"""The topic tree, the retry backoff and the agent's tick schedule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetryd import backoff as backoff_module
from telemetryd.agent import next_tick
from telemetryd.backoff import Backoff
from telemetryd.names import NAME_PATTERN
from telemetryd.topics import (
    KINDS,
    NodeTopic,
    fleet_event_topic,
    fleet_topic,
    node_topic,
    parse_node_topic,
    subscriptions,
)

names = st.from_regex(NAME_PATTERN.removesuffix("$") + r"\Z", fullmatch=True)


# -- topics ---------------------------------------------------------------------------------
def test_topic_builders_are_exact() -> None:
    assert node_topic("c1", "n1", "report") == "telemetry/v1/c1/n1/report"
    assert node_topic("c1", "n1", "status") == "telemetry/v1/c1/n1/status"
    assert fleet_topic("c1") == "telemetry/v1/c1/_fleet"
    assert fleet_event_topic("c1") == "telemetry/v1/c1/_fleet/event"


def test_subscriptions_cover_every_kind_of_every_cluster() -> None:
    assert subscriptions(["a", "b"]) == [
        "telemetry/v1/a/+/report",
        "telemetry/v1/a/+/event",
        "telemetry/v1/a/+/status",
        "telemetry/v1/b/+/report",
        "telemetry/v1/b/+/event",
        "telemetry/v1/b/+/status",
    ]
    assert subscriptions([]) == []


def test_shared_subscriptions_carry_the_group_prefix() -> None:
    subs = subscriptions(["a"], shared_group="aggs")
    assert subs == [f"$share/aggs/telemetry/v1/a/+/{kind}" for kind in KINDS]


@pytest.mark.parametrize("kind", KINDS)
def test_parse_node_topic_round_trips(kind: str) -> None:
    parsed = parse_node_topic(node_topic("gpu-a", "node-07.dc1", kind))  # type: ignore[arg-type]
    assert parsed == NodeTopic("gpu-a", "node-07.dc1", kind)  # type: ignore[arg-type]


@settings(max_examples=100)
@given(cluster=names, node=names, kind=st.sampled_from(KINDS))
def test_parse_node_topic_round_trips_any_valid_name(cluster: str, node: str, kind: str) -> None:
    assert parse_node_topic(node_topic(cluster, node, kind)) == (cluster, node, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("topic", "names_in_detail"),
    [
        ("telemetry/v2/c1/n1/report", ["telemetry/v1/<cluster>/<node>"]),
        ("telemetry/v1/c1/report", ["telemetry/v1/<cluster>/<node>"]),
        ("telemetry/v1/c1/n1/report/extra", ["telemetry/v1/<cluster>/<node>"]),
        ("/telemetry/v1/c1/n1", ["telemetry/v1/<cluster>/<node>"]),
        ("telemetry/v1/c1//report", ["node", "empty"]),
        ("telemetry/v1//n1/report", ["cluster", "empty"]),
        ("telemetry/v1/c1/n+1/report", ["node", "'+'"]),
        ("telemetry/v1/c#/n1/report", ["cluster", "'#'"]),
        ("telemetry/v1/c1/_fleet/event", ["node", "'_'"]),
        ("telemetry/v1/$SYS/n1/report", ["cluster", "'$'"]),
        ("telemetry/v1/c1/n1\n/report", ["node", "control character"]),
        ("telemetry/v1/c1/" + "n" * 65 + "/report", ["node", "65 characters"]),
        ("telemetry/v1/c1/n1/metrics", ["'metrics'", "report, event or status"]),
        ("telemetry/v1/c1/n1/Report", ["'Report'"]),
    ],
)
def test_parse_node_topic_refuses_with_the_reason(topic: str, names_in_detail: list[str]) -> None:
    problem = parse_node_topic(topic)
    assert isinstance(problem, str)
    for fragment in names_in_detail:
        assert fragment in problem


def test_the_aggregators_own_topics_are_not_agent_topics() -> None:
    # The aggregator subscribes to <cluster>/+/<kind>: its own fleet events must not match.
    assert isinstance(parse_node_topic(fleet_event_topic("c1")), str)
    assert isinstance(parse_node_topic(fleet_topic("c1") + "/status"), str)


# -- backoff --------------------------------------------------------------------------------
def test_backoff_doubles_to_the_cap_without_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff_module.random, "uniform", lambda a, b: 1.0)
    b = Backoff(0.5, 5.0)
    assert [b.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_reset_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff_module.random, "uniform", lambda a, b: 1.0)
    b = Backoff(0.25, 10.0)
    for _ in range(5):
        b.next()
    b.reset()
    assert b.next() == 0.25
    assert b.next() == 0.5


def test_backoff_jitter_stays_within_half_and_one_and_a_half() -> None:
    b = Backoff(1.0, 8.0)
    nominal = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for _ in range(50):
        b.reset()
        for expected in nominal:
            delay = b.next()
            assert 0.5 * expected <= delay <= 1.5 * expected


def test_backoff_jitter_spreads_the_delays() -> None:
    delays = set()
    for _ in range(100):
        delays.add(Backoff(1.0, 1.0).next())
    assert len(delays) > 50  # ten thousand agents must not come back in the same millisecond
    assert min(delays) < 0.75 and max(delays) > 1.25


def test_backoff_survives_many_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff_module.random, "uniform", lambda a, b: 1.0)
    b = Backoff(0.5, 30.0)
    for _ in range(2000):
        delay = b.next()
    assert delay == 30.0
    assert b.attempt == 30  # bounded: 2**attempt never grows without limit


# -- ticks ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "interval", "tick"),
    [
        (12.3, 5.0, 15.0),
        (10.0, 5.0, 15.0),  # on a tick: the next one, strictly after
        (0.0, 10.0, 10.0),
        (1_700_000_003.0, 10.0, 1_700_000_010.0),
        (1_700_000_009.999, 10.0, 1_700_000_010.0),
        (59.0, 60.0, 60.0),
    ],
)
def test_next_tick_examples(now: float, interval: float, tick: float) -> None:
    assert next_tick(now, interval) == tick


@settings(max_examples=200)
@given(
    now=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    interval=st.integers(min_value=1, max_value=3600),
)
def test_next_tick_is_the_next_multiple_strictly_after(now: float, interval: int) -> None:
    tick = next_tick(now, interval)
    assert tick > now
    assert tick - now <= interval + 1e-6
    assert tick % interval == 0


@settings(max_examples=100)
@given(now=st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_next_tick_with_a_fractional_interval_stays_on_the_grid(now: float) -> None:
    tick = next_tick(now, 0.25)  # exact in binary: no rounding trouble
    assert now < tick <= now + 0.25
    assert math.isclose(tick / 0.25, round(tick / 0.25), abs_tol=1e-9)


@pytest.mark.parametrize(
    ("now", "interval"),
    [(1151297592.8, 0.1), (187719172.89999998, 0.7), (299762472.59999996, 0.3)],
)
def test_next_tick_is_strictly_after_now_for_decimal_intervals(now: float, interval: float) -> None:
    assert next_tick(now, interval) > now
