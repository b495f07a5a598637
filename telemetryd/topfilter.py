"""What ``top``'s filter line matches, with no UI in it: node names, states, jobs and pods.

An operator asks "where does job 1234 run" as often as "show me rack 7", so one line does
both: ``/1234`` shows the nodes whose GPUs job 1234 holds, ``/llama`` the nodes of pods
named like it, ``/rack7`` the nodes named like it. Job ids match whole (``1234`` must not
bring in job 12345's nodes); names and pods match any part, in any case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from telemetryd.topview import NodeRow

AlertFilter = Literal["all", "alerting", "ok"]
ALERT_FILTERS: tuple[AlertFilter, ...] = ("all", "alerting", "ok")
REGEX_PREFIXES = ("re:", "~")


class FilterError(ValueError):
    """A filter text that cannot be used (a bad regular expression), in one line."""


@dataclass(frozen=True)
class RowFilter:
    """What the table and heatmap show: text or regex, one cluster, alert state."""

    text: str = ""
    cluster: str | None = None
    alerts: AlertFilter = "all"
    pattern: re.Pattern[str] | None = field(default=None, compare=False)

    def matches(self, row: NodeRow) -> bool:
        """Whether the row passes every part of the filter."""
        if self.cluster is not None and row.cluster != self.cluster:
            return False
        if self.alerts == "alerting" and not row.alerts:
            return False
        if self.alerts == "ok" and row.alerts:
            return False
        if self.pattern is not None:
            search = self.pattern.search
            return any(search(t) for t in (row.node, row.key, row.state, *row.jobs, *row.pods))
        if self.text:
            needle = self.text.lower()
            return (
                needle in row.key.lower()
                or needle == row.state
                or self.text in row.jobs
                or any(needle in pod.lower() for pod in row.pods)
            )
        return True

    def describe(self) -> str:
        """The filter in a few words for the status line ("" when it passes everything)."""
        parts = []
        if self.text:
            parts.append(f"{'regex' if self.pattern is not None else 'text'} {self.text!r}")
        if self.cluster is not None:
            parts.append(f"cluster {self.cluster}")
        if self.alerts != "all":
            parts.append(f"alerts: {self.alerts}")
        return ", ".join(parts)


def make_filter(text: str, cluster: str | None = None, alerts: AlertFilter = "all") -> RowFilter:
    """A filter from what the operator typed: ``re:`` or ``~`` starts a regular expression.

    Text matches a substring of ``cluster/node`` (any case), a state word exactly
    (``offline``), a job id exactly (``1234``) or a substring of a pod's
    ``namespace/pod`` (any case). A regular expression is searched in the node name,
    ``cluster/node``, the state word, the job ids and the pods.

    Raises:
        FilterError: the regular expression does not compile, with where and why.
    """
    text = text.strip()
    for prefix in REGEX_PREFIXES:
        if text.startswith(prefix):
            expression = text[len(prefix) :]
            try:
                pattern = re.compile(expression, re.IGNORECASE)
            except re.error as exc:
                raise FilterError(
                    f"filter {text!r}: bad regular expression ({exc}); expected a Python "
                    f"regular expression after {prefix!r}, e.g. ~^gpu-0[1-4]$ or ~^81(23|24)$"
                ) from None
            return RowFilter(expression, cluster, alerts, pattern)
    return RowFilter(text, cluster, alerts)
