"""Rule expressions: a small, safe subset of Python's expression syntax, compiled once.

Operators read rules like ``temp_c >= temp_slowdown_c - 5`` without learning a new
language, and ``ast`` gives exact error positions for free. Nothing is ``eval``'d: the
tree is checked against a whitelist of node types, names and functions, then turned into
closures, so a rule file can never run code.

Absent is not zero. A field the report does not carry is ``None``, and arithmetic or a
comparison with ``None`` is *undefined* (``None`` again): a rule whose inputs are missing
neither fires nor resolves, it keeps its state (a lost GPU reports almost nothing, and
that must not resolve its memory alerts). ``x == None`` and ``x != None``, with the
literal ``None``, are the ways to ask about absence itself. ``and``/``or`` follow
three-valued logic: ``True or undefined`` is True, ``False and undefined`` is False.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from telemetryd.alerting.durations import parse_duration

Value = Any  # float | int | str | bool | None | tuple | list


class ExprError(ValueError):
    """An expression that cannot be used; the message says where and what was expected."""


class Env(Protocol):
    """What an expression reads while it is evaluated (one scope: a GPU, a node, ...)."""

    def name(self, name: str) -> Value:
        """A name's value (None when absent)."""

    def attr(self, base: str, name: str) -> Value:
        """``agent.dropped``, ``host.cpu_pct``."""

    def label(self, name: str) -> Value:
        """A label of the series (``rack`` from node_labels), or None."""

    def window(self, window: Window, fn: str) -> Value:
        """``rate``/``increase``/``changes`` over ``window`` (recorded before evaluation)."""

    def aggregate(self, fn: str, arg: Compiled) -> Value:
        """A group aggregate (``sum``, ``avg``, ``share`` ...) of ``arg`` over the group."""


Compiled = Callable[[Env], Value]

WINDOW_FUNCTIONS = ("rate", "increase", "changes")
GROUP_FUNCTIONS = ("sum", "avg", "min", "max", "count", "share", "nodes")
_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_ORDER: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


@dataclass(frozen=True, slots=True)
class Names:
    """The names one scope offers: plain names, ``base.field`` names, functions allowed."""

    plain: frozenset[str]
    dotted: dict[str, frozenset[str]]
    group: bool = False  # aggregates allowed (group scope)
    windows: bool = True  # rate/increase/changes allowed (scopes with a history)
    inner: Names | None = None  # the scope aggregate arguments are evaluated in (GPUs)
    nodes: Names | None = None  # the scope of ``nodes(cond)``'s argument
    hint: str = ""  # what a valid name looks like, for the error


@dataclass(frozen=True, slots=True)
class Window:
    """One ``rate(arg, "5m")``-style look-back: the engine records ``arg`` every report."""

    key: str  # the argument's text and the window: shared by rules that use the same
    seconds: float
    arg: Compiled


@dataclass(frozen=True, slots=True)
class Expr:
    """A compiled expression and what was learnt compiling it."""

    text: str
    fn: Compiled
    value_fn: Compiled | None  # the left side of the first comparison: {{ value }}
    windows: tuple[Window, ...]  # the counters rate/increase/changes look back on
    names: frozenset[str]


def compile_expr(text: str, names: Names) -> Expr:
    """Parse and check ``text`` against the names of its scope."""
    if not text.strip():
        raise ExprError("empty expression")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error at column {exc.offset or 0}: {exc.msg}") from None
    compiler = _Compiler(names)
    fn = compiler.compile(tree.body)
    value_node = _first_comparison_left(tree.body)
    value_fn = _Compiler(names).compile(value_node) if value_node is not None else None
    return Expr(text, fn, value_fn, tuple(compiler.windows), frozenset(compiler.used))


def _first_comparison_left(node: ast.expr) -> ast.expr | None:
    if isinstance(node, ast.Compare):
        return node.left
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            found = _first_comparison_left(value)
            if found is not None:
                return found
    return None


