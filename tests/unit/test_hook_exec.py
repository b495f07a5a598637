"""The exec hook: real child processes (this Python running small scripts)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from exporters.hooks import make_hook
from exporters.hooks.base import HookError
from exporters.hooks.common import webhook_payload
from exporters.hooks.config import ExecReceiver
from telemetryd.codec import encode_json
from telemetryd.errors import ConfigError
from tests.hookcases import T0, group, make_alert, send
from tests.integration.hook_schemas import check_webhook

WRITE_STDIN = """
import json, os, sys
data = sys.stdin.buffer.read()
with open(sys.argv[1], "wb") as out:
    out.write(data)
with open(sys.argv[1] + ".env", "w") as out:
    json.dump(dict(os.environ), out)
"""


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
    gpu3, gpu5 = make_alert(gpu="3"), make_alert(gpu="5", status="resolved")
    n = group(gpu3, gpu5)
    send(cfg, n)

    got = json.loads(out.read_bytes())
    check_webhook(got)
    assert got == json.loads(encode_json(webhook_payload(n)))  # the webhook hook's body
    assert got["status"] == "firing"
    assert got["receiver"] == "oncall"
    assert got["groupLabels"] == {"alertname": "GpuXidCritical", "node": "node17"}
    assert [a["status"] for a in got["alerts"]] == ["firing", "resolved"]
    assert [a["labels"] for a in got["alerts"]] == [gpu3.labels, gpu5.labels]
    assert [a["fingerprint"] for a in got["alerts"]] == [gpu3.fingerprint, gpu5.fingerprint]
    assert got["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert got["alerts"][1]["endsAt"] == "2026-01-01T10:10:00Z"
    env = json.loads((tmp_path / "received.json.env").read_text())
    assert env["TICKET_QUEUE"] == "gpu-ops"
    assert "CREDENTIALS_DIRECTORY" not in env  # a minimal environment, not ours
    assert env["PATH"] == os.environ["PATH"]


def test_rfc3339_times_in_the_payload(tmp_path: Path) -> None:
    out = tmp_path / "received.json"
    alert = make_alert()
    alert.fired_ns = T0 + 123_456_789
    send(script(tmp_path, WRITE_STDIN, args=[str(out)]), group(alert))
    # As Alertmanager's webhook writes it (Go's RFC3339Nano), not cut to milliseconds.
    assert json.loads(out.read_bytes())["alerts"][0]["startsAt"] == "2026-01-01T10:00:00.123456789Z"


def test_resolved_alerts_stay_out_without_send_resolved(tmp_path: Path) -> None:
    out = tmp_path / "received.json"
    cfg = script(tmp_path, WRITE_STDIN, args=[str(out)], send_resolved=False)
    send(cfg, group(make_alert(status="resolved")))
    assert not out.exists()  # nothing to tell: the command is not run
    send(cfg, group(make_alert(gpu="3"), make_alert(gpu="5", status="resolved")))
    assert [a["labels"]["gpu"] for a in json.loads(out.read_bytes())["alerts"]] == ["3"]


def test_non_zero_exit_is_retryable_with_the_last_stderr_line(tmp_path: Path) -> None:
    cfg = script(tmp_path, "import sys\nprint('connecting', file=sys.stderr)\n"
                 "print('ticket API said 503\\n', file=sys.stderr)\nsys.exit(3)\n")  # fmt: skip
    with pytest.raises(HookError) as caught:
        send(cfg, group(make_alert()))
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
        send(cfg, group(make_alert()))
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
        send(cfg, group(make_alert()))
    assert not caught.value.retryable
    assert "no-such-script: cannot run it: No such file or directory" in str(caught.value)


def test_a_command_that_ignores_stdin_still_counts_by_its_exit(tmp_path: Path) -> None:
    cfg = ExecReceiver(name="x", command=["true"])
    send(cfg, group(*[make_alert(gpu=str(i)) for i in range(200)]))  # > a pipe buffer


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"command": []}, "exec receiver 'x': command is empty"),
        ({"command": ["true"], "env": {"A=B": "1"}}, "env key 'A=B'"),
    ],
)
def test_config_errors(keys: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_hook(ExecReceiver(name="x", **keys))
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
