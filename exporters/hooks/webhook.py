"""Alertmanager's webhook format (version 4), and what every HTTP hook shares.

A site that already has a receiver for Alertmanager's webhook (a chat bridge, a ticketing
relay, a home-grown pager) can point us at it unchanged: ``webhook_payload`` builds the
same JSON Alertmanager POSTs, and the alertmanager and exec hooks reuse it.

The rest of this module is the part every HTTP hook (webhook, PagerDuty, Slack, Teams,
Opsgenie) needs and should not repeat: checking URLs and reading secrets once at
``create()`` (a bad one is a ``ConfigError`` at startup, not a failed page at 3 am), and
turning an answer into the dispatcher's language (``HookError``, retryable or not, with
the server's Retry-After).
"""

from __future__ import annotations

import datetime
import json
import re
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from exporters.hooks import receiver_type
from exporters.hooks.base import Hook, HookError
from exporters.hooks.config import (
    AlertmanagerReceiver,
    OpsgenieReceiver,
    PagerDutyReceiver,
    SlackReceiver,
    TeamsReceiver,
    WebhookReceiver,
)
from exporters.http import HttpClient, HttpUnavailable, Reply, basic_auth, ssl_context
from exporters.influx_write import retry_after
from telemetryd.alerting.model import Alert, Notification
from telemetryd.codec import encode_json
from telemetryd.errors import ConfigError
from telemetryd.secrets import Secret, read_secret, secret_path, unreadable

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero time: what Alertmanager puts in ``endsAt`` while an alert fires."""

SUCCESS_2XX = range(200, 300)
HttpReceiver = (
    WebhookReceiver | AlertmanagerReceiver | PagerDutyReceiver | SlackReceiver | TeamsReceiver
    | OpsgenieReceiver
)  # fmt: skip
"""The receiver types that speak HTTP (their common keys: name, timeout, ca_file)."""
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP header name (RFC 9110)
# Headers the client sets itself, or that carry a secret inline: refused in ``headers``.
_RESERVED = frozenset(
    {"authorization", "content-type", "content-length", "content-encoding", "host",
     "transfer-encoding", "connection"}
)  # fmt: skip


# -- Alertmanager's webhook JSON ------------------------------------------------------------


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 in UTC (Go's zero time for 0).

    Whole seconds print without a fraction, others with Go's ``RFC3339Nano`` digits
    (trailing zeros dropped), so the text matches what Alertmanager itself sends.
    """
    if ns <= 0:
        return ZERO_TIME
    seconds, fraction = divmod(ns, 1_000_000_000)
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def alert_payload(alert: Alert) -> dict[str, Any]:
    """One entry of ``alerts[]``; ``startsAt`` is when it fired, as Prometheus sends it."""
    return {
        "status": alert.status,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(alert.fired_ns or alert.starts_ns),
        "endsAt": rfc3339(alert.ends_ns) if alert.status == "resolved" else ZERO_TIME,
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """The body Alertmanager's webhook receiver POSTs (format version 4)."""
    n = notification
    return {
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": n.truncated,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": dict(n.group_labels),
        "commonLabels": dict(n.common_labels),
        "commonAnnotations": dict(n.common_annotations),
        "externalURL": n.external_url,
        "alerts": [alert_payload(a) for a in n.alerts],
    }


def to_tell(notification: Notification, send_resolved: bool) -> Notification | None:
    """The notification as a receiver should see it (None: nothing left to say).

    Without resolved alerts when the receiver does not want them, Alertmanager's rule.
    """
    if send_resolved or not notification.resolved:
        return notification
    firing = notification.firing
    if not firing:
        return None
    n = notification
    return Notification(
        receiver=n.receiver, status="firing", group_key=n.group_key,
        group_labels=n.group_labels, common_labels=n.common_labels,
        common_annotations=n.common_annotations, alerts=firing,
        external_url=n.external_url, truncated=n.truncated,
    )  # fmt: skip


# -- wording shared by the chat and paging hooks --------------------------------------------


def truncate(text: str, limit: int) -> str:
    """At most ``limit`` characters; a cut text ends with an ellipsis so readers see it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def where(alert: Alert) -> str:
    """Where an alert is, in words: ``node17 GPU 3``, ``node17``, ``cluster c1`` or ""."""
    labels = alert.labels
    node, gpu, cluster = labels.get("node"), labels.get("gpu"), labels.get("cluster")
    if node:
        return f"{node} GPU {gpu}" if gpu else node
    if cluster:
        return f"cluster {cluster}"
    return ""


def summary(alert: Alert) -> str:
    """The one line a person reads first: the summary annotation, else the rule and place."""
    text = alert.annotations.get("summary") or alert.annotations.get("description")
    if text:
        return " ".join(text.split())
    place = where(alert)
    return f"{alert.name} on {place}" if place else alert.name or "alert"


def title(notification: Notification) -> str:
    """The group's name: its common ``alertname``, else how many alerts it holds."""
    name = notification.common_labels.get("alertname") or notification.group_labels.get("alertname")
    return name or f"{len(notification.alerts)} alerts"


# -- configuration checked once, at create() ------------------------------------------------


def label(cfg: HttpReceiver) -> str:
    """How errors name a receiver: ``pagerduty receiver 'oncall'``."""
    return f"{receiver_type(cfg)} receiver {cfg.name!r}"


def config_error(cfg: HttpReceiver, text: str) -> ConfigError:
    """A one-line configuration problem naming the receiver."""
    return ConfigError([f"{label(cfg)}: {text}"])


def check_url(cfg: HttpReceiver, key: str, url: str, *, secret: bool = False) -> str:
    """``url`` if it is http(s) with a host, else ConfigError (not echoing a secret URL)."""
    url = url.strip()
    why = _url_problem(url)
    if why is None:
        return url
    shown = f"a URL with {why}" if secret else repr(url)
    raise config_error(cfg, f"{key}: expected an http:// or https:// URL with a host, got {shown}")


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here
        host = parts.hostname
    except ValueError as exc:
        return f"a bad address ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
    if not host:
        return "no host"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "white space in it"
    return None


def load_secret(
    cfg: HttpReceiver, key: str, configured: str, credential: str, what: str, *, required: bool
) -> Secret | None:
    """The secret from ``configured`` or the credential ``<name>.<credential>``, stripped.

    Read at ``create()``, so a missing or unreadable file stops the aggregator's start
    with a line naming the key, instead of every notification failing later.
    """
    name = f"{cfg.name}.{credential}"
    path = secret_path(configured, name)
    if path is None:
        if not required:
            return None
        raise config_error(
            cfg, f"{key} is empty and there is no systemd credential {name}: expected {what}"
        )
    source = key if configured else f"credential {name}"
    try:
        value = read_secret(path).reveal().strip()
    except OSError as exc:
        raise config_error(
            cfg, f"{source}: cannot read {path}: {exc.strerror or exc}; expected {what}"
        ) from None
    if not value:
        raise config_error(cfg, f"{source}: {path} is empty; expected {what}")
    return Secret(value)


def endpoint(cfg: HttpReceiver, url: str, url_file: str, what: str) -> str:
    """The URL from ``url``, else ``url_file``, else the credential ``<name>.url``."""
    if url and url_file:
        raise config_error(cfg, "url and url_file are both set: expected one of them")
    if url:
        return check_url(cfg, "url", url)
    if not url_file and secret_path("", f"{cfg.name}.url") is None:
        raise config_error(
            cfg, f"no URL: expected url, url_file or the systemd credential {cfg.name}.url"
        )
    secret = load_secret(cfg, "url_file", url_file, "url", what, required=True)
    assert secret is not None
    return check_url(cfg, "url_file" if url_file else "credential", secret.reveal(), secret=True)


def check_ca(cfg: HttpReceiver) -> None:
    """A ``ca_file`` that cannot be read or parsed is a ConfigError now."""
    if not cfg.ca_file:
        return
    why = unreadable(cfg.ca_file)
    if why is None:
        try:
            ssl_context(cfg.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            why = f"{cfg.ca_file} is not a PEM CA bundle ({exc})"
    if why is not None:
        raise config_error(cfg, f"ca_file: {why}; expected a PEM file of CA certificates")


# -- sending ------------------------------------------------------------------------------


def server_says(reply: Reply) -> str:
    """The reason in an error body: JSON ``message`` (+ ``errors``), else the text."""
    try:
        data = json.loads(reply.body)
    except ValueError:
        return reply.text(300)
    if isinstance(data, dict):
        parts = [data.get("message"), data.get("error")]
        errors = data.get("errors")
        if isinstance(errors, list):
            parts += [e for e in errors if isinstance(e, str)]
        elif isinstance(errors, dict):  # Opsgenie: {"field": "what is wrong"}
            parts += [f"{k}: {v}" for k, v in errors.items()]
        text = "; ".join(p for p in parts if isinstance(p, str) and p)
        if text:
            return truncate(" ".join(text.split()), 300)
    return reply.text(300)


def refusal(who: str, reply: Reply) -> HookError:
    """The HookError for an answer that was not a success.

    408, 429 and 5xx may pass (retryable, with the server's Retry-After); any other
    status means the request itself is refused and sending it again will not help.
    """
    retryable = reply.status in (408, 429) or reply.status >= 500
    if 300 <= reply.status < 400:  # not followed: the POST would lose its body
        return HookError(
            f"{who} answered {reply.status}, a redirect: configure the URL it points to",
            retryable=False,
        )
    said = server_says(reply)
    message = f"{who} answered {reply.status}" + (f": {said}" if said else "")
    if retryable:
        wait = retry_after(reply.headers.get("retry-after"))
        return HookError(message, retryable=True, retry_after=wait)
    return HookError(message + " (refused, not retried)", retryable=False)


class Poster:
    """One receiver's connection pool: POSTs JSON, returns on success, else HookError."""

    def __init__(self, cfg: HttpReceiver) -> None:
        self.label = label(cfg)
        self._client = HttpClient(timeout_s=cfg.timeout, ca_file=cfg.ca_file)

    async def post(
        self,
        url: str,
        payload: object,
        *,
        headers: Mapping[str, str] | None = None,
        ok: Collection[int] = SUCCESS_2XX,
        what: str = "",
    ) -> Reply:
        """One attempt; ``what`` names the request in errors (never the secret URL)."""
        who = f"{self.label}{' ' + what if what else ''}"
        head = {"Content-Type": "application/json", **(headers or {})}
        try:
            reply = await self._client.request(
                "POST", url, body=encode_json(payload), headers=head, allow_redirects=False
            )
        except HttpUnavailable as exc:
            raise HookError(f"{who}: no answer: {exc}", retryable=True) from None
        if reply.status in ok:
            return reply
        raise refusal(who, reply)

    async def close(self) -> None:
        """Release the pool; safe to call twice."""
        await self._client.close()


async def each(attempts: Sequence[Callable[[], Awaitable[object]]]) -> None:
    """Run per-alert requests (PagerDuty, Opsgenie) in order, as one attempt.

    A retryable failure stops at once: the service is down or busy, and the dispatcher
    sends the whole notification again (both services deduplicate by fingerprint, so the
    alerts that went through are not doubled). A refusal of one alert does not keep the
    others from being told; the refusals are raised together at the end.
    """
    refused: list[HookError] = []
    for attempt in attempts:
        try:
            await attempt()
        except HookError as exc:
            if exc.retryable:
                raise
            refused.append(exc)
    if refused:
        more = f" (and {len(refused) - 1} more alerts refused)" if len(refused) > 1 else ""
        raise HookError(f"{refused[0]}{more}", retryable=False)


# -- the webhook hook -----------------------------------------------------------------------


class WebhookHook:
    """POSTs Alertmanager's webhook JSON to one URL, with optional bearer or basic auth."""

    def __init__(self, cfg: WebhookReceiver, url: str, headers: dict[str, str]) -> None:
        self.name = cfg.name
        self.send_resolved = cfg.send_resolved
        self._url = url
        self._headers = headers
        self._poster = Poster(cfg)

    async def send(self, notification: Notification) -> None:
        """Deliver once; any 2xx is accepted, as Alertmanager's webhook notifier does."""
        told = to_tell(notification, self.send_resolved)
        if told is not None:
            await self._poster.post(self._url, webhook_payload(told), headers=self._headers)

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        await self._poster.close()


def _headers(cfg: WebhookReceiver) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in cfg.headers.items():
        if not _TOKEN.match(key):
            raise config_error(cfg, f"headers: {key!r} is not a header name")
        if key.lower() in _RESERVED:
            raise config_error(
                cfg,
                f"headers: {key} is set by the hook itself (for credentials use "
                "bearer_token_file or username and password_file)",
            )
        if any(c in value for c in "\r\n\x00"):
            raise config_error(cfg, f"headers: the value of {key} must be one line")
        headers[key] = value
    token = load_secret(
        cfg, "bearer_token_file", cfg.bearer_token_file, "bearer-token", "a token",
        required=False,
    )  # fmt: skip
    if cfg.password_file and not cfg.username:
        raise config_error(cfg, "password_file is set without username: expected both")
    if cfg.username:
        if token is not None:
            raise config_error(
                cfg, "both a bearer token and username are set: expected one way to log in"
            )
        password = load_secret(
            cfg, "password_file", cfg.password_file, "password", "the basic-auth password",
            required=True,
        )  # fmt: skip
        assert password is not None
        headers["Authorization"] = basic_auth(cfg.username, password.reveal())
    elif token is not None:
        headers["Authorization"] = f"Bearer {token.reveal()}"
    return headers


def create(cfg: WebhookReceiver) -> Hook:
    """The hook for a ``type = "webhook"`` receiver; its URL and secrets are read now."""
    url = endpoint(cfg, cfg.url, cfg.url_file, "a file with the webhook URL")
    check_ca(cfg)
    return WebhookHook(cfg, url, _headers(cfg))
