"""Recordings of real GPU models, used as the shape of simulated and faked GPUs.

A recording is what ``telemetryd collect --record FILE`` writes on a GPU node: the answer
(or NVML error) of every NVML call the reader makes. The ones shipped here are listed by
name; a path to another recording works anywhere a name does.
"""

from __future__ import annotations

from pathlib import Path

CARDS_DIR = Path(__file__).parent / "cards"


class CardError(ValueError):
    """A card name that is neither shipped nor a readable recording file."""


def card_names() -> list[str]:
    """Names of the recordings shipped with telemetryd."""
    return sorted(p.stem for p in CARDS_DIR.glob("*.json"))


def card_path(name_or_path: str) -> Path:
    """Resolve a shipped card name or a recording path; CardError says what exists."""
    shipped = CARDS_DIR / f"{name_or_path}.json"
    if shipped.is_file():
        return shipped
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return path
    names = ", ".join(card_names()) or "none"
    raise CardError(
        f"{name_or_path!r} is neither a shipped card ({names}) nor a readable .json recording"
    )
