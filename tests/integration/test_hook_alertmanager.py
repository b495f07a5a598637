"""The alertmanager hook against a real Alertmanager 0.25: what its API then holds.

Alertmanager's ``GET /api/v2/alerts`` lists the alerts it holds that have not ended; a
pushed firing alert must be there, active, with our labels, annotations and times, and
the resolve push (endsAt = the alert's end) must take it off that list at once.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from exporters.hooks import make_hook
from exporters.hooks.alertmanager import RESOLVE_TIMEOUT_S
from exporters.hooks.base import HookError
from exporters.hooks.config import AlertmanagerReceiver
from tests.hookcases import deliver, group, make_alert, run, send
from tests.integration.alertmanager import Alertmanager
from tests.integration.mosquitto import free_port

pytestmark = pytest.mark.integration


def parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_pushed_alerts_are_active_with_labels_and_annotations(alertmanager: Alertmanager) -> None:
    gpu3, gpu5 = make_alert(), make_alert(gpu="5")
    before = datetime.datetime.now(datetime.UTC)
    before = before.replace(microsecond=before.microsecond // 1000 * 1000)  # sent in ms
    send(AlertmanagerReceiver(name="am", url=alertmanager.url + "/"), group(gpu3, gpu5))

    held = {a["labels"]["gpu"]: a for a in alertmanager.alerts()}
    assert set(held) == {"3", "5"}
    for alert in (gpu3, gpu5):
        got = held[alert.labels["gpu"]]
        assert got["labels"] == alert.labels
        assert got["annotations"] == alert.annotations
        assert got["status"]["state"] == "active"
        assert got["generatorURL"] == alert.generator_url
        assert got["fingerprint"]  # Alertmanager's own hash; ours need not match it
        starts = parse(got["startsAt"])
        assert abs(starts.timestamp() * 1e9 - alert.fired_ns) < 1e6  # milliseconds kept
        ends = parse(got["endsAt"])
        assert ends >= before + datetime.timedelta(seconds=RESOLVE_TIMEOUT_S)


def test_resolved_push_takes_the_alert_off_the_active_list(alertmanager: Alertmanager) -> None:
    cfg = AlertmanagerReceiver(name="am", url=alertmanager.url)
    send(cfg, group(make_alert(), make_alert(gpu="5")))
    assert len(alertmanager.alerts()) == 2

    send(cfg, group(make_alert(gpu="3", status="resolved"), make_alert(gpu="5")))
    # Every filter on (the default): 0.25 lists no ended alert in any state.
    everything = {"active": True, "silenced": True, "inhibited": True, "unprocessed": True}
    assert [a["labels"]["gpu"] for a in alertmanager.alerts(**everything)] == ["5"]


def test_basic_auth_is_sent_and_a_wrong_password_is_not_retried(
    alertmanager_factory: Any, tmp_path: Path
) -> None:
    server: Alertmanager = alertmanager_factory(users={"pusher": "right-password"})
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("right-password\n")
    bad.write_text("wrong-password\n")
    cfg = {"name": "am", "url": server.url, "username": "pusher"}

    send(AlertmanagerReceiver(**cfg, password_file=str(good)), group(make_alert()))
    assert [a["labels"]["gpu"] for a in server.alerts()] == ["3"]

    with pytest.raises(HookError) as caught:
        send(AlertmanagerReceiver(**cfg, password_file=str(bad)), group(make_alert(gpu="5")))
    assert not caught.value.retryable
    assert "401" in str(caught.value)
    assert [a["labels"]["gpu"] for a in server.alerts()] == ["3"]


def test_a_refused_alert_is_not_retried(alertmanager: Alertmanager) -> None:
    broken = make_alert()
    broken.labels["bad-name"] = "x"  # Alertmanager refuses label names Prometheus would
    with pytest.raises(HookError) as caught:
        send(AlertmanagerReceiver(name="am", url=alertmanager.url), group(broken))
    assert not caught.value.retryable
    assert "400" in str(caught.value) and "bad-name" in str(caught.value)


def test_unreachable_alertmanager_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(HookError) as caught:
        send(AlertmanagerReceiver(name="am", url=url, timeout=5), group(make_alert()))
    assert caught.value.retryable
    assert url.removeprefix("http://") in str(caught.value)


def test_a_stopped_alertmanager_is_retryable_and_gets_the_alert_once_back(
    alertmanager: Alertmanager,
) -> None:
    alertmanager.stop()
    hook = make_hook(AlertmanagerReceiver(name="am", url=alertmanager.url, timeout=5))
    with pytest.raises(HookError) as caught:
        run(deliver(hook, group(make_alert())))
    assert caught.value.retryable

    alertmanager.start()  # same port
    run(deliver(hook, group(make_alert())))  # the dispatcher's retry
    assert [a["labels"]["gpu"] for a in alertmanager.alerts()] == ["3"]
