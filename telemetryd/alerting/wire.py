"""What the aggregator publishes about its alert state besides firing alerts, and what it accepts.

Firing alerts are retained one per topic (``_alerts/<fingerprint>``, hooks' shape). An
operator's panel also needs what is about to fire and what is muted, so the aggregator
keeps two more retained messages per cluster: ``_pending`` (alerts whose condition holds
but whose ``for`` has not elapsed) and ``_silences`` (silences not yet expired). A terminal
UI allowed to silence publishes a :class:`SilenceRequest` on ``_silences/request``; the
aggregator applies it only when its own configuration accepts silences over MQTT.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from telemetryd.alerting.model import Alert
from telemetryd.codec import Meta, Struct, field, json_decoder

MAX_PENDING = 500  # alerts listed in one _pending message; the rest are counted
# Silences added from requests get ids derived from the request id (uuid5 in this space).
_REQUEST_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "telemetryd:silence-request")


class PendingAlerts(Struct, kw_only=True, omit_defaults=True):
    """``telemetry/v1/<cluster>/_pending`` (retained): pending alerts, newest state."""

    schema: Literal[1] = 1
    time_ns: int
    alerts: list[Alert] = field(default_factory=list)
    truncated: int = 0  # pending alerts left out beyond MAX_PENDING


class SilenceInfo(Struct, kw_only=True, omit_defaults=True):
    """One silence as the outside sees it (matchers in their Alertmanager spelling)."""

    id: str
    matchers: list[str]
    starts_ns: int
    ends_ns: int
    created_by: str
    comment: str = ""
    state: Literal["pending", "active", "expired"] = "active"


class Silences(Struct, kw_only=True, omit_defaults=True):
    """``telemetry/v1/<cluster>/_silences`` (retained): silences that have not expired."""

    schema: Literal[1] = 1
    time_ns: int
    silences: list[SilenceInfo] = field(default_factory=list)
    accepts_requests: bool = False  # whether this aggregator applies _silences/request


class SilenceRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """``telemetry/v1/<cluster>/_silences/request`` (QoS 1, not retained): add a silence.

    ``request_id`` is the client's: a request delivered twice adds one silence.
    """

    schema: Literal[1] = 1
    request_id: Annotated[str, Meta(min_length=8, max_length=64)]
    matchers: Annotated[
        list[Annotated[str, Meta(max_length=512)]], Meta(min_length=1, max_length=16)
    ]
    duration_s: Annotated[float, Meta(gt=0, le=30 * 86400)]
    created_by: Annotated[str, Meta(min_length=1, max_length=128)]
    comment: Annotated[str, Meta(max_length=1024)] = ""


decode_pending = json_decoder(PendingAlerts)
decode_silences = json_decoder(Silences)
decode_silence_request = json_decoder(SilenceRequest)
decode_alert = json_decoder(Alert)


def request_silence_id(request_id: str) -> str:
    """The id of the silence a request adds: the same request always makes the same id.

    This is what makes a redelivered request harmless (the store adds an id it already
    keeps once), and it lets the requester find its silence in ``_silences`` without
    waiting for an answer: every aggregator that applies the request uses this id.
    """
    return str(uuid.uuid5(_REQUEST_IDS, request_id))
