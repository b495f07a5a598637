"""Run a command per notification: the notification as JSON on stdin, exit 0 is delivered.

For channels telemetryd does not speak (a ticket system's CLI, a pager modem, ``logger``):
the site writes a script, telemetryd hands it Alertmanager's webhook body (version 4, so
scripts written for Alertmanager's webhook work unchanged) on stdin.

The command is an argv list run without a shell, so nothing in an alert's labels can
become shell syntax. It gets a minimal environment (``PATH``, ``HOME``, ``LANG``, ``TZ``
as the aggregator has them) plus the receiver's ``env``: the aggregator's own environment
may hold ``CREDENTIALS_DIRECTORY`` and similar, which a script should be given on purpose
or not at all. It runs in its own process group, and the whole group is killed when it
runs past the receiver's ``timeout`` (or the send is cancelled), so a hung helper cannot
pile up. A non-zero exit is retryable (the script decides what it could not do); a
command that cannot be started at all is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
from typing import Any

from exporters.hooks.base import HookError
from exporters.hooks.config import ExecReceiver
from telemetryd.alerting.model import Alert, Notification
from telemetryd.codec import encode_json
from telemetryd.errors import ConfigError

INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
"""Variables passed on from the aggregator's environment (when set there)."""

STDERR_KEEP = 64 * 1024  # bytes of stderr kept for the error message (its tail)


def create(cfg: ExecReceiver) -> ExecHook:
    """The hook for one ``type = "exec"`` receiver."""
    where = f'receiver "{cfg.name}" (exec)'
    if not cfg.command or not cfg.command[0]:
        raise ConfigError([f'{where}: command is empty; expected an argv list like ["/path"]'])
    for key in cfg.env:
        if not key or "=" in key or "\x00" in key:
            raise ConfigError([f"{where}: env key {key!r}; expected a variable name"])
    return ExecHook(cfg)


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC; 0 as Go's zero time (Alertmanager's)."""
    if ns <= 0:
        return "0001-01-01T00:00:00Z"
    when = datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.UTC)
    when = when.replace(microsecond=(ns % 1_000_000_000) // 1000)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_payload(n: Notification) -> dict[str, Any]:
    """Alertmanager's webhook body, version 4."""
    return {
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": n.truncated,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": n.group_labels,
        "commonLabels": n.common_labels,
        "commonAnnotations": n.common_annotations,
        "externalURL": n.external_url,
        "alerts": [_alert(a) for a in n.alerts],
    }


def _alert(a: Alert) -> dict[str, Any]:
    return {
        "status": a.status,
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": rfc3339(a.fired_ns or a.starts_ns),
        "endsAt": rfc3339(a.ends_ns if a.status == "resolved" else 0),
        "generatorURL": a.generator_url,
        "fingerprint": a.fingerprint,
    }


class ExecHook:
    """Runs the receiver's command once per notification."""

    def __init__(self, cfg: ExecReceiver) -> None:
        self.name = cfg.name
        self.send_resolved = cfg.send_resolved
        self.command = list(cfg.command)
        self.timeout = cfg.timeout
        self.env = {k: os.environ[k] for k in INHERITED if k in os.environ}
        self.env.setdefault("PATH", os.defpath)
        self.env.update(cfg.env)
        self._what = f"exec {self.command[0]}"

    async def send(self, notification: Notification) -> None:
        """Run the command with the notification on stdin; HookError unless it exits 0."""
        payload = encode_json(webhook_payload(notification))
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                start_new_session=True,  # its own process group, killed as a whole
            )
        except OSError as exc:  # not found, not executable: no retry will change that
            why = exc.strerror or str(exc)
            raise HookError(f"{self._what}: cannot run it: {why}", retryable=False) from None
        stderr, timed_out = b"", False
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(payload), self.timeout)
        except TimeoutError:
            timed_out = True
        finally:
            leader = proc.returncode  # None: still running (timed out, or the send cancelled)
            if leader is None or timed_out:
                _kill_group(proc.pid)
                await proc.wait()
        if leader is None:
            raise HookError(
                f"{self._what}: still running after {self.timeout:g} s; killed", retryable=True
            )
        # A leader that exited while a child it left kept stderr open is judged by its
        # own exit status (that child is killed with the group above).
        code = await proc.wait()  # already known; this only reads it
        if code != 0:
            raise HookError(f"{self._what}: {_exit(code)}{_last_line(stderr)}", retryable=True)

    async def close(self) -> None:
        """Nothing is kept between notifications."""


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _last_line(stderr: bytes) -> str:
    lines = stderr[-STDERR_KEEP:].decode("utf-8", "replace").splitlines()
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f": {last[:500]}" if last else " (nothing on stderr)"
