"""A real InfluxDB 1.x (Debian's ``influxdb`` package) for integration tests.

Each server gets a temporary directory holding its config, meta, data, WAL and log; its
HTTP API listens on 127.0.0.1:<free port> and keeps that port across restarts, so a sink
reconnects to the same URL after ``stop()``/``start()`` or ``kill()``/``start()``. Queries
go through the real HTTP ``/query`` endpoint. Without ``/usr/bin/influxd`` the tests skip
locally and fail under CI (a missing service is a failure there).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.mosquitto import TLSFiles, free_port, require_binary
from tests.integration.server import ServerProcess

INFLUXD_BIN = "/usr/bin/influxd"
INSTALL_HINT = "install Debian's influxdb package (scripts/test does)"


def influxd_binary() -> str:
    """The server binary, or skip (locally) / fail (in CI) when it is not installed."""
    return require_binary("influxd", INFLUXD_BIN, INSTALL_HINT)


class InfluxDBError(RuntimeError):
    """The server did not answer a query as asked."""


class InfluxDB(ServerProcess):
    """One ``influxd run -config <conf>`` subprocess with its own directory and ports."""

    name = "influxd"

    def __init__(
        self,
        workdir: Path,
        *,
        auth: bool = False,
        max_body_size: int = 25_000_000,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__(workdir, "influxd.log")
        self.port = free_port()
        self.rpc_port = free_port()
        self.auth = auth
        self.tls = tls  # the server's identity: its HTTP API then speaks https only
        self._context = ssl.create_default_context(cafile=str(tls.ca)) if tls else None
        self.conf_path = self.workdir / "influxdb.conf"
        self.conf_path.write_text(self._config(max_body_size))
        self.admin: tuple[str, str] | None = None

    def _config(self, max_body_size: int) -> str:
        d = self.workdir
        return f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {"true" if self.auth else "false"}
  log-enabled = false
  max-body-size = {max_body_size}
{self._https()}[continuous_queries]
  enabled = false
[logging]
  level = "warn"
"""

    def _https(self) -> str:
        if self.tls is None:
            return ""
        lines = ["https-enabled = true", f'https-certificate = "{self.tls.cert}"',
                 f'https-private-key = "{self.tls.key}"']  # fmt: skip
        return "".join(f"  {line}\n" for line in lines)

    @property
    def url(self) -> str:
        """The base URL of its HTTP API."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def sink_url(self, database: str, *, user: str | None = None, rp: str = "") -> str:
        """A telemetryd ``influxdb://`` (``influxdbs://`` with TLS) sink URL for ``database``."""
        who = f"{user}@" if user else ""
        scheme = "influxdbs" if self.tls else "influxdb"
        return f"{scheme}://{who}127.0.0.1:{self.port}/{database}" + (f"?rp={rp}" if rp else "")

    def command(self) -> list[str]:
        return [influxd_binary(), "run", "-config", str(self.conf_path)]

    def ready(self) -> bool:
        return self.ping()

    # -- HTTP API ---------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            ping = f"{self.url}/ping"
            with urllib.request.urlopen(ping, timeout=1, context=self._context) as response:
                return bool(response.status == 204)
        except OSError:
            return False

    def _request(
        self, path: str, params: dict[str, str], *, method: str = "GET", body: bytes | None = None
    ) -> Any:
        auth = self.admin
        if auth:
            params = {**params, "u": auth[0], "p": auth[1]}
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._context) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise InfluxDBError(
                f"{path} {exc.code}: {exc.read().decode(errors='replace')}"
            ) from None
        return json.loads(raw) if raw else None

    def query(self, q: str, database: str = "") -> list[dict[str, Any]]:
        """Run InfluxQL; the series of the first statement (``[]`` when none)."""
        params = {"q": q, "epoch": "ns"}
        if database:
            params["db"] = database
        method = "GET" if q.lstrip().upper().startswith(("SELECT", "SHOW")) else "POST"
        data = self._request("/query", params, method=method)
        result = data["results"][0]
        if "error" in result:
            raise InfluxDBError(f"{q!r}: {result['error']}")
        return list(result.get("series", []))

    def points(self, q: str, database: str) -> list[dict[str, Any]]:
        """Rows of every series a SELECT returns, as dicts (tags merged in, GROUP BY *)."""
        rows: list[dict[str, Any]] = []
        for series in self.query(q, database):
            for values in series["values"]:
                row = dict(zip(series["columns"], values, strict=True))
                row.update(series.get("tags") or {})
                row["_measurement"] = series["name"]
                rows.append(row)
        return rows

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def create_admin(self, user: str, password: str) -> None:
        """The first user, with all privileges (possible without credentials when auth is on)."""
        self.query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
        self.admin = (user, password)

    def write(self, database: str, body: str) -> None:
        """Write line protocol directly (ns precision)."""
        self._request("/write", {"db": database, "precision": "ns"}, method="POST",
                      body=body.encode())  # fmt: skip

    def __repr__(self) -> str:
        return f"InfluxDB({self.url}, dir={self.workdir})"
