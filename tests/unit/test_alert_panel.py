"""The alert panel: retained _pending and _silences sent only when they change; requests."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import msgspec
import pytest

from exporters.mqtt import MqttUnavailable
from telemetryd.alerting.model import Alert
from telemetryd.alerting.panel import Panel, apply_request
from telemetryd.alerting.silences import SilenceStore
from telemetryd.alerting.wire import (
    MAX_PENDING,
    SilenceRequest,
    decode_pending,
    decode_silences,
    request_silence_id,
)
from telemetryd.codec import encode_json
from telemetryd.topics import request_cluster, silence_request_filters
from tests.unit.alerting_helpers import FakeClock
from tests.unit.test_alert_engine import HOT, engine, feed, report

PENDING = "telemetry/v1/c1/_pending"
SILENCES = "telemetry/v1/c1/_silences"


class Session:
    """Records retained publications; ``down`` makes every publish fail like a lost broker."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.down = False
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if self.down:
            raise MqttUnavailable("connection lost while publishing")
        assert retain
        self.published.append((topic, payload))

    async def subscribe(self, filters: list[str]) -> None:
        self.subscribed += filters

    async def unsubscribe(self, filters: list[str]) -> None:
        self.unsubscribed += filters

    def take(self) -> dict[str, bytes]:
        out = dict(self.published)
        self.published.clear()
        return out


def setup(tmp_path: Path, *, accepts: bool = False) -> tuple[Panel, FakeClock, Session, object]:
    eng, fleet = engine(HOT)
    clock = FakeClock()
    store = SilenceStore(tmp_path, clock=clock)
    panel = Panel(eng, store, accepts_requests=accepts, clock=clock)
    return panel, clock, Session(), (eng, fleet)


def publish(panel: Panel, session: Session) -> dict[str, bytes]:
    asyncio.run(panel.publish(session))  # type: ignore[arg-type]
    return session.take()


def test_only_changes_go_out_and_time_alone_is_no_change(tmp_path: Path) -> None:
    panel, clock, session, (eng, fleet) = setup(tmp_path)
    feed(eng, fleet, report(0, temp_c=86.0))  # pending: its 'for' is 20 s
    first = publish(panel, session)
    assert set(first) == {PENDING, SILENCES}
    listing = decode_pending(first[PENDING])
    assert [a.labels["alertname"] for a in listing.alerts] == ["GpuHot"]
    assert listing.time_ns == clock.time_ns() and listing.truncated == 0
    assert decode_silences(first[SILENCES]).silences == []
    clock.advance(10)  # time passes, nothing changes: nothing is sent
    assert publish(panel, session) == {}
    # The panel rebuilds at most every interval, however often it is called.
    feed(eng, fleet, report(1, temp_c=70.0))  # resolves while pending: leaves the list
    clock.advance(0.1)
    assert publish(panel, session) == {}
    clock.advance(0.5)
    assert decode_pending(publish(panel, session)[PENDING]).alerts == []


def test_moving_values_are_refreshed_slowly_new_alerts_at_once(tmp_path: Path) -> None:
    panel, clock, session, (eng, fleet) = setup(tmp_path)
    feed(eng, fleet, report(0, temp_c=86.0))
    publish(panel, session)
    feed(eng, fleet, report(1, temp_c=87.0))  # same pending alert, another value
    clock.advance(1)
    assert publish(panel, session) == {}
    clock.advance(5)
    (alert,) = decode_pending(publish(panel, session)[PENDING]).alerts
    assert alert.value == 87.0
    feed(eng, fleet, report(3, node="n2", temp_c=90.0))  # a new pending alert: at once
    clock.advance(0.5)
    got = decode_pending(publish(panel, session)[PENDING])
    assert sorted(a.labels["node"] for a in got.alerts) == ["n1", "n2"]


