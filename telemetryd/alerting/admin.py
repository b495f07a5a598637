"""What ``telemetryd alerts ...`` does, without the command line around it.

The aggregator owns the alert state; an operator's commands only read what it saved
(``fleet-state.json``, ``alerts/notify-state.json``, ``alerts/deadletter.jsonl``) and write
the one file it re-reads on its own (``alerts/silences.json``, locked and replaced
whole). So they work while the aggregator runs, need no API or connection to it, and a
silence takes effect within a tick. Every failure is one line: ConfigError (exit 2) for
what the operator typed or configured, TelemetrydError (exit 1) for the rest.
"""

from __future__ import annotations

import asyncio
import datetime
import getpass
import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from telemetryd import statedir
from telemetryd.alerting import durations
from telemetryd.alerting.deadletters import FILE as DEADLETTER_FILE
from telemetryd.alerting.deadletters import read_deadletters
from telemetryd.alerting.durations import format_duration
from telemetryd.alerting.matchers import Matcher, parse_matcher
from telemetryd.alerting.model import Alert, Notification, fingerprint, notification
from telemetryd.alerting.notifylog import FILE as NOTIFY_FILE
from telemetryd.alerting.notifylog import NotifyLog
from telemetryd.alerting.rules import DEFAULT_PACK, load_rules, rule_files
from telemetryd.alerting.silences import Silence, SilenceStore
from telemetryd.config import AggregatorConfig
from telemetryd.errors import ConfigError, TelemetrydError

if TYPE_CHECKING:
    from exporters.hooks.base import Hook

DEADLETTERS_SHOWN = 20  # newest dead letters in `alerts list`; the file has them all
TEST_ALERT = "TelemetrydTestAlert"
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def load_config(config_file: str | None, state_dir: str | None) -> AggregatorConfig:
    """The aggregator's settings as the aggregator itself would load them."""
    from telemetryd.configload import load

    overrides = {"aggregator.state_dir": ("--state-dir", state_dir)} if state_dir else {}
    return load(config_file, overrides=overrides).config.aggregator


def alerts_dir(cfg: AggregatorConfig) -> Path:
    """``<state_dir>/alerts``; TelemetrydError when no aggregator ever used it."""
    state = statedir.resolve(cfg.state_dir)
    directory = state / "alerts"
    if not directory.is_dir():
        raise TelemetrydError(_no_state(state))
    return directory


def _no_state(state: Path) -> str:
    return f"no alert state in {state} (is the aggregator running with this state directory?)"


# -- check-rules ---------------------------------------------------------------------------


def check_rules(directory: str | None, cfg: AggregatorConfig, *, with_defaults: bool) -> str:
    """Load rule files as the aggregator would; the summary line, or ConfigError listing all.

    Without ``directory``: what the configuration loads (its rules_dir and, unless turned
    off, the shipped pack; with no configuration file, the shipped pack alone).
    """
    disabled: list[str] = []
    if directory is None:
        paths = rule_files(Path(cfg.alerts.rules_dir)) if cfg.alerts.rules_dir else []
        defaults, disabled = cfg.alerts.default_rules, cfg.alerts.disabled_rules
    else:
        paths, defaults = rule_files(Path(directory)), with_defaults
        if not paths and not defaults:
            return f"no rule files (*.toml) in {directory}: nothing to check"
    rules = load_rules(paths, default_pack=defaults, disabled=disabled)
    counts = dict.fromkeys((["default rule pack"] if defaults else []) + [str(p) for p in paths], 0)
    for rule in rules:
        counts[rule.source] = counts.get(rule.source, 0) + 1
    files = ", ".join(f"{source} ({n})" for source, n in counts.items())
    line = f"{len(rules)} rule{'' if len(rules) == 1 else 's'} OK: {files}"
    if defaults:
        shipped = {r.name for r in load_rules([], default_pack=True)}
        replaced = sorted(r.name for r in rules if r.name in shipped and r.source != DEFAULT_PACK)
        if replaced:
            line += f"; replacing shipped {', '.join(replaced)}"
    return line


# -- list ----------------------------------------------------------------------------------


