"""Which fields of a wire struct are scalars, and of which type: read from the model itself.

Why derived: the report gains fields over time, and a store whose columns (SQLite) or
fields (InfluxDB) are a hand-kept list silently drops every field nobody remembered to
add. Each scalar field (number, bool, text, after unwrapping ``X | None``, ``Annotated``
and single-type ``Literal``) is stored under its own name with the type the model gives
it, so a field's stored type can only change when the model's does; every other field
(lists, dicts, nested structs) is *nested* and each store says what it does with those.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Literal

from telemetryd.codec import Struct

Scalar = type[bool] | type[int] | type[float] | type[str]
_SCALARS: tuple[type, ...] = (bool, int, float, str)


def scalar_type(hint: Any) -> Scalar | None:
    """The scalar type of a field's type hint (bool, int, float, str), or None if nested."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return scalar_type(args[0]) if len(args) == 1 else None
    if origin is typing.Annotated:
        return scalar_type(typing.get_args(hint)[0])
    if origin is Literal:
        kinds = {type(a) for a in typing.get_args(hint)}
        kind = kinds.pop() if len(kinds) == 1 else None
        return typing.cast(Scalar, kind) if kind in _SCALARS else None
    return typing.cast(Scalar, hint) if hint in _SCALARS else None


def is_optional(hint: Any) -> bool:
    """Whether ``hint`` admits None (``X | None``)."""
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )


@dataclass(frozen=True, slots=True)
class Fields:
    """How one struct's fields are stored: scalars by type, and the nested rest."""

    scalars: tuple[tuple[str, Scalar], ...]
    """(field name, scalar type), in declaration order."""
    nested: tuple[tuple[str, bool], ...]
    """(field name, optional) of the non-scalar fields. For an optional list an empty list
    means the source answered "none", which is not "unknown"; for a list that defaults to
    empty, empty means nothing to say."""

    def names(self) -> tuple[str, ...]:
        """The scalar field names, in order."""
        return tuple(name for name, _ in self.scalars)

    def getter(self) -> Callable[[Any], tuple[Any, ...]]:
        """A function returning the scalar values of an instance as a tuple, in order.

        ``operator.attrgetter`` because turning reports into rows or lines is every
        store's hot loop.
        """
        names = self.names()
        if not names:
            return lambda _obj: ()
        if len(names) == 1:
            one = attrgetter(names[0])
            return lambda obj: (one(obj),)
        return attrgetter(*names)


def split_fields(struct: type[Struct], skip: Collection[str] = ()) -> Fields:
    """Classify every field of ``struct`` except ``skip`` as a scalar or nested."""
    hints = typing.get_type_hints(struct)
    scalars: list[tuple[str, Scalar]] = []
    nested: list[tuple[str, bool]] = []
    for name in struct.__struct_fields__:
        if name in skip:
            continue
        kind = scalar_type(hints[name])
        if kind is None:
            nested.append((name, is_optional(hints[name])))
        else:
            scalars.append((name, kind))
    return Fields(tuple(scalars), tuple(nested))
