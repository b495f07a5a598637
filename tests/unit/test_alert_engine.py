"""The alert engine: expressions, rule files and the pending/firing/resolved machine."""

from __future__ import annotations

import functools
from pathlib import Path

import msgspec
import pytest

from telemetryd.alerting.engine import Engine
from telemetryd.alerting.expr import ExprError, compile_expr
from telemetryd.alerting.rules import SCOPE_NAMES, load_rules, parse_rules
from telemetryd.errors import ConfigError
from telemetryd.fleet import Fleet
from telemetryd.model import Event, Gpu, Report, Status, decode_report
from tests.reports import sampled

S = 1_000_000_000
T0 = 1_700_000_000 * S


@functools.cache
def _base() -> Report:
    return decode_report(sampled())


def report(
    seq: int,
    *,
    t: int | None = None,
    node: str = "n1",
    boot: str = "a" * 32,
    events: list[Event] | None = None,
    **gpu0: object,
) -> Report:
    base = _base()
    gpus = list(base.gpus)
    gpus[0] = msgspec.structs.replace(gpus[0], **gpu0)
    return msgspec.structs.replace(
        base, node=node, seq=seq, boot_id=boot, time_ns=t if t is not None else T0 + seq * 10 * S,
        interval_s=10.0, gpus=gpus, events=events or [],
    )  # fmt: skip


def rules(text: str) -> list:
    problems: list[str] = []
    out = parse_rules(text, "t.toml", problems)
    assert problems == []
    return out


def engine(text: str, **kw: object) -> tuple[Engine, Fleet]:
    fleet = Fleet(silent_after=3.0)
    return Engine(rules(text), fleet, **kw), fleet  # type: ignore[arg-type]


def feed(eng: Engine, fleet: Fleet, r: Report, now: int | None = None) -> list:
    now = now if now is not None else r.time_ns
    fleet.claim(r)
    fleet.on_report(r, now)
    eng.on_report(r, now)
    return eng.drain()


HOT = """
[[rule]]
name = "GpuHot"
scope = "gpu"
expr = "temp_c >= 85"
resolve = "temp_c < 80"
for = "20s"
severity = "warning"
annotations = { summary = "GPU {{ gpu }} on {{ node }} at {{ value }} C" }
"""


def test_threshold_with_for_and_hysteresis() -> None:
    eng, fleet = engine(HOT)
    assert feed(eng, fleet, report(0, temp_c=86.0)) == []  # pending
    assert [a.labels["alertname"] for a in eng.pending()] == ["GpuHot"]
    assert feed(eng, fleet, report(1, temp_c=87.0)) == []  # 10 s: still pending
    # a viewer's pending list says what is coming, with the newest value
    assert [a.annotations["summary"] for a in eng.pending()] == ["GPU 0 on n1 at 87 C"]
    fired = feed(eng, fleet, report(2, temp_c=88.0))  # 20 s: fires
    assert [(a.status, a.labels["gpu"], a.annotations["summary"]) for a in fired] == [
        ("firing", "0", "GPU 0 on n1 at 88 C")
    ]
    # Flapping around the fire threshold but above the resolve threshold: nothing new.
    for seq, temp in enumerate([84.0, 86.0, 82.0, 85.5, 81.0], start=3):
        assert feed(eng, fleet, report(seq, temp_c=temp)) == []
    resolved = feed(eng, fleet, report(8, temp_c=79.0))
    assert [(a.status, a.fingerprint) for a in resolved] == [("resolved", fired[0].fingerprint)]
    assert resolved[0].ends_ns == T0 + 80 * S
    assert eng.firing() == []


def test_pending_that_stops_is_never_notified() -> None:
    eng, fleet = engine(HOT)
    feed(eng, fleet, report(0, temp_c=90.0))
    assert feed(eng, fleet, report(1, temp_c=70.0)) == []
    assert eng.pending() == [] and eng.firing() == []


