"""``turnout report spend``: where the money goes, per route and task type, and where a cheaper
model would likely have done as well.

**What is read.** The request record the config's ``[record]`` table names (or ``--db`` /
``--dsn``), SQLite or PostgreSQL, in one read-only snapshot, the way ``turnout stats`` reads it:
the top-level requests (``parent_id IS NULL``; their cost includes their sub-requests') created
since ``--since``, with the ``task`` label, the router's decision and the attempts from their
decision record; and every attempt of those requests and of their sub-requests, so that the
spend per model credits each model with its own calls (failed ones included).

**Per route and task type.** The requests, their total spend, the spend per model (and its
share of the group's spend) and the mean cost per request.

**Could have been cheaper.** A request that ended ``ok`` is judged by the prediction in its
decision record: ``decision["router"]["prediction"]`` and ``["threshold"]``, which the
``learned`` router writes with its ``weak`` model. A decision with the feature vector but no
prediction is scored with the model shipped with Turnout (its own threshold; the weak model is
then the router's, else the route's model cheapest for these tokens). A request with neither is
counted as *no prediction*; nothing is guessed. Of the predicted requests:

- a strong-need score at or above the threshold: *strong predicted*, no saving;
- answered by the weak model: *weak answered*, nothing to save;
- the weak model was tried and its answer rejected by a validator: *weak rejected*, it did not
  do as well, no saving;
- otherwise (the weak model failed upstream and a fallback answered, the route put another model
  first, a cascade or a plan went past it): the request *could have been cheaper*, by its cost
  less the same tokens (input and output, as recorded on the request) at the weak model's
  prices from the config's ``[models]``. A weak model the config does not price is *no prices*;
  a saving that is not positive is *no saving*.

Failed requests count in the spend, not in the savings.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from turnout.kernel.errors import ConfigError
from turnout.kernel.hookspecs import hookimpl

from .stats import json_column as _json
from .stats import record_arguments, record_location

VERDICTS = ("cheaper", "weak_answered", "strong_predicted", "weak_rejected", "no_prediction",
            "no_prices", "no_saving", "failed")
"""What the report says of each request, in the order it lists the counts."""

Request = tuple[str, str | None, str | None, str, float, int, int, str | None, Any, Any]
"""A top-level request as read: (request_id, route, model, status, cost_usd, input_tokens,
output_tokens, task, router decision, attempts of the decision)."""


# --- reading -----------------------------------------------------------------------------------


def read_sqlite(path: str, since: float | None) -> tuple[list[Request], list[tuple], list[tuple]]:
    """The top-level requests, the (request_id, parent_id) of every request and the (request_id,
    model, cost_usd) of every attempt created at or after ``since``, from the SQLite record at
    ``path`` (read-only, one snapshot)."""
    import sqlite3

    from .stats import open_log

    window = (since if since is not None else -math.inf,)
    conn = open_log(path)
    try:
        conn.execute("BEGIN")
        requests = conn.execute(
            "SELECT request_id, route, model, status, cost_usd, input_tokens, output_tokens, "
            "json_extract(decision, '$.labels.task'), json_extract(decision, '$.router'), "
            "json_extract(decision, '$.attempts') FROM requests "
            "WHERE created_at >= ? AND parent_id IS NULL", window).fetchall()
        parents = conn.execute("SELECT request_id, parent_id FROM requests WHERE created_at >= ? "
                               "AND parent_id IS NOT NULL", window).fetchall()
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        attempts = conn.execute("SELECT request_id, model, cost_usd FROM attempts "
                                "WHERE created_at >= ?", window).fetchall() \
            if "attempts" in tables else []
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path!r}: cannot read the spend from the request log ({exc})"
                          ) from None
    finally:
        conn.close()
    return requests, parents, attempts


def read_postgres(dsn: str, schema: str,
                  since: float | None) -> tuple[list[Request], list[tuple], list[tuple]]:
    """:func:`read_sqlite` from a PostgreSQL record (``record.backend = "postgres"``)."""
    from .record_postgres import snapshot

    window = [since if since is not None else float("-inf")]
    with snapshot(dsn, schema) as conn:
        requests = conn.execute(
            "SELECT request_id, route, model, status, cost_usd, input_tokens, output_tokens, "
            "decision->'labels'->>'task', decision->'router', decision->'attempts' "
            "FROM requests WHERE created_at >= %s AND parent_id IS NULL", window).fetchall()
        parents = conn.execute("SELECT request_id, parent_id FROM requests WHERE created_at >= "
                               "%s AND parent_id IS NOT NULL", window).fetchall()
        attempts = conn.execute("SELECT request_id, model, cost_usd FROM attempts "
                                "WHERE created_at >= %s", window).fetchall()
    return requests, parents, attempts


# --- judging one request -----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Prices:
    """USD per million tokens of the configured models: ``{model: (input, output)}``, and each
    route's models."""

    models: dict[str, tuple[float, float]]
    routes: dict[str, list[str]]

    @classmethod
    def of(cls, config: Any) -> Prices:
        return cls({name: (m.input_price, m.output_price) for name, m in config.models.items()},
                   {name: list(r.models) for name, r in config.routes.items()})

    def cost(self, model: str | None, input_tokens: int, output_tokens: int) -> float | None:
        """What ``model`` charges for these tokens; None when the config does not price it."""
        price = self.models.get(model or "")
        if price is None:
            return None
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000

    def cheapest(self, route: str | None, input_tokens: int, output_tokens: int) -> str | None:
        """The route's model cheapest for these tokens; None for a route the config lacks."""
        priced = [(c, m) for m in self.routes.get(route or "", [])
                  if (c := self.cost(m, input_tokens, output_tokens)) is not None]
        return min(priced)[1] if priced else None


