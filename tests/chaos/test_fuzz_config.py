"""Fuzzing config loading: generated TOML gives a Config or a ConfigError naming file:line.

Why: an operator's typo must come back as a line that says where and what, never as a
traceback from deep inside the loader or a semantic check.
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telemetryd.configload import leaf_keys, load, unwrap
from telemetryd.errors import ConfigError
from tests.chaos.conftest import size

FUZZ = settings(
    max_examples=size(300, 5_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
KEYS = dict(leaf_keys())


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file every example of a test rewrites (module scope: hypothesis reuses it)."""
    return tmp_path_factory.mktemp("fuzz-config") / "telemetryd.toml"


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, except for \\/ which JSON omits)."""
    return json.dumps(text)


def toml_value(value: Any) -> str:
    """Render a Python value as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def _nested(leaf: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Values, lists and tables two levels deep (st.recursive warned, wrongly, under load)."""
    one = leaf | st.lists(leaf, max_size=3) | st.dictionaries(keys, leaf, max_size=3)
    return leaf | st.lists(one, max_size=3) | st.dictionaries(keys, one, max_size=3)


scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
)
any_value = _nested(scalars, st.from_regex(r"\A[a-z_]{1,8}\Z"))


def plausible(tp: Any) -> st.SearchStrategy[Any]:
    """Values of the key's own type, often near or beyond its bounds."""
    bare, _ = unwrap(tp)
    if typing.get_origin(bare) is typing.Literal:
        return st.sampled_from(typing.get_args(bare)) | st.text(max_size=8)
    if bare is bool:
        return st.booleans()
    if bare is int:
        return st.integers(-5, 100_000) | st.integers(-(2**63), 2**63 - 1)
    if bare is float:
        return st.floats(-10, 100_000) | st.floats()
    if bare is str:
        return st.sampled_from(["", "n1", "/tmp/x", "mqtt://localhost", "sqlite:///tmp/t.db"]) | (
            st.text(max_size=30)
        )
    if typing.get_origin(bare) is list:
        return st.lists(st.sampled_from(["host", "sim", "nvml", "x", ""]) | st.text(max_size=8))
    return any_value


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, set[str]]:
    """A TOML document of known keys (typed or not), unknown keys and broken lines."""
    chosen = draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=12, unique=True))
    tables: dict[str, list[str]] = defaultdict(list)
    for dotted in chosen:
        table, key = dotted.rsplit(".", 1)
        value = draw(plausible(KEYS[dotted]) | any_value)
        tables[table].append(f"{key} = {toml_value(value)}")
    for _ in range(draw(st.integers(0, 2))):
        table = draw(st.sampled_from(["agent", "aggregator", "nope", *sorted({*tables})]))
        key = draw(st.from_regex(r"\A[a-z_]{1,12}\Z"))
        tables[table].append(f"{key} = {toml_value(draw(any_value))}")
    lines: list[str] = []
    for table, assigns in tables.items():
        lines.append(f"[{table}]")
        lines += assigns
    if lines and draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(["= 1", "[agent", "x = ", "a = 1 2", "[[agent]]"])))
    return "\n".join(lines) + "\n", set(chosen)


def problems(path: str | None, env: dict[str, str]) -> list[str]:
    """The problems ConfigError lists, or [] when the configuration loads."""
    try:
        load(path, env=env)
    except ConfigError as exc:
        found = exc.problems
    else:
        return []
    assert found, "a ConfigError without problems"
    return found


@FUZZ
@given(documents())
@example(('[agent]\npassword_file = "/a\\u0000b"\n', {"agent.password_file"}))
def test_generated_toml(path: Path, doc: tuple[str, set[str]]) -> None:
    text, chosen = doc
    path.write_text(text, encoding="utf-8")
    for problem in problems(str(path), {}):
        # Every problem starts with the file, and with its line when the file sets the key.
        assert problem.startswith(f"{path}"), problem
        where, _, rest = problem.partition(": ")
        key = rest.split(":", 1)[0]
        if key in chosen:
            assert re.fullmatch(rf"{re.escape(str(path))}:\d+", where), problem


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_config(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    found = problems(str(path), {})
    assert all(p.startswith(f"{path}") for p in found), found


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(KEYS)), st.text(max_size=20), max_size=4))
# Found by this test: a NUL in a path made the semantic checks raise ValueError.
@example({"agent.password_file": "a\x00b"})
@example({"agent.collectors": "host,\x00"})
def test_generated_environment(values: dict[str, str]) -> None:
    """TELEMETRYD_* variables: a Config or problems naming the variable."""
    from telemetryd.configload import env_name

    env = {env_name(k): v for k, v in values.items()}
    for problem in problems(None, env):
        assert problem.startswith(("environment TELEMETRYD_", "defaults")) or any(
            k in problem for k in values
        ), problem
