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
import os
import signal

from exporters.hooks.base import HookError
from exporters.hooks.common import config_error, to_tell, webhook_payload
from exporters.hooks.config import ExecReceiver
from telemetryd.alerting.model import Notification
from telemetryd.codec import encode_json

INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
"""Variables passed on from the aggregator's environment (when set there)."""

STDERR_KEEP = 64 * 1024  # bytes of stderr kept for the error message (its tail)


def create(cfg: ExecReceiver) -> ExecHook:
    """The hook for one ``type = "exec"`` receiver."""
    if not cfg.command or not cfg.command[0]:
        raise config_error(cfg, 'command is empty; expected an argv list like ["/path"]')
    for key in cfg.env:
        if not key or "=" in key or "\x00" in key:
            raise config_error(cfg, f"env key {key!r}; expected a variable name")
    return ExecHook(cfg)


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
        told = to_tell(notification, self.send_resolved)
        if told is None:
            return
        payload = encode_json(webhook_payload(told))
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