def overview(cfg: AggregatorConfig, now_ns: int | None = None) -> dict[str, Any]:
    """Alerts, silences and dead letters as the aggregator last saved them (JSON-able)."""
    directory = alerts_dir(cfg)
    now = time.time_ns() if now_ns is None else now_ns
    path = directory.parent / "fleet-state.json"
    try:
        saved = json.loads(path.read_bytes())
        saved_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise TelemetrydError(_no_state(directory.parent)) from None
    except (OSError, ValueError) as exc:
        raise TelemetrydError(f"{path}: cannot read the saved alert state: {exc}") from None
    state = saved.get("alerts") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise TelemetrydError(_no_state(directory.parent))
    silences = SilenceStore(directory)
    log = NotifyLog(directory / NOTIFY_FILE)
    log.load()
    told: dict[str, set[str]] = {}
    for key, record in log.told.items():
        for fp in record.firing:
            told.setdefault(fp, set()).add(key.split("/", 1)[0])
    alerts = [
        _alert(item, silences, told, now)
        for item in state.get("alerts", [])
        if isinstance(item, dict) and isinstance(item.get("labels"), dict)
    ]
    alerts.sort(key=lambda a: (a["state"] != "firing", _SEVERITY_ORDER.get(a["severity"], 3),
                               a["since_ns"], a["alertname"]))  # fmt: skip
    letters = read_deadletters(directory)
    return {
        "state_dir": str(directory.parent),
        "saved": _iso(saved_ns),
        "saved_ns": saved_ns,
        "alerts": alerts,
        "silences": [_silence(s, now) for s in silences.list() if s.state(now) != "expired"],
        "deadletters": [_letter(r) for r in letters[-DEADLETTERS_SHOWN:]],
        "deadletters_total": len(letters),
        "deadletter_file": str(directory / DEADLETTER_FILE),
    }


def _alert(
    item: dict[str, Any], silences: SilenceStore, told: dict[str, set[str]], now: int
) -> dict[str, Any]:
    labels = {str(k): str(v) for k, v in item["labels"].items()}
    annotations = item.get("annotations") or {}
    state = "firing" if item.get("state") == "firing" else "pending"
    since = int(item.get("fired_ns") or 0) if state == "firing" else 0
    since = since or int(item.get("starts_ns") or 0)
    fp = str(item.get("fingerprint") or fingerprint(labels))
    value = item.get("value")
    return {
        "state": state, "alertname": labels.get("alertname", str(item.get("rule", ""))),
        "severity": labels.get("severity", ""), "node": labels.get("node", ""),
        "gpu": labels.get("gpu", ""), "since": _iso(since), "since_ns": since,
        "value": value if isinstance(value, int | float) else None,
        "summary": str(annotations.get("summary", "")), "fingerprint": fp, "labels": labels,
        "annotations": annotations, "silenced_by": silences.muted(labels, now),
        "notified": sorted(told.get(fp, ())),
    }  # fmt: skip


def _silence(silence: Silence, now: int) -> dict[str, Any]:
    return {
        "id": silence.id, "state": silence.state(now),
        "matchers": [str(m) for m in silence.matchers], "starts": _iso(silence.starts_ns),
        "ends": _iso(silence.ends_ns), "ends_ns": silence.ends_ns,
        "author": silence.created_by, "comment": silence.comment,
    }  # fmt: skip


def _letter(record: dict[str, Any]) -> dict[str, Any]:
    note = record.get("notification") or {}
    names: dict[str, None] = {}
    for alert in note.get("alerts", []) if isinstance(note, dict) else []:
        labels = alert.get("labels", {}) if isinstance(alert, dict) else {}
        names[f"{labels.get('alertname', '?')} ({alert.get('status', '?')})"] = None
    return {
        "time": str(record.get("time", "")), "receiver": str(record.get("receiver", "")),
        "attempts": record.get("attempts"), "reason": str(record.get("reason", "")),
        "alerts": list(names),
    }  # fmt: skip


