"""Drops candidate models the request cannot fit: context window and capabilities.

A model is dropped when the prompt plus the answer's room does not fit its context window, or when
the request needs tools, JSON mode, vision or streaming and the model's profile lacks it. The
answer's room is the request's ``max_tokens``, else the model's ``max_output_tokens``, else
``MIN_ANSWER_TOKENS``.
"""

from __future__ import annotations

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.tokens import prompt_tokens
from turnout.kernel.types import Context, ModelProfile

MIN_ANSWER_TOKENS = 256
"""Room left for the answer when neither the request nor the model sets a limit."""


def fits(ctx: Context, model: ModelProfile) -> str | None:
    """Why ``model`` cannot serve this request, or None when it can."""
    needed = prompt_tokens(ctx) + (ctx.request.output_limit or model.max_output_tokens
                                   or MIN_ANSWER_TOKENS)
    if needed > model.context_window:
        return f"needs {needed} tokens, context window is {model.context_window}"
    request = ctx.request
    for wanted, capability in ((bool(request.tools), "tools"), (request.wants_json, "json"),
                               (request.stream, "streaming"),
                               (bool(ctx.labels.get("needs_vision")), "vision")):
        if wanted and capability not in model.capabilities:
            return f"lacks capability {capability!r}"
    return None


@hookimpl
def filter_candidates(ctx: Context) -> None:
    """Drop the candidates this request does not fit."""
    for model in list(ctx.candidates):
        reason = fits(ctx, model)
        if reason is not None:
            ctx.drop(model, reason)
