"""A real Alertmanager (Debian's ``prometheus-alertmanager``, 0.25) for the hook tests.

Each server gets a temporary directory holding its config, its data (silences, the
notification log) and its log; it listens on 127.0.0.1:<free port> with clustering off
(an empty ``--cluster.listen-address``: no gossip port, no peers to wait for) and routes
every alert to a receiver that sends nothing, so what a test sees is what the API kept.
``users`` turns on HTTP basic auth through a web config file (bcrypt hashes, as
Alertmanager requires). Without ``/usr/bin/prometheus-alertmanager`` the tests skip
locally and fail under CI.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from tests.integration.mosquitto import free_port, require_binary
from tests.integration.server import ServerProcess

ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"
INSTALL_HINT = "install Debian's prometheus-alertmanager package (scripts/test does)"

CONFIG = """route:
  receiver: blackhole
  group_wait: 0s
receivers:
  - name: blackhole
"""


def alertmanager_binary() -> str:
    """The server binary, or skip (locally) / fail (in CI)."""
    return require_binary("prometheus-alertmanager", ALERTMANAGER_BIN, INSTALL_HINT)


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for Alertmanager's ``basic_auth_users`` (libcrypt's ``$2b$``).

    The standard library's ``crypt`` is the one bcrypt at hand without a new dependency;
    it is deprecated (gone in Python 3.13), hence the silenced warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4))


class AlertmanagerError(RuntimeError):
    """The server did not answer as asked."""


class Alertmanager(ServerProcess):
    """One ``prometheus-alertmanager`` subprocess; ``users`` {name: password} for basic auth."""

    name = "alertmanager"

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None) -> None:
        super().__init__(workdir, "alertmanager.log")
        self.port = free_port()
        self.users = dict(users or {})
        self.conf_path = self.workdir / "alertmanager.yml"
        self.conf_path.write_text(CONFIG)
        self.web_conf_path = self.workdir / "web.yml"
        if self.users:
            lines = [
                f"  {json.dumps(u)}: {json.dumps(bcrypt_hash(p))}" for u, p in self.users.items()
            ]
            self.web_conf_path.write_text("basic_auth_users:\n" + "\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        """The base URL of its HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        command = [alertmanager_binary(), f"--config.file={self.conf_path}",
                   f"--storage.path={self.workdir / 'data'}",
                   f"--web.listen-address=127.0.0.1:{self.port}",
                   "--cluster.listen-address="]  # fmt: skip
        if self.users:
            command.append(f"--web.config.file={self.web_conf_path}")
        return command

    def _headers(self) -> dict[str, str]:
        if not self.users:
            return {}
        user, password = next(iter(self.users.items()))
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def ready(self) -> bool:
        request = urllib.request.Request(f"{self.url}/-/ready", headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: object) -> Any:
        """``GET /api/v2/<path>`` with ``params`` (booleans as true/false): the decoded answer."""
        query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
        url = f"{self.url}/api/v2/{path}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AlertmanagerError(f"{path} {params}: {exc.code} {exc.read().decode()}") from None

    def alerts(self, **params: object) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: the alerts it holds (by default the active, unresolved ones)."""
        return list(self.api("alerts", **params))

    def __repr__(self) -> str:
        return f"Alertmanager({self.url}, dir={self.workdir})"
