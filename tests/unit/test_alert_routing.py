"""The routing file, matchers and durations: what loads, how alerts are routed, what errors say."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.hooks.config import PagerDutyReceiver, WebhookReceiver
from telemetryd.alerting.durations import format_duration, parse_duration
from telemetryd.alerting.matchers import matches_all, parse_matcher
from telemetryd.alerting.routing import DEFAULT_GROUP_BY, load_routing
from telemetryd.errors import ConfigError

SPEC_EXAMPLE = """
[route]
receiver = "default"
group_by = ["alertname", "cluster", "node"]
group_wait = "0s"
group_interval = "30s"
repeat_interval = "4h"
[[route.routes]]
matchers = ['severity="critical"', 'rack=~"a|b"']
receiver = "oncall"
continue = false
[[receiver]]
name = "oncall"
type = "pagerduty"
routing_key_file = "/etc/telemetryd/pd.key"
[[receiver]]
name = "default"
type = "webhook"
url = "http://relay:8080/hook"
[[inhibit]]
source_matchers = ['alertname="NodeOffline"']
target_matchers = ['scope=~"gpu|event"']
equal = ["cluster", "node"]
"""

TREE = """
[route]
receiver = "default"
group_wait = "5s"
repeat_interval = "1h"
[[route.routes]]
matchers = ['severity="critical"']
receiver = "oncall"
group_by = ["alertname", "node"]
group_interval = "10s"
continue = true
  [[route.routes.routes]]
  matchers = ['alertname=~"GpuXid.*"']
  receiver = "hw"
  [[route.routes.routes]]
  matchers = ['rack="r1"']
