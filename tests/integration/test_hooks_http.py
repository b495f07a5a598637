"""The five HTTP on-call hooks against a real local HTTP receiver.

Every payload is checked against its service's documented schema (hook_schemas.py) and
for the values an on-call reads; every answer class is checked for what the dispatcher
is told (retryable or not, Retry-After); every bad configuration fails at ``create()``
with one line naming the receiver and the key.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporters.hooks import make_hook
from exporters.hooks.base import Hook, HookError
from exporters.hooks.common import rfc3339
from exporters.hooks.config import (
    OpsgenieReceiver,
    PagerDutyReceiver,
    Receiver,
    SlackReceiver,
    TeamsReceiver,
    WebhookReceiver,
)
from telemetryd.alerting.model import Notification
from telemetryd.errors import ConfigError
from tests.hookcases import T0, deliver, group, make_alert, run
from tests.integration.hook_receiver import Answer, HookReceiver, Seen
from tests.integration.hook_schemas import (
    check_opsgenie_close,
    check_opsgenie_create,
    check_pagerduty,
    check_slack,
    check_teams,
    check_webhook,
)
from tests.integration.mosquitto import Certs

pytestmark = pytest.mark.integration


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    return str(path)


def exchange(
    make: Callable[[HookReceiver], Hook], *notifications: Notification, default: Answer,
    plan: tuple[Answer, ...] = (),
) -> list[Seen]:  # fmt: skip
    """Start a receiver, send the notifications through a hook made for it, return requests."""

    async def go() -> list[Seen]:
        async with HookReceiver(default) as server:
            server.plan(*plan)
            await deliver(make(server), *notifications)
            return server.requests

    return run(go())


# -- webhook (Alertmanager format v4) -------------------------------------------------------


def test_webhook_payload_is_alertmanager_v4(tmp_path: Path) -> None:
    firing = make_alert()
    resolved = make_alert(gpu="5", status="resolved")
    n = group(firing, resolved)
    token = secret_file(tmp_path, "token", "s3cret-token")

    def make(s: HookReceiver) -> Hook:
        return make_hook(
            WebhookReceiver(
                name="relay", url=s.url("/am"), bearer_token_file=token, headers={"X-Site": "lab"}
            )
        )

    (seen,) = exchange(make, n, default=Answer(200))
    assert (seen.method, seen.path) == ("POST", "/am")
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["authorization"] == "Bearer s3cret-token"
    assert seen.headers["x-site"] == "lab"
    body = seen.json()
    check_webhook(body)
    assert body["receiver"] == "oncall"
    assert body["groupKey"] == n.group_key
    assert body["status"] == "firing"
    assert body["commonLabels"] == {
        k: v for k, v in firing.labels.items() if k not in ("gpu", "uuid")
    }
    assert body["groupLabels"] == {"alertname": "GpuXidCritical", "node": "node17"}
    assert body["truncatedAlerts"] == 0
    assert body["externalURL"] == "http://aggregator:9101"
    first, second = body["alerts"]
    assert first["fingerprint"] == firing.fingerprint
    assert first["labels"] == firing.labels
    assert first["startsAt"] == "2026-01-01T10:00:00Z"
    assert first["endsAt"] == "0001-01-01T00:00:00Z"
    assert second["status"] == "resolved"
    assert second["endsAt"] == "2026-01-01T10:10:00Z"
    assert second["generatorURL"] == "http://aggregator:9101/alerts"


def test_webhook_basic_auth_from_credential_and_url_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "relay.password").write_text("pa:ss wörd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    def make(s: HookReceiver) -> Hook:
        url_file = secret_file(tmp_path, "url", s.url("/secret-path"))
        return make_hook(WebhookReceiver(name="relay", url_file=url_file, username="ops"))

    (seen,) = exchange(make, group(make_alert()), default=Answer(204))
    assert seen.path == "/secret-path"
    scheme, encoded = seen.headers["authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == "ops:pa:ss wörd"


def test_webhook_without_send_resolved_leaves_resolved_alerts_out() -> None:
    firing, resolved = make_alert(), make_alert(gpu="5", status="resolved")

    def make(s: HookReceiver) -> Hook:
        return make_hook(WebhookReceiver(name="relay", url=s.url(), send_resolved=False))

    seen = exchange(make, group(firing, resolved), group(resolved), default=Answer(200))
    (only,) = seen  # the all-resolved notification is not sent at all
    body = only.json()
    check_webhook(body)
    assert [a["fingerprint"] for a in body["alerts"]] == [firing.fingerprint]


def test_rfc3339() -> None:
    assert rfc3339(0) == "0001-01-01T00:00:00Z"
    assert rfc3339(T0) == "2026-01-01T10:00:00Z"
    assert rfc3339(T0 + 250_000_000) == "2026-01-01T10:00:00.25Z"
    assert rfc3339(T0 + 1) == "2026-01-01T10:00:00.000000001Z"


# -- PagerDuty ------------------------------------------------------------------------------


def pagerduty(tmp_path: Path, **options: Any) -> Callable[[HookReceiver], Hook]:
    key = secret_file(tmp_path, "pd.key", "R0UT1NGKEY0123456789abcdefABCDEF")
    return lambda s: make_hook(
        PagerDutyReceiver(name="pd", url=s.url("/v2/enqueue"), routing_key_file=key, **options)
    )


def test_pagerduty_one_event_per_alert(tmp_path: Path) -> None:
    a = make_alert()
    b = make_alert(gpu="4", severity="warning", runbook="")
    gone = make_alert(gpu="5", status="resolved")
    seen = exchange(
        pagerduty(tmp_path), group(a, b, gone), default=Answer(202, '{"status":"success"}')
    )
    assert [s.path for s in seen] == ["/v2/enqueue"] * 3
    events = [s.json() for s in seen]
    for s, event in zip(seen, events, strict=True):
        assert s.headers["content-type"] == "application/json"
        check_pagerduty(event)
        assert event["routing_key"] == "R0UT1NGKEY0123456789abcdefABCDEF"
    first, second, third = events
    assert first["dedup_key"] == a.fingerprint
    assert first["payload"] == {
        "summary": "Xid 79 on node17 GPU 3: fell off the bus",
        "source": "node17",
        "severity": "critical",
        "timestamp": "2026-01-01T10:00:00Z",
        "component": "gpu 3",
        "group": "a",
        "class": "GpuXidCritical",
        "custom_details": {"labels": a.labels, "annotations": a.annotations, "value": 79.0},
    }
    assert first["links"] == [
        {"href": "https://runbooks.example/alerts.md#gpuxidcritical", "text": "Runbook"},
        {"href": "http://aggregator:9101/alerts", "text": "Alert source"},
    ]
    assert second["payload"]["severity"] == "warning"
    assert second["dedup_key"] == b.fingerprint
    assert third == {
        "routing_key": "R0UT1NGKEY0123456789abcdefABCDEF",
        "dedup_key": gone.fingerprint,
        "event_action": "resolve",
    }


def test_pagerduty_truncates_and_falls_back(tmp_path: Path) -> None:
    long = make_alert(summary="overheating " * 200)
    bare = make_alert("ClusterPower", node=None, gpu=None, rack=None, severity="page", summary="")
    (one, two) = exchange(pagerduty(tmp_path), group(long), group(bare), default=Answer(202))
    check_pagerduty(one.json())
    text = one.json()["payload"]["summary"]
    assert len(text) == 1024
    assert text.endswith("…")
    assert text.startswith("overheating overheating")
    payload = two.json()["payload"]
    check_pagerduty(two.json())
    assert payload["source"] == "c1"  # no node: the cluster
    assert payload["severity"] == "warning"  # an unknown severity is never "error"
    assert payload["group"] == "c1"
    assert "component" not in payload


def test_pagerduty_resolves_only_with_send_resolved(tmp_path: Path) -> None:
    gone = make_alert(status="resolved")
    assert (
        exchange(pagerduty(tmp_path, send_resolved=False), group(gone), default=Answer(202)) == []
    )


def test_pagerduty_partial_failures(tmp_path: Path) -> None:
    alerts = group(make_alert(gpu="1"), make_alert(gpu="2"), make_alert(gpu="3"))

    async def go(plan: tuple[Answer, ...]) -> tuple[HookError, int]:
        async with HookReceiver(Answer(202)) as server:
            server.plan(*plan)
            hook = pagerduty(tmp_path)(server)
            with pytest.raises(HookError) as caught:
                await deliver(hook, alerts)
            return caught.value, len(server.requests)

    bad = Answer(400, '{"status":"invalid event","message":"Event object is invalid",'
                      '"errors":["Length of \'routing_key\' is incorrect"]}')  # fmt: skip
    refused, sent = run(go((bad,)))
    assert sent == 3  # one refused alert does not keep the others from being paged
    assert refused.retryable is False
    assert "Event object is invalid" in str(refused)
    assert "Length of 'routing_key' is incorrect" in str(refused)
    busy, sent = run(go((Answer(202), Answer(503))))
    assert sent == 2  # down: stop and let the dispatcher retry the whole notification
    assert busy.retryable is True


# -- Slack ----------------------------------------------------------------------------------


def slack(**options: Any) -> Callable[[HookReceiver], Hook]:
    return lambda s: make_hook(SlackReceiver(name="chat", url=s.url("/services/T/B/X"), **options))


def test_slack_message(tmp_path: Path) -> None:
    a = make_alert(description="Drain <node17> & reset")
    gone = make_alert(gpu="5", status="resolved")
    seen = exchange(
        slack(channel="#gpu-ops", username="telemetryd"), group(a, gone), group(gone),
        default=Answer(200),
    )  # fmt: skip
    firing, resolved = (s.json() for s in seen)
    for body in (firing, resolved):
        check_slack(body)
    assert firing["channel"] == "#gpu-ops" and firing["username"] == "telemetryd"
    header, first, second = firing["blocks"]
    assert header["text"]["text"] == "[FIRING:1] GpuXidCritical"
    text = first["text"]["text"]
    assert "*FIRING* · critical · node node17 · GPU 3" in text
    assert "*Xid 79 on node17 GPU 3: fell off the bus*" in text
    assert "Drain &lt;node17&gt; &amp; reset" in text  # Slack's control characters escaped
    assert "<https://runbooks.example/alerts.md#gpuxidcritical|Runbook>" in text
    assert "*RESOLVED*" in second["text"]["text"]
    assert firing["text"].startswith("[FIRING:1] GpuXidCritical\n• [FIRING] Xid 79")
    assert resolved["blocks"][0]["text"]["text"] == "[RESOLVED] GpuXidCritical"


def test_slack_limits() -> None:
    many = [make_alert(gpu=str(i), summary=f"GPU {i} " + "x" * 1200, description="d" * 5000)
            for i in range(60)]  # fmt: skip
    (seen,) = exchange(slack(), group(*many), default=Answer(200))
    body = seen.json()
    check_slack(body)
    blocks = body["blocks"]
    assert len(blocks) == 50
    assert [b["type"] for b in blocks[1:49]] == ["section"] * 48
    assert blocks[-1]["elements"][0]["text"] == "12 more alerts not shown"
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks[1:49])
    assert "<https://runbooks.example" in blocks[1]["text"]["text"]  # the link survives
    assert len(body["text"]) <= 40000
    shown = body["text"].count("• [FIRING]")
    assert 0 < shown < 60
    assert body["text"].endswith(f"{60 - shown} more alerts not shown")


def test_slack_counts_alerts_left_out_by_max_alerts() -> None:
    n = group(*(make_alert(gpu=str(i)) for i in range(5)), max_alerts=2)
    (seen,) = exchange(slack(), n, default=Answer(200))
    body = seen.json()
    check_slack(body)
    assert body["blocks"][0]["text"]["text"] == "[FIRING:2] GpuXidCritical"
    assert body["blocks"][-1]["elements"][0]["text"] == "3 more alerts not shown"


def test_slack_only_200_is_success() -> None:
    async def go() -> HookError:
        async with HookReceiver(Answer(201, "created")) as server:
            with pytest.raises(HookError) as caught:
                await deliver(slack()(server), group(make_alert()))
            return caught.value

    error = run(go())
    assert error.retryable is False
    assert "answered 201" in str(error)
    assert "/services/" not in str(error)  # the URL is the secret


# -- Teams ----------------------------------------------------------------------------------


def teams() -> Callable[[HookReceiver], Hook]:
    return lambda s: make_hook(TeamsReceiver(name="teams", url=s.url("/workflows/abc")))


def test_teams_card() -> None:
    a = make_alert()
    gone = make_alert(gpu="5", status="resolved", runbook="")
    seen = exchange(teams(), group(a, gone), group(gone), default=Answer(202, ""))
    firing, resolved = (check_teams(s.json()) for s in seen)
    title, first, second = firing
    assert title["text"] == "[FIRING] GpuXidCritical"
    assert (title["weight"], title["size"], title["wrap"]) == ("Bolder", "Medium", True)
    assert "**Xid 79 on node17 GPU 3: fell off the bus**" in first["text"]
    assert "node node17 · GPU 3" in first["text"]
    assert "The GPU stopped answering on PCIe." in first["text"]
    assert "[Runbook](https://runbooks.example/alerts.md#gpuxidcritical)" in first["text"]
    assert "**RESOLVED**" in second["text"] and "Runbook" not in second["text"]
    assert resolved[0]["text"] == "[RESOLVED] GpuXidCritical"
    assert all(s.headers["content-type"] == "application/json" for s in seen)


def test_teams_card_size_is_capped() -> None:
    many = [make_alert(gpu=str(i), description="d" * 1400) for i in range(80)]
    (seen,) = exchange(teams(), group(*many), default=Answer(200))
    assert len(seen.body) <= 28 * 1024
    elements = check_teams(seen.json())
    shown = len(elements) - 2  # the title and the note
    assert 0 < shown < 80
    assert elements[-1]["text"] == f"{80 - shown} more alerts not shown"


# -- Opsgenie -------------------------------------------------------------------------------


def opsgenie(tmp_path: Path, **options: Any) -> Callable[[HookReceiver], Hook]:
    key = secret_file(tmp_path, "og.key", "0123-abcd")
    return lambda s: make_hook(
        OpsgenieReceiver(name="og", url=s.url("/"), api_key_file=key, **options)
    )


def test_opsgenie_create_and_close(tmp_path: Path) -> None:
    a = make_alert(summary="M" * 300)
    gone = make_alert(gpu="5", status="resolved")
    configured = [f"tag{i:02d}" for i in range(18)]
    make = opsgenie(
        tmp_path, tags=configured, responders=[{"type": "team", "name": "gpu-ops"}],
        priorities={"critical": "P1", "warning": "P2", "info": "P5"},
    )  # fmt: skip
    create, close = exchange(
        make, group(a, gone), default=Answer(202, '{"result":"Request will be processed"}')
    )
    for seen in (create, close):
        assert seen.method == "POST"
        assert seen.headers["authorization"] == "GenieKey 0123-abcd"
        assert seen.headers["content-type"] == "application/json"
    assert create.path == "/v2/alerts" and create.query == {}
    body = create.json()
    check_opsgenie_create(body)
    assert body["alias"] == a.fingerprint
    assert len(body["message"]) == 130 and body["message"].endswith("…")
    assert body["priority"] == "P1"
    assert body["source"] == "telemetryd"
    assert body["responders"] == [{"type": "team", "name": "gpu-ops"}]
    assert body["tags"] == [*configured, "critical", "GpuXidCritical"]  # 20: node left out
    assert body["details"] == a.labels
    assert "https://runbooks.example/alerts.md#gpuxidcritical" in body["description"]
    assert close.path == f"/v2/alerts/{gone.fingerprint}/close"
    assert close.query == {"identifierType": "alias"}
    check_opsgenie_close(close.json())
    assert close.json()["source"] == "telemetryd"
    assert close.json()["note"].startswith("Resolved: Xid 79")


def test_opsgenie_tags_and_priority_defaults(tmp_path: Path) -> None:
    a = make_alert(severity="info", name="A" * 80)
    (seen,) = exchange(opsgenie(tmp_path), group(a), default=Answer(202))
    body = seen.json()
    check_opsgenie_create(body)
    assert body["tags"] == ["info", "A" * 49 + "…", "node17"]
    assert body["priority"] == "P5"


# -- answers, for every hook ----------------------------------------------------------------

HOOKS: dict[str, Callable[[Path], Callable[[HookReceiver], Hook]]] = {
    "webhook": lambda _: lambda s: make_hook(WebhookReceiver(name="w", url=s.url())),
    "pagerduty": pagerduty,
    "slack": lambda _: slack(),
    "teams": lambda _: teams(),
    "opsgenie": opsgenie,
}


def failure(make: Callable[[HookReceiver], Hook], answer: Answer | None) -> HookError:
    async def go() -> HookError:
        async with HookReceiver(answer) as server:
            hook = make(server)
            if answer is None:  # nothing listens there any more
                await server.__aexit__()
            with pytest.raises(HookError) as caught:
                await deliver(hook, group(make_alert()))
            return caught.value

    return run(go())


@pytest.mark.parametrize("kind", HOOKS)
def test_server_errors_are_retryable(kind: str, tmp_path: Path) -> None:
    error = failure(HOOKS[kind](tmp_path), Answer(500, "internal error"))
    assert error.retryable is True
    assert error.retry_after is None
    assert "answered 500: internal error" in str(error)


@pytest.mark.parametrize("kind", HOOKS)
def test_bad_requests_are_not_retried(kind: str, tmp_path: Path) -> None:
    error = failure(HOOKS[kind](tmp_path), Answer(400, "invalid_payload"))
    assert error.retryable is False
    assert "answered 400: invalid_payload" in str(error)
    assert str(error).startswith(f"{kind} receiver ")


@pytest.mark.parametrize("kind", HOOKS)
def test_rate_limits_carry_retry_after(kind: str, tmp_path: Path) -> None:
    error = failure(HOOKS[kind](tmp_path), Answer(429, "slow down", {"Retry-After": "7"}))
    assert error.retryable is True
    assert error.retry_after == 7


@pytest.mark.parametrize("kind", HOOKS)
def test_no_answer_is_retryable(kind: str, tmp_path: Path) -> None:
    error = failure(HOOKS[kind](tmp_path), None)
    assert error.retryable is True
    assert "no answer: cannot connect to 127.0.0.1" in str(error)


def test_timeout_and_408_are_retryable(tmp_path: Path) -> None:
    def slow(s: HookReceiver) -> Hook:
        return make_hook(WebhookReceiver(name="w", url=s.url(), timeout=0.2))

    error = failure(slow, Answer(200, delay=2.0))
    assert error.retryable is True
    assert "no answer: timed out" in str(error)
    assert failure(HOOKS["webhook"](tmp_path), Answer(408)).retryable is True
    assert failure(HOOKS["webhook"](tmp_path), Answer(403, "action_prohibited")).retryable is False


def test_redirects_are_not_followed() -> None:
    async def go() -> tuple[HookError, int]:
        async with HookReceiver(Answer(301, "", {"Location": "/elsewhere"})) as server:
            with pytest.raises(HookError) as caught:
                await deliver(teams()(server), group(make_alert()))
            return caught.value, len(server.requests)

    error, sent = run(go())
    assert sent == 1  # followed, the POST would have become a GET without its card
    assert error.retryable is False
    assert "answered 301, a redirect: configure the URL it points to" in str(error)


def test_https_with_ca_file(certs: Certs) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs.server.cert), str(certs.server.key))

    async def go(ca_file: str) -> list[Seen]:
        async with HookReceiver(Answer(200), tls=context) as server:
            hook = make_hook(SlackReceiver(name="chat", url=server.url(), ca_file=ca_file))
            await deliver(hook, group(make_alert()))
            return server.requests

    (seen,) = run(go(str(certs.ca_file)))
    check_slack(seen.json())
    with pytest.raises(HookError) as caught:
        run(go(""))  # the system store does not know the test CA
    assert caught.value.retryable is True


# -- configuration errors at create() -------------------------------------------------------


def config_error(cfg: Receiver) -> str:
    with pytest.raises(ConfigError) as caught:
        make_hook(cfg)
    text = str(caught.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    "cfg",
    [
        WebhookReceiver(name="w", url="ftp://relay.example/hook"),
        PagerDutyReceiver(name="w", url="events.pagerduty.com/v2/enqueue"),
        SlackReceiver(name="w", url="https://"),
        TeamsReceiver(name="w", url="http://host:port/x"),
        OpsgenieReceiver(name="w", url=""),
    ],
    ids=lambda c: type(c).__name__,
)
def test_bad_urls(cfg: Receiver) -> None:
    text = config_error(cfg)
    assert text.startswith(f"{cfg.__struct_config__.tag} receiver 'w': url: ")
    assert "expected an http:// or https:// URL with a host, got " in text


def test_a_secret_url_is_not_echoed(tmp_path: Path) -> None:
    url_file = secret_file(tmp_path, "url", "hooks.slack.com/services/T0/B0/SECRETPART")
    text = config_error(SlackReceiver(name="chat", url_file=url_file))
    assert text == (
        "slack receiver 'chat': url_file: expected an http:// or https:// URL with a host, "
        "got a URL with no scheme"
    )
    assert "SECRETPART" not in text


def test_missing_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    missing = str(tmp_path / "nope.key")
    text = config_error(PagerDutyReceiver(name="oncall", routing_key_file=missing))
    assert text == (
        f"pagerduty receiver 'oncall': routing_key_file: cannot read {missing}: No such file "
        "or directory; expected a file with the PagerDuty integration key (32 characters)"
    )
    assert config_error(PagerDutyReceiver(name="oncall")) == (
        "pagerduty receiver 'oncall': routing_key_file is empty and there is no systemd "
        "credential oncall.routing-key: expected a file with the PagerDuty integration key "
        "(32 characters)"
    )
    assert "credential og.api-key" in config_error(OpsgenieReceiver(name="og"))
    empty = secret_file(tmp_path, "empty", "")
    assert config_error(OpsgenieReceiver(name="og", api_key_file=empty)) == (
        f"opsgenie receiver 'og': api_key_file: {empty} is empty; expected a file with the "
        "Opsgenie API key"
    )
    assert config_error(TeamsReceiver(name="t")) == (
        "teams receiver 't': no URL: expected url, url_file or the systemd credential t.url"
    )
    assert "password" in config_error(WebhookReceiver(name="w", url="http://h/", username="u"))


def test_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "oncall.routing-key").write_text("KEY\n")
    (tmp_path / "chat.url").write_text("https://hooks.example/services/x\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    hook = make_hook(PagerDutyReceiver(name="oncall"))
    assert (hook.name, hook.send_resolved) == ("oncall", True)
    assert make_hook(SlackReceiver(name="chat", send_resolved=False)).send_resolved is False


def test_other_bad_settings(tmp_path: Path) -> None:
    url = "https://relay.example/hook"
    both = config_error(WebhookReceiver(name="w", url=url, url_file="/x"))
    assert both == "webhook receiver 'w': url and url_file are both set: expected one of them"
    header = config_error(WebhookReceiver(name="w", url=url, headers={"Authorization": "x"}))
    assert header.startswith("webhook receiver 'w': headers: Authorization is set by the hook")
    assert "one line" in config_error(WebhookReceiver(name="w", url=url, headers={"X": "a\nb"}))
    ca = config_error(WebhookReceiver(name="w", url=url, ca_file=str(tmp_path / "ca.pem")))
    assert ca.startswith(f"webhook receiver 'w': ca_file: cannot read {tmp_path / 'ca.pem'}")
    key = secret_file(tmp_path, "k", "key")
    assert (
        config_error(OpsgenieReceiver(name="og", api_key_file=key, priorities={"critical": "P0"}))
        == "opsgenie receiver 'og': priorities.critical: 'P0'; expected one of P1, P2, P3, P4, P5"
    )
    assert "responders[0]" in config_error(
        OpsgenieReceiver(name="og", api_key_file=key, responders=[{"type": "team"}])
    )
    assert "tags" in config_error(OpsgenieReceiver(name="og", api_key_file=key, tags=["t" * 51]))


def test_chat_messages_name_the_job_of_a_job_alert() -> None:
    """A job-scope alert (GpuJobIdle) has no node or GPU: the job is what to name."""
    import json

    from exporters.hooks.slack import section_text
    from exporters.hooks.teams import alert_block

    alert = make_alert("GpuJobIdle", severity="warning", node=None, gpu=None, rack=None,
                       summary="Job 81234 holds GPUs it does not use")  # fmt: skip
    alert.labels |= {"scope": "job", "job": "81234"}
    assert "*FIRING* · warning · job 81234" in section_text(alert)
    assert "**FIRING** · warning · job 81234" in json.dumps(alert_block(alert), ensure_ascii=False)
