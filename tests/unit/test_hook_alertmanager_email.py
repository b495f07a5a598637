"""What the alertmanager and email hooks check at creation and how they shape a message.

Delivery itself is tested against real servers (tests/integration/test_hook_*.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporters.hooks import make_hook
from exporters.hooks.alertmanager import AlertmanagerHook, postable
from exporters.hooks.common import rfc3339
from exporters.hooks.config import AlertmanagerReceiver, EmailReceiver
from exporters.hooks.email import body, subject
from telemetryd.errors import ConfigError
from tests.hookcases import EXTERNAL_URL, SECOND, group, make_alert

MAIL = {"name": "mail", "sender": "alerts@fleet.example", "to": ["oncall@fleet.example"],
        "starttls": False}  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"url": "alertmanager:9093"}, "url: expected an http:// or https:// URL with a host, "
                                       "got 'alertmanager:9093'"),
        ({"url": "http://am:9093/?x=1"}, "has a query or fragment"),
        ({"username": "u"}, "password_file is empty and there is no systemd credential "
                            "am.password: expected the basic-auth password"),
        ({"password_file": "/p"}, "password_file is set without username"),
        ({"username": "u", "bearer_token_file": "/t"}, "both a bearer token and username"),
        ({"bearer_token_file": "/nonexistent/t"},
         "bearer_token_file: cannot read /nonexistent/t: No such"),
        ({"ca_file": "/nonexistent/ca"}, "ca_file: cannot read /nonexistent/ca"),
    ],
)  # fmt: skip
def test_alertmanager_config_errors(keys: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_hook(AlertmanagerReceiver(name="am", **keys))
    assert str(caught.value).startswith("alertmanager receiver 'am': ")
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_alertmanager_auth_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    hook = make_hook(AlertmanagerReceiver(name="am", bearer_token_file=str(token)))
    assert isinstance(hook, AlertmanagerHook)
    assert hook._headers["Authorization"] == "Bearer tok-123"
    assert hook.url == "http://127.0.0.1:9093/api/v2/alerts"

    # The systemd credential <name>.password when password_file is empty.
    (tmp_path / "am.password").write_text("pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    hook = make_hook(AlertmanagerReceiver(name="am", url="https://am.example/prefix/",
                                          username="user"))  # fmt: skip
    assert isinstance(hook, AlertmanagerHook)
    assert hook._headers["Authorization"] == "Basic dXNlcjpwdw=="  # user:pw
    assert hook.url == "https://am.example/prefix/api/v2/alerts"


def test_postable_alert_times() -> None:
    now = 1_767_261_600 * SECOND  # 2026-01-01T10:00:00Z
    firing = make_alert()
    firing.fired_ns = now - 60 * SECOND
    got = postable(firing, now)
    assert got["startsAt"] == "2026-01-01T09:59:00.000Z"
    assert got["endsAt"] == "2026-01-01T11:00:00.000Z"  # RESOLVE_TIMEOUT_S ahead
    assert got["labels"] == firing.labels and got["annotations"] == firing.annotations

    resolved = make_alert(status="resolved")
    resolved.fired_ns, resolved.ends_ns = now - 60 * SECOND, now - 5 * SECOND
    assert postable(resolved, now)["endsAt"] == "2026-01-01T09:59:55.000Z"
    resolved.ends_ns = now + 5 * SECOND  # a clock ahead of ours: resolve now, not later
    assert postable(resolved, now)["endsAt"] == "2026-01-01T10:00:00.000Z"
    assert rfc3339(now + 1_500_000, millis=True) == "2026-01-01T10:00:00.001Z"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"sender": ""}, "sender is empty; expected the From address"),
        ({"sender": "alerts"}, "sender 'alerts'; expected an address"),
        ({"to": []}, "to is empty; expected at least one recipient"),
        ({"to": ["ok@x.example", "bad"]}, "to: 'bad'; expected an address"),
        ({"to": ["a@b.example\r\nBcc: x@y.example"]}, "expected an address"),
        ({"smarthost": "mail.example"}, "smarthost 'mail.example' is not HOST:PORT"),
        ({"smarthost": "mail.example:smtp"}, "is not HOST:PORT"),
        ({"smarthost": ":25"}, "is not HOST:PORT"),
        ({"smarthost": "mail.example:70000"}, "is not HOST:PORT"),
        ({"username": "u"}, "no systemd credential mail.password: expected the SMTP password"),
        ({"password_file": "/p"}, "password_file is set without username"),
        (
            {"username": "u", "password_file": "/nonexistent/p"},
            "password_file: cannot read /nonexistent/p",
        ),
        ({"ca_file": "/nonexistent/ca"}, "ca_file: cannot read /nonexistent/ca"),
    ],
)
def test_email_config_errors(keys: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_hook(EmailReceiver(**{**MAIL, **keys}))
    assert str(caught.value).startswith("email receiver 'mail': ")
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_email_smarthost_forms() -> None:
    forms = [("mail.example:587", "mail.example", 587), ("[::1]:25", "::1", 25),
             ("10.0.0.1:2525", "10.0.0.1", 2525)]  # fmt: skip
    for value, host, port in forms:
        hook = make_hook(EmailReceiver(**MAIL, smarthost=value))
        assert (getattr(hook, "host", None), getattr(hook, "port", None)) == (host, port)


def test_email_subject_and_body() -> None:
    firing, resolved = make_alert(gpu="3"), make_alert(gpu="5", status="resolved")
    n = group(firing, resolved)
    assert subject(n) == "[FIRING:1] GpuXidCritical node17"
    assert subject(group(resolved)) == "[RESOLVED] GpuXidCritical node17"
    n.group_labels = {}
    assert subject(n) == "[FIRING:1] GpuXidCritical"  # the common alertname
    n.group_labels = {"alertname": "X", "node": "line\nbreak " * 40}
    assert "\n" not in subject(n) and len(subject(n)) <= 200

    text = body(group(resolved, firing))
    assert text.index("[FIRING] GpuXidCritical") < text.index("[RESOLVED] GpuXidCritical")
    assert text.count("Ended: ") == 1
    assert "1 firing, 1 resolved (receiver oncall)" in text
    assert "Group: alertname=GpuXidCritical, node=node17" in text
    assert f"More: {EXTERNAL_URL}" in text