class _Compiler:
    def __init__(self, names: Names) -> None:
        self.names = names
        self.windows: list[Window] = []
        self.used: set[str] = set()

    def fail(self, node: ast.AST, message: str) -> ExprError:
        return ExprError(f"column {getattr(node, 'col_offset', 0) + 1}: {message}")

    def compile(self, node: ast.expr) -> Compiled:  # one case per node type
        if isinstance(node, ast.Constant):
            value = node.value
            if not isinstance(value, int | float | str | bool | type(None)):
                raise self.fail(node, f"unsupported literal {value!r}")
            return lambda env: value
        if isinstance(node, ast.Tuple | ast.List):
            items = [self.compile(e) for e in node.elts]
            return lambda env: tuple(i(env) for i in items)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Attribute):
            return self.attribute(node)
        if isinstance(node, ast.UnaryOp):
            inner = self.compile(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda env: _not(inner(env))
            if isinstance(node.op, ast.USub):
                return lambda env: _arith(operator.neg, inner(env))
            if isinstance(node.op, ast.UAdd):
                return inner
            raise self.fail(node, "unsupported unary operator")
        if isinstance(node, ast.BinOp):
            op = _ARITH.get(type(node.op))
            if op is None:
                raise self.fail(node, "unsupported operator (expected + - * / %)")
            left, right = self.compile(node.left), self.compile(node.right)
            return lambda env: _arith(op, left(env), right(env))
        if isinstance(node, ast.BoolOp):
            parts = [self.compile(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda env: _and(parts, env)
            return lambda env: _or(parts, env)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(node, f"{type(node).__name__} is not allowed in a rule expression")

    def name(self, node: ast.Name) -> Compiled:
        key = node.id
        if key in ("true", "false", "none"):
            raise self.fail(node, f"unknown name {key!r} (Python spelling: True, False, None)")
        if key in self.names.dotted:
            raise self.fail(node, f"{key!r} is a group of fields; name one, e.g. {key}.<field>")
        if key not in self.names.plain:
            raise self.fail(node, f"unknown name {key!r} ({self.names.hint})")
        self.used.add(key)
        return lambda env: env.name(key)

    def attribute(self, node: ast.Attribute) -> Compiled:
        if not isinstance(node.value, ast.Name) or node.value.id not in self.names.dotted:
            bases = ", ".join(sorted(self.names.dotted)) or "none in this scope"
            raise self.fail(node, f"unknown dotted name (expected one of: {bases})")
        base, name = node.value.id, node.attr
        if name not in self.names.dotted[base]:
            raise self.fail(node, f"unknown field {base}.{name}")
        self.used.add(f"{base}.{name}")
        return lambda env: env.attr(base, name)

    def compare(self, node: ast.Compare) -> Compiled:
        steps: list[tuple[Callable[[Value, Value], bool | None], Compiled]] = []
        operands = [node.left, *node.comparators]
        for i, (op, right) in enumerate(zip(node.ops, node.comparators, strict=True)):
            if isinstance(op, ast.Is | ast.IsNot):
                raise self.fail(node, "use == None / != None to test for an absent field")
            # ``x == None`` asks about presence; any other comparison with an absent
            # value is undefined (absent is not 0, not False, not "none").
            presence = _is_none(operands[i]) or _is_none(right)
            steps.append((_comparator(op, presence), self.compile(right)))
        left = self.compile(node.left)
        if len(steps) == 1:  # the common case, without the chain's loop
            ((compare, right_fn),) = steps
            return lambda env: compare(left(env), right_fn(env))

        def run(env: Env) -> Value:
            a = left(env)
            result: Value = True
            for compare, right_fn in steps:
                b = right_fn(env)
                ok = compare(a, b)
                if ok is False:
                    return False
                if ok is None:
                    result = None
                a = b
            return result

        return run

    def call(self, node: ast.Call) -> Compiled:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise self.fail(node, 'only plain function calls like rate(x, "5m") are allowed')
        fn, args = node.func.id, node.args
        if fn in WINDOW_FUNCTIONS:
            if len(args) != 2 or not isinstance(args[1], ast.Constant):
                raise self.fail(node, f'{fn} takes a counter and a window: {fn}(x, "5m")')
            try:
                seconds = parse_duration(args[1].value)
            except ValueError as exc:
                raise self.fail(node, f"{fn}: {exc}") from None
            if seconds <= 0:
                raise self.fail(node, f"{fn}: the window must be longer than 0s")
            if not self.names.windows:
                raise self.fail(node, f"{fn} is not available in this scope")
            inner = self.compile(args[0])
            window = Window(f"{ast.unparse(args[0])}@{seconds:g}", seconds, inner)
            self.windows.append(window)
            return lambda env: env.window(window, fn)
        if fn in GROUP_FUNCTIONS and self.names.group:
            if len(args) != 1:
                raise self.fail(node, f"{fn} takes one argument")
            scope = self.names.inner if fn != "nodes" else self.names.nodes
            # No look-backs inside an aggregate: a group has no history of its own.
            sub = _Compiler(replace(scope or self.names, windows=False))
            arg = sub.compile(args[0])
            self.used |= sub.used
            return lambda env: env.aggregate(fn, arg)
        if fn == "label":
            if len(args) != 1 or not isinstance(args[0], ast.Constant):
                raise self.fail(node, 'label takes a label name: label("rack")')
            label = str(args[0].value)
            return lambda env: env.label(label)
        if fn == "abs":
            if len(args) != 1:
                raise self.fail(node, "abs takes one argument")
            inner = self.compile(args[0])
            return lambda env: _arith(abs, inner(env))
        if fn in ("min", "max") and not self.names.group:
            if len(args) < 2:
                raise self.fail(node, f"{fn} takes two or more arguments")
            parts = [self.compile(a) for a in args]
            pick = min if fn == "min" else max
            return lambda env: _pick(pick, [p(env) for p in parts])
        known = ", ".join((*WINDOW_FUNCTIONS, "abs", "min", "max", "label"))
        if self.names.group:
            known += ", " + ", ".join(GROUP_FUNCTIONS)
        raise self.fail(node, f"unknown function {fn!r} (expected one of: {known})")


def _number(v: Value) -> bool:
    return isinstance(v, int | float)


def _arith(op: Callable[..., Any], *values: Value) -> Value:
    if any(v is None for v in values) or not all(_number(v) for v in values):
        return None
    try:
        return op(*values)
    except (ZeroDivisionError, OverflowError, ValueError):
        return None


def _pick(fn: Callable[[list[Any]], Any], values: list[Value]) -> Value:
    if any(v is None for v in values):
        return None
    return fn(values)


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _comparator(op: ast.cmpop, presence: bool) -> Callable[[Value, Value], bool | None]:
    """The three-valued comparison for ``op``, chosen once when the rule is compiled."""
    if isinstance(op, ast.Eq | ast.NotEq):
        equal = isinstance(op, ast.Eq)

        def eq(a: Value, b: Value) -> bool | None:
            if not presence and (a is None or b is None):
                return None
            return (a == b) is equal

        return eq
    if isinstance(op, ast.In | ast.NotIn):
        inside = isinstance(op, ast.In)

        def contains(a: Value, b: Value) -> bool | None:
            if a is None or not isinstance(b, tuple | list | str):
                return None
            return (a in b) is inside

        return contains
    order = _ORDER[type(op)]

    def ordered(a: Value, b: Value) -> bool | None:
        if a is None or b is None:
            return None
        try:
            return order(a, b)
        except TypeError:
            return None

    return ordered


def _not(v: Value) -> Value:
    return None if v is None else not v


def _and(parts: list[Compiled], env: Env) -> Value:
    undefined = False
    for part in parts:
        v = part(env)
        if v is None:
            undefined = True
        elif not v:
            return False
    return None if undefined else True


def _or(parts: list[Compiled], env: Env) -> Value:
    undefined = False
    for part in parts:
        v = part(env)
        if v is None:
            undefined = True
        elif v:
            return True
    return None if undefined else False


def truth(v: Value) -> bool | None:
    """An expression's result as a condition: True, False, or None (undefined)."""
    return None if v is None else bool(v)
