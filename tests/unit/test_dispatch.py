"""The dispatcher: grouping, timing, silences, inhibition and restart, through a recording hook.

Timers run on a clock the test moves; deliveries go through the real delivery lanes.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from telemetryd.alerting.silences import SilenceStore
from tests.unit.alerting_helpers import (
    FakeClock,
    RecordingHook,
    Rig,
    S,
    alert,
    resolved,
    routing,
)

BASIC = """
[route]
receiver = "ops"
group_wait = "10s"
group_interval = "30s"
repeat_interval = "4h"
[[receiver]]
name = "ops"
type = "webhook"
url = "http://127.0.0.1:9/"
"""


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_group_wait_then_one_notification_for_the_group(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}) as rig:
            rig.update(alert(rig.clock, "GpuHot", gpu="0"))
            await rig.settle(5)
            assert hook.sent == []  # group_wait not over
            rig.update(alert(rig.clock, "GpuHot", gpu="1"))  # same group (alertname, node)
            await rig.settle(5)
            assert len(hook.sent) == 1
            note = hook.sent[0]
            assert note.status == "firing"
            assert note.receiver == "ops"
            assert note.group_labels == {"alertname": "GpuHot", "cluster": "c1", "node": "n1"}
            assert note.group_key == '{}:{alertname="GpuHot",cluster="c1",node="n1"}'
            assert sorted(a.labels["gpu"] for a in note.alerts) == ["0", "1"]
            assert note.common_labels["node"] == "n1"
            state = rig.dispatcher.state()
            [group] = state.groups
            assert (group.receiver, group.firing, group.resolved, group.muted) == ("ops", 2, 0, 0)
            assert group.last_sent_ns == rig.clock.time_ns()
            assert not group.sending
            assert state.receivers["ops"].sent == 1
            # Another node is another group, with its own group_wait.
            rig.update(alert(rig.clock, "GpuHot", "n2", gpu="0"))
            await rig.settle(9)
            assert len(hook.sent) == 1
            await rig.settle(1)
            assert hook.fingerprints()[1] == ("firing", ["GpuHot@n2"], [])

    run(scenario())


def test_group_interval_holds_changes_and_repeat_interval_resends(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}) as rig:
            a0 = alert(rig.clock, "GpuHot", gpu="0")
            rig.update(a0)
            await rig.settle(10)
            assert len(hook.sent) == 1
            rig.update(alert(rig.clock, "GpuHot", gpu="1"))  # a change to a flushed group
            await rig.settle(29)
            assert len(hook.sent) == 1  # not before group_interval
            await rig.settle(1)
            assert len(hook.sent) == 2
            assert len(hook.sent[1].firing) == 2
            # Nothing changes: no notification at each group_interval...
            for _ in range(10):
                await rig.settle(30)
            assert len(hook.sent) == 2
            # ... until repeat_interval (checked at group_interval flushes).
            await rig.settle(4 * 3600)
            assert len(hook.sent) == 3
            assert hook.sent[2].status == "firing"
            assert len(hook.sent[2].firing) == 2

    run(scenario())


def test_resolved_is_sent_once_then_the_group_is_gone(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}) as rig:
            a0 = alert(rig.clock, "GpuHot", gpu="0")
            a1 = alert(rig.clock, "GpuHot", gpu="1")
            rig.update(a0, a1)
            await rig.settle(10)
            rig.update(resolved(rig.clock, a0))
            await rig.settle(30)
            assert hook.fingerprints() == [
                ("firing", ["GpuHot@n1", "GpuHot@n1"], []),
                ("firing", ["GpuHot@n1"], ["GpuHot@n1"]),
            ]
            assert hook.sent[1].resolved[0].labels["gpu"] == "0"
            assert hook.sent[1].resolved[0].ends_ns > 0
            rig.update(resolved(rig.clock, a1))
            await rig.settle(30)
            assert hook.sent[2].status == "resolved"
            assert [a.labels["gpu"] for a in hook.sent[2].resolved] == ["1"]
            assert rig.dispatcher.state().groups == []
            # The engine repeating the resolve changes nothing.
            rig.update(resolved(rig.clock, a1))
            for _ in range(3):
                await rig.settle(30)
            assert len(hook.sent) == 3
            state = json.loads((tmp_path / "notify-state.json").read_text())
            assert state["told"] == {}
            assert state["pending_resolved"] == []

    run(scenario())


def test_receiver_without_send_resolved_hears_no_resolve_but_a_refire(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops", send_resolved=False)
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}) as rig:
            a0 = alert(rig.clock, "GpuHot")
            rig.update(a0)
            await rig.settle(10)
            rig.update(resolved(rig.clock, a0))
            await rig.settle(30)
            assert len(hook.sent) == 1
            assert rig.dispatcher.state().groups == []
            rig.update(alert(rig.clock, "GpuHot"))  # fires again: that is news
            await rig.settle(10)
            assert hook.fingerprints() == [
                ("firing", ["GpuHot@n1"], []),
                ("firing", ["GpuHot@n1"], []),
            ]

    run(scenario())


def test_an_alert_resolved_within_group_wait_is_never_notified(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}) as rig:
            a0 = alert(rig.clock, "GpuHot")
            rig.update(a0)
            await rig.settle(5)
            rig.update(resolved(rig.clock, a0))
            await rig.settle(5)
            await rig.settle(60)
            assert hook.sent == []
            assert rig.dispatcher.state().groups == []

    run(scenario())


def test_a_flapping_alert_does_not_page_a_storm(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}) as rig:
            a0 = alert(rig.clock, "GpuHot")
            rig.update(a0)
            await rig.settle(10)
            # Five minutes of flapping between flushes (the engine reports each change);
            # at each group_interval flush it fires, as the receiver was told.
            for _ in range(10):
                for _ in range(14):
                    rig.update(resolved(rig.clock, a0))
                    await rig.settle(1)
                    rig.update(a0)
                    await rig.settle(1)
                await rig.settle(2)
            assert len(hook.sent) == 1
            # When it resolves for good, one resolve.
            rig.update(resolved(rig.clock, a0))
            await rig.settle(30)
            assert hook.fingerprints() == [
                ("firing", ["GpuHot@n1"], []),
                ("resolved", [], ["GpuHot@n1"]),
            ]

    run(scenario())


def test_flapping_at_most_one_notification_per_group_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}) as rig:
            a0 = alert(rig.clock, "GpuHot")
            rig.update(a0)
            await rig.settle(10)
            # However it flaps (here: a coin flip each second for ten minutes), a
            # receiver hears at most once per group_interval.
            coin = random.Random(5)
            for _ in range(600):
                rig.update(resolved(rig.clock, a0) if coin.random() < 0.5 else a0)
                await rig.settle(1)
            assert len(hook.sent) <= 1 + 600 // 30
            assert len(hook.sent) > 2  # it did change between flushes

    run(scenario())


ROUTES = """
[route]
receiver = "default"
group_wait = "0s"
group_interval = "1m"
[[route.routes]]
matchers = ['severity="critical"']
receiver = "oncall"
group_by = ["..."]
continue = true
[[route.routes]]
matchers = ['severity=~"critical|warning"']
receiver = "team"
[[receiver]]
name = "default"
type = "webhook"
url = "http://127.0.0.1:9/"
[[receiver]]
name = "oncall"
type = "webhook"
url = "http://127.0.0.1:9/"
[[receiver]]
name = "team"
type = "webhook"
url = "http://127.0.0.1:9/"
"""


def test_each_matched_route_gets_its_own_groups(tmp_path: Path) -> None:
    async def scenario() -> None:
        hooks = {name: RecordingHook(name) for name in ("default", "oncall", "team")}
        async with Rig(tmp_path, routing(ROUTES), hooks) as rig:
            rig.update(
                alert(rig.clock, "GpuXid", severity="critical", gpu="0"),
                alert(rig.clock, "GpuXid", severity="critical", gpu="1"),
                alert(rig.clock, "NodeInfo", severity="info"),
            )
            await rig.settle()
            # oncall groups by every label: one notification per alert.
            assert len(hooks["oncall"].sent) == 2
            assert all(len(n.alerts) == 1 for n in hooks["oncall"].sent)
            # continue: the critical alerts also reach team, grouped by alertname/cluster/node.
            assert hooks["team"].fingerprints() == [("firing", ["GpuXid@n1", "GpuXid@n1"], [])]
            assert hooks["default"].fingerprints() == [("firing", ["NodeInfo@n1"], [])]
            assert hooks["team"].sent[0].group_key.startswith('{}/{severity=~"critical|warning"}:{')

    run(scenario())


SILENCED = BASIC.replace('group_wait = "10s"', 'group_wait = "0s"')


def test_silence_mutes_and_unsilence_restores(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        cli = SilenceStore(tmp_path, clock=clock)  # as the CLI would hold it
        running = SilenceStore(tmp_path, clock=clock)
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(SILENCED), {"ops": hook}, clock=clock,
                       silences=running) as rig:  # fmt: skip
            silence = cli.add(['node="n1"'], ends_ns=clock.time_ns() + 3600 * S,
                              created_by="alice", comment="reboot")  # fmt: skip
            await rig.settle(1)  # the running store notices the file changed
            rig.update(alert(clock, "GpuHot", "n1"), alert(clock, "GpuHot", "n2"))
            await rig.settle()
            assert hook.fingerprints() == [("firing", ["GpuHot@n2"], [])]
            muted = rig.dispatcher.state().muted
            assert [(m.labels["node"], m.silenced_by) for m in muted] == [("n1", [silence.id])]
            for _ in range(3):
                await rig.settle(30)
            assert len(hook.sent) == 1
            cli.expire(silence.id[:8])
            await rig.settle(30)
            assert hook.fingerprints()[1] == ("firing", ["GpuHot@n1"], [])
            assert rig.dispatcher.state().muted == []

    run(scenario())


def test_silence_expiring_by_time_restores(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = SilenceStore(tmp_path, clock=clock)
        store.add(['alertname="GpuHot"'], ends_ns=clock.time_ns() + 60 * S, created_by="bob",
                  comment="")  # fmt: skip
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(SILENCED), {"ops": hook}, clock=clock,
                       silences=store) as rig:  # fmt: skip
            rig.update(alert(clock, "GpuHot"))
            await rig.settle()
            await rig.settle(30)
            assert hook.sent == []
            await rig.settle(30)  # the silence ended at +60 s
            assert len(hook.sent) == 1

    run(scenario())


INHIBIT = (
    SILENCED
    + """
