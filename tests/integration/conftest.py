"""Fixtures that start a REAL Mosquitto (Debian's 2.0.x) for integration tests.

Usage::

    pytestmark = pytest.mark.integration

    def test_round_trip(mosquitto):             # started, plain, anonymous, persistent
        client.connect(mosquitto.host, mosquitto.port)   # or mosquitto.url
        mosquitto.restart()                     # same port, same DB
        mosquitto.kill()                        # SIGKILL: only the last 1 s autosave survives

    def test_two_sites(mosquitto_factory):
        a = mosquitto_factory()
        b = mosquitto_factory(extra_config=["connection to-a", f"address 127.0.0.1:{a.port}"])
        c = mosquitto_factory(start=False)      # configure, then c.start()

    def test_tls(mosquitto_factory, certs):
        broker = mosquitto_factory(extra_config=certs.listener_lines())  # mTLS, CN = user
        node = certs.client("node-01")          # TLSFiles(ca, cert, key); CN = node-01
        aiomqtt.Client("127.0.0.1", broker.port,
                       tls_params=aiomqtt.TLSParameters(**node.as_tls_kwargs()))
        SyncClient(broker.port, tls=node)       # blocking paho helper (mosquitto.py)

Every broker is stopped at teardown, pass or fail; when a test fails, the tail of each of
its brokers' logs is added to the failure report. Without ``/usr/sbin/mosquitto`` the tests
skip locally and fail under CI (env ``CI`` set).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.integration.alertmanager import Alertmanager, alertmanager_binary
from tests.integration.influxdb import InfluxDB, influxd_binary
from tests.integration.mosquitto import (
    Certs,
    Mosquitto,
    MosquittoError,
    SyncClient,
    TLSFiles,
    free_port,
    mosquitto_binary,
)
from tests.integration.prometheus import Prometheus, prometheus_binary
from tests.integration.server import stash_servers, stopped_after

__all__ = [
    "Certs",
    "InfluxDB",
    "Mosquitto",
    "MosquittoError",
    "MosquittoFactory",
    "Prometheus",
    "SyncClient",
    "TLSFiles",
    "free_port",
]

_BROKERS = pytest.StashKey[list[Mosquitto]]()
_INFLUXES = pytest.StashKey[list[InfluxDB]]()
_PROMETHEUSES = pytest.StashKey[list[Prometheus]]()


class MosquittoFactory(Protocol):
    """The ``mosquitto_factory`` fixture's call signature."""

    def __call__(
        self,
        *,
        extra_config: Iterable[str] = (),
        allow_anonymous: bool = True,
        config: str | Callable[[Mosquitto], str] | None = None,
        port: int | None = None,
        start: bool = True,
    ) -> Mosquitto: ...


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, append each broker's log tail to the report (the log stays in tmp)."""
    report = yield
    if report.failed:
        for broker in item.stash.get(_BROKERS, []):
            report.sections.append((f"mosquitto log {broker.url}", broker.log_tail()))
        for server in item.stash.get(_INFLUXES, []):
            report.sections.append((f"influxd log {server.url}", server.log_tail()))
        for prom in item.stash.get(_PROMETHEUSES, []):
            report.sections.append((f"prometheus log {prom.url}", prom.log_tail()))
    return report


@pytest.fixture
def mosquitto_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Generator[MosquittoFactory, None, None]:
    """Make (and by default start) brokers, each in its own directory; stop them all after.

    ``config`` may be a whole config text or a function of the not-yet-started broker
    (for its ``workdir``, ``port`` and ``common_lines()``) that returns one.
    """
    mosquitto_binary()  # skip or fail now, before the test body does anything
    brokers = request.node.stash.setdefault(_BROKERS, [])

    def make(
        *,
        extra_config: Iterable[str] = (),
        allow_anonymous: bool = True,
        config: str | Callable[[Mosquitto], str] | None = None,
        port: int | None = None,
        start: bool = True,
    ) -> Mosquitto:
        workdir = tmp_path_factory.mktemp("mosquitto")
        broker = Mosquitto(
            workdir,
            port=port,
            extra_config=extra_config,
            allow_anonymous=allow_anonymous,
            config=config if isinstance(config, str) or config is None else None,
        )
        if callable(config):
            broker.config = config(broker)
            broker.conf_path.write_text(broker.config)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    try:
        yield make
    finally:
        errors = []
        for broker in reversed(brokers):
            try:
                broker.stop()
            except Exception as exc:  # stop every broker, report after
                errors.append(f"{broker!r}: {exc}")
        if errors:
            pytest.fail("could not stop mosquitto: " + "; ".join(errors))


