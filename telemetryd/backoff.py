"""Capped exponential backoff with jitter, for every reconnect and retry.

Jitter matters at fleet scale: ten thousand agents that lost the same broker must not all
come back in the same millisecond.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``base`` up to ``cap``, each scaled by a random 0.5-1.5."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return float(delay * random.uniform(0.5, 1.5))

    def reset(self) -> None:
        """Call after a success."""
        self.attempt = 0