[[route.routes]]
matchers = ['team="gpu-ops"']
receiver = "team"
[[route.routes]]
matchers = ['severity=~"critical|warning"']
receiver = "team"
group_by = ["..."]
""" + "".join(
    f'[[receiver]]\nname = "{n}"\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
    for n in ("default", "oncall", "hw", "team")
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_routing(write(tmp_path, text))
    return err.value.problems


# -- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800), ("1w", 604800),
     ("1.5h", 5400), (" 10s ", 10), ("0", 0), ("45", 45), (12, 12), (0.5, 0.5), ("1h0m5s", 3605)],
)  # fmt: skip
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 m", "m5", "5x", "-5s", "1h-5m", True, -1, [5], None])
def test_parse_duration_errors_say_what_is_expected(bad: object) -> None:
    with pytest.raises(ValueError, match=r'expected a duration such as "30s", "5m", "1h30m"'):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for seconds in (0, 0.25, 1, 59, 60, 5400, 86400 + 61):
        assert parse_duration(format_duration(seconds)) == seconds
    assert format_duration(5400) == "1h30m"


# -- matchers ---------------------------------------------------------------------------


def test_matcher_syntax() -> None:
    labels = {"alertname": "GpuXid", "severity": "critical", "rack": "b", "xid": "79"}
    assert parse_matcher('severity="critical"').matches(labels)
    assert parse_matcher("severity = critical").matches(labels)  # bare value
    assert parse_matcher('severity!="warning"').matches(labels)
    assert parse_matcher('rack=~"a|b"').matches(labels)
    assert not parse_matcher('rack=~"a"').matches({"rack": "ab"})  # anchored at both ends
    assert not parse_matcher('alertname=~"Gpu"').matches(labels)
    assert parse_matcher('alertname=~"Gpu.*"').matches(labels)
    assert parse_matcher('xid!~"4[38]"').matches(labels)
    assert parse_matcher('team=""').matches(labels)  # a missing label is empty
    assert parse_matcher('team!~".+"').matches(labels)
    assert not parse_matcher('team!=""').matches(labels)
    quoted = parse_matcher(r'summary="say \"hi\"\\ now"')
    assert quoted.value == 'say "hi"\\ now'
    assert parse_matcher(str(quoted)) == quoted
    assert str(parse_matcher("rack =~ a|b")) == 'rack=~"a|b"'
    assert matches_all([], labels)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("severity", 'expected a matcher such as severity="critical"'),
        ('9x="a"', "expected a matcher"),
        ('severity=="critical"', "a bare value may not hold a quote"),
        ('severity="critical', "no closing quote"),
        ('severity="critical" and more', "unexpected text after the closing quote"),
        (r'severity="a\qb"', "unknown escape"),
        ('rack=~"(a|b"', "invalid regular expression '(a|b'"),
        ('severity<"x"', "expected a matcher"),
    ],
)
def test_matcher_errors(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        parse_matcher(text)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


# -- loading ----------------------------------------------------------------------------


def test_spec_example_loads(tmp_path: Path) -> None:
    routing = load_routing(write(tmp_path, SPEC_EXAMPLE))
    assert isinstance(routing.receivers["oncall"], PagerDutyReceiver)
    assert isinstance(routing.receivers["default"], WebhookReceiver)
    root = routing.route
    assert root is not None
    assert (root.group_wait, root.group_interval, root.repeat_interval) == (0, 30, 4 * 3600)
    [child] = root.routes
    assert child.receiver == "oncall"
    assert child.group_by == DEFAULT_GROUP_BY
    assert child.key == '{}/{severity="critical",rack=~"a|b"}'
    [rule] = routing.inhibit_rules
    assert rule.equal == ("cluster", "node")
    assert rule.name == "inhibit[0]"
    crit = {"alertname": "X", "severity": "critical", "rack": "a"}
    assert [r.receiver for r in routing.match(crit)] == ["oncall"]
    assert [r.receiver for r in routing.match({**crit, "rack": "c"})] == ["default"]


def test_defaults_and_inheritance(tmp_path: Path) -> None:
    routing = load_routing(write(tmp_path, TREE))
    root = routing.route
    assert root is not None
    assert root.group_by == ("alertname", "cluster", "node")
    assert (root.group_wait, root.group_interval, root.repeat_interval) == (5, 30, 3600)
    oncall = root.routes[0]
    assert (oncall.group_wait, oncall.group_interval, oncall.repeat_interval) == (5, 10, 3600)
    hw, rack = oncall.routes
    assert hw.group_by == rack.group_by == ("alertname", "node")  # inherited from oncall
    assert hw.group_interval == rack.group_interval == 10
    assert rack.receiver == "oncall"  # no receiver of its own: the parent's
    assert root.routes[2].group_by is None  # "..."
    assert root.routes[2].continue_ is False
    assert [r.path for r in routing.routes()] == [
        "route", "route.routes[0]", "route.routes[0].routes[0]", "route.routes[0].routes[1]",
        "route.routes[1]", "route.routes[2]",
    ]  # fmt: skip


def test_match_walks_the_tree_like_alertmanager(tmp_path: Path) -> None:
    routing = load_routing(write(tmp_path, TREE))

    def receivers(**labels: str) -> list[str]:
        return [r.path for r in routing.match({"alertname": "A", **labels})]

    # Critical XID: oncall's first matching child takes it; oncall has continue, so the
    # next top-level route that matches (team by severity; not gpu-ops) takes it too.
    assert receivers(alertname="GpuXid79", severity="critical") == [
        "route.routes[0].routes[0]", "route.routes[2]",
    ]  # fmt: skip
    # A critical alert no child of oncall matches falls back to oncall itself.
    assert receivers(severity="critical") == ["route.routes[0]", "route.routes[2]"]
    # First match wins without continue: team (gpu-ops) stops the walk.
    assert receivers(severity="warning", team="gpu-ops") == ["route.routes[1]"]
    assert receivers(severity="warning") == ["route.routes[2]"]
    # Nothing below matches: the root.
    assert receivers(severity="info") == ["route"]


def test_group_labels_and_keys(tmp_path: Path) -> None:
    routing = load_routing(write(tmp_path, TREE))
    root = routing.route
    assert root is not None
    labels = {"alertname": "A", "node": "n1", "gpu": "0"}  # no cluster label
    assert root.group_labels(labels) == {"alertname": "A", "node": "n1"}
    assert root.group_key(root.group_labels(labels)) == '{}:{alertname="A",node="n1"}'
    every = root.routes[2]
    assert every.group_labels(labels) == labels
    assert every.key == '{}/{severity=~"critical|warning"}'


def test_no_route_routes_nowhere(tmp_path: Path) -> None:
    text = '[[receiver]]\nname = "a"\ntype = "webhook"\nurl = "http://x/"\n'
    routing = load_routing(write(tmp_path, text))
    assert routing.route is None
    assert routing.match({"alertname": "A"}) == []
    assert routing.routes() == []
    assert list(routing.receivers) == ["a"]


def test_siblings_with_the_same_matchers_get_distinct_keys(tmp_path: Path) -> None:
    text = TREE.replace("matchers = ['team=\"gpu-ops\"']", "matchers = ['severity=\"critical\"']")
    routing = load_routing(write(tmp_path, text))
    keys = [r.key for r in routing.routes()]
    assert len(keys) == len(set(keys))


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    text = """
colour = "blue"
[route]
receiver = "nobody"
group_wait = "soon"
group_interval = "0s"
matchers = ['a="b"']
[[route.routes]]
receiver = "team"
[[route.routes]]
matchers = ['severity="critical"', 'rack=~"(a"', 'oops']
match = { severity = "critical" }
group_by = ["...", "node"]
continue = "yes"
  [[route.routes.routes]]
  receiver = "ghost"
  repeat_interval = -5
