"""The exec hook: real child processes (this Python running small scripts)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from exporters.hooks import make_hook
from exporters.hooks.base import HookError
from exporters.hooks.config import ExecReceiver
from exporters.hooks.exec import webhook_payload
from telemetryd.alerting.model import Notification
from telemetryd.errors import ConfigError
from tests.hookcases import xid_alert, xid_notification

WRITE_STDIN = """
import json, os, sys
data = sys.stdin.buffer.read()
with open(sys.argv[1], "wb") as out:
    out.write(data)
with open(sys.argv[1] + ".env", "w") as out:
    json.dump(dict(os.environ), out)
"""


def send(cfg: ExecReceiver, n: Notification) -> None:
    async def attempt() -> None:
        hook = make_hook(cfg)
        try:
            await hook.send(n)
        finally:
            await hook.close()

    asyncio.run(asyncio.wait_for(attempt(), timeout=30))


def script(tmp_path: Path, text: str, **keys: Any) -> ExecReceiver:
    path = tmp_path / "hook.py"
    path.write_text(text)
    args = keys.pop("args", [])
    return ExecReceiver(name="runbook-bot", command=[sys.executable, str(path), *args], **keys)


def test_the_notification_arrives_on_stdin_as_webhook_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/telemetryd")
    out = tmp_path / "received.json"
    cfg = script(tmp_path, WRITE_STDIN, args=[str(out)], env={"TICKET_QUEUE": "gpu-ops"})
    gpu3, gpu5 = xid_alert(3), xid_alert(5, resolved=True)
    send(cfg, xid_notification(gpu3, gpu5))

    got = json.loads(out.read_bytes())
    assert got["version"] == "4"
    assert got["status"] == "firing"
    assert got["receiver"] == "oncall"
    assert got["groupLabels"] == {"alertname": "GpuXidCritical", "node": "node17"}
    assert got["commonLabels"]["alertname"] == "GpuXidCritical"
    assert got["externalURL"] == "http://aggregator.example:9100"
    assert [a["status"] for a in got["alerts"]] == ["firing", "resolved"]
    assert [a["labels"] for a in got["alerts"]] == [gpu3.labels, gpu5.labels]
    assert [a["fingerprint"] for a in got["alerts"]] == [gpu3.fingerprint, gpu5.fingerprint]
    assert got["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert got["alerts"][1]["endsAt"].endswith("Z") and got["alerts"][1]["endsAt"] != (
        "0001-01-01T00:00:00Z"
    )
    env = json.loads((tmp_path / "received.json.env").read_text())
    assert env["TICKET_QUEUE"] == "gpu-ops"
    assert "CREDENTIALS_DIRECTORY" not in env  # a minimal environment, not ours
    assert env["PATH"] == os.environ["PATH"]


def test_rfc3339_times_in_the_payload() -> None:
    alert = xid_alert(3)
    alert.fired_ns = 1_767_261_600_123_456_789  # 2026-01-01T10:00:00.123456789Z
    payload = webhook_payload(xid_notification(alert))
    assert payload["alerts"][0]["startsAt"] == "2026-01-01T10:00:00.123Z"


def test_non_zero_exit_is_retryable_with_the_last_stderr_line(tmp_path: Path) -> None:
    cfg = script(tmp_path, "import sys\nprint('connecting', file=sys.stderr)\n"
                 "print('ticket API said 503\\n', file=sys.stderr)\nsys.exit(3)\n")  # fmt: skip
    with pytest.raises(HookError) as caught:
        send(cfg, xid_notification(xid_alert(3)))
    assert caught.value.retryable
    assert str(caught.value) == f"exec {sys.executable}: exit status 3: ticket API said 503"


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    cfg = script(tmp_path, f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open({str(pids)!r}, "w").write(f"{{child.pid}}")
time.sleep(600)
""", timeout=3)  # fmt: skip
    with pytest.raises(HookError) as caught:
        send(cfg, xid_notification(xid_alert(3)))
    assert caught.value.retryable
    assert "still running after 3 s; killed" in str(caught.value)
    child = int(pids.read_text())
    deadline = time.monotonic() + 10  # SIGKILL is delivered at once; reaping may lag
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"  # a zombie is dead, waiting for init to reap it


def test_a_missing_command_is_not_retried(tmp_path: Path) -> None:
    cfg = ExecReceiver(name="x", command=[str(tmp_path / "no-such-script")])
    with pytest.raises(HookError) as caught:
        send(cfg, xid_notification(xid_alert(3)))
    assert not caught.value.retryable
    assert "no-such-script: cannot run it: No such file or directory" in str(caught.value)


def test_a_command_that_ignores_stdin_still_counts_by_its_exit(tmp_path: Path) -> None:
    cfg = ExecReceiver(name="x", command=["true"])
    send(cfg, xid_notification(*[xid_alert(i) for i in range(200)]))  # > a pipe buffer


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"command": []}, 'receiver "x" (exec): command is empty'),
        ({"command": ["true"], "env": {"A=B": "1"}}, "env key 'A=B'"),
    ],
)
def test_config_errors(keys: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_hook(ExecReceiver(name="x", **keys))
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
