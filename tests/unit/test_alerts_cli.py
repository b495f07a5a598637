"""``telemetryd alerts ...`` and the alert checks of ``config check``, end to end.

Commands run in process through ``telemetryd.cli.main`` (exit codes and the one-line
errors, as in test_cli.py) against state directories prepared the way the aggregator
leaves them: a real Engine's snapshot in ``fleet-state.json``, a notify log and a
dead-letter file written by their own modules. test-hook sends to a real HTTP server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from telemetryd.alerting.deadletters import DeadLetterFile
from telemetryd.alerting.engine import Engine
from telemetryd.alerting.model import Alert, notification
from telemetryd.alerting.notifylog import NotifyLog, Told
from telemetryd.alerting.rules import load_rules
from telemetryd.alerting.service import AlertService
from telemetryd.alerting.silences import SilenceStore
from telemetryd.config_alerts import AlertsConfig
from telemetryd.durable import replace_file
from telemetryd.fleet import Fleet, dumps
from telemetryd.model import Report, decode_report
from tests.integration.receiver import Receiver
from tests.reports import sampled
from tests.unit.test_cli import call, one_line
from tests.unit.test_cli import run as run_cli

S = 1_000_000_000
ROOT = Path(__file__).parents[2]

RULES = """
[[rule]]
name = "GpuHot"
expr = "temp_c >= 85"
severity = "critical"
annotations = { summary = "GPU {{ gpu }} on {{ node }} at {{ value }} C" }

[[rule]]
name = "GpuWarm"
expr = "temp_c >= 70"
for = "1h"
severity = "info"
annotations = { summary = "GPU {{ gpu }} warm" }
"""

BAD_RULES = """
[[rule]]
name = "GpuHot"
expr = "temp >= 85"
severity = "loud"
annotations = { summary = "hot" }

[[rule]]
name = "GpuTempNearSlowdown"
expr = "temp_c > 1"
severity = "info"
annotations = { summary = "replaces the shipped one" }

[[rule]]
name = "GpuTempNearSlowdown"
expr = "temp_c > 2"
severity = "info"
annotations = { summary = "dup" }
"""

REPLACEMENT = """
[[rule]]
name = "GpuTempNearSlowdown"
expr = "temp_c >= temp_slowdown_c - 10"
for = "10m"
severity = "warning"
annotations = { summary = "GPU {{ gpu }} warm" }
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in list(os.environ):
        if var.startswith("TELEMETRYD_") or var == "STATE_DIRECTORY":
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m telemetryd`` with this checkout's code, whichever copy is installed."""
    return run_cli(*args, PYTHONPATH=str(ROOT))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def hot_report(now_ns: int) -> Report:
    """GPU 0 of node n1 at 90 C, sampled a minute before ``now_ns``."""
    base = decode_report(sampled())
    gpus = list(base.gpus)
    gpus[0] = msgspec.structs.replace(gpus[0], temp_c=90.0)
    return msgspec.structs.replace(base, node="n1", seq=1, time_ns=now_ns - 60 * S, gpus=gpus)


def aggregator_state(state: Path, now_ns: int) -> tuple[str, str]:
    """Save what an aggregator whose engine saw ``hot_report`` saves; (firing, pending) fps."""
    rules = load_rules([write(state.parent / "rules" / "r.toml", RULES)])
    fleet = Fleet(silent_after=30.0)
    engine = Engine(rules, fleet)
    report = hot_report(now_ns)
    fleet.claim(report)
    fleet.on_report(report, report.time_ns)
    engine.on_report(report, report.time_ns)
    firing = [a for a in engine.drain() if a.labels["gpu"] == "0"]
    assert [a.labels["alertname"] for a in firing] == ["GpuHot"]
    service = AlertService(AlertsConfig(), engine)
    (state / "alerts").mkdir(parents=True)
    data = {"index": 0, "fleet": fleet.snapshot(), "alerts": service.snapshot()}
    replace_file(state / "fleet-state.json", dumps(data))
    pending = [a for a in engine.pending() if a.labels["gpu"] == "0"]
    return firing[0].fingerprint, pending[0].fingerprint


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