[[receiver]]
name = "team"
type = "webhook"
url = "http://127.0.0.1:9/"
[[receiver]]
name = "team"
type = "slack"
[[receiver]]
name = "x"
type = "carrier-pigeon"
[[receiver]]
name = "y"
type = "webhook"
urll = "http://typo/"
[[receiver]]
type = "email"
[[inhibit]]
target_matchers = ['scope="gpu"']
equal = ["node", "bad-label"]
sauce = 1
"""
    path = write(tmp_path, text)
    found = problems(tmp_path, text)
    src = str(path)
    assert all(p.startswith(f"{src}: ") for p in found)
    assert all("\n" not in p for p in found)
    expected = [
        "colour: unknown key; expected one of: route, receiver, inhibit",
        "receiver[1].name: receiver 'team' is defined twice; names are unique",
        "receiver[2].type: expected one of: webhook, alertmanager, pagerduty, slack, teams, "
        "opsgenie, email, exec (got 'carrier-pigeon')",
        "receiver[3].urll: unknown field",
        "receiver[4].name: missing required field",
        "inhibit[0].sauce: unknown key; expected one of: name, source_matchers, "
        "target_matchers, equal",
        "inhibit[0].source_matchers: missing; expected at least one matcher",
        "inhibit[0].equal[1]: expected a label name [A-Za-z_][A-Za-z0-9_]* (got 'bad-label')",
        "route.receiver: no [[receiver]] named 'nobody' (receivers: team)",
        'route.group_wait: expected a duration such as "30s", "5m", "1h30m" or a number of '
        "seconds (got 'soon')",
        "route.group_interval: expected a duration above zero",
        "route: the root route takes every alert: no matchers, no continue",
        "route.routes[1].match: unknown key; use matchers = ['name=\"value\"']",
        'route.routes[1].group_by: "..." (every label) cannot be combined with other labels',
        "route.routes[1].matchers[1]: invalid regular expression '(a': missing ), unterminated "
        "subpattern at position 0 (got 'rack=~\"(a\"')",
        'route.routes[1].matchers[2]: expected a matcher such as severity="critical" '
        "(operators = != =~ !~) (got 'oops')",
        "route.routes[1].continue: expected true or false (got 'yes')",
        "route.routes[1].routes[0].receiver: no [[receiver]] named 'ghost' (receivers: team)",
        'route.routes[1].routes[0].repeat_interval: expected a duration such as "30s", "5m", '
        '"1h30m" or a number of seconds, 0 or more (got -5)',
    ]
    assert sorted(p.removeprefix(f"{src}: ") for p in found) == sorted(expected)


def test_toml_and_file_errors(tmp_path: Path) -> None:
    bad = problems(tmp_path, '[route]\nreceiver = "a\n')
    assert len(bad) == 1
    assert bad[0].startswith(f"{tmp_path / 'routing.toml'}:2:")
    assert "invalid TOML" in bad[0]
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_routing(tmp_path / "missing.toml")
    assert problems(tmp_path, "route = 5\n") == [
        f"{tmp_path / 'routing.toml'}: route: expected a table [route]"
    ]
    assert problems(tmp_path, "[route]\n") == [
        f"{tmp_path / 'routing.toml'}: route.receiver: missing; the root route needs a receiver"
    ]
    assert problems(tmp_path, "receiver = 5\n") == [
        f"{tmp_path / 'routing.toml'}: receiver: expected [[receiver]] tables"
    ]


def test_an_alertmanager_receiver_needs_repeats_within_its_resolve_timeout(
    tmp_path: Path,
) -> None:
    am = '[[receiver]]\nname = "am"\ntype = "alertmanager"\n'
    hook = '[[receiver]]\nname = "hook"\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
    src = tmp_path / "routing.toml"
    why = "for alertmanager receiver 'am', which resolves a pushed alert not pushed again within 1h"
    # The default repeat_interval (4h) is too long; said once, at the route that set it.
    assert problems(tmp_path, f'[route]\nreceiver = "am"\n[[route.routes]]\n{am}') == [
        f"{src}: route.repeat_interval: expected less than 1h {why} (got 4h, inherited)"
    ]
    tree = """
[route]
receiver = "hook"
[[route.routes]]
matchers = ['severity="critical"']
receiver = "am"
repeat_interval = "5m"
  [[route.routes.routes]]
  matchers = ['rack="a"']
  repeat_interval = "1h"
[[route.routes]]
receiver = "am"
"""
    assert problems(tmp_path, tree + am + hook) == [
        f"{src}: route.routes[0].routes[0].repeat_interval: expected less than 1h {why} (got 1h)",
        f"{src}: route.routes[1].repeat_interval: expected less than 1h {why} (got 4h, inherited)",
    ]
    fixed = tree.replace('"1h"', '"59m"') + 'repeat_interval = "10m"\n'
    # A repeat_interval that does not parse is reported once, for what it is.
    assert problems(tmp_path, f'[route]\nreceiver = "am"\nrepeat_interval = "soon"\n{am}') == [
        f'{src}: route.repeat_interval: expected a duration such as "30s", "5m", "1h30m" '
        "or a number of seconds (got 'soon')"
    ]
    routing = load_routing(write(tmp_path, fixed + am + hook))
    assert [r.repeat_interval for r in routing.routes()] == [4 * 3600, 300, 59 * 60, 600]
