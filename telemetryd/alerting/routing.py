"""The routing file: who hears about which alert, grouped how, and how often.

The shape is Alertmanager's (a ``[route]`` tree of matchers, ``[[receiver]]`` tables,
``[[inhibit]]`` rules) so a site's on-call design carries over unchanged. Loading checks
every key and reports every problem at once, one line each naming the file, the key path
(``route.routes[1].matchers[0]``) and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.hooks import MODULES
from exporters.hooks.alertmanager import RESOLVE_TIMEOUT_S
from exporters.hooks.config import AlertmanagerReceiver, Receiver
from telemetryd.alerting.durations import format_duration, parse_duration
from telemetryd.alerting.matchers import LABEL_NAME, Matcher, matches_all, parse_matcher
from telemetryd.alerting.matchers import quote as quote_value
from telemetryd.codec import DecodeError, convert
from telemetryd.configload import read_toml
from telemetryd.errors import ConfigError

Problem = Callable[[str, str], None]  # (key path, what is wrong)
ALL_LABELS = "..."  # group_by entry meaning "every label": one group per alert
DEFAULT_GROUP_BY = ("alertname", "cluster", "node")
DEFAULTS = {"group_wait": 0.0, "group_interval": 30.0, "repeat_interval": 4 * 3600.0}
_ROUTE_KEYS = (
    "receiver", "group_by", "group_wait", "group_interval", "repeat_interval",
    "matchers", "continue", "routes",
)  # fmt: skip
_INHIBIT_KEYS = ("name", "source_matchers", "target_matchers", "equal")
_TOP_KEYS = ("route", "receiver", "inhibit")
_HINTS = {
    "match": "use matchers = ['name=\"value\"']",
    "match_re": "use matchers = ['name=~\"regex\"']",
    "source_match": "use source_matchers",
    "source_match_re": "use source_matchers",
    "target_match": "use target_matchers",
    "target_match_re": "use target_matchers",
    "receivers": "receivers are [[receiver]] tables",
    "inhibit_rules": "inhibit rules are [[inhibit]] tables",
}


@dataclass(frozen=True, eq=False)
class Route:
    """One node of the routing tree, with what it inherited already filled in."""

    path: str  # where it is in the file: route, route.routes[0], ...
    key: str  # Alertmanager-style route key: {}/{severity="critical"}
    receiver: str
    group_by: tuple[str, ...] | None  # None: every label
    group_wait: float
    group_interval: float
    repeat_interval: float
    matchers: tuple[Matcher, ...]
    continue_: bool
    routes: tuple[Route, ...]

    def match(self, labels: Mapping[str, str]) -> list[Route]:
        """The routes an alert goes to, found as Alertmanager finds them.

        Children are tried in order; the first that matches takes the alert unless it has
        ``continue``; when no child takes it, this route does.
        """
        if not matches_all(self.matchers, labels):
            return []
        found: list[Route] = []
        for child in self.routes:
            matched = child.match(labels)
            found.extend(matched)
            if matched and not child.continue_:
                break
        return found or [self]

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        """The labels that pick an alert's group here (absent ones are left out)."""
        if self.group_by is None:
            return dict(labels)
        return {name: labels[name] for name in self.group_by if name in labels}

    def group_key(self, group_labels: Mapping[str, str]) -> str:
        """A stable name of one group of this route (Alertmanager's ``groupKey``)."""
        inner = ",".join(f"{k}={quote_value(v)}" for k, v in sorted(group_labels.items()))
        return f"{self.key}:{{{inner}}}"

    def walk(self) -> Iterator[Route]:
        """This route and every route below it, depth first."""
        yield self
        for child in self.routes:
            yield from child.walk()


@dataclass(frozen=True)
class InhibitRule:
    """While a source alert fires, target alerts with the same ``equal`` labels are muted."""

    name: str
    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...]


@dataclass(frozen=True)
class Routing:
    """A loaded routing file; with no ``[route]``, alerts go nowhere (they are still listed)."""

    source: str
    route: Route | None
    receivers: dict[str, Receiver]
    inhibit_rules: tuple[InhibitRule, ...]

    def match(self, labels: Mapping[str, str]) -> list[Route]:
        """The routes an alert goes to (none when there is no routing tree)."""
        return self.route.match(labels) if self.route is not None else []

    def routes(self) -> list[Route]:
        """Every route of the tree."""
        return list(self.route.walk()) if self.route is not None else []


