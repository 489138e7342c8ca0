"""Drops candidate models the request cannot fit: context window, output limit, capabilities.

A model is dropped when the prompt plus the answer's room does not fit its context window, when
the request's ``max_tokens`` is over the model's ``max_output_tokens``, or when the request needs
tools, JSON mode, vision or streaming and the model's profile lacks it. The answer's room is the
request's ``max_tokens``, else the model's ``max_output_tokens``, else ``MIN_ANSWER_TOKENS``.

When no candidate is left, the request itself is what no model can serve: the client gets a 400
(``context_length_exceeded`` or ``unsupported_capability``) naming the models considered, never
a 503 that SDKs would retry.
"""

from __future__ import annotations

from turnout.kernel.errors import CapabilityMissing, ContextLengthExceeded
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.tokens import prompt_tokens
from turnout.kernel.types import Context, ModelProfile

MIN_ANSWER_TOKENS = 256
"""Room left for the answer when neither the request nor the model sets a limit."""

EMBEDDINGS_ONLY = frozenset({"embeddings"})
"""The capabilities of a model that only embeds (``/v1/embeddings``)."""


def unfit(ctx: Context, model: ModelProfile) -> tuple[str, str] | None:
    """Why ``model`` cannot serve this request, as (``"context"`` or the missing capability,
    the reason), or None when it can."""
    request = ctx.request
    if model.capabilities == EMBEDDINGS_ONLY:
        return "chat", "an embedding model: it does not answer chat requests"
    limit = request.output_limit
    if limit is not None and model.max_output_tokens is not None \
            and limit > model.max_output_tokens:
        return "context", f"max_tokens {limit} is over its output limit {model.max_output_tokens}"
    needed = prompt_tokens(ctx) + (limit or model.max_output_tokens or MIN_ANSWER_TOKENS)
    if needed > model.context_window:
        return "context", f"needs {needed} tokens, context window is {model.context_window}"
    for wanted, capability in ((bool(request.tools), "tools"), (request.wants_json, "json"),
                               (request.stream, "streaming"),
                               (bool(ctx.labels.get("needs_vision")), "vision")):
        if wanted and capability not in model.capabilities:
            return capability, f"lacks capability {capability!r}"
    return None


def fits(ctx: Context, model: ModelProfile) -> str | None:
    """Why ``model`` cannot serve this request, or None when it can."""
    found = unfit(ctx, model)
    return found[1] if found else None


@hookimpl
def filter_candidates(ctx: Context) -> None:
    """Drop the candidates this request does not fit; refuse the request when none is left."""
    considered = list(ctx.candidates)
    kinds = set()
    for model in considered:
        found = unfit(ctx, model)
        if found is not None:
            kinds.add(found[0])
            ctx.drop(model, found[1])
    if considered and not ctx.candidates:
        names = "; ".join(f"{d['model']}: {d['reason']}" for d in ctx.decision["dropped"])
        if kinds == {"context"}:
            raise ContextLengthExceeded(
                f"The prompt ({prompt_tokens(ctx)} tokens) and the answer's room do not fit any "
                f"model considered ({names}). Shorten the prompt or lower max_tokens.",
                param="messages")
        needed = sorted(kinds - {"context"})
        raise CapabilityMissing(
            f"This request needs {', '.join(needed)}, which no model considered has ({names}). "
            "Ask for a model or route that has it.", param="model")
