"""The ``[aggregator.alerts]`` section: where rules and routing come from.

Rules and routing live in their own files (a directory of rule files, one routing file in
Alertmanager's shape) because they change on their own schedule and are reviewed by
other people than the rest of the aggregator's settings; this section only points at them.
"""

from __future__ import annotations

from typing import Annotated

from telemetryd.codec import field
from telemetryd.configbase import Section as _Section
from telemetryd.configbase import doc as _doc


class AlertsConfig(_Section):
    """``[aggregator.alerts]``: rules, routing and node labels of the alert engine."""

    enabled: Annotated[bool, _doc("Evaluate alert rules and notify receivers.")] = True
    default_rules: Annotated[
        bool, _doc("Load the shipped GPU rule pack (docs/alerts.md lists every rule).")
    ] = True
    disabled_rules: Annotated[
        list[str],
        _doc(
            "Rules of the default pack to leave out, by name. To change one instead, put a "
            "rule of the same name in rules_dir: it replaces the shipped one."
        ),
    ] = field(default_factory=list)
    rules_dir: Annotated[
        str,
        _doc(
            "Directory of *.toml rule files loaded after the default pack (check them with "
            "'telemetryd alerts check-rules DIR'). Empty: none."
        ),
    ] = ""
    routing_file: Annotated[
        str,
        _doc(
            "TOML file of receivers ([[receiver]]), the route tree ([route]) and inhibit "
            "rules ([[inhibit]]); see examples/alerting.toml. Empty: alerts are evaluated, "
            "published on MQTT and listed, but no one is notified."
        ),
    ] = ""
    evaluation_interval: Annotated[
        float,
        _doc(
            "Seconds between evaluations of what no report triggers: node silence, event "
            "timeouts, group and aggregator rules (reports are evaluated as they arrive).",
            gt=0,
            le=60,
        ),
    ] = 1.0
    node_labels: Annotated[
        dict[str, dict[str, str]],
        _doc(
            "Labels added to the alerts of nodes whose name matches a glob, e.g. "
            '{ "gpu-a-*" = { rack = "a" } }; group rules can group by them.'
        ),
    ] = field(default_factory=dict)
    runbook_base: Annotated[
        str,
        _doc(
            "Where the rule pack's runbooks are read ({{ runbook_base }} in annotations): "
            "docs/alerts.md of the installed version, or the URL of the site's own copy of it."
        ),
    ] = "docs/alerts.md"
    external_url: Annotated[
        str,
        _doc("Base URL of a page about an alert (generatorURL / links). Empty: none."),
    ] = ""
    mqtt_silences: Annotated[
        bool,
        _doc(
            "Accept silences published on telemetry/v1/<cluster>/_silences/request (what "
            "telemetryd top sends when its allow_silence is on). Off by default because "
            "anyone who can publish there can mute alerts: before turning it on, restrict "
            "that topic with broker ACLs to the operators' user (docs/alerts.md)."
        ),
    ] = False
