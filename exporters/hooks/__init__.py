"""On-call channels: one module per way an alert leaves (webhook, PagerDuty, Slack, ...).

Each module exposes ``create(cfg) -> Hook`` for its receiver type; ``make_hook`` finds the
module by the receiver's ``type`` and imports it only then, so a site that never pages
through Opsgenie never loads that code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporters.hooks.base import Hook
    from exporters.hooks.config import Receiver

MODULES = {
    "webhook": "exporters.hooks.webhook",
    "alertmanager": "exporters.hooks.alertmanager",
    "pagerduty": "exporters.hooks.pagerduty",
    "slack": "exporters.hooks.slack",
    "teams": "exporters.hooks.teams",
    "opsgenie": "exporters.hooks.opsgenie",
    "email": "exporters.hooks.email",
    "exec": "exporters.hooks.exec",
}


def receiver_type(cfg: Receiver) -> str:
    """The ``type`` key a receiver was configured with (the tag of its struct)."""
    return str(cfg.__struct_config__.tag)


def make_hook(cfg: Receiver) -> Hook:
    """The hook for one configured receiver (its secrets are read here, once)."""
    module = importlib.import_module(MODULES[receiver_type(cfg)])
    hook: Hook = module.create(cfg)
    return hook
