"""Rule files: TOML ``[[rule]]`` tables, checked key by key before anything runs.

Every problem is reported, each on one line naming the file, the rule and the key
(``gpu.toml: rule[3] GpuHot.expr: column 9: unknown name 'temp' (...)``), so
``telemetryd alerts check-rules DIR`` fixes a whole directory in one pass, and an
aggregator never starts with a rule that cannot be evaluated.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from telemetryd.alerting.durations import parse_duration
from telemetryd.alerting.expr import Expr, ExprError, Names, Window, compile_expr
from telemetryd.alerting.model import SEVERITIES, Severity
from telemetryd.codec import struct_fields
from telemetryd.errors import ConfigError
from telemetryd.model import AgentStats, Event, Gpu, Host

Scope = Literal["gpu", "node", "event", "group", "aggregator", "job"]
SCOPES: tuple[Scope, ...] = ("gpu", "node", "event", "group", "aggregator", "job")
_RULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_KEYS = {
    "name", "scope", "expr", "resolve", "value", "for", "keep_firing_for", "severity",
    "group_by", "labels", "annotations",
}  # fmt: skip
RESERVED_LABELS = {"alertname", "severity", "scope", "cluster", "node", "gpu", "uuid", "xid"}


def _fields(struct: type) -> frozenset[str]:
    return frozenset(f.name for f in struct_fields(struct))


_IDENTITY = frozenset({"node", "cluster"})
_GPU_NAMES = Names(
    plain=(_fields(Gpu) - {"mig", "processes"}) | _IDENTITY,
    dotted={},
    hint="expected a GPU field of the report such as temp_c, power_w, ecc_dbe_volatile",
)
_NODE_NAMES = Names(
    plain=frozenset({
        "state", "silent_s", "interval_s", "gpus", "gpus_failed", "gpus_expected",
        "seq_missing", "skew_s", "reports",
    }) | _IDENTITY,
    dotted={"agent": _fields(AgentStats), "host": _fields(Host)},
    hint="expected state, silent_s, interval_s, gpus, gpus_failed, gpus_expected, "
    "seq_missing, skew_s, reports, agent.<field> or host.<field>",
)  # fmt: skip
_EVENT_NAMES = Names(
    plain=_fields(Event) | _IDENTITY,
    dotted={},
    windows=False,
    hint="expected an event field: kind, code, severity, name, action, message, gpu_index, uuid",
)
_GROUP_NAMES = Names(
    plain=frozenset({"nodes_total", "gpus_total"}),
    dotted={},
    group=True,
    windows=False,
    inner=_GPU_NAMES,
    nodes=_NODE_NAMES,
    hint="expected nodes_total, gpus_total or an aggregate such as sum(power_w)",
)
_AGGREGATOR_NAMES = Names(
    plain=frozenset({
        "mqtt_connected", "broker_dropped", "wal_bytes", "sink_lag_bytes", "sinks_retrying",
        "deadletters",
    }),
    dotted={},
    hint="expected mqtt_connected, broker_dropped, wal_bytes, sink_lag_bytes, sinks_retrying"
    " or deadletters",
)  # fmt: skip
_JOB_NAMES = Names(
    plain=frozenset({
        "job", "kind", "cluster", "nodes", "gpus", "util_pct", "util_max_pct", "power_w",
        "energy_j", "age_s", "mem_used_bytes",
    }),
    dotted={},
    windows=False,
    hint="expected job, kind, cluster, nodes, gpus, util_pct, util_max_pct, power_w, "
    "energy_j, age_s or mem_used_bytes",
)  # fmt: skip
SCOPE_NAMES: dict[Scope, Names] = {
    "gpu": _GPU_NAMES,
    "node": _NODE_NAMES,
    "event": _EVENT_NAMES,
    "group": _GROUP_NAMES,
    "aggregator": _AGGREGATOR_NAMES,
    "job": _JOB_NAMES,
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One checked, compiled rule."""

    name: str
    scope: Scope
    expr: Expr
    severity: Severity
    resolve: Expr | None = None  # event rules: evaluated in gpu scope (or node scope)
    value: Expr | None = None
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    group_by: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = ""  # file it came from
    windows: tuple[Window, ...] = ()  # every rate/increase look-back (set in __post_init__)

    def __post_init__(self) -> None:
        extra = self.resolve.windows if self.resolve is not None else ()
        object.__setattr__(self, "windows", self.expr.windows + extra)


DEFAULT_PACK = "default rule pack"


def default_rules() -> str:
    """The text of the shipped rule pack."""
    pack = resources.files("telemetryd.alerting").joinpath("rules/default.toml")
    return pack.read_text(encoding="utf-8")


def load_rules(
    paths: list[Path], *, default_pack: bool = False, disabled: Iterable[str] = ()
) -> list[Rule]:
    """Every rule of the given files (and the shipped pack); ConfigError lists all problems.

    A site tunes the shipped pack without forking it: a rule in its own files with the
    name of a shipped rule replaces that rule, and ``disabled`` names shipped rules to
    leave out. Names must otherwise be unique.
    """
    problems: list[str] = []
    shipped: dict[str, Rule] = {}
    if default_pack:
        shipped = {r.name: r for r in parse_rules(default_rules(), DEFAULT_PACK, problems)}
    unknown = [name for name in disabled if shipped.pop(name, None) is None]
    if default_pack:
        problems.extend(
            f"disabled_rules: {name!r} is not a rule of the default pack (see docs/alerts.md)"
            for name in unknown
        )
    own: dict[str, Rule] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        for rule in parse_rules(text, str(path), problems):
            if rule.name in own:
                problems.append(
                    f"{path}: rule {rule.name}: name already used in {own[rule.name].source}"
                    " (rule names must be unique)"
                )
                continue
            own[rule.name] = rule
    if problems:
        raise ConfigError(problems)
    return [r for name, r in shipped.items() if name not in own] + list(own.values())