def test_absent_field_keeps_the_state() -> None:
    eng, fleet = engine(HOT.replace('for = "20s"', ""))
    assert feed(eng, fleet, report(0, temp_c=90.0))[0].status == "firing"
    assert feed(eng, fleet, report(1, temp_c=None)) == []  # absent: neither resolves nor fires
    assert len(eng.firing()) == 1


def test_keep_firing_for() -> None:
    eng, fleet = engine("""
[[rule]]
name = "Brake"
expr = "'hw_power_brake' in clock_event_reasons"
keep_firing_for = "30s"
severity = "critical"
annotations = { summary = "brake" }
""")
    assert feed(eng, fleet, report(0, clock_event_reasons=["hw_power_brake"]))[0].status == "firing"
    assert feed(eng, fleet, report(1, clock_event_reasons=[])) == []
    assert feed(eng, fleet, report(2, clock_event_reasons=[])) == []  # 20 s after: still firing
    resolved = feed(eng, fleet, report(3, clock_event_reasons=[]))  # 30 s after: resolves
    assert [a.status for a in resolved] == ["resolved"]


def test_rate_of_a_counter_with_reset() -> None:
    eng, fleet = engine("""
[[rule]]
name = "Replays"
expr = 'rate(pcie_replay_total, "1m") > 1'
severity = "warning"
annotations = { summary = "{{ value }}/s" }
""")
    assert feed(eng, fleet, report(0, pcie_replay_total=100)) == []  # one point: undefined
    assert feed(eng, fleet, report(1, pcie_replay_total=105)) == []  # 0.5/s
    fired = feed(eng, fleet, report(2, pcie_replay_total=150))  # 50 in 20 s
    assert fired and fired[0].value == pytest.approx(2.5)
    # A counter reset (driver reload) counts from zero, not as a huge negative step.
    assert feed(eng, fleet, report(3, pcie_replay_total=2)) == []
    assert eng.firing()


XID = """
[[rule]]
name = "GpuFellOffBus"
scope = "event"
expr = "kind == 'xid' and code == 79"
resolve = "error == None"
severity = "critical"
annotations = { summary = "XID {{ xid }} on {{ node }} GPU {{ gpu }}" }
"""


def _xid(code: int, t: int, gpu: Gpu) -> Event:
    return Event(time_ns=t, kind="xid", message="x", gpu_index=gpu.index, uuid=gpu.uuid,
                 code=code)  # fmt: skip


def test_xid_fires_once_and_resolves_when_the_gpu_returns() -> None:
    from telemetryd.model import GpuError

    eng, fleet = engine(XID)
    gpu = _base().gpus[0]
    lost = GpuError(code="gpu_lost", message="gone")
    fired = feed(eng, fleet, report(0, events=[_xid(79, T0, gpu)]))
    assert [(a.status, a.labels["xid"], a.annotations["summary"]) for a in fired] == [
        ("firing", "79", "XID 79 on n1 GPU 0")
    ]
    # The same XID again (redelivered or repeated) is the same alert: nothing new.
    assert feed(eng, fleet, report(1, error=lost, events=[_xid(79, T0 + S, gpu)])) == []
    assert feed(eng, fleet, report(2, error=lost)) == []
    resolved = feed(eng, fleet, report(3))
    assert [(a.status, a.fingerprint) for a in resolved] == [("resolved", fired[0].fingerprint)]


def test_event_rule_needs_a_way_to_resolve() -> None:
    problems: list[str] = []
    parse_rules(XID.replace('resolve = "error == None"', ""), "x.toml", problems)
    assert problems == [
        "x.toml: rule[0] GpuFellOffBus.resolve: an event rule needs resolve (in GPU scope) or "
        "keep_firing_for > 0"
    ]


