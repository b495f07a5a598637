"""Fixtures shared across test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

SECRET = "hunter2-do-not-print-me"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A readable secret file, as a systemd credential would be laid out."""
    path = tmp_path / "creds" / "mqtt-password"
    path.parent.mkdir()
    path.write_text(SECRET + "\n")
    return path
