"""Push alerts to an Alertmanager (API v2), which then routes, groups and silences them.

For sites that already run Alertmanager: telemetryd decides *that* an alert fires, their
Alertmanager decides *who* hears of it. ``POST {url}/api/v2/alerts`` takes a JSON array of
postable alerts (labels, annotations, startsAt, endsAt, generatorURL).

Alertmanager keeps no link to its sources: an alert it holds resolves by itself once its
``endsAt`` passes. So a firing alert is pushed with ``endsAt`` = now + ``RESOLVE_TIMEOUT_S``
(1 h) and must be pushed again before that runs out: **the route's ``repeat_interval`` for
an alertmanager receiver must be below one hour** (a few minutes is usual; loading the
routing file refuses a longer one), or the alert would vanish from Alertmanager while it
still fires here. A resolved alert is pushed with its
own end time (never later than now), which Alertmanager takes as resolved at once; that
needs the two hosts' clocks in sync (NTP), as with Prometheus. Keep ``send_resolved`` on
for this receiver: without it a resolved alert lingers for up to an hour.

Authentication: ``bearer_token_file`` (else the credential ``<name>.bearer-token`` when it
exists) or ``username`` with ``password_file`` (else the credential ``<name>.password``),
as sent to an Alertmanager behind ``--web.config.file`` or a reverse proxy.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from exporters.hooks.common import check_ca, config_error, rfc3339
from exporters.hooks.config import AlertmanagerReceiver
from exporters.hooks.httppost import PostHook, auth_header, check_url
from telemetryd.alerting.model import Alert, Notification

RESOLVE_TIMEOUT_S = 3600
"""How long Alertmanager keeps a firing alert without hearing of it again (its endsAt)."""

PATH = "/api/v2/alerts"


def create(cfg: AlertmanagerReceiver) -> AlertmanagerHook:
    """The hook for one ``type = "alertmanager"`` receiver; reads its secrets now, once."""
    url = check_url(cfg, "url", cfg.url)
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise config_error(
            cfg, f"url: {url!r} has a query or fragment; expected a base URL such as "
            "http://alertmanager:9093",
        )  # fmt: skip
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    check_ca(cfg)
    auth = auth_header(cfg)
    return AlertmanagerHook(cfg, base + PATH, {"Authorization": auth} if auth else {})


def postable(alert: Alert, now_ns: int) -> dict[str, Any]:
    """One alert as Alertmanager's ``postableAlert`` (times with milliseconds, as Prometheus).

    ``startsAt`` is when it became firing (Prometheus sends the same); ``endsAt`` is
    ``RESOLVE_TIMEOUT_S`` ahead while firing, and the end (capped at now) once resolved.
    """
    out: dict[str, Any] = {"labels": dict(alert.labels), "annotations": dict(alert.annotations)}
    starts = alert.fired_ns or alert.starts_ns
    if alert.status == "resolved":
        ends = min(alert.ends_ns or now_ns, now_ns)
        starts = min(starts, ends) if starts else 0  # Alertmanager refuses ends < starts
    else:
        ends = now_ns + RESOLVE_TIMEOUT_S * 1_000_000_000
    if starts:
        out["startsAt"] = rfc3339(starts, millis=True)
    out["endsAt"] = rfc3339(ends, millis=True)
    if alert.generator_url:
        out["generatorURL"] = alert.generator_url
    return out


class AlertmanagerHook(PostHook):
    """Posts each notification's alerts to one Alertmanager; any 2xx is success."""

    def body(self, notification: Notification) -> object | None:
        """The alerts as a JSON array of ``postableAlert`` (None when there are none)."""
        now_ns = time.time_ns()
        return [postable(a, now_ns) for a in notification.alerts] or None
