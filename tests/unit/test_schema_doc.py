"""docs/schema.md documents every measurement, tag and field the encoder writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporters.lineprotocol import MEASUREMENTS
from exporters.sqlite_rollup import GPU_1M, HOST_1M, Rollup
from telemetryd.export import rollup_lines
from tests.unit.test_lineprotocol import split_line

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


EXPORT_ONLY = {"gpu_1m", "host_1m"}  # SQLite rollups, written by telemetryd export


def test_every_measurement_has_a_section_and_no_section_is_stale() -> None:
    assert set(sections()) == set(MEASUREMENTS) | EXPORT_ONLY


@pytest.mark.parametrize("rollup", [GPU_1M, HOST_1M], ids=lambda r: r.table.name)
def test_rollup_sections_name_what_export_writes(rollup: Rollup) -> None:
    row: dict[str, object] = dict.fromkeys(name for name, _ in rollup.table.all_columns())
    row |= {"minute_ns": 60 * 10**9, "node": "n1", "cluster": "c1", "gpu_index": 0,
            "uuid": "GPU-1", "name": "H100", "samples": 6, "last_ns": 110 * 10**9,
            f"min_{rollup.numeric[0]}": 1, f"mean_{rollup.numeric[0]}": 1.5}  # fmt: skip
    (line,) = rollup_lines(rollup, [row])
    measurement, tags, fields, _time = split_line(line)
    names = documented_names(sections()[measurement])
    assert set(tags) <= names
    assert {"samples", "last_ns", "min_<field>"} <= names
    assert set(fields) == {"samples", "last_ns", f"min_{rollup.numeric[0]}",
                           f"mean_{rollup.numeric[0]}"}  # fmt: skip


@pytest.mark.parametrize("measurement", sorted(MEASUREMENTS))
def test_every_tag_and_field_is_documented(measurement: str) -> None:
    tags, fields = MEASUREMENTS[measurement]
    names = documented_names(sections()[measurement])
    assert set(tags) | set(fields) == names, (
        f"in code, not in docs: {sorted((set(tags) | set(fields)) - names)}; "
        f"in docs, not in code: {sorted(names - set(tags) - set(fields))}"
    )
