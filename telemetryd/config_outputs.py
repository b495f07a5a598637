"""The sections for where the aggregator's data goes: InfluxDB and Prometheus.

Split from config.py to keep each module small; ``telemetryd.config`` re-exports them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from telemetryd.configbase import Section as _Section
from telemetryd.configbase import doc as _doc


class InfluxConfig(_Section):
    """How the InfluxDB sinks (``influxdb2://`` and ``influxdb://``) log in and write."""

    token_file: Annotated[
        str,
        _doc(
            "File holding the InfluxDB 2 API token. Empty: $CREDENTIALS_DIRECTORY/"
            "influxdb-token when present (LoadCredential=influxdb-token:PATH)."
        ),
    ] = ""
    password_file: Annotated[
        str,
        _doc(
            "File holding the InfluxDB 1.x password of the user named in the URL "
            "(influxdb://USER@host:8086/DB). Empty: $CREDENTIALS_DIRECTORY/influxdb-password "
            "when present."
        ),
    ] = ""
    ca_file: Annotated[
        str, _doc("CA bundle that signed the server's certificate (https). Empty: system store.")
    ] = ""
    timeout: Annotated[
        float, _doc("Seconds one write request may take before it is retried.", gt=0, le=600)
    ] = 30.0
    batch_lines: Annotated[
        int,
        _doc("Lines per write request, at most (InfluxDB advises about 5000).", ge=1, le=1_000_000),
    ] = 5000
    gzip: Annotated[bool, _doc("Compress write requests (Content-Encoding: gzip).")] = True
    parallel: Annotated[
        int,
        _doc(
            "Write requests in flight at once, at most (InfluxDB ingests on several cores).",
            ge=1,
            le=16,
        ),
    ] = 2
    auth_retry: Annotated[
        float,
        _doc(
            "Seconds at least between retries while the server refuses the credentials or "
            "the database/bucket does not exist (401, 403, 404): nothing is dropped meanwhile.",
            ge=1,
            le=3600,
        ),
    ] = 30.0


class PrometheusConfig(_Section):
    """What ``/metrics`` (served on ``listen``) shows: the fleet's live values."""

    labels: Annotated[
        Literal["dcgm", "snake"],
        _doc(
            "Label names of GPU series: 'dcgm' as dcgm-exporter (gpu, UUID, pci_bus_id, "
            "device, modelName, Hostname) so its dashboards and rules work unchanged; "
            "'snake' (uuid, model_name, hostname) for sites that lint their metrics."
        ),
    ] = "dcgm"
    stale_after: Annotated[
        float,
        _doc("Seconds after a node's last report before its series are removed.", gt=0),
    ] = 300.0
    xid_window: Annotated[
        float,
        _doc(
            "Seconds an XID stays visible in DCGM_FI_DEV_XID_ERRORS and "
            "DCGM_EXP_XID_ERRORS_COUNT (as dcgm-exporter's window), then reads 0 again.",
            gt=0,
        ),
    ] = 300.0
    host: Annotated[bool, _doc("Also serve each node's host values (CPU, memory, disks...).")] = (
        True
    )