# --- check-rules ------------------------------------------------------------------------


def test_check_rules_good_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path / "rules" / "gpu.toml", RULES)
    write(tmp_path / "rules" / "notes.txt", "not a rule file")
    code, out, err = call(["alerts", "check-rules", str(rules.parent)], capsys)
    assert (code, out, err) == (0, f"2 rules OK: {rules} (2)\n", "")
    code, out, err = call(["alerts", "check-rules", "--with-defaults", str(rules.parent)], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("51 rules OK: default rule pack (49), ")


def test_check_rules_bad_dir_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path / "rules" / "bad.toml", BAD_RULES)
    code, out, err = call(["alerts", "check-rules", "--with-defaults", str(bad.parent)], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{bad}: rule[0] GpuHot.severity: expected one of critical, warning, info (got 'loud')",
        f"{bad}: rule[0] GpuHot.expr: column 1: unknown name 'temp' (expected a GPU field of "
        "the report such as temp_c, power_w, ecc_dbe_volatile)",
        f"{bad}: rule GpuTempNearSlowdown: name already used in {bad} (rule names must be unique)",
    ]
    # Without the shipped pack: the same problems (the names clash within the site's files).
    code, _, err = call(["alerts", "check-rules", str(bad.parent)], capsys)
    assert (code, len(err.splitlines())) == (2, 3)


def test_check_rules_says_which_shipped_rules_a_site_replaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = write(tmp_path / "rules" / "site.toml", REPLACEMENT)
    code, out, err = call(["alerts", "check-rules", "--with-defaults", str(own.parent)], capsys)
    assert (code, err) == (0, "")
    assert out == (
        f"49 rules OK: default rule pack (48), {own} (1); replacing shipped GpuTempNearSlowdown\n"
    )


def test_check_rules_not_a_directory(tmp_path: Path) -> None:
    proc = run("alerts", "check-rules", str(tmp_path / "nope"))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert one_line(proc.stderr) == (
        f"{tmp_path / 'nope'}: not a directory (expected a directory of *.toml rules)"
    )


def test_check_rules_without_dir_checks_the_shipped_pack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert call(["alerts", "check-rules"], capsys) == (
        0,
        "49 rules OK: default rule pack (49)\n",
        "",
    )
    rules = write(tmp_path / "rules" / "gpu.toml", RULES)
    cfg = write(tmp_path / "t.toml", f'[aggregator.alerts]\nrules_dir = "{rules.parent}"\n')
    code, out, _ = call(["alerts", "check-rules", "-c", str(cfg)], capsys)
    assert (code, out) == (0, f"51 rules OK: default rule pack (49), {rules} (2)\n")


def test_check_rules_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, out, _ = call(["alerts", "check-rules", str(tmp_path / "empty")], capsys)
    assert (code, out) == (0, f"no rule files (*.toml) in {tmp_path / 'empty'}: nothing to check\n")


# --- list -------------------------------------------------------------------------------


