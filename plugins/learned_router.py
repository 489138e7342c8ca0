"""The ``learned`` router: predicts, per prompt, whether the cheaper model's answer will be as
good as the stronger one's, and sends the prompt to the strong model only when it will not.

A route names it with ``router = "learned"`` or ``router = { kind = "learned", model_path =
"...", target_strong_share = 0.3 }``. Convention: the route's ``models`` list the weak (cheap)
model first and the strong one last. The router scores the last user message with the model
file (see :mod:`turnout.plugins.learned.model`: logistic regressions over subject-agnostic
features and over the prompt's words, their scores ranked against the training prompts' and
averaged): a score from 0 to 1 of how much the prompt needs the strong model, 0.9 meaning more
than about 90% of the training prompts did. At or above the threshold the strong model goes
first, else the candidates keep their order (weak first); the others stay behind as fallbacks.

The decision record (``decision["router"]``) carries the score (``prediction``), the threshold,
a few named features and the whole vector (the feature values, then the word score, rounded as
recorded: the score is computed from the rounded vector, so the recorded vector replays to the
same score). ``turnout router retrain`` learns from it (prompts are never recorded). The plugin
registers ``turnout router train|eval|retrain``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Context, ModelProfile, Ranking

from .learned import store
from .learned.model import VECTOR_NAMES

SHOWN = ("log_tokens", "options", "digit_share", "compute_cues", "reasoning_cues", "difficulty",
         "option_stem_ratio", "options_one_word", "word_score")
"""The features named in the decision record (the whole vector is recorded too)."""

VECTOR = "learned.vector"
"""``ctx.state`` key of a vector (``model.VECTOR_NAMES``) given for the request, scored instead of
the prompt's: ``turnout estimate`` replays recorded requests, whose prompts are not kept, with
the vectors their decision records hold. A vector of another length (recorded by an older
version) is dropped and the router ranks nothing."""

DIGITS = 5
"""Decimal places of the recorded vector; the score is computed from the rounded values."""


class LearnedSettings(BaseModel):
    """The ``learned`` router's table: ``router = { kind = "learned", ... }``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = Field(default=None, description="The model file (JSON) written by "
                                   "`turnout router train` or `retrain`; default: the model shipped "
                                   "with Turnout, trained on per-prompt outcomes of two models on "
                                   "MMLU. Read at start-up and again when the file changes.")
    threshold: float | None = Field(default=None, ge=0, le=1, description="Send the prompt to the "
                                    "strong model first when the model's score (0..1: the share of "
                                    "its training prompts this prompt needs the strong model more "
                                    "than, averaged over its two views) is at or above this. "
                                    "Default: the threshold the model was calibrated to.")
    target_strong_share: float | None = Field(default=None, ge=0, le=1, description="Instead of a "
                                              "threshold: the share of prompts to send to the strong "
                                              "model, turned into a threshold by the score "
                                              "distribution of the model's training prompts.")

    @model_validator(mode="after")
    def _one_of(self) -> "LearnedSettings":
        if self.threshold is not None and self.target_strong_share is not None:
            raise ValueError("set threshold or target_strong_share, not both")
        return self

    @field_validator("model_path")
    @classmethod
    def _loads(cls, value: str | None) -> str | None:
        store.load(value)    # a missing or bad file fails the config check, with what to do
        return value

    def resolved_threshold(self) -> float:
        """The threshold in force: set, from the target share, or the model's own."""
        model = store.load(self.model_path)
        if self.threshold is not None:
            return self.threshold
        if self.target_strong_share is not None:
            return model.threshold_for_share(self.target_strong_share)
        return model.threshold


DEFAULTS = LearnedSettings()


def prompt_of(ctx: Context) -> str:
    """The text the router scores: the last user message."""
    return next((m.text() for m in reversed(ctx.request.messages) if m.role == "user"), "")


def learned(ctx: Context, candidates: list[ModelProfile],
            settings: LearnedSettings | None = None) -> Ranking | None:
    """Rank the route's candidates (weak first, strong last) by the model's score. A model
    served by several deployments appears once per deployment; they move together."""
    names = list(dict.fromkeys(c.name for c in candidates))
    if len(names) < 2:
        return None
    settings = settings or DEFAULTS
    model = store.load(settings.model_path)
    threshold = settings.resolved_threshold()
    given = ctx.state.get(VECTOR)
    if given is not None and len(given) != len(model.names) + 1:
        ctx.state.pop(VECTOR)            # recorded by another version: not this model's vector
        return None
    vector = given or [round(v, DIGITS) for v in
                       model.vector(prompt_of(ctx), ctx.labels.get("difficulty"))]
    p = model.predict_vector(vector)
    weak, strong = next(c for c in candidates if c.name == names[0]), \
        next(c for c in candidates if c.name == names[-1])
    if p >= threshold:
        order = [c for c in candidates if c.name == strong.name] + \
            [c for c in candidates if c.name != strong.name]
        reason = f"strong-need score {p:.3f} >= {threshold:.3f}: {strong.name} first"
    else:
        order = list(candidates)
        reason = f"strong-need score {p:.3f} < {threshold:.3f}: {weak.name} first"
    named = dict(zip(VECTOR_NAMES, vector))
    details: dict[str, Any] = {
        "prediction": round(p, 4), "threshold": round(threshold, 4),
        "weak": weak.name, "strong": strong.name,
        "features": {name: round(named[name], 4) for name in SHOWN},
        "vector": list(vector),
    }
    return Ranking(models=order, reason=reason, scores={weak.name: round(1 - p, 4),
                                                        strong.name: round(p, 4)}, details=details)


class LearnedRouter:
    """Registers the ``learned`` router and the ``turnout router`` command."""

    @hookimpl
    def register_routers(self, register) -> None:
        """``learned``."""
        register("learned", learned, settings=LearnedSettings)

    @hookimpl
    def register_commands(self, register) -> None:
        """``turnout router train|eval|retrain``."""
        from .learned import cli

        register("router", cli.run, help="train, evaluate and retrain the learned router",
                 arguments=cli.arguments)