[[inhibit]]
name = "node-down"
source_matchers = ['alertname="NodeOffline"']
target_matchers = ['scope=~"gpu|event"']
equal = ["cluster", "node"]
[[inhibit]]
name = "broker-down"
source_matchers = ['alertname="BrokerUnreachable"']
target_matchers = ['alertname="NodeSilent"']
equal = ["cluster"]
"""
)


def test_node_offline_inhibits_its_gpu_alerts_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(INHIBIT), {"ops": hook}) as rig:
            offline = alert(rig.clock, "NodeOffline", "n1", scope="node", severity="critical")
            rig.update(offline)
            rig.update(
                alert(rig.clock, "GpuHot", "n1", scope="gpu", gpu="0"),
                alert(rig.clock, "GpuHot", "n2", scope="gpu", gpu="0"),
                alert(rig.clock, "GpuXid", "n1", scope="event", gpu="3"),
            )
            await rig.settle()
            told = sorted(f for n in hook.fingerprints() for f in n[1])
            assert told == ["GpuHot@n2", "NodeOffline@n1"]
            muted = {
                (m.labels["alertname"], m.labels["node"]) for m in rig.dispatcher.state().muted
            }
            assert muted == {("GpuHot", "n1"), ("GpuXid", "n1")}
            # The node comes back: its GPU alerts, still firing, are told at the next flush.
            rig.update(resolved(rig.clock, offline))
            await rig.settle(30)
            told = sorted(f for n in hook.fingerprints()[2:] for f in n[1])
            assert told == ["GpuHot@n1", "GpuXid@n1"]

    run(scenario())


def test_cluster_wide_broker_alert_inhibits_node_silent(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(INHIBIT), {"ops": hook}) as rig:
            rig.update(alert(rig.clock, "BrokerUnreachable", "", scope="aggregator"))
            rig.update(
                alert(rig.clock, "NodeSilent", "n1", scope="node"),
                alert(rig.clock, "NodeSilent", "n2", scope="node"),
                alert(rig.clock, "NodeSilent", "n3", scope="node", cluster="c2"),
            )
            await rig.settle()
            told = sorted(f for n in hook.fingerprints() for f in n[1])
            assert told == ["BrokerUnreachable@", "NodeSilent@n3"]

    run(scenario())


def test_restart_neither_repeats_nor_forgets(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        hook = RecordingHook("ops")
        hot = alert(clock, "GpuHot", "n1")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}, clock=clock) as rig:
            rig.update(hot)
            await rig.settle(10)
            assert len(hook.sent) == 1
            xid = alert(clock, "GpuXid", "n2")
            rig.update(xid)  # stops before group_wait is over: never sent
            await rig.settle(1)
            assert len(hook.sent) == 1
        # A new aggregator on the same directory; the engine feeds the firing alerts again.
        hook2 = RecordingHook("ops")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook2}, clock=clock) as rig:
            rig.update(hot, xid)
            await rig.settle()  # GpuHot is older than group_wait: flushed at once, nothing new
            assert hook2.sent == []
            await rig.settle(10)  # GpuXid's group_wait is over
            assert hook2.fingerprints() == [("firing", ["GpuXid@n2"], [])]
            for _ in range(5):
                await rig.settle(30)
            assert len(hook2.sent) == 1

    run(scenario())


def test_restart_keeps_a_resolve_not_yet_sent(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        hot = alert(clock, "GpuHot", "n1")
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}, clock=clock) as rig:
            rig.update(hot)
            await rig.settle(10)
            rig.update(resolved(clock, hot))
            await rig.settle(1)  # the resolve waits for group_interval; the aggregator stops
            assert len(hook.sent) == 1
        hook2 = RecordingHook("ops")
        async with Rig(tmp_path, routing(BASIC), {"ops": hook2}, clock=clock) as rig:
            await rig.settle(10)  # the engine does not feed resolved alerts again
            assert hook2.fingerprints() == [("resolved", [], ["GpuHot@n1"])]

    run(scenario())


def test_failed_delivery_is_tried_again_at_the_next_flush(tmp_path: Path) -> None:
    async def scenario() -> None:
        hook = RecordingHook("ops", failures=3)  # the first notification exhausts 1+2 tries
        async with Rig(tmp_path, routing(BASIC), {"ops": hook}) as rig:
            rig.update(alert(rig.clock, "GpuHot"))
            await rig.settle(10)
            assert hook.sent == []
            assert rig.delivery.stats()["ops"].failed == 1
            await rig.settle(30)  # not recorded as told: the group is sent again
            assert len(hook.sent) == 1
            await rig.settle(30)
            assert len(hook.sent) == 1

    run(scenario())


def test_max_alerts_truncates_but_all_count_as_told(tmp_path: Path) -> None:
    async def scenario() -> None:
        text = SILENCED.replace('type = "webhook"', 'type = "webhook"\nmax_alerts = 2')
        hook = RecordingHook("ops")
        async with Rig(tmp_path, routing(text), {"ops": hook}) as rig:
            rig.update(*(alert(rig.clock, "GpuHot", gpu=str(i)) for i in range(5)))
            await rig.settle()
            assert len(hook.sent[0].alerts) == 2
            assert hook.sent[0].truncated == 3
            await rig.settle(30)
            assert len(hook.sent) == 1

    run(scenario())


def test_run_loop_delivers_with_the_real_clock(tmp_path: Path) -> None:
    async def scenario() -> None:
        from telemetryd.alerting.delivery import Delivery
        from telemetryd.alerting.dispatch import Dispatcher
        from telemetryd.alerting.durations import SystemClock

        hook = RecordingHook("ops")
        alerts_dir = tmp_path / "alerts"  # created when first written
        delivery = Delivery({"ops": hook}, alerts_dir)
        dispatcher = Dispatcher(routing(SILENCED), delivery, alerts_dir)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        dispatcher.update([alert(FakeClock(), "GpuHot")])
        async with asyncio.timeout(5):
            await hook.delivered.wait()
        stop.set()
        await task
        state = json.loads((alerts_dir / "notify-state.json").read_text())
        [(key, told)] = state["told"].items()
        assert key == 'ops/{}:{alertname="GpuHot",cluster="c1",node="n1"}'
        assert 0 < told["sent_ns"] <= SystemClock().time_ns()

    run(scenario())


def test_routes_need_a_hook_for_their_receiver(tmp_path: Path) -> None:
    from telemetryd.alerting.delivery import Delivery
    from telemetryd.alerting.dispatch import Dispatcher

    with pytest.raises(ValueError, match="without a hook: ops"):
        Dispatcher(routing(BASIC), Delivery({}, tmp_path), tmp_path)
