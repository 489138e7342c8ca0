"""``turnout estimate``: the what-if replay. What the recorded traffic would have cost, how good
its answers would likely have been and how fast, under another routing policy, side by side
with what happened.

``turnout estimate --policy OTHER.toml [--policy ...] [--since 7d] [--config CURRENT]
[--png FILE] [--json]``

**What is read.** The request record the current config's ``[record]`` names (or ``--db`` /
``--dsn``), SQLite or PostgreSQL, through :func:`turnout.plugins.stats.read_record`: the
top-level requests created since ``--since`` (what was asked for, the route, the model that
answered, the outcome, cost, end-to-end latency, tokens, and the decision record with its
labels, plan and router prediction), and every attempt (each model's latencies and outcomes, and
the tokens of the call that answered). Prompts are not recorded and are not needed.

**The replay.** Each policy file is laid over the current config (``config.overlay``: each
top-level table it has replaces the current one, the rest stays, so a policy can hold only its
``routes`` or ``[routing]``) and a kernel is started from it
without the plugins that act outside routing (the record, alerts, telemetry, metrics, the admin
API, the Slack bot: :func:`turnout.adapters.cli.offline`; the cache and rate limits too:
:data:`OFF`) and on an empty memory store (shared
state such as budgets spent and circuit breakers is the live gateway's, not the policy's). Each
recorded request is routed by :meth:`Kernel.explain <turnout.kernel.kernel.Kernel.explain>` with
its **recorded labels as given** (the classifiers do not run again) and its token count as the
``prompt_tokens`` label; a learned router scores the **recorded feature vector** (see
:data:`turnout.plugins.learned_router.VECTOR`). No model is called. The policy's choice is the
first step of the plan. A request the policy cannot route is counted, by why: the route or model
it asked for is not in the policy (``gone``), no route is chosen for it (``no_route``), or the
policy refuses it (``refused``: no model fits it, a budget...); such requests are left out of
the policy's figures, and the report says how many and what they cost when recorded.

**The figures.** Where the policy's first choice is the recorded first choice (the recorded
plan's first model), what happened stands: the recorded cost, latency, outcome and answering
model. A policy identical to the current one therefore reproduces the record. Elsewhere, per
request:

- *cost*: the chosen model's prices (the policy's ``[models]``) times the tokens of the call that
  answered (the request's own tokens when no call of its own answered: a sub-request did, or
  none did). One call: retries and fallbacks the policy might need are not guessed.
- *predicted quality* of a model for a request, from 0 to 1: the learned router's prediction where
  the request has one (recorded, or the shipped model on the recorded vector; see
  :func:`turnout.plugins.spend_report.prediction_of`) and the model is that router's weak or
  strong model: 1 for the strong one, 1 - its strong-need score (0..1, the share of its training
  prompts this one needs the strong model more than) for the weak one; else the model's configured
  ``quality`` for the request's task (the current config's ``[models]``, else the policies', in
  the order given: every column is judged by the same knowledge); else the recorded outcome: the
  request's own (1 answered, 0 failed) for the model that answered it, the model's share of
  successful calls in the record for another; else unknown. A request that stands and got no
  answer counts 0. The mean is over the requests whose quality is known, and the report says how
  many that is.
- *latency*: the chosen model's recorded call latencies (its successful attempts in the record)
  stand for the request, as a distribution; p50 and p95 are taken over every request's latency
  (nearest rank, each request weighing one, its distribution shared among its values). Unknown
  for a model the record never saw answer.

The **recorded** column is the record itself: the requests, their cost, the predicted quality of
the model that answered each (by the same rules), their end-to-end latency, and each answering
model's share of the requests. The report is a text table, ``--json``, and with ``--png`` a chart
of cost against mean predicted quality, one labelled point per policy
(:func:`turnout.plugins.charts.estimate_png`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout.kernel.errors import ConfigError, NoRoute, TurnoutError, UnknownModel
from turnout.kernel.hookspecs import hookimpl

from .spend_report import Prices, prediction_of
from .stats import (
    _fmt_ms,
    _table,
    json_column,
    location,
    parse_age,
    read_record,
    record_arguments,
    record_location,
)

OFF = frozenset({"cache", "rate_limits"})
"""Built-in plugins a policy's kernel runs without, besides those of every one-shot command
(:data:`turnout.adapters.cli.SIDE_EFFECT_PLUGINS`): they admit, which routing does not need."""

PROMPT = "(replayed from the record: the prompt is not kept)"
"""The text of a replayed request's one message; the labels given stand for the prompt."""