def render(view: dict[str, Any], now_ns: int | None = None) -> str:
    """``alerts list`` for a person: three aligned tables."""
    now = time.time_ns() if now_ns is None else now_ns
    alerts, silences, letters = view["alerts"], view["silences"], view["deadletters"]
    firing = sum(a["state"] == "firing" for a in alerts)
    out = [f"Alerts: {firing} firing, {len(alerts) - firing} pending (as the aggregator saved "
           f"them in {view['state_dir']} {_relative(view['saved_ns'], now)})"]  # fmt: skip
    out += _table(
        ["STATE", "ALERTNAME", "SEVERITY", "NODE", "GPU", "SINCE", "VALUE", "MUTED", "NOTIFIED",
         "SUMMARY"],
        [[a["state"], a["alertname"], a["severity"], a["node"] or "-", a["gpu"] or "-",
          f"{_relative(a['since_ns'], now)} ({a['since']})", _value(a["value"]),
          ",".join(f"silenced {i[:8]}" for i in a["silenced_by"]) or "-",
          ",".join(a["notified"]) or "-", a["summary"]] for a in alerts],
    )  # fmt: skip
    out += ["", f"Silences: {len(silences)} active or pending"]
    out += _table(
        ["ID", "STATE", "MATCHERS", "ENDS", "AUTHOR", "COMMENT"],
        [[s["id"][:8], s["state"], ",".join(s["matchers"]),
          f"{_relative(s['ends_ns'], now)} ({s['ends']})", s["author"], s["comment"]]
         for s in silences],
    )  # fmt: skip
    total = view["deadletters_total"]
    shown = f"newest {len(letters)} of {total}" if total > len(letters) else str(total)
    out += ["", f"Undelivered notifications: {shown} (in {view['deadletter_file']})"]
    out += _table(
        ["TIME", "RECEIVER", "ATTEMPTS", "ALERTS", "REASON"],
        [[d["time"], d["receiver"], str(d["attempts"]), ", ".join(d["alerts"]), d["reason"]]
         for d in letters],
    )  # fmt: skip
    return "\n".join(out) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell (the last one is not padded); none: nothing."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join([c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]).rstrip()
        for r in [header, *rows]
    ]


def _iso(ns: int) -> str:
    when = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _relative(ns: int, now: int) -> str:
    seconds = round((now - ns) / 1e9)
    if seconds == 0:
        return "just now"
    return f"{format_duration(seconds)} ago" if seconds > 0 else f"in {format_duration(-seconds)}"


def _value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}".rstrip("0")


def to_json(view: dict[str, Any]) -> str:
    """``alerts list --json``: one JSON object (and a newline)."""
    return json.dumps(view, indent=2, ensure_ascii=False) + "\n"


# -- silences ------------------------------------------------------------------------------


def parse_matchers(texts: Sequence[str]) -> tuple[Matcher, ...]:
    """The matchers of a silence; ValueError (the parser's line) for a bad one."""
    return tuple(parse_matcher(text) for text in texts)


def parse_duration(text: str) -> float:
    """``--duration``: seconds; ValueError naming the accepted forms."""
    return durations.parse_duration(text)


def parse_moment(text: str) -> int:
    """``--until``/``--start``: a point in time; a bare duration is refused, not taken as ago.

    ``parse_time`` reads ``2h`` as two hours ago (right for ``--since``); for a silence that
    would be a surprise, so it is said instead.
    """
    from telemetryd.timespec import parse_time

    value = text.strip()
    if not re.fullmatch(r"[\d.]+", value):
        try:
            durations.parse_duration(value)
        except ValueError:
            pass
        else:
            raise ValueError(
                f"{text!r} is a duration; expected a point in time such as "
                "2026-11-30T08:00:00Z (for a length from now use --duration)"
            )
    return parse_time(value)


