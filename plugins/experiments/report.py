"""``turnout experiments report``: each experiment's arms side by side, with intervals, and a
verdict that names a winner only when the data supports one (see :mod:`.figures`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .figures import (
    ALPHA,
    METRICS,
    MIN_N,
    ExperimentData,
    collect,
    read_postgres,
    read_sqlite,
    verdict,
)


def report(data: list[ExperimentData], *, metric: str = "success", min_n: int = MIN_N,
           alpha: float = ALPHA) -> list[dict[str, Any]]:
    """The figures and verdict of each experiment."""
    return [{"experiment": d.name, "key": d.key, "unassigned": d.unassigned,
             "requests": sum(a.n for a in d.arms.values()),
             "arms": [a.summary() for a in d.arms.values()],
             "verdict": verdict(list(d.arms.values()), metric, alpha=alpha, min_n=min_n)}
            for d in data]


def _pct(rate: float | None, interval: list[float] | None) -> str:
    if rate is None:
        return "-"
    shown = f"{rate * 100:.1f}%"
    return f"{shown} ({interval[0] * 100:.1f}-{interval[1] * 100:.1f})" if interval else shown


def _money(mean: float | None, interval: list[float] | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4g}" + (f" ({interval[0]:.4g} to {interval[1]:.4g})" if interval else "")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


def _score(feedback: dict[str, Any]) -> str:
    if not feedback["n"]:
        return "-"
    ci = feedback["ci95"]
    return f"{feedback['mean']:+.2f}" + (f" ({ci[0]:+.2f}..{ci[1]:+.2f})" if ci else "") + \
        f" n={feedback['n']}"


def render(found: list[dict[str, Any]], where: str, since: float | None) -> str:
    """The report as plain text: a table of arms per experiment, then its verdict."""
    from turnout.plugins.stats import _table

    window = (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
              if since is not None else "")
    if not found:
        return f"No experiment requests recorded in {where}{window}."
    lines = [f"Experiments in {where}{window} (95% intervals: Wilson for rates, normal "
             "approximation for means)"]
    for e in found:
        left_out = f"; {e['unassigned']} unassigned, left out" if e["unassigned"] else ""
        lines += ["", f"{e['experiment']} (by {e['key']}; {e['requests']} requests{left_out})"]
        lines += ["  " + line for line in _table(
            ("arm", "target", "n", "success", "cost $ mean", "p50", "p95", "validation",
             "feedback"),
            [(a["arm"], a["target"] or "-", str(a["n"]),
              _pct(a["success"]["rate"], a["success"]["ci95"]),
              _money(a["cost_usd"]["mean"], a["cost_usd"]["ci95"]),
              _ms(a["latency_ms"]["p50"]), _ms(a["latency_ms"]["p95"]),
              _pct(a["validation"]["rate"], a["validation"]["ci95"]), _score(a["feedback"]))
             for a in e["arms"]])]
        lines.append(f"  {e['verdict']['reason']}")
    return "\n".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    """The sub-commands of ``turnout experiments``."""
    sub = parser.add_subparsers(dest="experiments_command", metavar="SUBCOMMAND")
    shown = sub.add_parser("report", help="per-arm success, cost, latency, validation and "
                           "feedback with 95%% intervals, and whether an arm wins")
    shown.add_argument("--name", help="only this experiment")
    shown.add_argument("--since", metavar="AGE", help="only requests newer than AGE: 30m, 24h, "
                       "7d")
    shown.add_argument("--metric", choices=sorted(METRICS), default="success",
                       help="what the verdict judges (default: success)")
    shown.add_argument("--min-n", type=int, default=MIN_N, metavar="N",
                       help=f"fewest values per arm before a winner is named (default {MIN_N})")
    shown.add_argument("--config", help="config file (for record.backend, record.path or "
                       "record.dsn, and the arms' order); provider secrets need not be set")
    shown.add_argument("--db", help="SQLite record file (default: record.path)")
    shown.add_argument("--dsn", help="PostgreSQL record to read instead (default: record.dsn "
                       "when record.backend is postgres)")
    shown.add_argument("--schema", help="its schema (default: record.schema, public)")
    shown.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(experiments_parser=parser)


def run(args: argparse.Namespace) -> int:
    """``turnout experiments report``: read the record the config's ``[record]`` names (or
    ``--db`` / ``--dsn``) and print each experiment's arms and verdict."""
    from turnout.plugins.stats import parse_age, record_location

    if getattr(args, "experiments_command", None) != "report":
        args.experiments_parser.print_help()
        return 2
    if args.min_n < 1:
        from turnout.kernel.errors import BadRequest

        raise BadRequest("--min-n must be at least 1")
    since = time.time() - parse_age(args.since) if args.since else None
    order = _arm_order(args.config) if args.config or (args.db is None and args.dsn is None) \
        else {}
    path, dsn, schema = record_location(args)
    if dsn is not None:
        from turnout.plugins.record_postgres import masked

        rows, scores = read_postgres(dsn, schema, since)
        where = f"{masked(dsn)} (schema {schema})"
    else:
        rows, scores = read_sqlite(path, since)
        where = path
    found = report(collect(rows, scores, name=args.name, order=order), metric=args.metric,
                   min_n=args.min_n)
    if args.json:
        print(json.dumps({"path": where, "since": since, "experiments": found}, indent=2))
    else:
        print(render(found, where, since))
    return 0


def _arm_order(config_path: str | None) -> dict[str, list[str]]:
    """Each configured experiment's arm names in the config's order (control first), read
    leniently: the report runs on a record whatever the config says now."""
    from turnout.kernel import config as config_module

    config = config_module.load(config_path, lenient_env=True, references=False)
    entries = config.section("experiments") or []
    order: dict[str, list[str]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            order[entry["name"]] = [a.get("name") for a in entry.get("arms") or []
                                    if isinstance(a, dict) and isinstance(a.get("name"), str)]
    return order