NO_ANSWER = "(no answer)"
NOT_ROUTED = "(not routed)"
UNROUTED = ("gone", "no_route", "refused")
"""Why the policy could not route a request, in the order the report lists them."""

REQUEST_COLUMNS = ("request_id, created_at, requested, route, model, status, cost_usd, latency_ms, "
                   "input_tokens, output_tokens, stream, decision")
ATTEMPT_COLUMNS = "request_id, n, model, status, latency_ms, input_tokens, output_tokens"


# --- what was recorded ---------------------------------------------------------------------------


@dataclass(slots=True)
class Recorded:
    """One top-level request as the record has it."""

    request_id: str
    requested: str | None
    route: str | None
    model: str | None
    """The model that answered; None when none did."""
    status: str
    cost: float
    latency_ms: float | None
    tokens: tuple[int, int]
    """(input, output) of the call that answered, else the request's."""
    stream: bool
    labels: dict[str, Any]
    first: str | None
    """The recorded plan's first model, else the answering model."""
    router: dict[str, Any] | None


@dataclass(slots=True)
class Log:
    """The requests replayed, and what the record says of each model's calls."""

    requests: list[Recorded]
    latencies: dict[str, list[float]]
    """Each model's successful call latencies (ms), ascending."""
    success: dict[str, float]
    """Each model's share of successful calls."""
    where: str


def read(path: str | None, dsn: str | None, schema: str, since: float | None) -> Log:
    """The record's requests and calls since ``since`` (see the module)."""
    rows, attempts = read_record(path, dsn=dsn, schema=schema, since=since,
                                 requests=REQUEST_COLUMNS, attempts=ATTEMPT_COLUMNS)
    latencies: dict[str, list[float]] = defaultdict(list)
    calls: Counter[str] = Counter()
    ok: Counter[str] = Counter()
    answered: dict[tuple[str, str], tuple[int, int, int]] = {}
    for request_id, n, model, status, latency, tokens_in, tokens_out in attempts:
        if model is None:
            continue
        calls[model] += 1
        if status == "ok":
            ok[model] += 1
            if latency is not None:
                latencies[model].append(float(latency))
            key = (request_id, model)
            if key not in answered or n > answered[key][0]:
                answered[key] = (n, tokens_in or 0, tokens_out or 0)
    requests = []
    for (request_id, _created, requested, route, model, status, cost, latency, tokens_in,
         tokens_out, stream, decision) in rows:
        decision = json_column(decision)
        decision = decision if isinstance(decision, dict) else {}
        labels = decision.get("labels") if isinstance(decision.get("labels"), dict) else {}
        own = answered.get((request_id, model)) if model else None
        tokens = (own[1], own[2]) if own else (tokens_in or 0, tokens_out or 0)
        plan = decision.get("plan")
        first = plan[0] if isinstance(plan, list) and plan and isinstance(plan[0], str) else model
        router = decision.get("router")
        requests.append(Recorded(request_id, requested, route, model, status, cost or 0.0,
                                 None if latency is None else float(latency), tokens,
                                 bool(stream), dict(labels), first,
                                 router if isinstance(router, dict) else None))
    for found in latencies.values():
        found.sort()
    return Log(requests, dict(latencies), {m: ok[m] / n for m, n in calls.items()},
               location(path, dsn, schema))


# --- the replay ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Routed:
    """What a policy did with one recorded request: its first choice, or why there is none."""

    model: str | None = None
    why: str | None = None
    """One of :data:`UNROUTED` when the policy could not route it."""
    detail: str | None = None
    router: dict[str, Any] | None = None
    blind: bool = False
    """A learned router chose without the request's features (the record holds no vector for
    it, so it scored the placeholder prompt): the choice is a guess, and counted as one."""


def policy_kernel(policy: Any) -> Any:
    """A kernel for the ``policy`` config, ready to start: without the plugins a one-shot command
    leaves out and :data:`OFF`, on a memory store."""
    from turnout.adapters.cli import offline, quiet
    from turnout.kernel.kernel import Kernel

    config = offline(policy, also=OFF)
    quiet(config)
    return Kernel(config)


async def route_all(kernel: Any, requests: list[Recorded]) -> list[Routed]:
    """Route every recorded request with ``kernel`` (started), calling no model."""
    return [await route_one(kernel, r) for r in requests]