@dataclass(slots=True, frozen=True)
class Judged:
    """What the report says of one request: a :data:`VERDICTS` entry, and for ``cheaper`` the
    weak model, what the request cost at its prices and the saving."""

    verdict: str
    weak: str | None = None
    at_weak: float | None = None
    saving: float | None = None
    prediction: float | None = None
    source: str | None = None
    """Where the prediction came from: ``recorded`` or ``shipped model``."""


def prediction_of(router: Any, route: str | None, tokens: tuple[int, int],
                  prices: Prices) -> tuple[float, float, str | None, str] | None:
    """(the strong-need score, threshold, weak model, source) from a decision's router record: the
    recorded prediction, else the shipped model on the recorded feature vector; None without
    either."""
    if not isinstance(router, dict):
        return None
    p, threshold = router.get("prediction"), router.get("threshold")
    if isinstance(p, (int, float)) and isinstance(threshold, (int, float)):
        return float(p), float(threshold), router.get("weak"), "recorded"
    from .learned import store
    from .learned.model import VECTOR_NAMES

    vector = router.get("vector")
    if not isinstance(vector, list) or len(vector) != len(VECTOR_NAMES) or \
            not all(isinstance(v, (int, float)) for v in vector):
        return None
    model = store.load()
    weak = router.get("weak") or prices.cheapest(route, *tokens)
    return model.predict_vector(vector), model.threshold, weak, "shipped model"


def judge(request: Request, prices: Prices) -> Judged:
    """Whether a cheaper model would likely have done as well as the one that answered, and the
    saving: see the module's docstring."""
    _, route, model, status, cost, input_tokens, output_tokens, _, router, attempts = request
    if status != "ok":
        return Judged("failed")
    found = prediction_of(_json(router), route, (input_tokens, output_tokens), prices)
    if found is None:
        return Judged("no_prediction")
    p, threshold, weak, source = found
    if p >= threshold:
        return Judged("strong_predicted", weak, prediction=p, source=source)
    if weak is None or model == weak:
        return Judged("weak_answered", weak, prediction=p, source=source)
    tried = _json(attempts)
    if any(isinstance(a, dict) and a.get("model") == weak and a.get("status") == "rejected"
           for a in (tried if isinstance(tried, list) else ())):
        return Judged("weak_rejected", weak, prediction=p, source=source)
    at_weak = prices.cost(weak, input_tokens, output_tokens)
    if at_weak is None:
        return Judged("no_prices", weak, prediction=p, source=source)
    saving = (cost or 0.0) - at_weak
    if saving <= 0:
        return Judged("no_saving", weak, at_weak, prediction=p, source=source)
    return Judged("cheaper", weak, at_weak, saving, p, source)


