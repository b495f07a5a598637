"""Inhibition: an alert that explains others mutes them (a node down mutes its GPU alerts).

Alertmanager's semantics: a target alert is muted while some *firing* source alert
matches the rule's ``source_matchers``, the target matches ``target_matchers``, and every
``equal`` label has the same value on both (a missing label equals an empty one). An alert
that matches both sides cannot be inhibited by alerts that also match both sides, so two
instances of one alert never mute each other.

Source alerts are indexed per rule by their ``equal`` values, so asking whether an alert
is inhibited costs one dictionary look-up per rule, however many alerts fire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from telemetryd.alerting.matchers import matches_all
from telemetryd.alerting.model import Alert
from telemetryd.alerting.routing import InhibitRule

_Key = tuple[str, ...]


class _RuleIndex:
    """The firing sources of one rule: equal-values -> {fingerprint: also matches target}."""

    def __init__(self, rule: InhibitRule) -> None:
        self.rule = rule
        self.sources: dict[_Key, dict[str, bool]] = {}
        self.key_of: dict[str, _Key] = {}

    def key(self, labels: Mapping[str, str]) -> _Key:
        return tuple(labels.get(name, "") for name in self.rule.equal)

    def add(self, alert: Alert) -> None:
        self.remove(alert.fingerprint)
        if not matches_all(self.rule.source_matchers, alert.labels):
            return
        key = self.key(alert.labels)
        both = matches_all(self.rule.target_matchers, alert.labels)
        self.sources.setdefault(key, {})[alert.fingerprint] = both
        self.key_of[alert.fingerprint] = key

    def remove(self, fp: str) -> None:
        key = self.key_of.pop(fp, None)
        if key is None:
            return
        group = self.sources[key]
        group.pop(fp, None)
        if not group:
            del self.sources[key]

    def inhibitors(self, labels: Mapping[str, str], fp: str) -> list[str]:
        if not matches_all(self.rule.target_matchers, labels):
            return []
        group = self.sources.get(self.key(labels))
        if not group:
            return []
        target_is_source = matches_all(self.rule.source_matchers, labels)
        return [
            source
            for source, both in group.items()
            if source != fp and not (target_is_source and both)
        ]


class Inhibitor:
    """Tracks firing source alerts; says which alerts they mute."""

    def __init__(self, rules: Sequence[InhibitRule]) -> None:
        self._rules = [_RuleIndex(rule) for rule in rules]

    def update(self, alerts: Iterable[Alert]) -> None:
        """Record alerts as the engine reports them: firing ones inhibit, resolved ones stop."""
        if not self._rules:
            return
        for alert in alerts:
            for index in self._rules:
                if alert.status == "firing":
                    index.add(alert)
                else:
                    index.remove(alert.fingerprint)

    def inhibited_by(self, labels: Mapping[str, str], fp: str = "") -> list[str]:
        """``rule name: source fingerprint`` for each firing alert muting this one."""
        found: list[str] = []
        for index in self._rules:
            found.extend(f"{index.rule.name}: {src}" for src in index.inhibitors(labels, fp))
        return found

    def is_inhibited(self, labels: Mapping[str, str], fp: str = "") -> bool:
        """Whether any firing source alert mutes an alert with ``labels``."""
        return any(index.inhibitors(labels, fp) for index in self._rules)