def test_node_offline_and_silence() -> None:
    eng, fleet = engine("""
[[rule]]
name = "NodeOffline"
scope = "node"
expr = "state == 'offline'"
severity = "critical"
annotations = { summary = "{{ node }} offline" }

[[rule]]
name = "NodeSilent"
scope = "node"
expr = "state == 'silent'"
severity = "critical"
annotations = { summary = "{{ node }} silent" }
""")
    r = report(0)
    feed(eng, fleet, r, now=T0)
    eng.tick(T0 + 20 * S, {})
    assert eng.drain() == []
    eng.tick(T0 + 31 * S, {})  # 3 intervals of 10 s without a report
    assert [a.labels["alertname"] for a in eng.drain()] == ["NodeSilent"]
    status = Status(schema=1, state="offline", cluster="c1", node="n1", boot_id=r.boot_id,
                    time_ns=T0 + 32 * S, version="x", interval_s=10.0, reason="lost")  # fmt: skip
    fleet.on_status(status, T0 + 32 * S)
    eng.on_status(status, T0 + 32 * S)
    assert sorted((a.labels["alertname"], a.status) for a in eng.drain()) == [
        ("NodeOffline", "firing"), ("NodeSilent", "resolved")]  # fmt: skip


def test_group_share_and_aggregator_scope() -> None:
    eng, fleet = engine("""
[[rule]]
name = "ClusterThrottled"
scope = "group"
group_by = ["cluster"]
expr = "share('sw_thermal' in clock_event_reasons) > 0.1"
severity = "warning"
annotations = { summary = "{{ value }}" }

[[rule]]
name = "BrokerUnreachable"
scope = "aggregator"
expr = "not mqtt_connected"
for = "30s"
severity = "critical"
annotations = { summary = "broker" }
""")
    feed(eng, fleet, report(0, clock_event_reasons=["sw_thermal"]), now=T0)
    eng.tick(T0 + S, {"mqtt_connected": False})
    changed = eng.drain()
    assert [(a.labels["alertname"], a.labels["cluster"]) for a in changed] == [
        ("ClusterThrottled", "c1")]  # fmt: skip
    assert changed[0].value == pytest.approx(1 / 8)
    eng.tick(T0 + 32 * S, {"mqtt_connected": False})
    assert [a.labels["alertname"] for a in eng.drain()] == ["BrokerUnreachable"]


def test_snapshot_keeps_pending_timers() -> None:
    eng, fleet = engine(HOT)
    feed(eng, fleet, report(0, temp_c=90.0))
    data = msgspec.json.decode(msgspec.json.encode(eng.snapshot()))
    eng2, fleet2 = engine(HOT)
    eng2.restore(data, T0)
    assert feed(eng2, fleet2, report(2, temp_c=90.0))[0].status == "firing"  # 20 s since start


def test_restore_resolves_alerts_of_removed_rules() -> None:
    eng, fleet = engine(HOT.replace('for = "20s"', ""))
    feed(eng, fleet, report(0, temp_c=90.0))
    eng2, _ = engine(XID)
    eng2.restore(eng.snapshot(), T0 + S)
    assert [a.status for a in eng2.drain()] == ["resolved"]


