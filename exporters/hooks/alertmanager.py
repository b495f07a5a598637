"""Push alerts to an Alertmanager (API v2), which then routes, groups and silences them.

For sites that already run Alertmanager: telemetryd decides *that* an alert fires, their
Alertmanager decides *who* hears of it. ``POST {url}/api/v2/alerts`` takes a JSON array of
postable alerts (labels, annotations, startsAt, endsAt, generatorURL).

Alertmanager keeps no link to its sources: an alert it holds resolves by itself once its
``endsAt`` passes. So a firing alert is pushed with ``endsAt`` = now + ``RESOLVE_TIMEOUT_S``
(1 h) and must be pushed again before that runs out: **the route's ``repeat_interval`` for
an alertmanager receiver must be below one hour** (a few minutes is usual), or the alert
vanishes from Alertmanager while it still fires here. A resolved alert is pushed with its
own end time (never later than now), which Alertmanager takes as resolved at once; that
needs the two hosts' clocks in sync (NTP), as with Prometheus. Keep ``send_resolved`` on
for this receiver: without it a resolved alert lingers for up to an hour.

Authentication: ``bearer_token_file`` (else the credential ``<name>.bearer-token`` when it
exists) or ``username`` with ``password_file`` (else the credential ``<name>.password``),
as sent to an Alertmanager behind ``--web.config.file`` or a reverse proxy.
"""

from __future__ import annotations

import datetime
import time
import urllib.parse
from typing import Any

from exporters.hooks.base import HookError
from exporters.hooks.config import AlertmanagerReceiver
from exporters.http import HttpClient, HttpUnavailable, Reply, basic_auth
from exporters.influx_write import retry_after
from telemetryd.alerting.model import Alert, Notification
from telemetryd.codec import encode_json
from telemetryd.errors import ConfigError
from telemetryd.secrets import read_secret, secret_path, unreadable

RESOLVE_TIMEOUT_S = 3600
"""How long Alertmanager keeps a firing alert without hearing of it again (its endsAt)."""

PATH = "/api/v2/alerts"


def create(cfg: AlertmanagerReceiver) -> AlertmanagerHook:
    """The hook for one ``type = "alertmanager"`` receiver; reads its secrets now, once."""
    where = f'receiver "{cfg.name}" (alertmanager)'
    base = _base_url(cfg.url, where)
    if cfg.ca_file and (why := unreadable(cfg.ca_file)):
        raise ConfigError([f"{where}: ca_file: {why}; expected a readable PEM CA bundle"])
    headers = {"Content-Type": "application/json"}
    if cfg.username:
        if cfg.bearer_token_file:
            raise ConfigError([f"{where}: bearer_token_file and username both set; expected one"])
        password = _secret(cfg.password_file, f"{cfg.name}.password", where, "password_file")
        if password is None:
            raise ConfigError([
                f"{where}: username set but no password: expected password_file or the "
                f"systemd credential {cfg.name}.password"
            ])  # fmt: skip
        headers["Authorization"] = basic_auth(cfg.username, password)
        return AlertmanagerHook(cfg, base + PATH, headers)
    if cfg.password_file:
        raise ConfigError([f"{where}: password_file set without username; expected both"])
    token = _secret(cfg.bearer_token_file, f"{cfg.name}.bearer-token", where, "bearer_token_file")
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return AlertmanagerHook(cfg, base + PATH, headers)


def _base_url(url: str, where: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError([
            f"{where}: url {url!r} is not an http(s) URL; expected e.g. http://alertmanager:9093"
        ])  # fmt: skip
    if parts.query or parts.fragment:
        raise ConfigError([f"{where}: url {url!r} has a query or fragment; expected a base URL"])
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _secret(configured: str, credential: str, where: str, key: str) -> str | None:
    """A secret from its ``*_file`` or systemd credential; None when neither is set."""
    path = secret_path(configured, credential)
    if path is None:
        return None
    try:
        return read_secret(path).reveal()
    except OSError as exc:
        raise ConfigError([f"{where}: {key} {path}: {exc.strerror or exc}"]) from None


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC with milliseconds (Go parses it)."""
    when = datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.UTC)
    when = when.replace(microsecond=(ns % 1_000_000_000) // 1000)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def postable(alert: Alert, now_ns: int) -> dict[str, Any]:
    """One alert as Alertmanager's ``postableAlert``.

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
        out["startsAt"] = rfc3339(starts)
    out["endsAt"] = rfc3339(ends)
    if alert.generator_url:
        out["generatorURL"] = alert.generator_url
    return out


class AlertmanagerHook:
    """Posts each notification's alerts to one Alertmanager."""

    def __init__(self, cfg: AlertmanagerReceiver, url: str, headers: dict[str, str]) -> None:
        self.name = cfg.name
        self.send_resolved = cfg.send_resolved
        self.url = url
        self._headers = headers
        self._timeout = cfg.timeout
        self._ca_file = cfg.ca_file
        self._client: HttpClient | None = None

    async def send(self, notification: Notification) -> None:
        """Post the alerts once; HookError says whether another attempt may help."""
        if not notification.alerts:
            return
        now_ns = time.time_ns()
        body = encode_json([postable(a, now_ns) for a in notification.alerts])
        if self._client is None:
            self._client = HttpClient(timeout_s=self._timeout, ca_file=self._ca_file)
        try:
            reply = await self._client.request("POST", self.url, body=body, headers=self._headers)
        except HttpUnavailable as exc:
            raise HookError(f"alertmanager {self.url}: {exc}", retryable=True) from None
        if 200 <= reply.status < 300:
            return
        raise refused(f"alertmanager {self.url}", reply)

    async def close(self) -> None:
        """Release the connection pool; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def refused(what: str, reply: Reply) -> HookError:
    """The HookError for a non-2xx answer: 408, 429 and 5xx may pass, other codes will not."""
    retryable = reply.status in (408, 429) or reply.status >= 500
    return HookError(
        f"{what} answered {reply.status}: {reply.text()}",
        retryable=retryable,
        retry_after=retry_after(reply.headers.get("retry-after")) if retryable else None,
    )
