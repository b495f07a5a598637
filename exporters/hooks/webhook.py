"""Alertmanager's webhook format (version 4), POSTed to one URL.

A site that already has a receiver for Alertmanager's webhook (a chat bridge, a ticketing
relay, a home-grown pager) can point us at it unchanged: the body is the JSON Alertmanager
itself POSTs (``exporters.hooks.common.webhook_payload``, which the exec hook hands to its
scripts too), with optional bearer or basic auth and extra headers.
"""

from __future__ import annotations

import re

from exporters.hooks.base import Hook
from exporters.hooks.common import check_ca, config_error, webhook_payload
from exporters.hooks.config import WebhookReceiver
from exporters.hooks.httppost import PostHook, auth_header, endpoint
from telemetryd.alerting.model import Notification

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP header name (RFC 9110)
# Headers the client sets itself, or that carry a secret inline: refused in ``headers``.
_RESERVED = frozenset(
    {"authorization", "content-type", "content-length", "content-encoding", "host",
     "transfer-encoding", "connection"}
)  # fmt: skip


class WebhookHook(PostHook):
    """POSTs Alertmanager's webhook JSON; any 2xx is success, as in Alertmanager's notifier."""

    def body(self, notification: Notification) -> object:
        """Alertmanager's webhook body (version 4)."""
        return webhook_payload(notification)


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
    auth = auth_header(cfg)
    if auth is not None:
        headers["Authorization"] = auth
    return headers


def create(cfg: WebhookReceiver) -> Hook:
    """The hook for a ``type = "webhook"`` receiver; its URL and secrets are read now."""
    url = endpoint(cfg, cfg.url, cfg.url_file, "a file with the webhook URL")
    check_ca(cfg)
    return WebhookHook(cfg, url, _headers(cfg))
