"""The shipped rule pack is valid per the alerting design, and docs/alerts.md documents it.

Checked without the engine's parser (that one also loads the pack in its own tests): the
TOML is read with tomllib and every expression with ``ast``, so a name that no report
carries, a clock-event reason the agent never sends or an XID outside the catalogue is
caught here, where the pack is written. Each rule must have a section in docs/alerts.md
whose heading gives the anchor its ``runbook_url`` names, with its scope, severity and
condition as in the TOML, so the page an on-call person opens says what fired.
"""

from __future__ import annotations

import ast
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

import telemetryd
from collectors.nvml_read import RECOVERY_ACTIONS
from telemetryd.alerting.model import SEVERITIES
from telemetryd.clock_events import CLOCK_EVENTS
from telemetryd.model import AgentStats, Event, Gpu, GpuError, Host
from telemetryd.xid import XIDS

ROOT = Path(__file__).resolve().parents[2]
PACK = Path(telemetryd.__file__).resolve().parent / "alerting" / "rules" / "default.toml"
DOC = ROOT / "docs" / "alerts.md"
EXAMPLE_ROUTING = ROOT / "examples" / "alerting.toml"

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
CAMEL = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)*\Z")
DURATION = re.compile(r"^(?=\d)(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z")
SCOPES = ("gpu", "node", "event", "group", "aggregator", "job")
KEYS = {
    "name", "scope", "expr", "resolve", "value", "for", "keep_firing_for", "severity",
    "group_by", "labels", "annotations",
}  # fmt: skip
ANNOTATIONS = ("summary", "description", "runbook_url")

# Names an expression may use, per scope (notes/alerts-spec.md, "Scopes").
_LABELS = {"cluster", "node"}
GPU_NAMES = set(Gpu.__struct_fields__) | _LABELS
NODE_NAMES = {
    "state", "silent_s", "interval_s", "gpus", "gpus_failed", "gpus_expected",
    "seq_missing", "skew_s",
} | _LABELS  # fmt: skip
EVENT_NAMES = {"kind", "code", "severity", "name", "action", "message"} | _LABELS
AGGREGATOR_NAMES = {
    "mqtt_connected", "broker_dropped", "wal_bytes", "sink_lag_bytes", "sinks_retrying",
    "deadletters",
}  # fmt: skip
JOB_NAMES = {
    "job", "kind", "cluster", "nodes", "gpus", "util_pct", "util_max_pct", "power_w",
    "energy_j", "age_s", "mem_used_bytes",
}  # fmt: skip
COUNTER_FUNCTIONS = {"rate", "increase", "changes"}
PLAIN_FUNCTIONS = {"abs", "min", "max"}
AGGREGATES = {"sum", "avg", "min", "max", "count", "share", "nodes"}


def _scalar_fields(struct: type) -> set[str]:
    """Fields of a wire struct that hold one value (not a list or a mapping)."""
    hints = typing.get_type_hints(struct)
    out = set()
    for name in struct.__struct_fields__:  # type: ignore[attr-defined]
        args = typing.get_args(hints[name]) or (hints[name],)
        if not any(typing.get_origin(a) in (list, dict) for a in args):
            out.add(name)
    return out


ATTRIBUTES = {"agent": set(AgentStats.__struct_fields__), "host": _scalar_fields(Host)}
EVENT_KINDS = set(typing.get_args(typing.get_type_hints(Event)["kind"]))
ERROR_CODES = set(typing.get_args(typing.get_type_hints(GpuError)["code"]))
# The strings a rule may compare each field with: what the agent and aggregator send.
STRINGS = {
    "kind": EVENT_KINDS,
    "error": ERROR_CODES,
    "recovery_action": set(RECOVERY_ACTIONS.values()),
    "state": {"online", "offline", "silent", "unknown"},
    "clock_event_reasons": set(CLOCK_EVENTS.values()),
}


def load_pack() -> list[dict[str, Any]]:
    with PACK.open("rb") as f:
        data = tomllib.load(f)
    assert set(data) == {"rule"}, f"{PACK}: only [[rule]] tables expected, got {sorted(data)}"
    rules: list[dict[str, Any]] = data["rule"]
    return rules