async def route_one(kernel: Any, recorded: Recorded) -> Routed:
    """What ``kernel``'s routing chooses for ``recorded``: its labels given, its token count as
    ``prompt_tokens``, its feature vector for a learned router."""
    from turnout.kernel.types import ChatRequest

    from .learned_router import VECTOR

    labels = dict(recorded.labels)
    labels.setdefault("prompt_tokens", recorded.tokens[0])
    asked = recorded.requested or recorded.route or recorded.model or "auto"
    fields: dict[str, Any] = {"stream": recorded.stream}
    if labels.get("needs_json"):
        fields["response_format"] = {"type": "json_object"}
    if labels.get("needs_tools"):
        fields["tools"] = [{"type": "function", "function": {"name": "replayed",
                                                             "parameters": {"type": "object"}}}]
    request = ChatRequest(model=asked, messages=[{"role": "user", "content": PROMPT}], **fields)
    try:
        ctx = kernel.context(request)
    except UnknownModel:
        return Routed(why="gone", detail=asked)
    vector = (recorded.router or {}).get("vector")
    if isinstance(vector, list) and vector:
        ctx.state[VECTOR] = vector
    try:
        decision = await kernel.explain(ctx, labels=labels)
    except NoRoute as exc:
        return Routed(why="no_route", detail=exc.message)
    except UnknownModel:
        return Routed(why="gone", detail=asked)
    except TurnoutError as exc:
        return Routed(why="refused", detail=type(exc).__name__)
    plan = decision.get("plan") or []
    if not plan:
        return Routed(why="refused", detail=f"plan of strategy {decision.get('strategy')!r} "
                      "without steps")
    router = decision.get("router")
    router = router if isinstance(router, dict) else None
    blind = router is not None and router.get("kind") == "learned" and VECTOR not in ctx.state
    return Routed(model=plan[0], router=None if blind else router, blind=blind)


def replay(policy: Any, requests: list[Recorded]) -> list[Routed]:
    """Start the kernel of ``policy`` and route every request with it."""
    import anyio

    async def run() -> list[Routed]:
        async with policy_kernel(policy) as kernel:
            return await route_all(kernel, requests)

    return anyio.run(run)


# --- the figures ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Knowledge:
    """What quality is judged by: the models' configured quality (the current config's, then
    each policy's), the record's success shares, and the prices a learned prediction without a
    weak model falls back on (the current config's)."""

    configured: list[dict[str, Any]]
    success: dict[str, float]
    prices: Prices

    def quality(self, model: str | None, recorded: Recorded,
                router: dict[str, Any] | None = None) -> tuple[float | None, str]:
        """(predicted quality of ``model`` for ``recorded``, where it came from: ``learned``,
        ``configured``, ``outcome`` or ``unknown``); see the module."""
        if model is None:
            return 0.0, "outcome"
        for found in (recorded.router, router):
            learned = self._learned(model, recorded, found)
            if learned is not None:
                return learned, "learned"
        task = recorded.labels.get("task")
        for models in self.configured:
            profile = models.get(model)
            if profile is not None:
                value = profile.quality_for(task)
                if value is not None:
                    return float(value), "configured"
        if model == recorded.model:
            return (1.0 if recorded.status == "ok" else 0.0), "outcome"
        if model in self.success:
            return self.success[model], "outcome"
        return None, "unknown"

    def _learned(self, model: str, recorded: Recorded, router: dict[str, Any] | None
                 ) -> float | None:
        if not router or router.get("kind") != "learned":
            return None
        found = prediction_of(router, recorded.route, recorded.tokens, self.prices)
        if found is None:
            return None
        p, _, weak, _ = found
        if model == router.get("strong"):
            return 1.0
        if model == weak:
            return round(1.0 - p, 6)
        return None


