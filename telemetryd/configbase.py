"""What every configuration section is made of: a strict table with documented keys.

Its own module so that the sections can live in more than one module (config.py,
config_outputs.py) without importing each other.
"""

from __future__ import annotations

from typing import Any

from telemetryd.codec import Meta, Struct


def doc(text: str, **constraints: Any) -> Meta:
    """A key's description and range, where ``config sample`` and the loader read them."""
    return Meta(description=text, **constraints)


class Section(Struct, forbid_unknown_fields=True, kw_only=True):
    """A TOML table; unknown keys are errors, every key has a default."""