def commented_examples() -> list[dict[str, Any]]:
    """The rules shipped commented out (site-specific examples), uncommented."""
    text = PACK.read_text(encoding="utf-8")
    blocks = re.findall(r"^# \[\[rule\]\]\n(?:#.*\n?)*", text, flags=re.MULTILINE)
    lines = [
        line[2:] if line.startswith("# ") else line[1:] for b in blocks for line in b.splitlines()
    ]
    return list(tomllib.loads("\n".join(lines)).get("rule", []))


RULES = load_pack()
EXAMPLES = commented_examples()


def seconds(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        assert value >= 0
        return float(value)
    assert isinstance(value, str), f"duration must be a string or seconds, got {value!r}"
    m = DURATION.match(value)
    assert m, f"bad duration {value!r}: expected like '30s', '5m', '1h30m'"
    h, mi, s = (int(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


class ExprChecker:
    """Walks one expression's AST and fails on anything the design does not allow."""

    def __init__(self, scope: str, rule: dict[str, Any], key: str) -> None:
        self.scope = scope
        self.where = f"rule {rule['name']}, {key}"
        self.group_by = set(rule.get("group_by", []))

    def names(self, scope: str) -> set[str]:
        return {
            "gpu": GPU_NAMES,
            "node": NODE_NAMES,
            "event": EVENT_NAMES,
            "aggregator": AGGREGATOR_NAMES,
            "job": JOB_NAMES,
            "group": self.group_by,
        }[scope]

    def check(self, text: str) -> None:
        tree = ast.parse(text, mode="eval")
        self.visit(tree.body, self.scope)

    def fail(self, node: ast.AST, why: str) -> None:
        pytest.fail(f"{self.where}: {why}: {ast.unparse(node)}")

    def visit(self, node: ast.AST, scope: str) -> None:
        match node:
            case ast.Constant(value=v) if v is None or isinstance(v, bool | int | float | str):
                pass
            case ast.Tuple(elts=elts):
                for e in elts:
                    self.visit(e, scope)
            case ast.Name(id=name):
                if name not in self.names(scope):
                    self.fail(node, f"name {name!r} is not available in {scope} scope")
            case ast.Attribute(value=ast.Name(id=base), attr=attr) if scope == "node":
                if attr not in ATTRIBUTES.get(base, set()):
                    self.fail(node, f"{base}.{attr} is not a scalar field of {base}")
            case ast.BinOp(op=ast.Add() | ast.Sub() | ast.Mult() | ast.Div() | ast.Mod()):
                self.visit(node.left, scope)
                self.visit(node.right, scope)
            case ast.UnaryOp(op=ast.Not() | ast.USub() | ast.UAdd(), operand=operand):
                self.visit(operand, scope)
            case ast.BoolOp(values=values):
                for operand in values:
                    self.visit(operand, scope)
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                self.compare(node, left, ops, comparators, scope)
            case ast.Call(func=ast.Name(id=fn), args=args, keywords=[]):
                self.call(node, fn, args, scope)
            case _:
                self.fail(node, "not allowed in an expression")

    def compare(
        self,
        node: ast.AST,
        left: ast.expr,
        ops: list[ast.cmpop],
        rights: list[ast.expr],
        scope: str,
    ) -> None:
        operands = [left, *rights]
        for op, a, b in zip(ops, operands[:-1], operands[1:], strict=True):
            if isinstance(op, ast.In | ast.NotIn) and isinstance(b, ast.Name):
                self.strings_for(b.id, a)
            elif isinstance(a, ast.Name):
                self.strings_for(a.id, b)
                if a.id == "code" and scope == "event":
                    self.xid_codes(b)
        for operand in operands:
            self.visit(operand, scope)

    def strings_for(self, field: str, other: ast.expr) -> None:
        """A string a field is compared with must be one the field can hold."""
        allowed = STRINGS.get(field)
        if allowed is None:
            return
        consts = other.elts if isinstance(other, ast.Tuple) else [other]
        for c in consts:
            if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value not in allowed:
                self.fail(c, f"{field} never holds {c.value!r} (expected one of {sorted(allowed)})")

    def xid_codes(self, other: ast.expr) -> None:
        consts = other.elts if isinstance(other, ast.Tuple) else [other]
        for c in consts:
            if isinstance(c, ast.Constant) and c.value not in XIDS:
                self.fail(c, f"XID {c.value!r} is not in telemetryd/xid.py's catalogue")

    def call(self, node: ast.AST, fn: str, args: list[ast.expr], scope: str) -> None:
        if fn in COUNTER_FUNCTIONS:
            if len(args) != 2 or not isinstance(args[1], ast.Constant):
                self.fail(node, f"{fn}(counter, 'window') takes a name and a duration")
            seconds(args[1].value)  # type: ignore[attr-defined]
            self.visit(args[0], scope)
        elif scope == "group" and fn in AGGREGATES and len(args) == 1:
            self.visit(args[0], "node" if fn == "nodes" else "gpu")
        elif fn in PLAIN_FUNCTIONS and args:
            for a in args:
                self.visit(a, scope)
        else:
            self.fail(node, f"function {fn} with {len(args)} arguments is not available")


def check_rule(rule: dict[str, Any]) -> None:
    name = rule.get("name")
    assert isinstance(name, str) and NAME.match(name), f"bad rule name {name!r}"
    assert CAMEL.match(name), f"rule {name}: names are CamelCase"
    assert set(rule) <= KEYS, f"rule {name}: unknown keys {sorted(set(rule) - KEYS)}"
    scope = rule.get("scope")
    assert scope in SCOPES, f"rule {name}: scope {scope!r}, expected one of {SCOPES}"
    assert rule.get("severity") in SEVERITIES, f"rule {name}: severity {rule.get('severity')!r}"
    for key in ("for", "keep_firing_for"):
        if key in rule:
            seconds(rule[key])
    if scope == "event":
        assert "resolve" in rule or seconds(rule.get("keep_firing_for", 0)) > 0, (
            f"rule {name}: an event rule needs resolve or keep_firing_for > 0"
        )
        assert "for" not in rule, f"rule {name}: an event fires at the event, 'for' means nothing"
    if scope == "group":
        assert rule.get("group_by"), f"rule {name}: a group rule needs group_by"
    else:
        assert "group_by" not in rule, f"rule {name}: group_by is for group scope only"
    ExprChecker(scope, rule, "expr").check(rule["expr"])
    if "value" in rule:
        ExprChecker(scope, rule, "value").check(rule["value"])
    if "resolve" in rule:  # an event rule's resolve looks at the same GPU in later reports
        ExprChecker("gpu" if scope == "event" else scope, rule, "resolve").check(rule["resolve"])
    labels = rule.get("labels", {})
    assert all(NAME.match(k) and isinstance(v, str) for k, v in labels.items())
    check_annotations(rule)


def placeholders(scope: str, rule: dict[str, Any]) -> set[str]:
    """The labels an alert of this scope carries (notes/alerts-spec.md), plus value."""
    by_scope = {
        "gpu": {"cluster", "node", "gpu", "uuid"},
        "event": {"cluster", "node", "gpu", "uuid", "xid"},
        "node": {"cluster", "node"},
        "group": set(rule.get("group_by", [])),
        "aggregator": set(),
        "job": {"cluster", "job", "user", "pod", "namespace"},
    }
    return (
        by_scope[scope] | {"alertname", "severity", "scope", "value"} | set(rule.get("labels", {}))
    )


def check_annotations(rule: dict[str, Any]) -> None:
    name, annotations = rule["name"], rule.get("annotations", {})
    for key in ANNOTATIONS:
        assert str(annotations.get(key, "")).strip(), f"rule {name}: annotations.{key} is empty"
    allowed = placeholders(rule["scope"], rule)
    for key in ("summary", "description"):
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", annotations[key]))
        assert used <= allowed, f"rule {name}: {key} names {sorted(used - allowed)}"
    if rule["scope"] != "event" or "xid" not in rule["expr"]:
        assert "{{ xid }}" not in annotations["summary"]
    assert annotations["runbook_url"] == "{{ runbook_base }}#" + name.lower(), (
        f"rule {name}: runbook_url must be '{{{{ runbook_base }}}}#{name.lower()}'"
    )


@pytest.mark.parametrize("rule", RULES, ids=lambda r: str(r.get("name")))
def test_each_rule_is_valid(rule: dict[str, Any]) -> None:
    check_rule(rule)


@pytest.mark.parametrize("rule", EXAMPLES, ids=lambda r: str(r.get("name")))
def test_commented_examples_are_valid_once_uncommented(rule: dict[str, Any]) -> None:
    check_rule(rule)


def test_names_are_unique_and_examples_are_shipped() -> None:
    names = [r["name"] for r in RULES + EXAMPLES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert [r["name"] for r in EXAMPLES] == ["ClusterPowerOverBudget"]


def test_pack_covers_every_scope_and_the_critical_xids() -> None:
    assert {r["scope"] for r in RULES} == set(SCOPES)
    xids = set()
    for r in RULES:
        if r["scope"] == "event" and "xid" in r["expr"]:
            xids |= {int(c) for c in re.findall(r"\b\d+\b", r["expr"])}
    reference_critical = {48, 62, 64, 74, 79, 95, 109, 119, 120, 140, 143, 150}
    assert reference_critical | {63, 92, 94, 144, 145, 146, 147, 148, 149} <= xids
    assert {c for c, x in XIDS.items() if x.severity == "critical"} <= xids


# --- docs/alerts.md ---------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def doc_part(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+?)\s*$", text, flags=re.MULTILINE)
    found = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert title in found, f"docs/alerts.md has no '## {title}' section"
    return found[title]


def rule_sections(title: str) -> dict[str, str]:
    parts = re.split(r"^### (.+?)\s*$", doc_part(title), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def flat(text: str) -> str:
    return " ".join(text.split())


def test_every_rule_has_a_section_and_no_section_is_stale() -> None:
    sections = rule_sections("The rule pack")
    assert set(sections) == {r["name"] for r in RULES}
    assert set(rule_sections("Site-specific examples")) == {r["name"] for r in EXAMPLES}


def test_anchors_are_unique_in_the_page() -> None:
    headings = re.findall(r"^#{1,6} (.+?)\s*$", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    slugs = [slug(h) for h in headings]
    for rule in RULES + EXAMPLES:
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert slugs.count(anchor) == 1, (
            f"{rule['name']}: anchor #{anchor} occurs {slugs.count(anchor)} times"
        )


@pytest.mark.parametrize("rule", RULES + EXAMPLES, ids=lambda r: str(r["name"]))
def test_section_states_scope_severity_and_condition(rule: dict[str, Any]) -> None:
    part = "Site-specific examples" if rule in EXAMPLES else "The rule pack"
    section = rule_sections(part)[rule["name"]]
    assert f"- **Scope:** `{rule['scope']}`" in section
    assert f"- **Severity:** {rule['severity']}" in section
    for key in ("expr", "resolve"):
        if key in rule:
            assert flat(rule[key]) in flat(section.replace("`", " ")), f"{key} not in the section"
    for heading in ("- **Why:**", "- **Runbook:**"):
        assert heading in section


def test_example_routing_file_names_only_shipped_alerts() -> None:
    """examples/alerting.toml inhibits and routes by names the pack really has."""
    with EXAMPLE_ROUTING.open("rb") as f:
        routing = tomllib.load(f)
    known = {r["name"] for r in RULES}
    matchers = [
        m
        for rule in routing.get("inhibit", [])
        for m in rule.get("source_matchers", []) + rule.get("target_matchers", [])
    ]
    for m in matchers:
        key, op, value = re.match(r'^(\w+)\s*(=~|!~|!=|=)\s*"(.*)"\Z', m).groups()  # type: ignore[union-attr]
        if key == "alertname":
            names = set(value.split("|")) if "~" in op else {value}
            assert names <= known, f"{m}: {sorted(names - known)} not in the rule pack"
    assert {r["name"] for r in routing["receiver"]} >= {"default"}


def test_doc_shows_the_example_routing_file_as_shipped() -> None:
    example = EXAMPLE_ROUTING.read_text(encoding="utf-8").rstrip("\n")
    assert f"```toml\n{example}\n```" in DOC.read_text(encoding="utf-8")


def test_links_within_the_page_and_to_other_docs_resolve() -> None:
    text = DOC.read_text(encoding="utf-8")
    headings = re.findall(r"^#{1,6} (.+?)\s*$", text, re.MULTILINE)
    anchors = {slug(h.replace("`", "")) for h in headings}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path, _, anchor = target.partition("#")
        if path:
            assert (DOC.parent / path).exists(), f"link to a missing file: {target}"
        elif anchor:
            assert anchor in anchors, f"link to a missing section: #{anchor}"