def default_author() -> str:
    """$USER, else the login name: who set a silence, when not said."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except OSError:  # no name for this uid (a container)
        return ""


def add_silence(
    cfg: AggregatorConfig,
    matchers: Sequence[Matcher],
    *,
    starts_ns: int | None,
    ends_ns: int | None,
    duration_s: float | None,
    author: str | None,
    comment: str,
) -> Silence:
    """Write a silence for the aggregator to pick up; ConfigError for one it would refuse."""
    directory = alerts_dir(cfg)
    now = time.time_ns()
    begin = now if starts_ns is None else starts_ns
    end = ends_ns if ends_ns is not None else begin + int((duration_s or 0) * 1e9)
    author = default_author() if author is None else author
    problem = ""
    if all(m.matches({}) for m in matchers):
        problem = (f"the matchers {', '.join(map(str, matchers))} would mute every alert; "
                   'add one that needs a label, such as node="n17"')  # fmt: skip
    elif end <= max(begin, now):
        problem = f"the silence would end at {_iso(end)}; expected an end after its start and now"
    elif not author.strip():
        problem = "no author ($USER is not set); give --author NAME"
    elif not comment.strip():
        problem = "--comment is empty; say why (maintenance, ticket)"
    if problem:
        raise ConfigError([f"telemetryd alerts silence: {problem}"])
    store = SilenceStore(directory)
    try:
        return store.add(matchers, starts_ns=begin, ends_ns=end, created_by=author,
                         comment=comment)  # fmt: skip
    except OSError as exc:
        raise TelemetrydError(f"cannot write {store.path}: {exc.strerror or exc}") from None


def expire_silence(cfg: AggregatorConfig, id_or_prefix: str) -> Silence:
    """End a silence now; SilenceError (exit 1) for an unknown or expired one."""
    store = SilenceStore(alerts_dir(cfg))
    try:
        return store.expire(id_or_prefix)
    except OSError as exc:
        raise TelemetrydError(f"cannot write {store.path}: {exc.strerror or exc}") from None


def describe(silence: Silence) -> str:
    """One line: id, matchers, when it ends."""
    matchers = ",".join(map(str, silence.matchers))
    return f"{silence.id} {matchers} until {_iso(silence.ends_ns)}"


# -- test-hook -----------------------------------------------------------------------------


def send_test(
    cfg: AggregatorConfig, name: str, *, resolve: bool, echo: Callable[[str], None]
) -> None:
    """Send a test alert (and its resolve) to one receiver, one attempt each.

    Raises:
        ConfigError: no routing file, no such receiver, or a receiver that cannot be built.
        TelemetrydError: the receiver did not accept a notification (its reason).
    """
    from exporters.hooks import make_hook, receiver_type
    from telemetryd.alerting.routing import load_routing

    command = "telemetryd alerts test-hook"
    if not cfg.alerts.routing_file:
        raise ConfigError([f"{command}: [aggregator.alerts] routing_file is empty; expected "
                           "the routing file that defines the receivers"])  # fmt: skip
    routing = load_routing(cfg.alerts.routing_file)
    receiver = routing.receivers.get(name)
    if receiver is None:
        known = ", ".join(routing.receivers) or "none"
        raise ConfigError([f"{command}: no receiver {name!r} in {cfg.alerts.routing_file} "
                           f"(receivers: {known})"])  # fmt: skip
    hook = make_hook(receiver)
    who = f"{receiver_type(receiver)} receiver {name!r}"
    host = socket.gethostname()
    labels = {"alertname": TEST_ALERT, "severity": "info", "test": "true", "host": host}
    annotations = {
        "summary": f"Test notification from telemetryd on {host}",
        "description": f"Sent by '{command} {name}'; nothing needs to be done.",
    }
    now = time.time_ns()
    steps: list[tuple[Literal["firing", "resolved"], int]] = [("firing", 0), ("resolved", now)]
    alerts = [
        Alert(fingerprint=fingerprint(labels), status=status, labels=labels,
              annotations=annotations, starts_ns=now, fired_ns=now, ends_ns=ends)
        for status, ends in steps[: 2 if resolve else 1]
    ]  # fmt: skip

    async def send_all() -> None:
        try:
            for alert in alerts:
                if alert.status == "resolved" and not hook.send_resolved:
                    echo(f"{who}: resolved: not sent (the receiver has send_resolved = false)")
                    continue
                note = notification(name, f'{{}}:{{alertname="{TEST_ALERT}"}}',
                                    {"alertname": TEST_ALERT}, [alert],
                                    external_url=cfg.alerts.external_url)  # fmt: skip
                error = await _attempt(hook, note, receiver.timeout)
                if error:  # HTTP hooks name the receiver as we do: said once
                    error = error[len(who) :].lstrip(": ") if error.startswith(who) else error
                    raise TelemetrydError(f"{who}: {alert.status}: not delivered: {error}")
                echo(f"{who}: {alert.status}: delivered")
        finally:
            await hook.close()

    asyncio.run(send_all())


async def _attempt(hook: Hook, note: Notification, seconds: float) -> str:
    """One attempt, as the dispatcher makes it: '' when accepted, else why not."""
    from exporters.hooks.base import HookError

    try:
        async with asyncio.timeout(seconds):
            await hook.send(note)
    except HookError as exc:
        return str(exc)
    except TimeoutError:
        return f"no answer within {seconds:g}s"
    except Exception as exc:  # noqa: BLE001 - a hook's bug is reported like a refusal
        return f"hook raised {type(exc).__name__}: {exc}"
    return ""
