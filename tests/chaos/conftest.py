"""Shared by the chaos tests: the `chaos` marker on every test here, and the run's size.

Why: CI runs `pytest -m "not gpu"`, which includes these tests, so each must be short by
default; `TELEMETRYD_CHAOS=full pytest -m chaos` is the long run (docs/RELIABILITY.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The integration tests' fixtures, for every fault test here: real Mosquitto, the witness.
from tests.integration.conftest import mosquitto, mosquitto_factory  # noqa: F401
from tests.integration.test_pipeline import witness  # noqa: F401

FULL = os.environ.get("TELEMETRYD_CHAOS", "short") == "full"


def size(short: int, full: int) -> int:
    """How many cases/rounds/runs a chaos test does in this run."""
    return full if FULL else short


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/chaos `chaos`, so `-m chaos` selects exactly them."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.chaos)