# --- the figures -------------------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    """One route and task type."""

    route: str | None
    task: str | None
    requests: int = 0
    spend: float = 0.0
    by_model: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0.0]))
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    cheaper_actual: float = 0.0
    cheaper_at_weak: float = 0.0
    saving: float = 0.0
    weak_models: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def summary(self) -> dict[str, Any]:
        models = sorted(self.by_model.items(), key=lambda item: (-item[1][1], item[0]))
        return {
            "route": self.route, "task": self.task, "requests": self.requests,
            "spend_usd": _usd(self.spend),
            "mean_cost_usd": _usd(self.spend / self.requests) if self.requests else None,
            "models": [{"model": name, "attempts": int(n), "spend_usd": _usd(spent),
                        "share": round(spent / self.spend, 6) if self.spend > 0 else None}
                       for name, (n, spent) in models],
            "cheaper": {"requests": self.verdicts["cheaper"],
                        "actual_usd": _usd(self.cheaper_actual),
                        "at_weak_usd": _usd(self.cheaper_at_weak), "saving_usd": _usd(self.saving),
                        "weak_models": dict(sorted(self.weak_models.items()))},
            "verdicts": dict(self.verdicts),
        }


def _usd(value: float) -> float:
    return round(value, 10)


def figures(requests: list[Request], parents: list[tuple], attempts: list[tuple],
            prices: Prices, *, route: str | None = None) -> dict[str, Any]:
    """The groups (route, then task type) and the totals of the report, from rows already read;
    only route ``route`` when given."""
    root_of = {rid: rid for rid, *_ in requests}
    parent = dict(parents)
    groups: dict[tuple[str, str], Group] = {}
    group_of: dict[str, Group] = {}
    for request in requests:
        rid, name, _, _, cost, *_rest = request
        if route is not None and name != route:
            continue
        task = request[7]
        group = groups.setdefault((name or "", task or ""), Group(name, task))
        group.requests += 1
        group.spend += cost or 0.0
        group_of[rid] = group
        judged = judge(request, prices)
        group.verdicts[judged.verdict] += 1
        if judged.verdict == "cheaper":
            group.cheaper_actual += cost or 0.0
            group.cheaper_at_weak += judged.at_weak
            group.saving += judged.saving
            group.weak_models[judged.weak] += 1
    for rid, model, cost in attempts:
        seen, top = set(), rid
        while top not in root_of and top in parent and top not in seen:
            seen.add(top)
            top = parent[top]
        group = group_of.get(top)
        if group is not None:
            entry = group.by_model[model or "(none)"]
            entry[0] += 1
            entry[1] += cost or 0.0
    found = [g.summary() for _, g in sorted(groups.items())]
    totals = {"requests": sum(g["requests"] for g in found),
              "spend_usd": _usd(sum(g.spend for g in groups.values())),
              "cheaper_requests": sum(g["cheaper"]["requests"] for g in found),
              "saving_usd": _usd(sum(g.saving for g in groups.values())),
              "verdicts": {v: sum(g["verdicts"][v] for g in found) for v in VERDICTS}}
    return {"groups": found, "totals": totals}


# --- the command -------------------------------------------------------------------------------


def _money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.3g}"


