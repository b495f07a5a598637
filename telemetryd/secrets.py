"""Secrets from files and systemd credentials, never from URLs, arguments or logs.

A secret is named in configuration by the *path* of the file that holds it. Under systemd,
``LoadCredential=mqtt-password:/etc/telemetryd/mqtt-password`` puts it in
``$CREDENTIALS_DIRECTORY``, readable only by the service; when the ``*_file`` key is empty
we look there under the credential's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class Secret:
    """A secret value that prints as ``***`` so it cannot leak through repr or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the value; call only where it is handed to the library that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def secret_path(
    configured: str, credential: str, env: Mapping[str, str] | None = None
) -> str | None:
    """The file to read a secret from: the configured one, else the systemd credential."""
    if configured:
        return configured
    env = os.environ if env is None else env
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / credential
        if candidate.is_file():
            return str(candidate)
    return None


def read_secret(path: str) -> Secret:
    """Read a secret file (one trailing newline stripped); OSError names the path only."""
    text = Path(path).read_text(encoding="utf-8")
    return Secret(text[:-1] if text.endswith("\n") else text)


def unreadable(path: str) -> str | None:
    """Why a secret or key file cannot be read, or None; never reveals the content."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None
