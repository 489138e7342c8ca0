"""The kernel's spans: one per request, one per attempt, with GenAI semantic-convention attributes."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from turnout.kernel import errors
from turnout.plugins.telemetry import install_tracing

from .support import ask, kernel_for


@pytest.mark.anyio
async def test_request_and_attempt_spans_carry_gen_ai_attributes() -> None:
    exporter = InMemorySpanExporter()
    tracing = install_tracing(exporter, "turnout-test")
    try:
        kernel, _, _ = kernel_for({"small": [errors.ProviderUnavailable("down"), "answered"]})
        async with kernel:
            assert kernel.tracing
            ctx = kernel.context(ask(max_tokens=50, temperature=0.2))
            await kernel.complete(ctx)
        tracing.flush()
    finally:
        tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    attempts = [s for s in exporter.get_finished_spans() if s.name == "chat small"]
    request = spans["turnout auto"]
    assert len(attempts) == 2
    assert all(a.parent.span_id == request.context.span_id for a in attempts)
    failed, answered = sorted(attempts, key=lambda s: s.start_time)
    assert failed.attributes["error.type"] == "upstream_unavailable"
    assert answered.attributes["gen_ai.operation.name"] == "chat"
    assert answered.attributes["gen_ai.request.model"] == "small"
    assert answered.attributes["gen_ai.request.max_tokens"] == 50
    assert answered.attributes["gen_ai.request.temperature"] == 0.2
    assert answered.attributes["gen_ai.usage.input_tokens"] == 10
    assert answered.attributes["gen_ai.usage.output_tokens"] == 5
    assert request.attributes["turnout.request_id"] == ctx.request_id
    assert request.attributes["turnout.route"] == "chain"


@pytest.mark.anyio
async def test_tracing_installed_by_one_test_is_gone_for_the_next() -> None:
    from opentelemetry import trace

    from .support import reset_tracing

    tracing = install_tracing(InMemorySpanExporter(), "turnout-test")
    tracing.shutdown()
    reset_tracing()  # what the autouse fixture does after every test
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    kernel, _, _ = kernel_for({"small": ["answered"]})
    async with kernel:
        assert not kernel.tracing, "no spans are made when nobody installed a provider"