def render(report: dict[str, Any]) -> str:
    """The report as plain text: one row per route and task type, then the totals."""
    from .stats import _table

    since = report["since"]
    window = (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
              if since is not None else "")
    which = f" for route {report['route']}" if report["route"] is not None else ""
    if not report["groups"]:
        return f"No requests{which} recorded in {report['path']}{window}."
    rows = []
    for g in report["groups"]:
        models = ", ".join(f"{m['model']} {m['share'] * 100:.0f}%" if m["share"] is not None
                           else f"{m['model']} -" for m in g["models"]) or "-"
        cheaper = g["cheaper"]
        rows.append((g["route"] or "-", g["task"] or "-", str(g["requests"]),
                     _money(g["spend_usd"]), _money(g["mean_cost_usd"]), models,
                     str(cheaper["requests"]), _money(cheaper["saving_usd"]),
                     str(g["verdicts"]["no_prediction"])))
    totals = report["totals"]
    counted = ", ".join(f"{v.replace('_', ' ')} {n}" for v, n in totals["verdicts"].items() if n)
    lines = [f"Spend{which} in {report['path']}{window}", ""]
    lines += _table(("route", "task", "requests", "spend", "per request", "spend by model",
                     "cheaper", "saving", "no prediction"), rows)
    lines += ["", f"Total: {totals['requests']} requests, {_money(totals['spend_usd'])} spent; "
              f"{totals['cheaper_requests']} could have been answered as well by the weak model "
              f"for {_money(totals['saving_usd'])} less.",
              f"Per request: {counted}.",
              "(cheaper: the learned router's prediction says the weak model would likely have "
              "done as well; saving: the cost less the same tokens at the weak model's prices; "
              "no prediction: the decision record has none, nothing is guessed.)"]
    return "\n".join(lines)


def _age(text: str) -> float:
    """``--since``: an age such as ``7d``, in seconds; an argparse error when it is not one."""
    from turnout.kernel.errors import BadRequest

    from .stats import parse_age

    try:
        seconds = parse_age(text)
    except BadRequest:
        raise argparse.ArgumentTypeError(f"{text!r}: write a number and a unit (s, m, h, d), "
                                         "e.g. 7d") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive age, e.g. 7d")
    return seconds


def arguments(parser: argparse.ArgumentParser) -> None:
    """The sub-commands of ``turnout report``."""
    sub = parser.add_subparsers(dest="report_command", metavar="SUBCOMMAND")
    spend = sub.add_parser("spend", help="spend per route and task type, per model, and where a "
                           "cheaper model would likely have done as well, with the saving")
    spend.add_argument("--since", metavar="AGE", type=_age, help="only requests newer than AGE: "
                       "30m, 24h, 7d")
    spend.add_argument("--route", metavar="R", help="only route R")
    spend.add_argument("--json", action="store_true", help="print one JSON object")
    spend.add_argument("--config", help="config file: the models' prices, the routes' models and "
                       "the record (record.backend, record.path or record.dsn); provider secrets "
                       "need not be set")
    record_arguments(spend)
    parser.set_defaults(report_parser=parser)


def run(args: argparse.Namespace) -> int:
    """``turnout report spend``: read the record and print the report."""
    from turnout.kernel import config as config_module

    if getattr(args, "report_command", None) != "spend":
        args.report_parser.print_help()
        return 2
    since = time.time() - args.since if args.since is not None else None
    prices = Prices.of(config_module.load(args.config, lenient_env=True, references=False))
    path, dsn, schema = record_location(args)
    if dsn is not None:
        from .record_postgres import masked

        rows = read_postgres(dsn, schema, since)
        where = f"{masked(dsn)} (schema {schema})"
    else:
        rows = read_sqlite(path, since)
        where = path
    report = {"path": where, "since": since, "route": args.route,
              **figures(*rows, prices, route=args.route)}
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


class SpendReport:
    """Registers ``turnout report spend``."""

    @hookimpl
    def register_commands(self, register) -> None:
        """``turnout report spend``."""
        register("report", run, help="reports on the request record: where the money goes "
                 "(spend)", arguments=arguments)