@pytest.mark.parametrize(
    ("text", "scope", "message"),
    [
        ("temp >= 3", "gpu", "column 1: unknown name 'temp'"),
        ("temp_c >", "gpu", "syntax error"),
        ("__import__('os')", "gpu", "unknown function '__import__'"),
        ("temp_c.real", "gpu", "unknown dotted name"),
        ("agent.nope > 1", "node", "unknown field agent.nope"),
        ('rate(x, "soon") > 1', "node", "expected a duration"),
        ("temp_c is None", "gpu", "use == None"),
        ('rate(code, "1m") > 0', "event", "not available in this scope"),
        ("[x for x in y]", "gpu", "ListComp is not allowed"),
    ],
)
def test_expression_errors_say_what_is_wrong(text: str, scope: str, message: str) -> None:
    with pytest.raises(ExprError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_expr(text, SCOPE_NAMES[scope])  # type: ignore[index]


def test_rule_file_errors_name_file_rule_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[[rule]]
name = "A"
expr = "temp_c > 1"
severity = "urgent"
for = "soon"
labels = { node = "x" }
annotations = { summary = "s" }

[[rule]]
name = "A"
expr = "temp_c > 1"
severity = "info"
annotations = { summary = "s" }
""")
    with pytest.raises(ConfigError) as info:
        load_rules([bad])
    problems = info.value.problems
    assert (
        f"{bad}: rule[0] A.severity: expected one of critical, warning, info (got 'urgent')"
        in problems
    )
    assert any(p.startswith(f"{bad}: rule[0] A.for: expected a duration") for p in problems)
    assert f"{bad}: rule[0] A.labels.node: set by the engine; choose another label name" in problems
    # the second A is fine by itself, so the first's problems are the only ones listed
    assert len(problems) == 3


def test_values_are_undefined_not_zero() -> None:
    expr = compile_expr("power_w > power_enforced_limit_w * 0.95", SCOPE_NAMES["gpu"])
    from telemetryd.alerting.envs import GpuEnv

    gpu = msgspec.structs.replace(_base().gpus[0], power_w=500.0, power_enforced_limit_w=None)
    assert expr.fn(GpuEnv(_base(), gpu, {}, None)) is None


def test_site_rules_replace_or_disable_shipped_ones(tmp_path: Path) -> None:
    shipped = {r.name: r for r in load_rules([], default_pack=True)}
    assert shipped["NodeOffline"].for_s == 30
    own = tmp_path / "site.toml"
    own.write_text("""
[[rule]]
name = "NodeOffline"
scope = "node"
expr = "state == 'offline'"
for = "2m"
severity = "warning"
annotations = { summary = "{{ node }} offline" }
""")
    rules = {r.name: r for r in load_rules([own], default_pack=True, disabled=["NodeSilent"])}
    assert rules["NodeOffline"].for_s == 120 and rules["NodeOffline"].severity == "warning"
    assert "NodeSilent" not in rules
    assert len(rules) == len(shipped) - 1
    with pytest.raises(ConfigError, match="'NoSuchRule' is not a rule of the default pack"):
        load_rules([], default_pack=True, disabled=["NoSuchRule"])


def test_equality_with_an_absent_field_is_undefined_unless_it_asks_about_presence() -> None:
    from telemetryd.alerting.envs import GpuEnv

    gpu = msgspec.structs.replace(_base().gpus[0], recovery_action=None, error=None)
    env = GpuEnv(_base(), gpu, {}, None)

    def run(text: str) -> object:
        return compile_expr(text, SCOPE_NAMES["gpu"]).fn(env)

    assert run('recovery_action != "none"') is None
    assert run("remap_pending == True") is None or gpu.remap_pending is not None
    assert run("error == None") is True
    assert run("None != error") is False
    assert run('error == None or error != "gpu_lost"') is True


def test_history_is_thinned_and_bounded_but_counts_the_whole_window() -> None:
    from telemetryd.alerting.envs import History
    from telemetryd.alerting.expr import Window

    window = Window("x@3600", 3600.0, lambda env: None)
    history = History()
    for i in range(2000):  # 10 s interval, a counter growing by 3 per report
        history.record(window, i * 10.0, 3 * i)
    assert len(history.points[window.key]) <= 2 * (32 + 3)
    increase = history.compute(window, "increase")
    assert isinstance(increase, float)
    assert 3 * 360 <= increase <= 3 * 360 * (1 + 2 / 32)  # one hour, to one thinning step
    assert history.compute(window, "rate") == pytest.approx(0.3)
    history.record(window, 20_000.0, 5)  # a reset: counts from zero, never negative
    assert history.compute(window, "increase") >= 5


def test_values_are_shown_plainly_and_never_break_the_summary() -> None:
    from telemetryd.alerting.active import format_value

    assert [format_value(v) for v in (88.0, 2.5, 0.125, None, float("inf"), 4.001)] == [
        "88", "2.5", "0.12", "", "inf", "4"]  # fmt: skip
