"""Label matchers in Alertmanager's syntax: ``name="value"``, ``!=``, ``=~``, ``!~``.

Routes, inhibit rules and silences all select alerts this way, and operators already
write these strings for Alertmanager and amtool, so the same text means the same thing
here. Like Alertmanager: a missing label is the empty string, and a regular expression
must match the whole value (it is anchored at both ends).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

Op = Literal["=", "!=", "=~", "!~"]
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPLIT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)(.*)\Z", re.DOTALL)
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}
EXPECTED = 'a matcher such as severity="critical" (operators = != =~ !~)'


@dataclass(frozen=True)
class Matcher:
    """One condition on one label."""

    name: str
    op: Op
    value: str
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy it (a missing label counts as empty)."""
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.pattern is not None
        found = self.pattern.fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.name}{self.op}{quote(self.value)}"


def quote(value: str) -> str:
    """A double-quoted value that ``parse_matcher`` reads back unchanged."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped.replace(chr(9), chr(92) + "t")}"'


def _unquote(text: str) -> str:
    """The value of a double-quoted string; ValueError naming what is wrong with it."""
    out: list[str] = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _ESCAPES:
                raise ValueError(r"unknown escape in the value; expected \\, \", \n or \t")
            out.append(_ESCAPES[text[i + 1]])
            i += 2
            continue
        if char == '"':
            if text[i + 1 :].strip():
                raise ValueError(f"unexpected text after the closing quote: {text[i + 1 :]!r}")
            return "".join(out)
        out.append(char)
        i += 1
    raise ValueError("the value has no closing quote")


def parse_matcher(text: str) -> Matcher:
    """Read one matcher; the value may be double-quoted (with escapes) or bare.

    Raises:
        ValueError: one line naming what was wrong and the expected form.
    """
    if not isinstance(text, str):
        # ValueError, not TypeError: a wrong TOML type is a bad value like any other.
        raise ValueError(f"expected {EXPECTED} (got a {type(text).__name__})")  # noqa: TRY004
    found = _SPLIT.fullmatch(text)
    if not found:
        raise ValueError(f"expected {EXPECTED} (got {text!r})")
    name, op, raw = found.group(1), cast(Op, found.group(2)), found.group(3).strip()
    if raw.startswith('"'):
        try:
            value = _unquote(raw)
        except ValueError as exc:
            raise ValueError(f"{exc} (got {text!r})") from None
    elif '"' in raw:
        raise ValueError(f"a bare value may not hold a quote; expected {EXPECTED} (got {text!r})")
    else:
        value = raw
    pattern = None
    if op in ("=~", "!~"):
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(
                f"invalid regular expression {value!r}: {exc} (got {text!r})"
            ) from None
    return Matcher(name, op, value, pattern)


def parse_matchers(texts: Iterable[str]) -> tuple[Matcher, ...]:
    """Several matchers (all must hold); the first bad one raises ValueError."""
    return tuple(parse_matcher(text) for text in texts)


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """Whether every matcher holds (true for none, as in Alertmanager)."""
    return all(m.matches(labels) for m in matchers)
