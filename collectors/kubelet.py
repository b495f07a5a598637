"""The kubelet's pod-resources API: which container holds which GPU (issue 7, to be built).

The only module that imports grpc. Placeholder interface so collectors/attribution.py can
be written against it; a helper replaces this file.
"""

from __future__ import annotations

from collectors.base import PodRef
from telemetryd.errors import SourceUnavailable


class PodResourcesClient:
    """A client of ``v1.PodResourcesLister`` on the kubelet's unix socket."""

    def __init__(self, socket: str, timeout: float) -> None:
        self.socket = socket
        self.timeout = timeout

    def open(self) -> None:
        """Check the socket and the grpc extra; raise SourceUnavailable with the reason."""
        raise SourceUnavailable("kubelet pod-resources client is not built yet")

    def devices(self) -> dict[str, PodRef]:
        """GPU (or MIG) UUID -> the container it is assigned to; {} on a failed request."""
        return {}

    def close(self) -> None:
        """Close the channel; safe to call twice."""