def rule_files(directory: Path) -> list[Path]:
    """The ``*.toml`` files of a rules directory, in name order; a bad directory raises."""
    if not directory.is_dir():
        raise ConfigError([f"{directory}: not a directory (expected a directory of *.toml rules)"])
    return sorted(p for p in directory.iterdir() if p.suffix == ".toml" and p.is_file())


def parse_rules(text: str, source: str, problems: list[str]) -> list[Rule]:
    """The rules of one file; problems are appended, good rules returned."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{source}: invalid TOML: {exc}")
        return []
    extra = set(data) - {"rule"}
    problems.extend(
        f"{source}: {key}: unknown table (expected [[rule]] tables only)" for key in sorted(extra)
    )
    raw = data.get("rule", [])
    if not isinstance(raw, list):
        problems.append(f"{source}: rule: expected [[rule]] tables")
        return []
    out = []
    for i, item in enumerate(raw):
        rule = _parse_rule(item, f"{source}: rule[{i}]", problems)
        if rule is not None:
            out.append(rule)
    return out


def _parse_rule(item: dict[str, Any], where: str, problems: list[str]) -> Rule | None:
    before = len(problems)
    name = item.get("name")
    if not isinstance(name, str) or not _RULE_NAME.match(name):
        problems.append(f"{where}.name: expected a name of letters, digits and _ (got {name!r})")
        name = "?"
    else:
        where = f"{where} {name}"

    def bad(key: str, message: str) -> None:
        problems.append(f"{where}.{key}: {message}")

    for key in sorted(set(item) - _KEYS):
        bad(key, f"unknown key (expected one of: {', '.join(sorted(_KEYS))})")
    scope = item.get("scope", "gpu")
    if scope not in SCOPES:
        bad("scope", f"expected one of {', '.join(SCOPES)} (got {scope!r})")
        return None
    severity = item.get("severity")
    if severity not in SEVERITIES:
        bad("severity", f"expected one of {', '.join(SEVERITIES)} (got {severity!r})")
    names = SCOPE_NAMES[scope]

    def expression(key: str, scope_names: Names, required: bool) -> Expr | None:
        text = item.get(key)
        if text is None:
            if required:
                bad(key, "missing (expected the condition as an expression)")
            return None
        if not isinstance(text, str):
            bad(key, f"expected an expression string (got {text!r})")
            return None
        try:
            return compile_expr(text, scope_names)
        except ExprError as exc:
            bad(key, str(exc))
            return None

    expr = expression("expr", names, True)
    resolve_names = names if scope != "event" else _GPU_NAMES
    resolve = expression("resolve", resolve_names, False)
    value = expression("value", names, False)
    durations: dict[str, float] = {}
    for key in ("for", "keep_firing_for"):
        try:
            durations[key] = parse_duration(item.get(key, 0))
        except ValueError as exc:
            bad(key, str(exc))
            durations[key] = 0.0
        if durations[key] < 0:
            bad(key, "expected a duration of 0s or more")
    if scope == "event" and durations["for"]:
        bad("for", "not used by event rules (an event fires at once); remove it")
    if scope == "event" and resolve is None and durations["keep_firing_for"] <= 0:
        bad("resolve", "an event rule needs resolve (in GPU scope) or keep_firing_for > 0")
    group_by = item.get("group_by", [] if scope != "group" else ["cluster"])
    if scope != "group" and "group_by" in item:
        bad("group_by", "only group rules have group_by")
    if not isinstance(group_by, list) or not all(
        isinstance(g, str) and _LABEL_NAME.match(g) for g in group_by
    ):
        bad("group_by", f"expected a list of label names (got {group_by!r})")
        group_by = []
    labels = _string_map(item.get("labels", {}), "labels", bad)
    for key in sorted(set(labels) & RESERVED_LABELS - {"severity"}):
        bad(f"labels.{key}", "set by the engine; choose another label name")
    if "severity" in labels:
        bad("labels.severity", "use the rule's severity key")
    annotations = _string_map(item.get("annotations", {}), "annotations", bad)
    if "summary" not in annotations:
        bad("annotations.summary", "missing (expected a one-line summary for the on-call)")
    if len(problems) > before or expr is None or severity not in SEVERITIES:
        return None
    return Rule(
        name=name, scope=scope, expr=expr, severity=_severity(severity), resolve=resolve,
        value=value,
        for_s=durations["for"], keep_firing_for_s=durations["keep_firing_for"],
        group_by=tuple(group_by), labels=labels, annotations=annotations,
        source=where.split(":")[0],
    )  # fmt: skip


def _string_map(value: object, key: str, bad: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        bad(key, f"expected a table of strings (got {value!r})")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if not _LABEL_NAME.match(k):
            bad(f"{key}.{k}", "expected a name of letters, digits and _")
        elif not isinstance(v, str):
            bad(f"{key}.{k}", f"expected a string (got {v!r})")
        else:
            out[k] = v
    return out


def _severity(value: object) -> Severity:
    for severity in SEVERITIES:
        if value == severity:
            return severity
    raise ValueError(value)
