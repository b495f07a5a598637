"""Broker and sink URLs, parsed once with errors that say what form was expected.

Secrets never travel in URLs (they end up in shell history, ``ps`` and logs): a password
or token in a URL is refused with a pointer to the ``*_file`` keys instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, parse_qs, urlsplit

BROKER_FORM = "mqtt://[user@]host[:port] or mqtts://[user@]host[:port]"
SINK_FORMS = (
    "sqlite:///ABSOLUTE/PATH, influxdb2://host:8086?org=O&bucket=B "
    "(influxdb2s:// or ?tls=1 for https), influxdb://host:8086/DB[?rp=RP]"
)


class UrlError(ValueError):
    """A URL that is not of the expected form; the message says which form."""


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """Where an MQTT client connects."""

    host: str
    port: int
    tls: bool
    username: str | None = None

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SinkUrl:
    """Where the aggregator writes: a store kind and its location."""

    kind: Literal["sqlite", "influxdb2", "influxdb"]
    path: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False
    org: str = ""
    bucket: str = ""
    database: str = ""
    retention_policy: str = ""
    username: str | None = None
    options: tuple[tuple[str, str], ...] = ()  # other query parameters, e.g. retention_days

    def option(self, key: str, default: str = "") -> str:
        """A query parameter of the URL (sink-specific settings)."""
        return dict(self.options).get(key, default)


def redact(url: str) -> str:
    """``url`` with any password or token replaced by ***, for error messages and logs."""
    url = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"([?&](?:token|password)=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def _split(url: str, form: str) -> SplitResult:
    """Split ``url``; a URL that does not parse says which form was expected (``form``)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises
    except ValueError as exc:
        if "port" in str(exc).lower():
            raise UrlError(f"{redact(url)!r}: the port is not a number from 1 to 65535") from None
        raise UrlError(f"{redact(url)!r}: not a valid URL ({exc}); expected {form}") from None
    return parts


def _port(parts: SplitResult, url: str, default: int) -> int:
    if parts.port is None:
        return default
    if parts.port == 0:
        raise UrlError(f"{redact(url)!r}: port 0 is not a port; expected 1 to 65535")
    return parts.port


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse ``mqtt://`` / ``mqtts://`` URLs; raise UrlError naming the expected form."""
    parts = _split(url, BROKER_FORM)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise UrlError(f"{redact(url)!r}: scheme must be mqtt or mqtts; expected {BROKER_FORM}")
    if parts.password is not None:
        raise UrlError(
            f"{redact(url)!r}: contains a password; secrets never go in URLs, use password_file "
            "or the systemd credential mqtt-password"
        )
    if not parts.hostname:
        raise UrlError(f"{redact(url)!r}: no host; expected {BROKER_FORM}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UrlError(f"{redact(url)!r}: unexpected path or query; expected {BROKER_FORM}")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(
        host=parts.hostname,
        port=_port(parts, url, 8883 if tls else 1883),
        tls=tls,
        username=parts.username or None,
    )


def _known_options(url: str, query: dict[str, str], known: tuple[str, ...]) -> None:
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise UrlError(
            f"{redact(url)!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    if query.get("tls", "1") not in ("0", "1", "true", "false"):
        raise UrlError(f"{redact(url)!r}: tls={query['tls']!r}; expected 1 or 0")


def parse_sink_url(url: str) -> SinkUrl:
    """Parse a sink URL (sqlite, influxdb2, influxdb 1.x); raise UrlError naming the forms."""
    parts = _split(url, SINK_FORMS)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if parts.password is not None or "token" in query or "password" in query:
        raise UrlError(
            f"{redact(url)!r}: contains a secret; secrets never go in URLs, use the sink's "
            "token or password file, or a systemd credential"
        )
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise UrlError(f"{redact(url)!r}: expected sqlite:///ABSOLUTE/PATH (three slashes)")
        return SinkUrl(kind="sqlite", path=parts.path, options=tuple(sorted(query.items())))
    if parts.scheme in ("influxdb2", "influxdb2s"):
        if not parts.hostname:
            raise UrlError(f"{redact(url)!r}: no host; expected {SINK_FORMS}")
        if parts.username:
            raise UrlError(
                f"{redact(url)!r}: InfluxDB 2 logs in with a token, not a user; drop "
                f"{parts.username!r}@ and set aggregator.influxdb.token_file"
            )
        _known_options(url, query, ("org", "bucket", "tls"))
        missing = [k for k in ("org", "bucket") if not query.get(k)]
        if missing:
            raise UrlError(
                f"{redact(url)!r}: missing {' and '.join(missing)}; expected ?org=O&bucket=B"
            )
        tls = parts.scheme == "influxdb2s" or query.get("tls") in ("1", "true")
        return SinkUrl(
            kind="influxdb2",
            host=parts.hostname,
            port=_port(parts, url, 8086),
            tls=tls,
            org=query["org"],
            bucket=query["bucket"],
        )
    if parts.scheme in ("influxdb", "influxdbs"):
        database = parts.path.strip("/")
        if not parts.hostname or not database or "/" in database:
            raise UrlError(f"{redact(url)!r}: expected influxdb://host:8086/DB[?rp=RP]")
        _known_options(url, query, ("rp", "tls"))
        return SinkUrl(
            kind="influxdb",
            host=parts.hostname,
            port=_port(parts, url, 8086),
            tls=parts.scheme == "influxdbs" or query.get("tls") in ("1", "true"),
            database=database,
            retention_policy=query.get("rp", ""),
            username=parts.username or None,
        )
    raise UrlError(f"{redact(url)!r}: unknown sink scheme {parts.scheme!r}; expected {SINK_FORMS}")


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:9400`` for IPv6); raise UrlError naming the form."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UrlError(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:9400 or [::]:9400")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise UrlError(f"{value!r}: no host; expected HOST:PORT, e.g. 0.0.0.0:9400")
    return host, int(port)
