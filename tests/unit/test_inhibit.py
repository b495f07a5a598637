"""Inhibition with Alertmanager's semantics."""

from __future__ import annotations

from telemetryd.alerting.inhibit import Inhibitor
from telemetryd.alerting.matchers import parse_matchers
from telemetryd.alerting.routing import InhibitRule
from tests.unit.alerting_helpers import FakeClock, alert, resolved

CLOCK = FakeClock()


def rule(source: list[str], target: list[str], equal: list[str], name: str = "r") -> InhibitRule:
    return InhibitRule(name, parse_matchers(source), parse_matchers(target), tuple(equal))


NODE_DOWN = rule(['alertname="NodeOffline"'], ['scope=~"gpu|event"'], ["cluster", "node"],
                 "node-down")  # fmt: skip


def test_source_mutes_targets_with_equal_labels_only() -> None:
    inhibitor = Inhibitor([NODE_DOWN])
    offline = alert(CLOCK, "NodeOffline", "n1", scope="node")
    gpu_n1 = alert(CLOCK, "GpuHot", "n1", scope="gpu")
    gpu_n2 = alert(CLOCK, "GpuHot", "n2", scope="gpu")
    other_cluster = alert(CLOCK, "GpuHot", "n1", scope="gpu", cluster="c2")
    node_alert = alert(CLOCK, "NodeSilent", "n1", scope="node")
    inhibitor.update([offline])
    assert inhibitor.is_inhibited(gpu_n1.labels, gpu_n1.fingerprint)
    assert inhibitor.inhibited_by(gpu_n1.labels) == [f"node-down: {offline.fingerprint}"]
    assert not inhibitor.is_inhibited(gpu_n2.labels)
    assert not inhibitor.is_inhibited(other_cluster.labels)
    assert not inhibitor.is_inhibited(node_alert.labels)  # not a target
    inhibitor.update([resolved(CLOCK, offline)])
    assert not inhibitor.is_inhibited(gpu_n1.labels)


def test_missing_equal_label_equals_empty() -> None:
    broker = rule(['alertname="BrokerUnreachable"'], ['alertname="NodeSilent"'], ["cluster"])
    inhibitor = Inhibitor([broker])
    inhibitor.update([alert(CLOCK, "BrokerUnreachable", "", cluster="")])  # no cluster label
    assert inhibitor.is_inhibited({"alertname": "NodeSilent", "node": "n1"})
    assert not inhibitor.is_inhibited({"alertname": "NodeSilent", "cluster": "c1"})


def test_alert_matching_both_sides_is_not_inhibited_by_its_like() -> None:
    # Critical mutes warnings on the same node; a critical alert matches both sides.
    crit = rule(['severity="critical"'], ['severity=~"critical|warning"'], ["node"])
    inhibitor = Inhibitor([crit])
    a = alert(CLOCK, "GpuXid", "n1", severity="critical")
    b = alert(CLOCK, "GpuLost", "n1", severity="critical")
    warn = alert(CLOCK, "GpuHot", "n1", severity="warning")
    inhibitor.update([a, b])
    assert not inhibitor.is_inhibited(a.labels, a.fingerprint)
    assert not inhibitor.is_inhibited(b.labels, b.fingerprint)
    assert inhibitor.is_inhibited(warn.labels, warn.fingerprint)


def test_a_source_that_matches_only_the_source_side_still_inhibits_a_two_sided_target() -> None:
    r = rule(['alertname="NodeOffline"'], ['node=~".+"'], ["node"])
    inhibitor = Inhibitor([r])
    offline = alert(CLOCK, "NodeOffline", "n1", scope="node")
    other = alert(CLOCK, "NodeOffline", "n1", scope="node", instance="x")
    inhibitor.update([offline, other])
    # Both match both sides: neither mutes the other.
    assert not inhibitor.is_inhibited(offline.labels, offline.fingerprint)
    assert inhibitor.is_inhibited({"alertname": "GpuHot", "node": "n1"})


def test_repeated_updates_then_resolve_leave_no_source() -> None:
    inhibitor = Inhibitor([NODE_DOWN])
    offline = alert(CLOCK, "NodeOffline", "n1")
    inhibitor.update([offline, offline])  # repeated updates are idempotent
    inhibitor.update([resolved(CLOCK, offline)])
    assert not inhibitor.is_inhibited({"alertname": "X", "scope": "gpu", "node": "n1",
                                       "cluster": "c1"})  # fmt: skip
    assert Inhibitor([]).inhibited_by({"a": "b"}) == []
