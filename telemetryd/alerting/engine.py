"""The alert state machine: rules evaluated as reports arrive, per GPU, node and event.

A report is evaluated the moment it is durable (not on a slow timer), so the time from
a faulty sample's arrival to the dispatcher is the cost of the evaluation itself. Only
what cannot arrive with a report runs on the 1 s tick: absence (a node that went silent),
keep-firing timers of event alerts, group aggregates, the aggregator's own health and
running jobs (the aggregator's JobTable, set as ``jobs``; a job that ended resolves).

States follow Prometheus: a condition that holds is *pending* until it has held for
``for``, then *firing*; it resolves when the condition stops (or, with ``resolve``, when
the resolve condition holds: hysteresis) and ``keep_firing_for`` has passed. An undefined
condition (an absent field) changes nothing. GPU rules run on sample time, so a WAL
replay after a crash reaches the same states; the state itself (pending timers
included) is saved with the fleet snapshot, so a restart forgets nothing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from telemetryd.alerting.active import Active, number, render
from telemetryd.alerting.envs import (
    AggregatorEnv,
    EventEnv,
    GpuEnv,
    GroupEnv,
    History,
    JobEnv,
    NodeEnv,
)
from telemetryd.alerting.expr import Env, Value, truth
from telemetryd.alerting.model import Alert, fingerprint
from telemetryd.alerting.rules import Rule
from telemetryd.fleet import Fleet
from telemetryd.jobs import JobTable
from telemetryd.model import Event, EventMessage, Gpu, Report, Status

_TIME_NAMES = {"state", "silent_s"}  # node rules that can change without a report


@dataclass(slots=True)
class _NodeExtra:
    boot: str = ""
    gpus_max: int = 0
    labels: dict[str, str] = field(default_factory=dict)


class Engine:
    """All rules over the fleet; ``drain`` hands out what changed since the last call."""

    def __init__(
        self,
        rules: list[Rule],
        fleet: Fleet,
        *,
        node_labels: dict[str, dict[str, str]] | None = None,
        runbook_base: str = "",
        external_url: str = "",
        name: str = "aggregator",
    ) -> None:
        self.rules: dict[str, Rule] = {}
        self.scoped: dict[str, list[Rule]] = {}
        self.fleet = fleet
        self.node_labels = node_labels or {}
        self.runbook_base = runbook_base
        self.external_url = external_url
        self.name = name
        self.active: dict[str, Active] = {}
        self.latest: dict[tuple[str, str], Report] = {}
        self.extra: dict[tuple[str, str], _NodeExtra] = {}
        self.histories: dict[tuple[str, ...], History] = {}
        # Active condition alerts by (rule, series): a series with no alert and a false
        # condition (almost every evaluation) costs a dict lookup, no labels, no hash.
        self.by_series: dict[tuple[str, tuple[str, ...]], str] = {}
        # Event alerts waiting for their GPU's resolve condition, by (cluster, node, uuid).
        self.by_gpu: dict[tuple[str, str, str], set[str]] = {}
        self._changed: list[Alert] = []
        self.evaluations = 0
        self.jobs: JobTable | None = None  # the aggregator's live jobs, for job rules
        self.set_rules(rules, 0)

    # -- inputs ----------------------------------------------------------------------------
    def on_report(self, report: Report, now_ns: int) -> None:
        """Evaluate a newly accepted report: its events always, its state if it is newest."""
        key = (report.cluster, report.node)
        extra = self._extra(report.cluster, report.node)
        latest = self.latest.get(key)
        newest = latest is None or report.time_ns >= latest.time_ns
        for event in report.events:
            self._event(report.cluster, report.node, event, report.boot_id, report.seq,
                        report.time_ns)  # fmt: skip
        if not newest:
            return  # a late report from an agent's spool: history, not the present
        self.latest[key] = report
        if extra.boot != report.boot_id:
            extra.boot, extra.gpus_max = report.boot_id, 0
        extra.gpus_max = max(extra.gpus_max, len(report.gpus))
        t = report.time_ns
        for gpu in report.gpus:
            labels = self._labels(report.cluster, report.node, extra, gpu=str(gpu.index),
                                  uuid=gpu.uuid)  # fmt: skip
            history = self._history(("gpu", report.cluster, report.node, gpu.uuid))
            env = GpuEnv(report, gpu, labels, history)
            series = tuple(labels.values())
            for rule in self.scoped.get("gpu", ()):
                self._evaluate(rule, labels, series, env, t, history, record=True)
            if self.by_gpu.get((report.cluster, report.node, gpu.uuid)):
                self._resolve_events(report, gpu.uuid, env, t)
        self._node(report.cluster, report.node, now_ns, time_only=False)

    def on_status(self, status: Status, now_ns: int) -> None:
        """Presence changed (online, offline, Last Will): node rules run at once."""
        extra = self._extra(status.cluster, status.node)
        if status.state == "online":
            if extra.boot != status.boot_id:
                extra.boot, extra.gpus_max = status.boot_id, 0
            extra.gpus_max = max(extra.gpus_max, len(status.gpus))
        self._node(status.cluster, status.node, now_ns, time_only=False)

    def on_fleet_events(self, events: Iterable[EventMessage]) -> None:
        """Events the aggregator itself raised (a GPU gone from a node's inventory)."""
        for m in events:
            self._event(m.cluster, m.node, m.event, m.boot_id, m.seq, m.event.time_ns)

    def tick(self, now_ns: int, aggregator: dict[str, Value]) -> None:
        """What no report triggers: silence, event timeouts, groups, the aggregator itself."""
        for cluster, node in list(self.fleet.nodes):
            self._node(cluster, node, now_ns, time_only=True)
        for alert in list(self.active.values()):
            rule = self.rules.get(alert.rule)
            if (
                rule is not None
                and rule.scope == "event"
                and rule.keep_firing_for_s > 0
                and now_ns - alert.last_true_ns >= rule.keep_firing_for_s * 1e9
            ):
                self._resolve(alert, now_ns)
        self._groups(now_ns)
        self._jobs(now_ns)
        labels_base = {"scope": "aggregator", "aggregator": self.name}
        history = self._history(("aggregator",))
        for rule in self.scoped.get("aggregator", ()):
            labels = {**labels_base, **rule.labels}
            env = AggregatorEnv(aggregator, labels, history)
            self._evaluate(rule, labels, (), env, now_ns, history, record=True)

    # -- scopes ----------------------------------------------------------------------------
    def _node(self, cluster: str, node: str, now_ns: int, *, time_only: bool) -> None:
        state = self.fleet.nodes.get((cluster, node))
        rules = self.scoped.get("node", ())
        if state is None or not rules:
            return
        extra = self._extra(cluster, node)
        labels = self._labels(cluster, node, extra)
        history = self._history(("node", cluster, node))
        env = NodeEnv(self.fleet, state, self.latest.get((cluster, node)), now_ns=now_ns,
                      gpus_expected=max(extra.gpus_max, len(state.gpus)), labels=labels,
                      history=history)  # fmt: skip
        series = (cluster, node)
        for rule in rules:
            if time_only and not (rule.expr.names & _TIME_NAMES):
                continue
            self._evaluate(rule, labels, series, env, now_ns, history, record=not time_only)

    def _event(self, cluster: str, node: str, event: Event, boot: str, seq: int, t: int) -> None:
        rules = self.scoped.get("event", ())
        if not rules:
            return
        extra = self._extra(cluster, node)
        ids: dict[str, str] = {}
        if event.gpu_index is not None:
            ids["gpu"] = str(event.gpu_index)
        if event.uuid:
            ids["uuid"] = event.uuid
        if event.kind == "xid" and event.code is not None:
            ids["xid"] = str(event.code)
        labels = self._labels(cluster, node, extra, **ids)
        env = EventEnv(cluster, node, event, labels)
        for rule in rules:
            if truth(rule.expr.fn(env)):
                self.evaluations += 1
                full = self._finish_labels(rule, labels, "event")
                fp = fingerprint(full)
                alert = self.active.get(fp)
                if alert is None:
                    alert = self.active[fp] = Active(rule.name, fp, full, "pending", t, t)
                    alert.value = number(event.code)
                    self._fire(alert, rule, t, env)
                    if event.uuid and rule.resolve is not None:
                        self.by_gpu.setdefault((cluster, node, event.uuid), set()).add(fp)
                alert.last_true_ns = max(alert.last_true_ns, t)
                if alert.after[0] != boot or seq > alert.after[1]:
                    alert.after = (boot, seq)

    def _resolve_events(self, report: Report, uuid: str, env: GpuEnv, t: int) -> None:
        """Event alerts of this GPU whose resolve condition now holds (on a later report)."""
        waiting = self.by_gpu[(report.cluster, report.node, uuid)]
        for fp in list(waiting):
            alert = self.active.get(fp)
            rule = self.rules.get(alert.rule) if alert is not None else None
            if alert is None or rule is None or rule.resolve is None:
                waiting.discard(fp)
                continue
            if report.boot_id == alert.after[0] and report.seq <= alert.after[1]:
                continue  # the report that fired it, or an older one
            if truth(rule.resolve.fn(env)) is True:
                self._resolve(alert, t)
                waiting.discard(fp)
        if not waiting:
            del self.by_gpu[(report.cluster, report.node, uuid)]

    def _groups(self, now_ns: int) -> None:
        rules = self.scoped.get("group", ())
        if not rules:
            return
        members: list[tuple[NodeEnv, Report, dict[str, str]]] = []
        for (cluster, node), report in self.latest.items():
            state = self.fleet.nodes.get((cluster, node))
            if state is None or self.fleet.node_state(state, now_ns) != "online":
                continue
            extra = self._extra(cluster, node)
            labels = self._labels(cluster, node, extra)
            env = NodeEnv(self.fleet, state, report, now_ns=now_ns, gpus_expected=extra.gpus_max,
                          labels=labels, history=None)  # fmt: skip
            members.append((env, report, labels))
        for rule in rules:
            groups: dict[tuple[str, ...], list[tuple[NodeEnv, Report]]] = {}
            for env, report, labels in members:
                key = tuple(labels.get(g, "") for g in rule.group_by)
                groups.setdefault(key, []).append((env, report))
            for key, group in groups.items():
                labels = {"scope": "group", **dict(zip(rule.group_by, key, strict=True))}
                labels = {k: v for k, v in labels.items() if v}
                group_env = GroupEnv(group, labels)
                self._evaluate(rule, labels, key, group_env, now_ns, None, record=False)

    def _jobs(self, now_ns: int) -> None:
        rules = self.scoped.get("job", ())
        if not rules or self.jobs is None:
            return
        running: set[tuple[str, ...]] = set()
        for job, held in self.jobs.held(now_ns):
            gpus: list[Gpu] = []
            for node, index in held:
                report = self.latest.get((job.cluster, node))
                gpus += [g for g in report.gpus if g.index == index] if report else []
            labels = {"cluster": job.cluster, "job": job.job}
            labels |= {k: v for k in ("user", "pod", "namespace") if (v := getattr(job, k))}
            series = (job.cluster, job.job)
            running.add(series)
            env = JobEnv(job, gpus, now_ns, labels)
            for rule in rules:
                self._evaluate(rule, labels, series, env, now_ns, None, record=False)
        for alert in list(self.active.values()):  # the job ended (or left the table)
            scope = self.rules[alert.rule].scope if alert.rule in self.rules else ""
            if scope == "job" and alert.series not in running:
                self._resolve(alert, now_ns)

    # -- the state machine -----------------------------------------------------------------
    def _evaluate(
        self,
        rule: Rule,
        labels: dict[str, str],
        series: tuple[str, ...],
        env: Env,
        t: int,
        history: History | None,
        *,
        record: bool,
    ) -> None:
        """One rule on one series: the labels identify it, ``series`` is their cheap key."""
        self.evaluations += 1
        if record and rule.windows and history is not None:
            for window in rule.windows:
                history.record(window, t / 1e9, window.arg(env))
        holds = truth(rule.expr.fn(env))
        fp = self.by_series.get((rule.name, series))
        alert = self.active.get(fp) if fp is not None else None
        if alert is None or alert.state == "pending":
            if holds is None:
                return
            if not holds:
                if alert is not None:
                    self._drop(alert)  # pending that stopped: never notified
                return
            if alert is None:
                full = self._finish_labels(rule, labels, labels.get("scope", rule.scope))
                fp = fingerprint(full)
                alert = Active(rule.name, fp, full, "pending", t, t, series=series)
                self.active[fp] = alert
                self.by_series[(rule.name, series)] = fp
            alert.last_true_ns = t
            alert.value = self._value(rule, env)
            if t - alert.starts_ns >= rule.for_s * 1e9:
                self._fire(alert, rule, t, env)
            return
        if holds:
            alert.last_true_ns = t
            alert.value = self._value(rule, env)
            return
        if rule.resolve is not None:
            if truth(rule.resolve.fn(env)) is not True:
                return  # hysteresis: still above the resolve threshold
        elif holds is None:
            return
        if t - alert.last_true_ns >= rule.keep_firing_for_s * 1e9:
            alert.value = self._value(rule, env)
            self._resolve(alert, t)

    def _fire(self, alert: Active, rule: Rule, t: int, env: Env) -> None:
        alert.state, alert.fired_ns = "firing", t
        alert.annotations = render(rule.annotations, alert.labels, alert.value,
                                   runbook_base=self.runbook_base)  # fmt: skip
        self._changed.append(self._public(alert, "firing"))

    def _drop(self, alert: Active) -> None:
        del self.active[alert.fingerprint]
        if alert.series:
            self.by_series.pop((alert.rule, alert.series), None)

    def _resolve(self, alert: Active, t: int) -> None:
        self._drop(alert)
        if alert.state == "firing":
            self._changed.append(self._public(alert, "resolved", ends_ns=max(t, alert.fired_ns)))

    def _value(self, rule: Rule, env: Env) -> float | None:
        fn = rule.value.fn if rule.value is not None else rule.expr.value_fn
        return number(fn(env)) if fn is not None else None

    # -- labels, histories -----------------------------------------------------------------
    def _extra(self, cluster: str, node: str) -> _NodeExtra:
        extra = self.extra.get((cluster, node))
        if extra is None:
            labels: dict[str, str] = {}
            for pattern, values in self.node_labels.items():
                if fnmatch.fnmatchcase(node, pattern):
                    labels.update(values)
            extra = self.extra[(cluster, node)] = _NodeExtra(labels=labels)
        return extra

    def _labels(self, cluster: str, node: str, extra: _NodeExtra, **ids: str) -> dict[str, str]:
        return {**extra.labels, "cluster": cluster, "node": node, **ids}

    def _finish_labels(self, rule: Rule, labels: dict[str, str], scope: str) -> dict[str, str]:
        return {**labels, **rule.labels, "alertname": rule.name, "severity": rule.severity,
                "scope": scope}  # fmt: skip

    def _history(self, key: tuple[str, ...]) -> History:
        history = self.histories.get(key)
        if history is None:
            history = self.histories[key] = History()
        return history

    # -- outputs ---------------------------------------------------------------------------
    def _public(
        self, alert: Active, status: Literal["firing", "resolved"], ends_ns: int = 0
    ) -> Alert:
        url = f"{self.external_url.rstrip('/')}/alerts?fingerprint={alert.fingerprint}"
        return Alert(
            fingerprint=alert.fingerprint, status=status, labels=dict(alert.labels),
            annotations=dict(alert.annotations), starts_ns=alert.starts_ns,
            fired_ns=alert.fired_ns, ends_ns=ends_ns, value=alert.value,
            generator_url=url if self.external_url else "",
        )  # fmt: skip

    def drain(self) -> list[Alert]:
        """Alerts that started firing or resolved since the last call, in order."""
        changed, self._changed = self._changed, []
        return changed

    def firing(self) -> list[Alert]:
        """Every firing alert now."""
        return [self._public(a, "firing") for a in self.active.values() if a.state == "firing"]

    def pending(self) -> list[Alert]:
        """Alerts whose condition holds but whose ``for`` has not passed (never notified)."""
        pending = []
        for a in self.active.values():
            if a.state != "pending":
                continue
            public = self._public(a, "firing")
            rule = self.rules.get(a.rule)
            if rule is not None:  # rendered here, not per evaluation: only viewers ask
                public.annotations = render(rule.annotations, a.labels, a.value,
                                            runbook_base=self.runbook_base)  # fmt: skip
            pending.append(public)
        return pending

    def set_rules(self, rules: list[Rule], now_ns: int) -> None:
        """Swap the rules on reload; alerts of a removed rule resolve now.

        Alerts of a kept rule keep their state and timers: the next evaluation applies its
        new condition, so a threshold change neither re-pages nor restarts a ``for`` wait.
        """
        self.rules = {r.name: r for r in rules}
        self.scoped = {}
        for rule in rules:
            self.scoped.setdefault(rule.scope, []).append(rule)
        for alert in [a for a in self.active.values() if a.rule not in self.rules]:
            self._resolve(alert, now_ns)
            for fingerprints in self.by_gpu.values():
                fingerprints.discard(alert.fingerprint)

    def forget_nodes(self, gone: Callable[[str, str], bool], now_ns: int) -> None:
        """Nodes another aggregator now owns (shard.py): firing alerts resolve, state goes."""
        for alert in list(self.active.values()):
            cluster, node = alert.labels.get("cluster"), alert.labels.get("node")
            if cluster and node and gone(cluster, node):
                self._resolve(alert, now_ns)
        for key in [k for k in self.latest if gone(*k)]:
            del self.latest[key]
        for key in [k for k in self.extra if gone(*k)]:
            del self.extra[key]
        for gpu in [k for k in self.by_gpu if gone(k[0], k[1])]:
            del self.by_gpu[gpu]
        for history in [k for k in self.histories if len(k) > 2 and gone(k[1], k[2])]:
            del self.histories[history]

    # -- persistence -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Pending and firing alerts, timers included, JSON-able."""
        return {"alerts": [asdict(a) for a in self.active.values()]}

    def restore(self, data: dict[str, Any], now_ns: int) -> None:
        """Load a snapshot; alerts of rules that no longer exist resolve now."""
        for item in data.get("alerts", []):
            try:
                alert = Active(**{**item, "after": tuple(item.get("after", ("", -1))),
                                  "series": tuple(item.get("series", ()))})  # fmt: skip
            except TypeError:
                continue
            rule = self.rules.get(alert.rule)
            if rule is not None:
                self.active[alert.fingerprint] = alert
                if alert.series:
                    self.by_series[(alert.rule, alert.series)] = alert.fingerprint
                uuid = alert.labels.get("uuid")
                if rule.scope == "event" and rule.resolve is not None and uuid:
                    key = (alert.labels.get("cluster", ""), alert.labels.get("node", ""), uuid)
                    self.by_gpu.setdefault(key, set()).add(alert.fingerprint)
            elif alert.state == "firing":
                self._changed.append(self._public(alert, "resolved", ends_ns=now_ns))
