"""The built-in routers that order a route's models for each request: ``score`` and ``cost_tiers``.

A route names one with ``router = "score"`` or ``router = { kind = "cost_tiers", min_quality =
0.7 }``. The kernel calls it after the ``filter_candidates`` plugins, so the hard filters have
already run: the fit filter (plugins/fit.py) has dropped every model whose context window or
output limit the request does not fit and every model lacking a capability it needs (tools, JSON
mode, vision, streaming); the budget and health filters have had their say too. A router only
orders what is left; the strategy then gets the models in that order (``fallback`` tries the
first first, ``cascade`` climbs from it).

Both read a model's quality for the request's task type (``[models.NAME] quality``, by the
``task`` label; unknown counts as 0) and its price (input plus output, USD per million tokens).

``score`` also weighs observed latency: an exponentially weighted moving average of each model's
successful attempts, fed by this plugin's ``record`` hook. It is kept in this process's memory,
for every kernel in the process, and starts empty at each start (nothing is shared between
replicas); a model not seen yet counts as the median of the candidates that have been.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Context, ModelProfile, Ranking

LATENCY_WEIGHT_OF_NEWEST = 0.2
"""How much the newest attempt counts in a model's moving average latency."""

PRICE_FLOOR = 0.01
"""Prices (USD per million tokens, input plus output) below this count as this when prices are
compared on a log scale, so a free model is the cheapest without being infinitely so."""


class ScoreSettings(BaseModel):
    """The ``score`` router's weights: ``router = { kind = "score", quality = 1.0, price = 0.3,
    latency = 0.1 }``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality: float = Field(default=1.0, ge=0, description="Weight of the model's quality for the "
                           "request's task type ([models.NAME] quality, 0..1; unknown counts "
                           "as 0).")
    price: float = Field(default=0.3, ge=0, description="Weight of cheapness: input plus output "
                         "price, compared among the candidates on a log scale (the cheapest 1, "
                         "the dearest 0).")
    latency: float = Field(default=0.1, ge=0, description="Weight of speed: the moving average "
                           "latency of the model's recent successful calls in this process, "
                           "compared among the candidates on a log scale (the fastest 1, the "
                           "slowest 0); a model not seen yet counts as the candidates' median.")

    @model_validator(mode="after")
    def _some_weight(self) -> "ScoreSettings":
        if not (self.quality or self.price or self.latency):
            raise ValueError("every weight is 0; give quality, price or latency a weight above 0")
        return self


class CostTiersSettings(BaseModel):
    """The ``cost_tiers`` router's settings: ``router = { kind = "cost_tiers", min_quality =
    0.7 }``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_quality: float = Field(default=0.7, ge=0, le=1, description="The quality floor: models "
                               "whose quality for the request's task type is at least this come "
                               "first, cheapest first; the others follow, best quality first. "
                               "When none reaches it, best quality first.")


def price(model: ModelProfile) -> float:
    """Input plus output price, USD per million tokens."""
    return model.input_price + model.output_price


def quality(model: ModelProfile, task: str | None) -> float | None:
    """The model's quality for ``task``, None when unknown."""
    return model.quality_for(task)


def cheapness(values: dict[str, float]) -> dict[str, float]:
    """Each value compared with the others on a log scale, lower is better: the lowest 1, the
    highest 0; all the same, 1 each."""
    logs = {k: math.log(max(v, PRICE_FLOOR)) for k, v in values.items()}
    low, high = min(logs.values()), max(logs.values())
    if high - low < 1e-12:
        return {k: 1.0 for k in logs}
    return {k: (high - v) / (high - low) for k, v in logs.items()}


class LatencyBook:
    """Moving average latency (seconds) of each model's successful attempts."""

    def __init__(self, weight: float = LATENCY_WEIGHT_OF_NEWEST) -> None:
        self.weight = weight
        self.seconds: dict[str, float] = {}

    def add(self, model: str, seconds: float) -> None:
        """Fold one attempt's latency into the model's average."""
        old = self.seconds.get(model)
        self.seconds[model] = seconds if old is None else \
            old + self.weight * (seconds - old)

    def of(self, models: list[ModelProfile]) -> tuple[dict[str, float], list[str]]:
        """Each model's average latency, unseen ones at the median of the seen; and the names of
        the unseen. Empty when none has been seen."""
        seen = {m.name: self.seconds[m.name] for m in models if m.name in self.seconds}
        if not seen:
            return {}, [m.name for m in models]
        median = statistics.median(seen.values())
        unseen = [m.name for m in models if m.name not in seen]
        return {m.name: seen.get(m.name, median) for m in models}, unseen


