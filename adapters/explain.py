"""``turnout route --explain``'s report: a decision record (:meth:`Kernel.explain`'s) for people.

Shows, in the order the kernel decided them: the labels, the route and what chose it, the
candidates considered, the ones the filters dropped and why, the router's ranking (its reason,
each model's score and the parts of the score, and whatever else it recorded, such as a learned
router's prediction), and the plan: the strategy and its steps. Any other entry a plugin wrote
into the decision is listed last, as JSON.
"""

from __future__ import annotations

import json
from typing import Any

KNOWN = {"labels", "requested", "rule", "route", "candidates", "dropped", "router", "strategy",
         "plan", "estimated_cost_usd"}
"""Decision entries the report lays out itself; the rest are listed as they are."""

ROUTER_KNOWN = {"kind", "reason", "scores", "parts"}

FIRST = ["quality", "price", "latency", "usd_per_m", "latency_ms"]
"""The parts of a score shown first, in this order."""

WIDTH = 12


def render(decision: dict[str, Any], prompt: str | None = None) -> str:
    """The decision record as lines of text."""
    lines: list[str] = []
    if prompt is not None:
        shown = prompt if len(prompt) <= 100 else prompt[:97] + "..."
        lines.append(_row("prompt", json.dumps(shown, ensure_ascii=False)))
    labels = decision.get("labels") or {}
    lines.append(_row("labels", ", ".join(f"{k} {_value(v)}" for k, v in labels.items())
                      or "none"))
    route = f"{decision.get('route') or '-'} (asked for {decision.get('requested') or '-'}"
    route += f"; chosen by: {decision['rule']})" if decision.get("rule") else ")"
    lines.append(_row("route", route))
    lines.append(_row("candidates", ", ".join(decision.get("candidates") or []) or "none"))
    dropped = decision.get("dropped") or []
    if dropped:
        for i, d in enumerate(dropped):
            lines.append(_row("dropped" if i == 0 else "", f"{d.get('model')}: {d.get('reason')}"))
    else:
        lines.append(_row("dropped", "none"))
    lines.extend(_router(decision.get("router")))
    plan = decision.get("plan") or []
    lines.append(_row("plan", f"{decision.get('strategy') or '-'}: "
                      + (" -> ".join(plan) or "(no steps)")))
    estimate = decision.get("estimated_cost_usd")
    if isinstance(estimate, (int, float)):
        lines.append(_row("estimate", f"${estimate:.6f} for the first step"))
    for key, value in decision.items():
        if key not in KNOWN:
            lines.append(_row(key, json.dumps(value, default=str, ensure_ascii=False)))
    return "\n".join(lines)


def _router(router: Any) -> list[str]:
    if not isinstance(router, dict):
        return [_row("router", "none: the route's own order")]
    lines = [_row("router", f"{router.get('kind')}: {router.get('reason') or ''}".rstrip(": "))]
    scores = router.get("scores") or {}
    parts = router.get("parts") if isinstance(router.get("parts"), dict) else {}
    names = list(scores) + [n for n in parts if n not in scores]
    if names:
        columns = sorted({c for n in names for c in (parts.get(n) or {})},
                         key=lambda c: (FIRST.index(c) if c in FIRST else len(FIRST), c))
        header = ["model", "score", *columns]
        rows = [[n, _value(scores.get(n)), *[_value((parts.get(n) or {}).get(c))
                                               for c in columns]] for n in names]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append(_row("", "  ".join(str(cell).ljust(w)
                                            for cell, w in zip(row, widths)).rstrip()))
    for key, value in router.items():
        if key not in ROUTER_KNOWN:
            lines.append(_row("", f"{key}: {json.dumps(value, default=str, ensure_ascii=False)}"))
    return lines


def _row(title: str, text: str) -> str:
    return f"{title:<{WIDTH}}{text}" if title else f"{'':<{WIDTH}}{text}"


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