def test_republish_sends_everything_again(tmp_path: Path) -> None:
    panel, clock, session, (eng, fleet) = setup(tmp_path)
    feed(eng, fleet, report(0, temp_c=86.0))
    publish(panel, session)
    clock.advance(1)
    panel.republish()
    assert set(publish(panel, session)) == {PENDING, SILENCES}


def test_an_outage_is_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    panel, clock, session, (eng, fleet) = setup(tmp_path)
    feed(eng, fleet, report(0, temp_c=86.0))
    session.down = True
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            publish(panel, session)  # never raises
            clock.advance(1)
    assert sum("not published" in r.message for r in caplog.records) == 1
    session.down = False
    assert set(publish(panel, session)) == {PENDING, SILENCES}


def test_silences_listed_per_cluster_until_they_expire(tmp_path: Path) -> None:
    panel, clock, session, (eng, fleet) = setup(tmp_path)
    feed(eng, fleet, report(0, temp_c=70.0))  # the fleet knows c1, nothing pending
    feed(eng, fleet, msgspec.structs.replace(report(0, temp_c=70.0, node="m1"), cluster="c2"))
    publish(panel, session)
    store = panel.silences
    assert store is not None
    end = clock.time_ns() + 3600 * 10**9
    everywhere = store.add(["node=n1"], ends_ns=end, created_by="ops", comment="maint")
    only_c2 = store.add(['cluster="c2"', "node=m1"], ends_ns=end, created_by="ops", comment="")
    clock.advance(0.5)
    got = publish(panel, session)
    c1 = decode_silences(got[SILENCES])
    c2 = decode_silences(got["telemetry/v1/c2/_silences"])
    assert [s.id for s in c1.silences] == [everywhere.id]
    assert sorted(s.id for s in c2.silences) == sorted([everywhere.id, only_c2.id])
    assert c1.silences[0].state == "active" and c1.silences[0].matchers == ['node="n1"']
    assert c1.accepts_requests is False
    store.expire(everywhere.id)
    clock.advance(0.5)
    got = publish(panel, session)
    assert decode_silences(got[SILENCES]).silences == []
    assert [s.id for s in decode_silences(got["telemetry/v1/c2/_silences"]).silences] == [
        only_c2.id
    ]


def test_pending_is_capped_and_alerts_without_a_cluster_go_everywhere(tmp_path: Path) -> None:
    panel, _clock, _session, _ = setup(tmp_path)
    alerts = [
        Alert(fingerprint=f"{i:016x}", status="firing", starts_ns=i,
              labels={"alertname": "A", "severity": "info", "cluster": "c1"})
        for i in range(MAX_PENDING + 3)
    ]  # fmt: skip
    labels = {"alertname": "BrokerUnreachable", "severity": "critical"}
    alerts.append(Alert(fingerprint="f" * 16, status="firing", starts_ns=10**9, labels=labels))
    c1 = panel.pending_message("c1", alerts, 1)
    assert len(c1.alerts) == MAX_PENDING and c1.truncated == 4
    assert c1.alerts[0].labels["alertname"] == "BrokerUnreachable"  # critical first
    c9 = panel.pending_message("c9", alerts, 1)
    assert [a.fingerprint for a in c9.alerts] == ["f" * 16] and c9.truncated == 0


def request(**over: object) -> bytes:
    fields: dict[str, object] = {
        "request_id": "req-00000001", "matchers": ['alertname="GpuHot"', 'node="n1"'],
        "duration_s": 3600.0, "created_by": "alice", "comment": "reseating the card",
    }  # fmt: skip
    fields.update(over)
    return encode_json(SilenceRequest(**fields))  # type: ignore[arg-type]


TOPIC = "telemetry/v1/c1/_silences/request"


