"""docs/schema.md documents every measurement, tag and field the encoder writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporters.lineprotocol import MEASUREMENTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "schema.md"


def sections() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^### (\S+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def documented_names(section: str) -> set[str]:
    """Every `name` in the first column of the section's tables."""
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            first = line.split("|")[1]
            names |= set(re.findall(r"`([^`]+)`", first))
    return names


def test_every_measurement_has_a_section_and_no_section_is_stale() -> None:
    assert set(sections()) == set(MEASUREMENTS)


@pytest.mark.parametrize("measurement", sorted(MEASUREMENTS))
def test_every_tag_and_field_is_documented(measurement: str) -> None:
    tags, fields = MEASUREMENTS[measurement]
    names = documented_names(sections()[measurement])
    assert set(tags) | set(fields) == names, (
        f"in code, not in docs: {sorted((set(tags) | set(fields)) - names)}; "
        f"in docs, not in code: {sorted(names - set(tags) - set(fields))}"
    )
