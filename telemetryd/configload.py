"""Load configuration: defaults < file < environment (TELEMETRYD_...) < command line.

Every key is validated on its own, so one run reports *every* problem, each on one line
that names where it came from (file and line, environment variable or option), the
dotted key and what was expected. An operator fixing a file should not need a dozen
round trips; msgspec alone stops at the first error, hence the walk below.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from telemetryd.codec import DecodeError, Struct, convert
from telemetryd.config import ROLES, Config
from telemetryd.errors import ConfigError

ENV_PREFIX = "TELEMETRYD_"
# Variables of ours that are not configuration keys.
_ENV_NOT_KEYS = {"TELEMETRYD_LOG_LEVEL", "TELEMETRYD_DEBUG"}


def unwrap(tp: Any) -> tuple[Any, Any]:
    """(bare type, Annotated metadata or None) of a field annotation."""
    if typing.get_origin(tp) is typing.Annotated:
        return typing.get_args(tp)[0], tp
    return tp, tp


def is_struct(tp: Any) -> bool:
    """Whether an annotation is a nested config table."""
    return isinstance(tp, type) and issubclass(tp, Struct)


def field_types(struct: type[Struct]) -> dict[str, Any]:
    """Annotated field types of a config Struct, in declaration order."""
    return typing.get_type_hints(struct, include_extras=True)


def leaf_keys(struct: type[Struct] = Config, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every settable dotted key below ``struct`` with its annotated type."""
    for name, tp in field_types(struct).items():
        bare, _ = unwrap(tp)
        if is_struct(bare):
            yield from leaf_keys(bare, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", tp


def env_name(dotted: str) -> str:
    """The environment variable that sets a dotted key."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


class _Origin:
    """Where each key came from, for error messages."""

    def __init__(self, path: str | None, text: str) -> None:
        self.path = path
        self.lines = _key_lines(text) if text else {}
        self.by_key: dict[str, str] = {}

    def file(self, dotted: str) -> str:
        if self.path is None:
            return "defaults"
        key, line = dotted, self.lines.get(dotted)
        while line is None and "." in key:  # a key set in an inline table: its table's line
            key = key.rsplit(".", 1)[0]
            line = self.lines.get(key)
        return f"{self.path}:{line}" if line else self.path

    def of(self, dotted: str) -> str:
        return self.by_key.get(dotted) or self.file(dotted)


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\s\"']+?)\s*\]\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*([A-Za-z0-9_.\-\"']+)\s*=")


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted keys to the line that sets them (tables and plain assignments only)."""
    lines: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = re.sub(r"[\s\"']", "", header.group(1))
            lines.setdefault(table, number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            key = re.sub(r"[\s\"']", "", assign.group(1))
            lines.setdefault(f"{table}.{key}" if table else key, number)
    return lines


def _describe_value(value: Any) -> str:
    if isinstance(value, str | int | float | bool) and len(repr(value)) <= 60:
        return f" (got {value!r})"
    return ""


def _check_value(value: Any, tp: Any) -> tuple[Any, str | None]:
    """Convert one value to its annotated type: (value, None) or (None, problem)."""
    bare, _ = unwrap(tp)
    if typing.get_origin(bare) is typing.Literal:
        allowed = typing.get_args(bare)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            return None, f"expected one of {choices}{_describe_value(value)}"
        return value, None
    if _has_nul(value):
        # No setting can hold one, and a path with one makes os.stat raise ValueError in the
        # semantic checks (found by tests/chaos/test_fuzz_config.py).
        return None, "contains a NUL character (\\x00)"
    try:
        return convert(value, tp), None
    except DecodeError as exc:
        where = f" at {exc.path}" if exc.path else ""
        problem = exc.problem.replace("object", "table").replace("`str`", "string")
        return None, f"{problem}{where}{_describe_value(value)}"


def _has_nul(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (a TOML value: lists, tables) holds a NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


def _validate(
    data: Mapping[str, Any],
    struct: type[Struct],
    prefix: str,
    where: typing.Callable[[str], str],
    problems: list[str],
) -> dict[str, Any]:
    """Validate a table key by key; return the values that passed."""
    types_ = field_types(struct)
    clean: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in types_:
            hint = difflib.get_close_matches(key, types_, n=1)
            elsewhere = [d for d, _ in leaf_keys() if d.rsplit(".", 1)[-1] == key]
            known = ", ".join(types_)
            if hint:
                suggestion = f"; did you mean {hint[0]!r}?"
            elif elsewhere:
                suggestion = f"; did you mean {elsewhere[0]}?"
            else:
                suggestion = f"; expected one of: {known}"
            problems.append(f"{where(dotted)}: {dotted}: unknown key{suggestion}")
            continue
        bare, _ = unwrap(types_[key])
        if is_struct(bare):
            if not isinstance(value, dict):
                problems.append(f"{where(dotted)}: {dotted}: expected a table [{dotted}]")
                continue
            clean[key] = _validate(value, bare, f"{dotted}.", where, problems)
            continue
        converted, problem = _check_value(value, types_[key])
        if problem:
            problems.append(f"{where(dotted)}: {dotted}: {problem}")
        else:
            clean[key] = converted
    return clean


def _from_env(env: Mapping[str, str], origin: _Origin, problems: list[str]) -> dict[str, Any]:
    """Settings from TELEMETRYD_* variables, typed by the schema."""
    known = {env_name(dotted): (dotted, tp) for dotted, tp in leaf_keys()}
    layer: dict[str, Any] = {}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var in _ENV_NOT_KEYS:
            continue
        if var not in known:
            hint = difflib.get_close_matches(var, known, n=1)
            suggestion = f"; did you mean {hint[0]}?" if hint else ""
            problems.append(f"environment {var}: unknown setting{suggestion}")
            continue
        dotted, tp = known[var]
        bare, _ = unwrap(tp)
        value: Any = raw
        if typing.get_origin(bare) is list:
            value = [part.strip() for part in raw.split(",") if part.strip()]
        elif bare in (int, float, bool):
            try:
                value = convert(raw.strip(), bare, strict=False)
            except DecodeError:
                value = raw
        elif bare is not str and typing.get_origin(bare) is not typing.Literal:
            problems.append(f"environment {var}: {dotted} cannot be set from the environment")
            continue
        converted, problem = _check_value(value, tp)
        if problem:
            problems.append(f"environment {var}: {dotted}: {problem}")
            continue
        origin.by_key[dotted] = f"environment {var}"
        _set(layer, dotted, converted)
    return layer


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: str) -> tuple[dict[str, Any], str]:
    """A TOML file's tables and text; ConfigError names the file (and line) and the fault."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text; expected a TOML file"]) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", message)
        where = f"{path}:{m.group(1)}:{m.group(2)}" if m else path
        reason = re.sub(r"\s*\(at line.*\)$", "", message)
        raise ConfigError([f"{where}: invalid TOML: {reason}"]) from None


class Loaded(typing.NamedTuple):
    """A validated configuration and where its keys came from."""

    config: Config
    sections: tuple[str, ...]
    origin: _Origin


def load(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, tuple[str, Any]] | None = None,
) -> Loaded:
    """Load and validate; raise ConfigError listing every problem.

    Args:
        path: TOML file, or None for defaults only.
        env: environment (default ``os.environ``).
        overrides: dotted key -> (option name, value) from the command line.
    """
    env = os.environ if env is None else env
    data, text = read_toml(path) if path else ({}, "")
    origin = _Origin(path, text)
    problems: list[str] = []
    merged = _validate(data, Config, "", origin.file, problems)
    merged = _merge(merged, _from_env(env, origin, problems))
    cli: dict[str, Any] = {}
    types_ = dict(leaf_keys())
    for dotted, (option, value) in (overrides or {}).items():
        converted, problem = _check_value(value, types_[dotted])
        if problem:
            problems.append(f"option {option}: {dotted}: {problem}")
            continue
        origin.by_key[dotted] = f"option {option}"
        _set(cli, dotted, converted)
    merged = _merge(merged, cli)
    if problems:
        raise ConfigError(problems)
    config = typing.cast(Config, convert(merged, Config))
    # Imported here: semantic checks consult the plugin registry and the filesystem.
    from telemetryd.configcheck import semantic_problems

    problems = semantic_problems(config, origin.of, env)
    if problems:
        raise ConfigError(problems)
    sections = tuple(s for s in ROLES if s in data) or ROLES
    return Loaded(config, sections, origin)