@dataclass(slots=True)
class Column:
    """One column of the report: what was recorded, or one policy."""

    name: str
    requests: int = 0
    cost: float = 0.0
    qualities: list[float] = field(default_factory=list)
    sources: Counter = field(default_factory=Counter)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    """(latency ms, weight): each request weighs one in all."""
    latency_unknown: int = 0
    models: Counter = field(default_factory=Counter)
    unrouted: Counter = field(default_factory=Counter)
    gone: Counter = field(default_factory=Counter)
    unrouted_cost: float = 0.0
    blind: int = 0

    def add(self, model: str | None, cost: float, quality: tuple[float | None, str],
            latency: float | list[float] | None) -> None:
        self.requests += 1
        self.cost += cost
        self.models[model or NO_ANSWER] += 1
        value, source = quality
        self.sources[source] += 1
        if value is not None:
            self.qualities.append(value)
        if isinstance(latency, list):
            if latency:
                self.latencies.extend((v, 1 / len(latency)) for v in latency)
            else:
                self.latency_unknown += 1
        elif latency is None:
            self.latency_unknown += 1
        else:
            self.latencies.append((latency, 1.0))

    def summary(self, total: int) -> dict[str, Any]:
        share = {name: round(n / total, 6) for name, n in
                 sorted(self.models.items(), key=lambda item: (-item[1], item[0]))}
        if self.unrouted:
            share[NOT_ROUTED] = round(sum(self.unrouted.values()) / total, 6)
        ordered = sorted(self.latencies)
        found = {
            "name": self.name, "requests": self.requests, "cost_usd": round(self.cost, 10),
            "quality": {"mean": round(sum(self.qualities) / len(self.qualities), 6)
                        if self.qualities else None, "known": len(self.qualities),
                        "sources": dict(sorted(self.sources.items()))},
            "latency_ms": {"p50": weighted_percentile(ordered, 50),
                           "p95": weighted_percentile(ordered, 95),
                           "unknown": self.latency_unknown},
            "share": share,
        }
        if self.name != "recorded":
            found["unrouted"] = {why: self.unrouted.get(why, 0) for why in UNROUTED}
            found["gone"] = dict(sorted(self.gone.items()))
            found["unrouted_recorded_cost_usd"] = round(self.unrouted_cost, 10)
            found["learned_without_features"] = self.blind
        return found


