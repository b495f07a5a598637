"""What every HTTP hook (webhook, Alertmanager, PagerDuty, Slack, Teams, Opsgenie) shares.

URLs are checked and logins read once, at ``create()``; an answer is turned into the
dispatcher's language once, here: success, or a ``HookError`` that says whether sending
again may help (408, 429, 5xx and no answer) and carries the server's Retry-After. Each
hook then only builds its payload and picks which statuses mean success.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial
from urllib.parse import urlsplit

from exporters.hooks.base import HookError
from exporters.hooks.common import (
    HttpReceiver,
    config_error,
    label,
    load_secret,
    password,
    to_tell,
    truncate,
)
from exporters.hooks.config import AlertmanagerReceiver, WebhookReceiver
from exporters.http import HttpClient, HttpUnavailable, Reply, basic_auth, retry_after
from telemetryd.alerting.model import Notification
from telemetryd.codec import encode_json
from telemetryd.secrets import secret_path

SUCCESS_2XX = range(200, 300)


# -- configuration checked once, at create() ------------------------------------------------


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
    return check_url(cfg, "url_file" if url_file else "credential", secret.reveal(), secret=True)


def auth_header(cfg: WebhookReceiver | AlertmanagerReceiver) -> str | None:
    """The ``Authorization`` value: a bearer token or basic auth (None: neither is set).

    The token comes from ``bearer_token_file`` (else the credential
    ``<name>.bearer-token``), the password from ``password_file`` (else
    ``<name>.password``); both ways at once is refused rather than one silently winning.
    """
    has_token = bool(cfg.bearer_token_file or secret_path("", f"{cfg.name}.bearer-token"))
    if cfg.username and has_token:
        raise config_error(
            cfg, "both a bearer token and username are set: expected one way to log in"
        )
    secret = password(cfg, "the basic-auth password")
    if secret is not None:
        return basic_auth(cfg.username, secret.reveal())
    token = load_secret(
        cfg, "bearer_token_file", cfg.bearer_token_file, "bearer-token", "a token",
        required=False,
    )  # fmt: skip
    return f"Bearer {token.reveal()}" if token is not None else None


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


Request = tuple[str, object, str]
"""One POST: the URL, the JSON body, and what it is called in errors ("" for the first)."""


class PostHook:
    """A hook that POSTs JSON: what is the same for every HTTP hook, written once.

    The name, ``send_resolved``, the connection pool, leaving resolved alerts out when
    the receiver does not want them, and ``close``. A subclass says what a notification
    becomes: one body (``body``) or a request per alert (``requests``, sent by ``each``),
    and which statuses mean success (``ok``).
    """

    ok: Collection[int] = SUCCESS_2XX

    def __init__(
        self, cfg: HttpReceiver, url: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.name = cfg.name
        self.send_resolved = cfg.send_resolved
        self.url = url
        self._headers = dict(headers or {})
        self._poster = Poster(cfg)

    def body(self, notification: Notification) -> object | None:
        """The JSON body POSTed to ``url`` (None: nothing to send)."""
        raise NotImplementedError

    def requests(self, notification: Notification) -> list[Request]:
        """The requests one notification becomes: by default ``body`` to ``url``."""
        body = self.body(notification)
        return [] if body is None else [(self.url, body, "")]

    async def send(self, notification: Notification) -> None:
        """One attempt; HookError unless every request was answered with a status in ``ok``."""
        told = to_tell(notification, self.send_resolved)
        if told is None:
            return
        post = partial(self._poster.post, headers=self._headers, ok=self.ok)
        await each([partial(post, url, body, what=what) for url, body, what in self.requests(told)])

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        await self._poster.close()
