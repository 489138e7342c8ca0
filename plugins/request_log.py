"""Logs one ``request_finished`` line per request: route, model, attempts, tokens, cost, latency.

Off below ``info``; turn it down with ``[logging] level = "warning"`` or disable the plugin by
name (``request_log``). Prompts and answers are never logged.
"""

from __future__ import annotations

import structlog

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Context

log = structlog.get_logger("turnout.requests")


@hookimpl
def record(ctx: Context) -> None:
    """Log the outcome of the request."""
    last = ctx.answering
    log.info("request_finished", status=ctx.status, requested=ctx.request.model, route=ctx.route,
             model=last.model if last else None, attempts=ctx.attempt_count,
             input_tokens=ctx.input_tokens, output_tokens=ctx.output_tokens,
             cost_usd=round(ctx.spend_usd, 8), latency_ms=round(ctx.latency_s * 1000, 1),
             overhead_ms=round(ctx.overhead_s * 1000, 2), stream=ctx.request.stream,
             error=ctx.error_kind,
             parent=ctx.parent.request_id if ctx.parent else None)
