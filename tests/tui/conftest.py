"""The real Mosquitto of the integration tests, for the one test that publishes a silence.

Local times on screen ("energy since 12:00") are drawn in UTC, so snapshots do not depend
on the machine's time zone.
"""

import os
import time

from tests.integration.conftest import (  # noqa: F401 - fixtures, found by name
    mosquitto,
    mosquitto_factory,
    pytest_runtest_makereport,
)

os.environ["TZ"] = "UTC"
time.tzset()