def weighted_percentile(ordered: list[tuple[float, float]], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ascending (value, weight) pairs: the first value
    at which the running weight reaches ``p`` percent of the whole; None when there are none."""
    if not ordered:
        return None
    total = sum(w for _, w in ordered)
    goal = p / 100 * total
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= goal - 1e-9 * total:
            return round(value, 3)
    return round(ordered[-1][0], 3)


def figures(log: Log, policies: list[tuple[str, list[Routed], Prices]],
            knowledge: Knowledge) -> list[dict[str, Any]]:
    """The recorded column, then one per policy (its name, its choice for each request and its
    prices); see the module for each figure."""
    recorded = Column("recorded")
    for r in log.requests:
        recorded.add(r.model, r.cost, knowledge.quality(r.model, r), r.latency_ms)
    columns = [recorded]
    for name, routed, prices in policies:
        column = Column(name)
        for r, chosen in zip(log.requests, routed):
            column.blind += chosen.blind
            if chosen.model is None:
                column.unrouted[chosen.why] += 1
                column.unrouted_cost += r.cost
                if chosen.why == "gone":
                    column.gone[chosen.detail] += 1
                continue
            if chosen.model == r.first:  # the same first choice: what happened stands
                column.add(r.model, r.cost, knowledge.quality(r.model, r, chosen.router),
                           r.latency_ms)
                continue
            cost = prices.cost(chosen.model, *r.tokens) or 0.0
            column.add(chosen.model, cost, knowledge.quality(chosen.model, r, chosen.router),
                       log.latencies.get(chosen.model, []))
        columns.append(column)
    return [c.summary(len(log.requests)) for c in columns]


# --- the report ----------------------------------------------------------------------------------


def _money(value: float) -> str:
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.6f}"


def _quality(q: dict[str, Any]) -> str:
    return "-" if q["mean"] is None else f"{q['mean']:.3f}"


def render(report: dict[str, Any]) -> str:
    """The report as plain text: one column per policy beside what was recorded, the share of
    traffic per model, then what could not be routed."""
    since = report["since"]
    window = (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
              if since is not None else "")
    columns = report["columns"]
    total = columns[0]["requests"]
    if not total:
        return f"No requests recorded in {report['path']}{window}: nothing to replay."
    heads = ("", *(c["name"] if c["name"] == "recorded" else f"policy {c['name']}"
                   for c in columns))
    rows = [
        ("requests", *(f"{c['requests']:,}" for c in columns)),
        ("cost USD", *(_money(c["cost_usd"]) for c in columns)),
        ("mean predicted quality", *(_quality(c["quality"]) for c in columns)),
        ("  quality known for", *(f"{c['quality']['known']:,}" for c in columns)),
        ("p50 latency", *(_fmt_ms(c["latency_ms"]["p50"]) for c in columns)),
        ("p95 latency", *(_fmt_ms(c["latency_ms"]["p95"]) for c in columns)),
    ]
    lines = [f"What-if replay of {total:,} requests in {report['path']}{window}", ""]
    lines += _table(heads, rows)
    models = list(dict.fromkeys(m for c in columns for m in c["share"]))
    lines += ["", "Share of traffic by model"]
    lines += _table(("model", *heads[1:]),
                    [(m, *(f"{c['share'].get(m, 0.0) * 100:.1f}%" for c in columns))
                     for m in models])
    for c in columns[1:]:
        unrouted = c["unrouted"]
        missing = sum(unrouted.values())
        if not missing:
            continue
        parts = []
        if unrouted["gone"]:
            asked = ", ".join(f"{name} ({n})" for name, n in c["gone"].items())
            parts.append(f"{unrouted['gone']} asked for a route or model it lacks: {asked}")
        if unrouted["no_route"]:
            parts.append(f"{unrouted['no_route']} for which it chose no route")
        if unrouted["refused"]:
            parts.append(f"{unrouted['refused']} it would refuse")
        lines += ["", f"Policy {c['name']} could not route {missing:,} of {total:,} requests "
                  f"({'; '.join(parts)}). They are left out of its figures; recorded, they cost "
                  f"{_money(c['unrouted_recorded_cost_usd'])}."]
    for c in columns[1:]:
        if c["learned_without_features"]:
            lines += ["", f"Policy {c['name']}: a learned router chose for "
                      f"{c['learned_without_features']:,} requests whose record holds no feature "
                      "vector (their routes had no learned router): those choices are guesses."]
    lines += ["", "(Where a policy's first choice is the recorded one, what happened stands. "
              "Elsewhere: cost at the chosen model's prices for the recorded tokens, one call; "
              "quality from the learned router's prediction, else the configured quality for "
              "the task, else recorded outcomes; latency from the chosen model's recorded "
              "calls.)"]
    return "\n".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``turnout estimate``."""
    parser.add_argument("--policy", metavar="OTHER.toml", action="append", required=True,
                        help="a config file whose routing (routes, models, rules, routers) to "
                        "replay the record under, laid over the current config: the tables it "
                        "leaves out (providers, models, ...) are the current ones; repeat it to "
                        "compare several")
    parser.add_argument("--since", metavar="AGE", help="only requests newer than AGE: 30m, 24h, "
                        "7d")
    parser.add_argument("--config", help="the current config: its record (record.backend, "
                        "record.path or record.dsn) and its models' quality; provider secrets "
                        "need not be set")
    record_arguments(parser)
    parser.add_argument("--png", metavar="FILE", help="also draw cost against mean predicted "
                        "quality into FILE (PNG), one point per policy and one for the record")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def estimate(args: argparse.Namespace) -> dict[str, Any]:
    """The report ``turnout estimate`` prints, as a dict."""
    from turnout.kernel import config as config_module

    since = time.time() - parse_age(args.since) if args.since else None
    for policy in args.policy:
        if not Path(policy).is_file():
            raise ConfigError(f"--policy {policy}: no such file; give a gateway config (TOML or "
                              "YAML) whose routing to replay")
    current = config_module.load(args.config, lenient_env=True, references=False)
    path, dsn, schema = record_location(args)
    log = read(path, dsn, schema, since)
    policies, configured = [], [_profiles(current)]
    for policy in args.policy:
        other = config_module.overlay(policy, current, lenient_env=True, references=False)
        routed = replay(other, log.requests) if log.requests else []
        policies.append((Path(policy).stem, routed, Prices.of(other)))
        configured.append(_profiles(other))
    knowledge = Knowledge(configured, log.success, Prices.of(current))
    columns = figures(log, policies, knowledge)
    return {"path": log.where, "since": since, "policies": list(args.policy),
            "columns": columns}


def _profiles(config: Any) -> dict[str, Any]:
    from turnout.kernel.registry import ModelRegistry

    return {m.name: m for m in ModelRegistry.from_config(config)}


def run(args: argparse.Namespace) -> int:
    """``turnout estimate``: replay the record under each policy and print the report."""
    report = estimate(args)
    print(json.dumps(report, indent=2) if args.json else render(report))
    if args.png:
        return draw(args.png, report)
    return 0


def draw(file: str, report: dict[str, Any]) -> int:
    """Write the cost-against-quality chart of ``report`` to ``file``; 1, said on standard
    error, when no column has a quality to place it by."""
    from .charts import estimate_png, write

    points = [(c["name"] if c["name"] == "recorded" else f"policy {c['name']}", c["cost_usd"],
               c["quality"]["mean"]) for c in report["columns"]]
    title = f"Cost against predicted quality, {report['columns'][0]['requests']:,} requests"
    return write("estimate", file, lambda: estimate_png(points, title=title))


class Estimate:
    """Registers ``turnout estimate``."""

    @hookimpl
    def register_commands(self, register) -> None:
        """``turnout estimate``."""
        register("estimate", run, help="what the recorded traffic would have cost, how good and "
                 "how fast, under another routing policy (a what-if replay; no model is called)",
                 arguments=arguments)