EMPTY = Routing(source="", route=None, receivers={}, inhibit_rules=())


def load_routing(path: str | Path) -> Routing:
    """Read and check a routing file; ConfigError lists every problem."""
    source = str(path)
    data, _ = read_toml(source)
    return parse_routing(data, source)


def parse_routing(data: Mapping[str, Any], source: str = "routing") -> Routing:
    """Check parsed TOML; ConfigError lists every problem, one line each."""
    problems: list[str] = []

    def problem(key: str, text: str) -> None:
        problems.append(f"{source}: {key}: {text}")

    for key in data:
        if key not in _TOP_KEYS:
            problem(key, _unknown(key, _TOP_KEYS))
    receivers = _receivers(data.get("receiver", []), problem)
    rules = _inhibits(data.get("inhibit", []), problem)
    route = None
    if "route" in data:
        if isinstance(data["route"], dict):
            route = _route(data["route"], "route", None, receivers, problem, set())
        else:
            problem("route", "expected a table [route]")
    if problems:
        raise ConfigError(problems)
    return Routing(source=source, route=route, receivers=receivers, inhibit_rules=rules)


def _unknown(key: str, known: tuple[str, ...]) -> str:
    hint = _HINTS.get(key)
    if hint is None:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
    return f"unknown key; {hint}"


def _tables(
    value: Any, key: str, header: str, problem: Problem
) -> list[tuple[str, dict[str, Any]]]:
    """The tables of an array of tables, with their key paths; a problem for anything else."""
    if not isinstance(value, list):
        problem(key, f"expected [[{header}]] tables")
        return []
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            out.append((f"{key}[{i}]", item))
        else:
            problem(f"{key}[{i}]", f"expected a [[{header}]] table")
    return out


def _receivers(value: Any, problem: Problem) -> dict[str, Receiver]:
    receivers: dict[str, Receiver] = {}
    for key, table in _tables(value, "receiver", "receiver", problem):
        kind = table.get("type")
        if kind not in MODULES:
            choices = ", ".join(MODULES)
            got = f" (got {kind!r})" if kind is not None else ""
            problem(f"{key}.type", f"expected one of: {choices}{got}")
            continue
        try:
            receiver: Receiver = convert(table, Receiver)
        except DecodeError as exc:
            where = f"{key}.{exc.path}" if exc.path else key
            problem(where, exc.problem.replace("object", "table").replace("`str`", "string"))
            continue
        if receiver.name in receivers:
            problem(f"{key}.name", f"receiver {receiver.name!r} is defined twice; names are unique")
            continue
        receivers[receiver.name] = receiver
    return receivers


def _matchers(value: Any, key: str, problem: Problem) -> tuple[Matcher, ...]:
    if not isinstance(value, list):
        problem(key, "expected a list of matchers such as ['severity=\"critical\"']")
        return ()
    out = []
    for i, text in enumerate(value):
        try:
            out.append(parse_matcher(text))
        except ValueError as exc:
            problem(f"{key}[{i}]", str(exc))
    return tuple(out)


