"""The one module that imports msgspec.

Why one place: the wire model and the configuration both need strict typed decoding, and
both must turn a failure into one line that names the field. Keeping the library behind
this module means the wording of every validation error is decided here, and a change of
library touches one file.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from msgspec import Meta, Raw, Struct, field

from telemetryd.errors import TelemetrydError

__all__ = [
    "DecodeError",
    "Meta",
    "Raw",
    "Struct",
    "convert",
    "describe",
    "encode_json",
    "field",
    "json_decoder",
    "struct_fields",
    "to_builtins",
]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


class DecodeError(TelemetrydError, ValueError):
    """A document that breaks its schema; the message starts with the field path."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


def describe(exc: msgspec.ValidationError | msgspec.DecodeError) -> tuple[str, str]:
    """Split a msgspec error into (dotted path, problem) with our wording.

    msgspec says "Expected `int`, got `str` - at `$.gpus[0].index`"; operators read
    "gpus[0].index: expected int, got str".
    """
    text = str(exc)
    path = ""
    m = _AT.search(text)
    if m:
        path = m.group("path").lstrip(".")
        text = text[: m.start()]
    # Matched before the backticks go: a key may hold spaces (found by fuzzing: the key
    # " chema" left the path empty).
    missing = re.fullmatch(r"Object missing required field `(.*)`", text, re.DOTALL)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        text = "missing required field"
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", text, re.DOTALL)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        text = "unknown field"
    text = text.replace("`", "")
    if text[:1].isupper() and not text[:4].isupper():
        text = text[0].lower() + text[1:]
    return path, text


def encode_json(obj: Any) -> bytes:
    """Encode a Struct (or builtins) as compact JSON."""
    return _encoder.encode(obj)


def json_decoder(type_: type[T]) -> Callable[[bytes | str], T]:
    """Return a strict decoder for ``type_`` that raises DecodeError naming the field."""
    dec = msgspec.json.Decoder(type_)

    def decode(data: bytes | str) -> T:
        try:
            return dec.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise DecodeError(*describe(exc)) from None

    return decode


def convert(obj: Any, type_: Any, *, strict: bool = True) -> Any:
    """Convert builtins to ``type_`` (a Struct or annotated type), raising DecodeError.

    ``strict=False`` lets strings stand for numbers and booleans, as in environment
    variables.
    """
    try:
        return msgspec.convert(obj, type_, strict=strict)
    except msgspec.ValidationError as exc:
        raise DecodeError(*describe(exc)) from None


def to_builtins(obj: Any) -> Any:
    """Turn Structs into dicts and lists; dates and times stay objects (TOML has them)."""
    return msgspec.to_builtins(obj, builtin_types=(datetime.datetime, datetime.date, datetime.time))


def struct_fields(type_: type[Struct]) -> tuple[Any, ...]:
    """Field descriptions (name, type, default, required) of a Struct type."""
    info = msgspec.inspect.type_info(type_)
    assert isinstance(info, msgspec.inspect.StructType)
    return info.fields