def test_list_without_state(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = (
        f"telemetryd: error: no alert state in {state} "
        "(is the aggregator running with this state directory?)"
    )
    code, out, err = call(["alerts", "list", "--state-dir", str(state)], capsys)
    assert (code, out, one_line(err)) == (1, "", expected)
    (state / "alerts").mkdir(parents=True)  # the directory, but nothing saved yet
    code, out, err = call(["alerts", "list", "--state-dir", str(state)], capsys)
    assert (code, out, one_line(err)) == (1, "", expected)


def test_list_shows_alerts_silences_and_dead_letters(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time_ns()
    hot, warm = aggregator_state(state, now)
    alerts_dir = state / "alerts"
    # The receiver "oncall" was told GpuHot fires; a notification to "slack" was given up.
    key = 'oncall/{}:{alertname="GpuHot"}'
    log = NotifyLog(alerts_dir / "notify-state.json")
    log.told[key] = Told(frozenset({hot}), frozenset(), now)
    log.write(log.snapshot({key}, [], now))
    store = SilenceStore(alerts_dir)
    silence = store.add(['node="n1"', 'alertname="GpuWarm"'], ends_ns=now + 3600 * S,
                        created_by="alice", comment="fan swap")  # fmt: skip
    letters = DeadLetterFile(alerts_dir / "deadletter.jsonl")
    labels = {"alertname": "GpuHot", "severity": "critical", "node": "n1"}
    note = notification("slack", "g", {}, [Alert(fingerprint=hot, status="firing", labels=labels)])
    letters.add("slack", 9, "gave up after 9 attempts: slack answered 500", note, now - 5 * S)
    letters.flush()

    code, out, err = call(["alerts", "list", "--state-dir", str(state)], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(
        f"Alerts: 1 firing, 1 pending (as the aggregator saved them in {state} "
    )
    assert lines[1].split() == [
        "STATE", "ALERTNAME", "SEVERITY", "NODE", "GPU", "SINCE", "VALUE", "MUTED", "NOTIFIED",
        "SUMMARY",
    ]  # fmt: skip
    header_at = {name: lines[1].index(name) for name in ("SEVERITY", "VALUE", "SUMMARY")}
    firing, pending = lines[2], lines[3]
    assert firing.split()[:5] == ["firing", "GpuHot", "critical", "n1", "0"]
    assert re.fullmatch(r"1m(\d+s)? ago \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)",
                        " ".join(firing.split()[5:8])), firing  # fmt: skip
    assert firing[header_at["SEVERITY"] :].startswith("critical ")  # aligned columns
    assert firing[header_at["VALUE"] :].split()[:3] == ["90", "-", "oncall"]
    assert firing[header_at["SUMMARY"] :] == "GPU 0 on n1 at 90 C"
    assert pending.split()[:3] == ["pending", "GpuWarm", "info"]
    assert f"silenced {silence.id[:8]}" in pending
    assert "GpuWarm" in pending and pending[header_at["SEVERITY"] :].startswith("info ")
    assert lines[4:6] == ["", "Silences: 1 active or pending"]
    assert lines[6].split() == ["ID", "STATE", "MATCHERS", "ENDS", "AUTHOR", "COMMENT"]
    assert lines[7].split()[:4] == [silence.id[:8], "active", 'node="n1",alertname="GpuWarm"',
                                    "in"]  # fmt: skip
    assert lines[7].endswith("alice   fan swap")
    assert lines[9] == f"Undelivered notifications: 1 (in {alerts_dir / 'deadletter.jsonl'})"
    assert lines[10].split() == ["TIME", "RECEIVER", "ATTEMPTS", "ALERTS", "REASON"]
    assert lines[11].split()[1:5] == ["slack", "9", "GpuHot", "(firing)"]
    assert lines[11].endswith("gave up after 9 attempts: slack answered 500")
    assert len(lines) == 12

    code, out, err = call(["alerts", "list", "--json", "--state-dir", str(state)], capsys)
    assert (code, err) == (0, "")
    view = json.loads(out)
    assert set(view) == {
        "state_dir", "saved", "saved_ns", "alerts", "silences", "deadletters",
        "deadletters_total", "deadletter_file",
    }  # fmt: skip
    by_name = {a["alertname"]: a for a in view["alerts"]}
    assert by_name["GpuHot"] | {"labels": None, "annotations": None} == {
        "state": "firing", "alertname": "GpuHot", "severity": "critical", "node": "n1",
        "gpu": "0", "since": by_name["GpuHot"]["since"], "since_ns": now - 60 * S,
        "value": 90.0, "summary": "GPU 0 on n1 at 90 C", "fingerprint": hot,
        "labels": None, "annotations": None, "silenced_by": [], "notified": ["oncall"],
    }  # fmt: skip
    assert by_name["GpuHot"]["labels"]["uuid"]
    assert (by_name["GpuWarm"]["state"], by_name["GpuWarm"]["fingerprint"]) == ("pending", warm)
    assert by_name["GpuWarm"]["silenced_by"] == [silence.id]
    assert [s["id"] for s in view["silences"]] == [silence.id]
    assert view["silences"][0]["matchers"] == ['node="n1"', 'alertname="GpuWarm"']
    assert (view["silences"][0]["author"], view["silences"][0]["state"]) == ("alice", "active")
    assert view["deadletters_total"] == 1
    assert view["deadletters"][0]["receiver"] == "slack"
    assert view["deadletters"][0]["alerts"] == ["GpuHot (firing)"]


def test_list_reads_the_configured_state_dir(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aggregator_state(state, time.time_ns())
    cfg = write(tmp_path / "t.toml", f'[aggregator]\nstate_dir = "{state}"\n')
    code, out, _ = call(["alerts", "list", "--json", "-c", str(cfg)], capsys)
    assert code == 0
    assert [a["alertname"] for a in json.loads(out)["alerts"]] == ["GpuHot", "GpuWarm"]


# --- silence / unsilence ----------------------------------------------------------------


def test_silence_round_trip(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aggregator_state(state, time.time_ns())
    aggregator_side = SilenceStore(state / "alerts")  # what the running aggregator reads
    code, out, err = call(
        ["alerts", "silence", "--state-dir", str(state), 'node="n1"', "gpu=~0|1",
         "--duration", "2h", "--author", "bob", "--comment", "reseat GPU 0"],
        capsys,
    )  # fmt: skip
    assert (code, err) == (0, "")
    silence_id = out.strip()
    assert aggregator_side.reload_if_changed()
    [silence] = aggregator_side.active()
    assert silence.id == silence_id
    assert [str(m) for m in silence.matchers] == ['node="n1"', 'gpu=~"0|1"']
    assert (silence.created_by, silence.comment) == ("bob", "reseat GPU 0")
    assert abs((silence.ends_ns - silence.starts_ns) / S - 7200) < 1
    saved = json.loads((state / "alerts" / "silences.json").read_text())
    assert [s["id"] for s in saved["silences"]] == [silence_id]

    code, out, _ = call(["alerts", "list", "--json", "--state-dir", str(state)], capsys)
    view = json.loads(out)
    assert [s["id"] for s in view["silences"]] == [silence_id]
    hot = next(a for a in view["alerts"] if a["alertname"] == "GpuHot")
    assert hot["silenced_by"] == [silence_id]

    code, out, err = call(["alerts", "unsilence", silence_id[:8], "--state-dir", str(state)],
                          capsys)  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith(f'expired {silence_id} node="n1",gpu=~"0|1" until ')
    assert aggregator_side.reload_if_changed()
    assert aggregator_side.active() == []
    code, out, _ = call(["alerts", "list", "--json", "--state-dir", str(state)], capsys)
    assert json.loads(out)["silences"] == []

    code, out, err = call(["alerts", "unsilence", silence_id, "--state-dir", str(state)], capsys)
    assert (code, out) == (1, "")
    assert one_line(err) == f"telemetryd: error: silence {silence_id} has already expired"


def test_silence_author_defaults_to_user_and_until(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (state / "alerts").mkdir(parents=True)
    monkeypatch.setenv("USER", "carol")
    until = time.time() + 600
    code, _, err = call(
        ["alerts", "silence", "--state-dir", str(state), "alertname=GpuHot", "--until",
         f"{until:.0f}", "--start", f"{until - 300:.0f}", "--comment", "later"],
        capsys,
    )  # fmt: skip
    assert (code, err) == (0, "")
    [silence] = SilenceStore(state / "alerts").list()
    assert silence.created_by == "carol"
    assert silence.ends_ns == int(f"{until:.0f}") * S
    assert silence.state(time.time_ns()) == "pending"


def test_unsilence_unknown_id(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (state / "alerts").mkdir(parents=True)
    code, out, err = call(["alerts", "unsilence", "abc", "--state-dir", str(state)], capsys)
    assert (code, out) == (1, "")
    assert one_line(err) == "telemetryd: error: no silence with id 'abc' (see `alerts list`)"


SILENCE_ERRORS = [
    (
        ["node"],
        2,
        "telemetryd alerts silence: Invalid value for 'MATCHER...': expected a matcher such as "
        "severity=\"critical\" (operators = != =~ !~) (got 'node') (see 'telemetryd alerts "
        "silence --help')",
    ),
    (
        ['gpu=~"("', "--duration", "1h"],
        2,
        "telemetryd alerts silence: Invalid value for 'MATCHER...': invalid regular expression",
    ),
    (
        ['node=~".*"'],
        2,
        'telemetryd alerts silence: the matchers node=~".*" would mute every alert; add one '
        'that needs a label, such as node="n17"',
    ),
    (
        ['node="n1"', "--until", "2h"],
        2,
        "telemetryd alerts silence: Invalid value for '--until': '2h' is a duration; expected "
        "a point in time",
    ),
    (
        ['node="n1"', "--until", "2020-01-01"],
        2,
        "telemetryd alerts silence: the silence would end at 2020-01-01T00:00:00Z; expected an "
        "end after its start and now",
    ),
    (
        ['node="n1"', "--duration", "soon"],
        2,
        "telemetryd alerts silence: Invalid value for '--duration': expected a duration such as",
    ),
    (
        ['node="n1"', "--duration", "1h", "--until", "2030-01-01"],
        2,
        "telemetryd alerts silence: give one of --duration and --until",
    ),
]


@pytest.mark.parametrize(("args", "code", "start"), SILENCE_ERRORS)
def test_silence_bad_input(
    state: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, start: str
) -> None:
    (state / "alerts").mkdir(parents=True)
    if "--duration" not in args and "--until" not in args:
        args = [*args, "--duration", "1h"]
    argv = ["alerts", "silence", "--state-dir", str(state), *args, "--comment", "c"]
    got, out, err = call(argv, capsys)
    assert (got, out) == (code, "")
    assert one_line(err).startswith(start), err
    assert not (state / "alerts" / "silences.json").exists()


def test_silence_without_state_dir(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["alerts", "silence", "--state-dir", str(state), "node=n1", "--duration", "1h",
            "--comment", "c"]  # fmt: skip
    code, _, err = call(argv, capsys)
    assert code == 1
    assert "no alert state in" in one_line(err)
    assert not state.exists()  # a mistyped --state-dir is not created


# --- test-hook --------------------------------------------------------------------------


def routing_config(tmp_path: Path, url: str) -> Path:
    routing = write(tmp_path / "routing.toml", f"""
[route]
receiver = "hook"

[[receiver]]
name = "hook"
type = "webhook"
url = "{url}"
timeout = 5

[[receiver]]
name = "quiet"
type = "webhook"
url = "{url}"
send_resolved = false
""")  # fmt: skip
    return write(tmp_path / "t.toml", f'[aggregator.alerts]\nrouting_file = "{routing}"\n')


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.close()
    server._loop.close()  # close() stops the loop's thread but leaves the loop open


def test_test_hook_delivers_firing_and_resolve(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = routing_config(tmp_path, f"{receiver.url}/hook")
    code, out, err = call(["alerts", "test-hook", "-c", str(cfg), "hook"], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "webhook receiver 'hook': firing: delivered",
        "webhook receiver 'hook': resolved: delivered",
    ]
    firing, resolved = receiver.bodies("/hook")
    assert (firing["status"], resolved["status"]) == ("firing", "resolved")
    assert firing["receiver"] == "hook"
    [alert] = firing["alerts"]
    assert alert["labels"]["alertname"] == "TelemetrydTestAlert"
    assert (alert["labels"]["severity"], alert["labels"]["test"]) == ("info", "true")
    assert alert["annotations"]["summary"].startswith("Test notification from telemetryd on ")
    assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]


def test_test_hook_no_resolve_and_receiver_without_resolves(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = routing_config(tmp_path, f"{receiver.url}/hook")
    code, out, _ = call(["alerts", "test-hook", "-c", str(cfg), "--no-resolve", "hook"], capsys)
    assert (code, out) == (0, "webhook receiver 'hook': firing: delivered\n")
    code, out, _ = call(["alerts", "test-hook", "-c", str(cfg), "quiet"], capsys)
    assert code == 0
    assert out.splitlines()[1] == (
        "webhook receiver 'quiet': resolved: not sent (the receiver has send_resolved = false)"
    )
    assert [b["status"] for b in receiver.bodies("/hook")] == ["firing", "firing"]


def test_test_hook_refused_and_unreachable(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = routing_config(tmp_path, f"{receiver.url}/hook")
    receiver.fail_with(400)
    code, out, err = call(["alerts", "test-hook", "-c", str(cfg), "hook"], capsys)
    assert (code, out) == (1, "")
    assert one_line(err) == (
        "telemetryd: error: webhook receiver 'hook': firing: not delivered: answered 400: "
        "refused by the test (refused, not retried)"
    )
    assert receiver.refused == 1  # one attempt, and no resolve after a failed firing
    receiver.stop()
    code, out, err = call(["alerts", "test-hook", "-c", str(cfg), "hook"], capsys)
    assert (code, out) == (1, "")
    assert one_line(err).startswith(
        "telemetryd: error: webhook receiver 'hook': firing: not delivered: no answer: "
    )


def test_test_hook_unknown_receiver_and_no_routing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = routing_config(tmp_path, "http://127.0.0.1:9/hook")
    code, out, err = call(["alerts", "test-hook", "-c", str(cfg), "pager"], capsys)
    assert (code, out) == (2, "")
    assert one_line(err) == (
        f"telemetryd alerts test-hook: no receiver 'pager' in {tmp_path / 'routing.toml'} "
        "(receivers: hook, quiet)"
    )
    code, out, err = call(["alerts", "test-hook", "hook"], capsys)
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "telemetryd alerts test-hook: [aggregator.alerts] routing_file is empty; expected the "
        "routing file that defines the receivers"
    )


# --- config check -----------------------------------------------------------------------


def test_config_check_reports_bad_rules_and_routing(tmp_path: Path) -> None:
    bad = write(tmp_path / "rules" / "bad.toml", BAD_RULES)
    routing = write(tmp_path / "routing.toml", '[route]\nreceiver = "nobody"\n')
    cfg = write(
        tmp_path / "t.toml",
        f'[aggregator.alerts]\nrules_dir = "{bad.parent}"\nrouting_file = "{routing}"\n',
    )
    proc = run("config", "check", str(cfg))
    assert (proc.returncode, proc.stdout) == (2, "")
    rules_at = f"{cfg}:2: aggregator.alerts.rules_dir: "
    assert proc.stderr.splitlines() == [
        f"{rules_at}{bad}: rule[0] GpuHot.severity: expected one of critical, warning, info "
        "(got 'loud')",
        f"{rules_at}{bad}: rule[0] GpuHot.expr: column 1: unknown name 'temp' (expected a GPU "
        "field of the report such as temp_c, power_w, ecc_dbe_volatile)",
        f"{rules_at}{bad}: rule GpuTempNearSlowdown: name already used in {bad} (rule names "
        "must be unique)",
        f"{cfg}:3: aggregator.alerts.routing_file: {routing}: route.receiver: no [[receiver]] "
        "named 'nobody' (receivers: none defined)",
    ]


def test_config_check_accepts_good_rules_and_skips_disabled(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules" / "gpu.toml", RULES)
    cfg = write(tmp_path / "t.toml", f'[aggregator.alerts]\nrules_dir = "{rules.parent}"\n')
    proc = run("config", "check", str(cfg))
    assert proc.returncode == 0, proc.stderr
    write(tmp_path / "rules" / "bad.toml", BAD_RULES)
    cfg = write(
        tmp_path / "t.toml",
        f'[aggregator.alerts]\nenabled = false\nrules_dir = "{rules.parent}"\n',
    )
    proc = run("config", "check", str(cfg))
    assert proc.returncode == 0, proc.stderr
