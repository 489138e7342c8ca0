"""Per-arm figures of the experiments, read from the request record, and the verdict.

**What is read.** Top-level requests (``parent_id IS NULL``; their cost includes their
sub-requests') whose decision record names an experiment (``decision.experiment``, written when
the request was routed), from the SQLite file or the PostgreSQL schema the ``[record]`` table
names, in one read-only snapshot; and the feedback scores given about those requests. Requests
marked ``unassigned`` (they had no value for the experiment's key and went to the control arm
by default) are counted apart and left out of every arm's figures, so they cannot bias the
control.

**Per arm.** ``n`` requests; **success**, the share that ended ``ok`` among those that ended
``ok`` or ``error`` (a client that hung up says nothing of the arm), with its Wilson 95%
interval; mean **cost** per request (failed attempts included) with its normal-approximation
95% interval; **latency** p50 and p95 (nearest rank) and its mean; **validation** pass rate,
the share of requests whose answers validators judged in which no answer was rejected (a
rejected first answer fails the request's pass, even if a later one passed), with its Wilson
interval; **feedback**, the count and mean of the scores (-1 to 1) with their interval.

**The verdict**, on one metric (``success`` by default; ``cost``, ``latency``, ``feedback`` or
``validation``): the arm best on it is compared with every other arm (two-proportion z-test for
success and validation, Welch's z-test for means), at 0.05 divided by the number of comparisons
(Bonferroni). It is named the winner only when every comparison is significant and every arm
has at least ``min_n`` values of the metric; otherwise the report says about how many more
requests per arm would tell the best arm from its closest rival at 80% power, if the difference
seen so far is real.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable

from turnout.kernel.errors import ConfigError
from turnout.plugins.stats import json_column as _json

from .stats import Sample, n_for_means, n_for_proportions, two_proportion_p, welch_p, wilson

METRICS = {"success": "higher", "validation": "higher", "feedback": "higher",
           "cost": "lower", "latency": "lower"}
"""The metrics a verdict can be on, and which way is better."""

ALPHA = 0.05
MIN_N = 30
"""Fewest values of the metric every arm needs before a winner is named."""

Row = tuple[str, str, float | None, float | None, Any, Any]
"""A request as read: (request_id, status, cost_usd, latency_ms, experiment, attempts)."""


# --- reading -----------------------------------------------------------------------------------


def read_sqlite(path: str, since: float | None) -> tuple[list[Row], list[tuple[str, float]]]:
    """The experiment requests created at or after ``since`` and the scores given about them,
    from the SQLite record at ``path`` (read-only, one snapshot)."""
    from turnout.plugins.stats import open_log

    window = (since if since is not None else -math.inf,)
    conn = open_log(path)
    try:
        conn.execute("BEGIN")
        rows = conn.execute(
            "SELECT request_id, status, cost_usd, latency_ms, "
            "json_extract(decision, '$.experiment'), json_extract(decision, '$.attempts') "
            "FROM requests WHERE created_at >= ? AND parent_id IS NULL "
            "AND json_extract(decision, '$.experiment.name') IS NOT NULL", window).fetchall()
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        scores = conn.execute(
            "SELECT f.request_id, f.score FROM feedback f JOIN requests r "
            "ON r.request_id = f.request_id WHERE r.created_at >= ? AND r.parent_id IS NULL "
            "AND json_extract(r.decision, '$.experiment.name') IS NOT NULL "
            "AND f.score IS NOT NULL", window).fetchall() if "feedback" in tables else []
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path!r}: cannot read the experiments from the request log ({exc})"
                          ) from None
    finally:
        conn.close()
    return rows, scores


def read_postgres(dsn: str, schema: str,
                  since: float | None) -> tuple[list[Row], list[tuple[str, float]]]:
    """:func:`read_sqlite` from a PostgreSQL record (``record.backend = "postgres"``)."""
    from turnout.plugins.record_postgres import snapshot

    window = [since if since is not None else float("-inf")]
    with snapshot(dsn, schema) as conn:
        rows = conn.execute(
            "SELECT request_id, status, cost_usd, latency_ms, decision->'experiment', "
            "decision->'attempts' FROM requests WHERE created_at >= %s AND parent_id IS NULL "
            "AND decision->'experiment'->>'name' IS NOT NULL", window).fetchall()
        scores = conn.execute(
            "SELECT f.request_id, f.score FROM feedback f JOIN requests r "
            "ON r.request_id = f.request_id WHERE r.created_at >= %s AND r.parent_id IS NULL "
            "AND r.decision->'experiment'->>'name' IS NOT NULL AND f.score IS NOT NULL",
            window).fetchall()
    return rows, scores



# --- figures -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ArmData:
    """What the record holds of one arm: a value list per metric."""

    name: str
    target: str | None = None
    lowest: float = 1.0
    """The lowest bucket seen in this arm: arms' spans follow the config's order, so sorting by
    it puts the control first without the config."""
    statuses: list[str] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    validated: list[bool] = field(default_factory=list)
    """Per request whose answers validators judged: True when none was rejected."""
    scores: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.statuses)

    @property
    def settled(self) -> int:
        """Requests that ended ok or error (not cancelled by the client)."""
        return sum(s in ("ok", "error") for s in self.statuses)

    @property
    def ok(self) -> int:
        return self.statuses.count("ok")

    def count(self, metric: str) -> int:
        """How many values of ``metric`` there are."""
        return {"success": self.settled, "validation": len(self.validated),
                "cost": len(self.costs), "latency": len(self.latencies),
                "feedback": len(self.scores)}[metric]

    def proportion(self, metric: str) -> tuple[int, int]:
        """(successes, trials) of a proportion metric."""
        if metric == "success":
            return self.ok, self.settled
        return sum(self.validated), len(self.validated)

    def sample(self, metric: str) -> Sample:
        """The values of a mean metric."""
        return Sample.of({"cost": self.costs, "latency": self.latencies,
                          "feedback": self.scores}[metric])

    def value(self, metric: str) -> float | None:
        """The arm's rate or mean on ``metric``; None without values."""
        if metric in ("success", "validation"):
            hits, trials = self.proportion(metric)
            return hits / trials if trials else None
        sample = self.sample(metric)
        return sample.mean if sample.n else None

    def summary(self) -> dict[str, Any]:
        """The arm's figures, as the report prints them."""
        from turnout.plugins.stats import percentile

        ordered = sorted(self.latencies)
        cost, scores = Sample.of(self.costs), Sample.of(self.scores)
        judged, passed = len(self.validated), sum(self.validated)
        return {
            "arm": self.name, "target": self.target, "n": self.n,
            "success": {"ok": self.ok, "n": self.settled,
                        "rate": _round(self.ok / self.settled if self.settled else None),
                        "ci95": _pair(wilson(self.ok, self.settled))},
            "cost_usd": {"mean": _round(cost.mean if cost.n else None, 10),
                         "ci95": _pair(cost.interval(), 10), "total": _round(sum(self.costs), 10),
                         "method": "normal approximation"},
            "latency_ms": {"p50": _round(percentile(ordered, 50), 3),
                           "p95": _round(percentile(ordered, 95), 3),
                           "mean": _round(Sample.of(ordered).mean if ordered else None, 3)},
            "validation": {"judged": judged, "passed": passed,
                           "rate": _round(passed / judged if judged else None),
                           "ci95": _pair(wilson(passed, judged))},
            "feedback": {"n": scores.n, "mean": _round(scores.mean if scores.n else None),
                         "ci95": _pair(scores.interval())},
        }


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def _pair(interval: tuple[float, float] | None, digits: int = 6) -> list[float] | None:
    return None if interval is None else [round(interval[0], digits), round(interval[1], digits)]