def _label_names(value: Any, key: str, problem: Problem, *, allow_all: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problem(key, "expected a list of label names such as ['alertname', 'node']")
        return ()
    for i, name in enumerate(value):
        if not (LABEL_NAME.fullmatch(name) or (allow_all and name == ALL_LABELS)):
            every = ' or "..." for every label' if allow_all else ""
            problem(
                f"{key}[{i}]", f"expected a label name [A-Za-z_][A-Za-z0-9_]*{every} (got {name!r})"
            )
    if allow_all and ALL_LABELS in value and len(value) > 1:
        problem(key, '"..." (every label) cannot be combined with other labels')
    return tuple(value)


def _inhibits(value: Any, problem: Problem) -> tuple[InhibitRule, ...]:
    rules = []
    for key, table in _tables(value, "inhibit", "inhibit", problem):
        for name in table:
            if name not in _INHIBIT_KEYS:
                problem(f"{key}.{name}", _unknown(name, _INHIBIT_KEYS))
        label = table.get("name", key)
        if not isinstance(label, str):
            problem(f"{key}.name", f"expected a string (got {label!r})")
            label = key
        sides = []
        for side in ("source_matchers", "target_matchers"):
            if side not in table:
                problem(f"{key}.{side}", "missing; expected at least one matcher")
            sides.append(_matchers(table.get(side, []), f"{key}.{side}", problem))
            if side in table and isinstance(table[side], list) and not table[side]:
                problem(f"{key}.{side}", "expected at least one matcher (none would match all)")
        equal = _label_names(table.get("equal", []), f"{key}.equal", problem, allow_all=False)
        rules.append(InhibitRule(label, sides[0], sides[1], equal))
    return tuple(rules)


def _check_repeat(
    target: Receiver | None, repeat: float, path: str, table: dict[str, Any], problem: Problem
) -> None:
    """An alertmanager receiver must hear a firing alert again before it resolves it.

    The hook pushes a firing alert with endsAt = now + ``RESOLVE_TIMEOUT_S``; repeating
    less often lets Alertmanager resolve an alert that still fires here. Checked where the
    receiver or the interval is set, so one cause is one line, not one per child route.
    """
    if not isinstance(target, AlertmanagerReceiver) or repeat < RESOLVE_TIMEOUT_S:
        return
    limit = format_duration(RESOLVE_TIMEOUT_S)
    got = format_duration(repeat) + ("" if "repeat_interval" in table else ", inherited")
    problem(
        f"{path}.repeat_interval",
        f"expected less than {limit} for alertmanager receiver {target.name!r}, which "
        f"resolves a pushed alert not pushed again within {limit} (got {got})",
    )


def _route(
    table: dict[str, Any],
    path: str,
    parent: Route | None,
    receivers: Mapping[str, Receiver],
    problem: Problem,
    keys: set[str],
) -> Route:
    """One route and its children; unset settings come from ``parent`` (or the defaults)."""
    for name in table:
        if name not in _ROUTE_KEYS:
            problem(f"{path}.{name}", _unknown(name, _ROUTE_KEYS))
    receiver = table.get("receiver", parent.receiver if parent else "")
    if not isinstance(receiver, str):
        problem(f"{path}.receiver", f"expected a receiver name (got {receiver!r})")
        receiver = ""
    elif "receiver" in table and receiver not in receivers:
        known = ", ".join(receivers) or "none defined"
        problem(f"{path}.receiver", f"no [[receiver]] named {receiver!r} (receivers: {known})")
    elif parent is None and not receiver:
        problem(f"{path}.receiver", "missing; the root route needs a receiver")
    group_by: tuple[str, ...] | None = parent.group_by if parent else DEFAULT_GROUP_BY
    if "group_by" in table:
        group_by = _label_names(table["group_by"], f"{path}.group_by", problem, allow_all=True)
        group_by = None if ALL_LABELS in group_by else group_by
    timing, unparsed = {}, set()
    for name, default in DEFAULTS.items():
        timing[name] = getattr(parent, name) if parent else default
        if name in table:
            try:
                timing[name] = parse_duration(table[name])
            except ValueError as exc:
                problem(f"{path}.{name}", str(exc))
                unparsed.add(name)
            if name != "group_wait" and timing[name] <= 0:
                problem(f"{path}.{name}", "expected a duration above zero")
    set_here = "receiver" in table or "repeat_interval" in table or parent is None
    if set_here and "repeat_interval" not in unparsed:
        _check_repeat(receivers.get(receiver), timing["repeat_interval"], path, table, problem)
    matchers = _matchers(table.get("matchers", []), f"{path}.matchers", problem)
    continue_ = table.get("continue", False)
    if not isinstance(continue_, bool):
        problem(f"{path}.continue", f"expected true or false (got {continue_!r})")
        continue_ = False
    if parent is None and (matchers or continue_):
        problem(path, "the root route takes every alert: no matchers, no continue")
    key = "{}"
    if parent is not None:
        key = parent.key + "/{" + ",".join(str(m) for m in matchers) + "}"
    while key in keys:  # siblings with the same matchers still get groups of their own
        key += f"[{path.rsplit('[', 1)[-1]}"
    keys.add(key)
    route = Route(
        path=path, key=key, receiver=receiver, group_by=group_by, matchers=matchers,
        continue_=continue_, routes=(), **timing,
    )  # fmt: skip
    children = []
    for child_path, child in _tables(
        table.get("routes", []), f"{path}.routes", "route.routes", problem
    ):
        children.append(_route(child, child_path, route, receivers, problem, keys))
    return dataclasses.replace(route, routes=tuple(children))
