"""The capability matrix from the outcomes of a run, and the four files it is written as:
``matrix.json``, ``matrix.md``, ``matrix.png`` (a heat map of quality) and ``quality.toml`` (the
``[models.NAME] quality`` tables that seed the ``score`` and ``cost_tiers`` routers).

Per model and task type, quality is the share of the calls whose answer passed its check; a call
that failed (an error status, a timeout) counts as not passed. Latency percentiles (nearest rank)
are over the calls that were answered, whatever the check said; cost per 1,000 requests is the
mean cost of an answered call (its usage at the model's prices) times 1,000, so a model that
errors is not made to look cheap.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from turnout.plugins.stats import percentile

from .runner import Outcome

FAILURES_KEPT = 3
"""Failed items listed per model and task type in matrix.json, with why, to show what to read."""


def matrix(outcomes: list[Outcome], models: list[str], tasks: list[str],
           meta: dict[str, Any]) -> dict[str, Any]:
    """The matrix as one JSON-ready dict: ``meta`` (what was run), then per model the quality by
    task type, latency, cost and errors."""
    by_model: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_model[outcome.model].append(outcome)
    rows: dict[str, Any] = {}
    for name in models:
        mine = by_model.get(name, [])
        answered = [o for o in mine if o.error is None]
        latencies = sorted(o.latency_ms for o in answered if o.latency_ms is not None)
        per_task: dict[str, Any] = {}
        for task in tasks:
            calls = [o for o in mine if o.task == task]
            passed = sum(o.passed for o in calls)
            failed = [o for o in calls if not o.passed]
            per_task[task] = {
                "quality": round(passed / len(calls), 4) if calls else None,
                "n": len(calls), "passed": passed,
                "errors": sum(o.error is not None for o in calls),
                "failures": [{"item": o.item, "error": o.error, "reason": o.reason}
                             for o in failed[:FAILURES_KEPT]]}
        passed = sum(o.passed for o in mine)
        rows[name] = {
            "quality": per_task,
            "overall": round(passed / len(mine), 4) if mine else None,
            "n": len(mine),
            "latency_ms": {"p50": _round(percentile(latencies, 50)),
                           "p95": _round(percentile(latencies, 95))},
            "cost_per_1k_usd": round(sum(o.cost_usd for o in answered) / len(answered) * 1000,
                                     10) if answered else None,
            "tokens": {"input": sum(o.input_tokens for o in answered),
                       "output": sum(o.output_tokens for o in answered)},
            "errors": dict(sorted(Counter(o.error for o in mine if o.error).items())),
        }
    return {**meta, "tasks": tasks, "models": rows}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# --- Markdown ----------------------------------------------------------------------------------


def markdown(found: dict[str, Any]) -> str:
    """The matrix as a Markdown table: a row per model, a column per task type, then latency
    p50/p95 and cost per 1,000 requests; errors, where any, listed under it."""
    tasks = found["tasks"]
    head = ["model", *tasks, "p50 ms", "p95 ms", "$/1k"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(
        [" --- "] + [" ---: "] * (len(head) - 1)) + "|"]
    notes = []
    for name, row in found["models"].items():
        cells = [name] + [_share(row["quality"][t]["quality"]) for t in tasks]
        cells += [_number(row["latency_ms"]["p50"]), _number(row["latency_ms"]["p95"]),
                  _money(row["cost_per_1k_usd"])]
        lines.append("| " + " | ".join(cells) + " |")
        if row["errors"]:
            errors = ", ".join(f"{kind} {count}" for kind, count in row["errors"].items())
            notes.append(f"- {name}: {sum(row['errors'].values())} of {row['n']} calls failed "
                         f"({errors})")
    text = "\n".join(lines)
    per_task = ", ".join(f"{t} {n}" for t, n in found["suite"]["items"].items())
    text += (f"\n\nQuality: share of answers passing their check ({per_task} prompts, "
             f"{found['suite']['repeat']} run(s) each; a failed call counts as not passed). "
             "Latency: answered calls. $/1k: mean cost of an answered call x 1,000.")
    if notes:
        text += "\n\nErrors:\n" + "\n".join(notes)
    return text + "\n"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if value >= 1 else f"{value:.3g}"


# --- quality.toml ------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    return name if _BARE_KEY.match(name) else json.dumps(name)


def quality_toml(found: dict[str, Any]) -> str:
    """``[models.NAME] quality = { task = share, ... }`` for every model with answers, to paste
    into a config (each line into the model's own ``[models.NAME]`` table where it has one)."""
    out = [f"# Quality by task type measured by `turnout bench models` ({found['created_at']}; "
           f"{found['suite']['size']} prompts, {found['suite']['repeat']} run(s) each).",
           "# Each model's `quality` line goes into its [models.NAME] table: the score and "
           "cost_tiers routers", "# read it by the request's task label."]
    for name, row in found["models"].items():
        shares = [(task, cell["quality"]) for task, cell in row["quality"].items()
                  if cell["quality"] is not None]
        if not shares:
            continue
        table = ", ".join(f"{task} = {round(value, 3)!r}" for task, value in shares)
        out += ["", f"[models.{_key(name)}]", f"quality = {{ {table} }}"]
    return "\n".join(out) + "\n"


# --- the heat map ------------------------------------------------------------------------------


def heat_map(found: dict[str, Any]) -> bytes:
    """Quality as a heat map, models by task type, each cell annotated with its share, as PNG
    bytes (:func:`turnout.plugins.charts.heat_map_png`)."""
    from turnout.plugins.charts import heat_map_png

    tasks, names = found["tasks"], list(found["models"])
    return heat_map_png(names, tasks, [[found["models"][m]["quality"][t]["quality"] for t in tasks]
                                       for m in names],
                        title="Quality by task type (share of checks passed)")


# --- writing -----------------------------------------------------------------------------------


def write(found: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the four files into ``out`` (created if need be); their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "matrix.json", "markdown": out / "matrix.md",
             "png": out / "matrix.png", "toml": out / "quality.toml"}
    paths["json"].write_text(json.dumps(found, indent=2) + "\n")
    paths["markdown"].write_text(markdown(found))
    paths["png"].write_bytes(heat_map(found))
    paths["toml"].write_text(quality_toml(found))
    return paths
