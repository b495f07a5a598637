"""The hook interface: deliver one notification, or say whether trying again may help.

A hook does one attempt per ``send``. Retries, backoff, counting and the dead-letter file
belong to the dispatcher (telemetryd/alerting/delivery.py), so every channel gets the same
policy and a slow or failing channel never holds up the others.
"""

from __future__ import annotations

from typing import Protocol

from telemetryd.alerting.model import Notification


class HookError(Exception):
    """An attempt that failed; ``retryable`` False means the receiver refused it for good.

    Retryable: no answer, timeouts, 429 and 5xx. Not retryable: 4xx other than 408/429
    (a bad key or a payload the service refuses will not get better by sending it again).
    ``retry_after`` carries a server's Retry-After in seconds, when it gave one.
    """

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Hook(Protocol):
    """One receiver's channel."""

    name: str  # the receiver's name from the configuration
    send_resolved: bool  # whether resolved alerts are sent to it

    async def send(self, notification: Notification) -> None:
        """Deliver it once; raise HookError when it was not accepted."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""