@pytest.fixture
def mosquitto(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    """A started broker: plain MQTT on 127.0.0.1:<free port>, anonymous, persistent."""
    return mosquitto_factory()


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    """A trustme CA with a server certificate for 127.0.0.1/localhost and client certs.

    ``certs.client("node-01")`` -> ``TLSFiles(ca, cert, key)`` with CN ``node-01``;
    ``certs.server`` for the broker; ``certs.ca_file`` to trust.
    """
    return Certs(tmp_path / "certs")


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """Kill any telemetryd process a test left running, whatever happened."""
    from tests.integration.pipeline import RUNNING

    yield
    while RUNNING:
        service = RUNNING.pop()
        if service.alive():
            service.kill()


class InfluxFactory(Protocol):
    """The ``influxdb_factory`` fixture's call signature."""

    def __call__(
        self, *, auth: bool = False, max_body_size: int = 25_000_000,
        tls: TLSFiles | None = None, start: bool = True,
    ) -> InfluxDB: ...  # fmt: skip


@pytest.fixture
def influxdb_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Generator[InfluxFactory, None, None]:
    """Make (and by default start) real InfluxDB 1.x servers; stop them all after."""
    influxd_binary()  # skip or fail now
    servers = stash_servers(request, _INFLUXES)

    def make(
        *, auth: bool = False, max_body_size: int = 25_000_000, tls: TLSFiles | None = None,
        start: bool = True,
    ) -> InfluxDB:  # fmt: skip
        server = InfluxDB(tmp_path_factory.mktemp("influxdb"), auth=auth,
                          max_body_size=max_body_size, tls=tls)  # fmt: skip
        servers.append(server)
        return server.start() if start else server

    for _ in stopped_after(servers):
        yield make


@pytest.fixture
def influxdb(influxdb_factory: InfluxFactory) -> InfluxDB:
    """A started InfluxDB 1.x on 127.0.0.1:<free port>, no authentication."""
    return influxdb_factory()


class PrometheusFactory(Protocol):
    """The ``prometheus_factory`` fixture's call signature."""

    def __call__(self, targets: Iterable[str], *, start: bool = True) -> Prometheus: ...


@pytest.fixture
def prometheus_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Generator[PrometheusFactory, None, None]:
    """Make (and by default start) real Prometheus servers scraping ``targets`` every 1 s."""
    prometheus_binary()  # skip or fail now
    servers = stash_servers(request, _PROMETHEUSES)

    def make(targets: Iterable[str], *, start: bool = True) -> Prometheus:
        server = Prometheus(tmp_path_factory.mktemp("prometheus"), targets)
        servers.append(server)
        return server.start() if start else server

    for _ in stopped_after(servers):
        yield make


_ALERTMANAGERS = pytest.StashKey[list[Alertmanager]]()


class AlertmanagerFactory(Protocol):
    """The ``alertmanager_factory`` fixture's call signature."""

    def __call__(self, *, users: dict[str, str] | None = None) -> Alertmanager: ...


@pytest.fixture
def alertmanager_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Generator[AlertmanagerFactory, None, None]:
    """Start real Alertmanagers (``users``: basic auth {name: password}); stop them all after."""
    alertmanager_binary()  # skip or fail now
    servers = stash_servers(request, _ALERTMANAGERS)

    def make(*, users: dict[str, str] | None = None) -> Alertmanager:
        server = Alertmanager(tmp_path_factory.mktemp("alertmanager"), users=users)
        servers.append(server)
        return server.start()

    for _ in stopped_after(servers):
        yield make


@pytest.fixture
def alertmanager(alertmanager_factory: AlertmanagerFactory) -> Alertmanager:
    """A started Alertmanager 0.25 on 127.0.0.1:<free port>: no auth, no clustering."""
    return alertmanager_factory()