def test_a_request_adds_one_silence_however_often_it_is_delivered(tmp_path: Path) -> None:
    panel, clock, session, (eng, fleet) = setup(tmp_path, accepts=True)
    feed(eng, fleet, report(0, temp_c=70.0))
    publish(panel, session)
    assert asyncio.run(panel.apply(TOPIC, request())) is None
    assert asyncio.run(panel.apply(TOPIC, request())) is None
    store = SilenceStore(tmp_path, clock=clock)  # as another process reads the file
    (silence,) = store.list()
    assert silence.id == request_silence_id("req-00000001")
    assert (silence.created_by, silence.comment) == ("alice", "reseating the card")
    assert silence.ends_ns == clock.time_ns() + 3600 * 10**9
    assert panel.applied == 1
    # Published with the next call, without waiting for the interval.
    listed = decode_silences(publish(panel, session)[SILENCES])
    assert [s.id for s in listed.silences] == [silence.id] and listed.accepts_requests
    # Unsilenced, then the same request redelivered: it stays expired.
    store.expire(silence.id)
    assert asyncio.run(panel.apply(TOPIC, request())) is None
    assert [s.state(clock.time_ns()) for s in SilenceStore(tmp_path).list()] == ["expired"]


@pytest.mark.parametrize(
    ("payload", "reason", "words"),
    [
        (b"{not json", "json", "malformed"),
        (b'{"request_id": "r"}', "schema", "request_id"),
        (request(matchers=["node"]), "schema", "matcher"),
        (request(matchers=['node=~".*"']), "schema", "empty label"),
        (b" " * (70 << 10), "oversized", "bytes"),
    ],
)
def test_a_bad_request_is_refused_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, payload: bytes, reason: str, words: str
) -> None:
    panel, _clock, _session, _ = setup(tmp_path, accepts=True)
    with caplog.at_level(logging.WARNING):
        refused = asyncio.run(panel.apply(TOPIC, payload))
    assert refused is not None and refused.reason == reason
    assert words in refused.detail
    (line,) = [r.message for r in caplog.records]
    assert TOPIC in line and words in line
    assert panel.silences is not None and panel.silences.list() == []


def test_requests_are_ignored_unless_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    panel, _clock, session, _ = setup(tmp_path, accepts=False)
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(panel.apply(TOPIC, request())) is None
        assert asyncio.run(apply_request(None, TOPIC, request())) is None
    assert SilenceStore(tmp_path).list() == []
    assert all("ignored" in r.message for r in caplog.records) and len(caplog.records) == 2
    # Off: the request filters are dropped (a persistent session may hold them), not added.
    assert asyncio.run(panel.subscribe(session, ["+"])) == []  # type: ignore[arg-type]
    assert session.unsubscribed == [TOPIC.replace("c1", "+")] and session.subscribed == []
    panel.accepts_requests = True
    assert asyncio.run(panel.subscribe(session, ["a", "b"])) == [  # type: ignore[arg-type]
        "telemetry/v1/a/_silences/request", "telemetry/v1/b/_silences/request"]  # fmt: skip


def test_request_topics() -> None:
    assert silence_request_filters(["+"]) == ["telemetry/v1/+/_silences/request"]
    assert request_cluster(TOPIC) == "c1"
    others = ["telemetry/v1/c1/_silences", "telemetry/v1/c1/n1/report",
              "telemetry/v1/c1/x/_silences/request", "other/v1/c1/_silences/request"]  # fmt: skip
    assert [request_cluster(t) for t in others] == [None] * 4
    assert request_silence_id("abcdefgh") == request_silence_id("abcdefgh")
    assert request_silence_id("abcdefgh") != request_silence_id("abcdefgi")


def test_the_store_adds_a_given_id_once(tmp_path: Path) -> None:
    store = SilenceStore(tmp_path)
    end = store.clock.time_ns() + 10**12
    a = store.add(["node=n1"], ends_ns=end, created_by="x", comment="1", silence_id="s1")
    b = store.add(["node=n2"], ends_ns=end, created_by="y", comment="2", silence_id="s1")
    assert a == b and [s.comment for s in SilenceStore(tmp_path).list()] == ["1"]
    assert json.loads((tmp_path / "silences.json").read_text())["silences"][0]["id"] == "s1"
