"""The real Mosquitto of the integration tests, for the one test that publishes a silence."""

from tests.integration.conftest import (  # noqa: F401 - fixtures, found by name
    mosquitto,
    mosquitto_factory,
    pytest_runtest_makereport,
)