class ScoreRouter:
    """Orders candidates by a weighted score of quality, cheapness and speed, best first."""

    def __init__(self, book: LatencyBook | None = None) -> None:
        self.book = book or LatencyBook()

    def __call__(self, ctx: Context, candidates: list[ModelProfile],
                 settings: ScoreSettings | None) -> Ranking:
        settings = settings or ScoreSettings()
        task = ctx.labels.get("task")
        cheap = cheapness({m.name: price(m) for m in candidates})
        latencies, unseen = self.book.of(candidates)
        fast = cheapness(latencies) if latencies else {m.name: 1.0 for m in candidates}
        parts: dict[str, dict[str, Any]] = {}
        scores: dict[str, float] = {}
        for m in candidates:
            q = quality(m, task)
            score = settings.quality * (q or 0.0) + settings.price * cheap[m.name] \
                + settings.latency * fast[m.name]
            scores[m.name] = round(score, 6)
            parts[m.name] = {"quality": q, "price": round(cheap[m.name], 4),
                             "latency": round(fast[m.name], 4), "usd_per_m": price(m),
                             "latency_ms": round(latencies[m.name] * 1000, 1)
                             if m.name in latencies else None}
        order = sorted(range(len(candidates)),
                       key=lambda i: (-scores[candidates[i].name], i))
        ranked = [candidates[i] for i in order]
        scores = {m.name: scores[m.name] for m in ranked}  # best first, as recorded
        parts = {m.name: parts[m.name] for m in ranked}
        reason = (f"score for task {task}: {ranked[0].name} {scores[ranked[0].name]:.3f}"
                  + (f", next {ranked[1].name} {scores[ranked[1].name]:.3f}"
                     if len(ranked) > 1 else ""))
        return Ranking(ranked, reason, scores, {
            "task": task, "weights": settings.model_dump(), "parts": parts,
            **({"latency_unseen": unseen} if unseen and latencies else {})})

    def record(self, ctx: Context) -> None:
        """Fold the request's successful attempts into the latency averages (an answer from a
        cache is not the model's latency)."""
        cached = ctx.completion is not None and ctx.completion.cached
        for attempt in ctx.attempts:
            if attempt.status == "ok" and not (cached and attempt is ctx.answered):
                self.book.add(attempt.model, attempt.latency_s)


def cost_tiers(ctx: Context, candidates: list[ModelProfile],
               settings: CostTiersSettings | None) -> Ranking:
    """Cheapest first among the candidates whose quality for the task reaches the floor, then
    the others, best quality first (unknown quality last); none reaches it: best quality first.
    Ties keep the route's order."""
    settings = settings or CostTiersSettings()
    task = ctx.labels.get("task")
    known = {m.name: quality(m, task) for m in candidates}
    index = {m.name: i for i, m in enumerate(candidates)}
    floor = settings.min_quality
    good = [m for m in candidates if (known[m.name] is not None and known[m.name] >= floor)]
    rest = [m for m in candidates if m not in good]
    good.sort(key=lambda m: (price(m), -known[m.name], index[m.name]))
    rest.sort(key=lambda m: (known[m.name] is None, -(known[m.name] or 0.0), price(m),
                             index[m.name]))
    ranked = good + rest
    if good:
        reason = (f"cheapest with quality >= {floor} for task {task}: {good[0].name} "
                  f"(${price(good[0]):g}/M)")
    else:
        reason = f"none reaches quality {floor} for task {task}: best quality first"
    return Ranking(ranked, reason,
                   {m.name: known[m.name] for m in ranked if known[m.name] is not None},
                   {"task": task, "min_quality": floor, "meets_floor": [m.name for m in good],
                    "parts": {m.name: {"quality": known[m.name], "usd_per_m": price(m)}
                              for m in ranked}})


SCORE = ScoreRouter()
"""The ``score`` router of this process, with its latency averages."""


@hookimpl
def register_routers(register) -> None:
    """``score`` and ``cost_tiers``."""
    register("score", SCORE, settings=ScoreSettings)
    register("cost_tiers", cost_tiers, settings=CostTiersSettings)


@hookimpl
def record(ctx: Context) -> None:
    """Feed the ``score`` router's latency averages."""
    SCORE.record(ctx)