def _passed(attempts: Any) -> bool | None:
    """Whether a request's answers passed validation: None when no validator judged any."""
    if not isinstance(attempts, list):
        return None
    judged = any(isinstance(a, dict) and a.get("verdicts") for a in attempts)
    if not judged:
        return None
    return not any(isinstance(a, dict) and a.get("status") == "rejected" for a in attempts)


@dataclass(slots=True)
class ExperimentData:
    """One experiment's arms as the record holds them."""

    name: str
    key: str | None = None
    arms: dict[str, ArmData] = field(default_factory=dict)
    unassigned: int = 0


def collect(rows: Iterable[Row], scores: Iterable[tuple[str, float]], *,
            name: str | None = None,
            order: dict[str, list[str]] | None = None) -> list[ExperimentData]:
    """Group the rows by experiment and arm (only experiment ``name`` when given); arms in the
    order ``order`` gives for their experiment (the config's), the others after in the order
    of their spans of the hash range (the config's order when it was recorded)."""
    found: dict[str, ExperimentData] = {}
    arm_of: dict[str, ArmData] = {}
    for request_id, status, cost, latency, experiment, attempts in rows:
        experiment = _json(experiment)
        if not isinstance(experiment, dict) or not isinstance(experiment.get("name"), str):
            continue
        if name is not None and experiment["name"] != name:
            continue
        data = found.setdefault(experiment["name"], ExperimentData(experiment["name"]))
        data.key = data.key or experiment.get("key")
        if experiment.get("unassigned"):
            data.unassigned += 1
            continue
        arm_name = str(experiment.get("arm"))
        arm = data.arms.setdefault(arm_name, ArmData(arm_name, experiment.get("target")))
        if isinstance(experiment.get("bucket"), (int, float)):
            arm.lowest = min(arm.lowest, experiment["bucket"])
        arm.statuses.append(status)
        arm.costs.append(cost or 0.0)
        if latency is not None:
            arm.latencies.append(latency)
        passed = _passed(_json(attempts))
        if passed is not None:
            arm.validated.append(passed)
        arm_of[request_id] = arm
    for request_id, score in scores:
        arm = arm_of.get(request_id)
        if arm is not None and score is not None:
            arm.scores.append(float(score))
    for data in found.values():
        listed = (order or {}).get(data.name, [])
        rank = {arm: i for i, arm in enumerate(listed)}
        data.arms = dict(sorted(data.arms.items(),
                                key=lambda item: (rank.get(item[0], len(rank)), item[1].lowest,
                                                  item[0])))
    return sorted(found.values(), key=lambda d: d.name)


# --- the verdict -------------------------------------------------------------------------------


def p_value(a: ArmData, b: ArmData, metric: str) -> float:
    """The two-sided p-value of the difference between two arms on ``metric``."""
    if metric in ("success", "validation"):
        return two_proportion_p(*a.proportion(metric), *b.proportion(metric))
    return welch_p(a.sample(metric), b.sample(metric))


def needed(a: ArmData, b: ArmData, metric: str, alpha: float) -> int | None:
    """Values per arm to tell ``a`` from ``b`` on ``metric`` at ``alpha`` with 80% power."""
    if metric in ("success", "validation"):
        (x1, n1), (x2, n2) = a.proportion(metric), b.proportion(metric)
        if not n1 or not n2:
            return None
        return n_for_proportions(x1 / n1, x2 / n2, alpha)
    return n_for_means(a.sample(metric), b.sample(metric), alpha)


def verdict(arms: list[ArmData], metric: str = "success", *, alpha: float = ALPHA,
            min_n: int = MIN_N) -> dict[str, Any]:
    """Whether one arm wins on ``metric``: ``winner`` (an arm's name, or None), ``reason`` (one
    line), the p-values against the best arm, and ``more_per_arm`` (about how many more requests
    per arm a decision needs; None when no estimate can be made)."""
    better = METRICS[metric]
    out: dict[str, Any] = {"metric": metric, "winner": None, "best": None, "alpha": alpha,
                           "min_n": min_n, "p_values": {}, "more_per_arm": None}
    scored = [a for a in arms if a.value(metric) is not None]
    if len(scored) < 2 or len(scored) < len(arms):
        empty = [a.name for a in arms if a.value(metric) is None]
        out["reason"] = ("no winner yet: " + (f"no {metric} figures for arm "
                         f"{', '.join(empty)} so far" if empty else "only one arm so far"))
        return out
    pick = max if better == "higher" else min
    best = pick(scored, key=lambda a: a.value(metric))  # the first such arm on a tie
    rivals = [a for a in scored if a is not best]
    level = alpha / len(rivals)
    p = {a.name: p_value(best, a, metric) for a in rivals}
    out["best"] = best.name
    out["p_values"] = {k: round(v, 6) for k, v in p.items()}
    out["alpha_per_comparison"] = round(level, 6)
    smallest = min(a.count(metric) for a in scored)
    rival = max(rivals, key=lambda a: p[a.name])
    shown = f"{_show(best, metric)} against {rival.name}'s {_show(rival, metric)}"
    if smallest >= min_n and all(v < level for v in p.values()):
        out["winner"] = best.name
        test = "two-proportion z-test" if metric in ("success", "validation") else \
            "Welch's z-test"
        out["reason"] = (f"winner: {best.name}, {metric} {shown} (p = {p[rival.name]:.2g} < "
                         f"{level:.2g}, {test}; at least {smallest} per arm)")
        return out
    need = needed(best, rival, metric, level)
    have = min(best.count(metric), rival.count(metric))
    more = max(min_n - smallest, (need - have) if need is not None else 0, 0)
    if need is None:
        out["reason"] = (f"no winner yet: the arms do not differ on {metric} so far ({shown}); "
                         "no number of requests would tell them apart at this rate")
        if min_n > smallest:
            out["more_per_arm"] = min_n - smallest
        return out
    out["more_per_arm"] = more
    if more == 0:
        out["reason"] = (f"no winner: {shown} is not significant (p = {p[rival.name]:.2g} >= "
                         f"{level:.2g}) although the arms have the requests a real difference "
                         "this size would need; it is likely noise")
        return out
    out["reason"] = (f"no winner yet: need about {more} more requests per arm ({metric} "
                     f"{shown}, p = {p[rival.name]:.2g})")
    return out


def _show(arm: ArmData, metric: str) -> str:
    value = arm.value(metric)
    if value is None:
        return "-"
    if metric in ("success", "validation"):
        return f"{value * 100:.1f}%"
    if metric == "cost":
        return f"${value:.6f}"
    if metric == "latency":
        return f"{value:.1f} ms"
    return f"{value:+.2f}"
