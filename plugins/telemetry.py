"""OpenTelemetry tracing: exports the kernel's spans over OTLP/HTTP when an endpoint is configured.

With no ``telemetry.otlp_endpoint`` nothing is installed and the API's no-op tracer stays, so
tracing costs nothing. Every string of a span passes through the one scrubber
(:func:`turnout.kernel.observability.scrub`, by way of :func:`redact` for attributes) before it
leaves the process: its name, attributes, status message, and its events' names and attributes,
the ``exception`` events the SDK records from a failing span (message and stack trace) included.
It happens at export, so a secret registered after the span was recorded is masked as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import anyio
import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status
from pydantic import BaseModel, ConfigDict, Field

from turnout.kernel.errors import ConfigError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.observability import redact, scrub

log = structlog.get_logger("turnout.telemetry")


def _redact_attributes(attributes: Any) -> tuple[dict[str, Any] | None, bool]:
    """Redacted attributes, and whether anything changed."""
    if not attributes:
        return None, False
    original = dict(attributes)
    cleaned = redact(original)
    return cleaned, cleaned != original


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """The span itself when it carries no secret; otherwise a copy with the secrets masked.

    Covers the span's name, attributes and status message, and each event's name and attributes:
    an ``exception`` event's ``exception.message`` and ``exception.stacktrace`` are the failing
    exception's text, scrubbed like any other.
    """
    attributes, changed = _redact_attributes(span.attributes)
    events: list[Event] = []
    for event in span.events:
        event_attrs, event_changed = _redact_attributes(event.attributes)
        event_name = scrub(event.name)
        event_changed |= event_name != event.name
        events.append(Event(event_name, event_attrs if event_attrs is not None
                            else event.attributes, event.timestamp) if event_changed else event)
        changed |= event_changed
    status = span.status
    if status.description:
        description = scrub(status.description)
        if description != status.description:
            status, changed = Status(status.status_code, description), True
    name = scrub(span.name)
    changed |= name != span.name
    if not changed:
        return span
    return ReadableSpan(
        name=name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=attributes, events=events, links=span.links, kind=span.kind, status=status,
        start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope)


class RedactingExporter(SpanExporter):
    """Wraps a span exporter so every span is redacted before it is exported."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export redacted copies of ``spans`` through the wrapped exporter."""
        return self.inner.export([redact_span(s) for s in spans])

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Flush the wrapped exporter."""
        return self.inner.force_flush(timeout_millis)


@dataclass
class Tracing:
    """What :func:`install_tracing` installed: the provider and this installation's processor."""

    provider: TracerProvider
    processor: BatchSpanProcessor

    def flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every span ended so far."""
        return self.processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop this installation's processor and exporter.

        The process-wide provider stays (it can be set only once per process); spans ended after
        this are no longer exported by this installation.
        """
        self.processor.force_flush()
        self.processor.shutdown()


def install_tracing(exporter: SpanExporter, service_name: str) -> Tracing:
    """Export spans through ``exporter`` (redacted, in batches) from now on.

    The first call installs an SDK ``TracerProvider`` with ``service.name`` as the global provider;
    later calls add their processor to the provider already installed, since the global provider
    can be set only once per process.
    """
    processor = BatchSpanProcessor(RedactingExporter(exporter))
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        current.add_span_processor(processor)
        return Tracing(current, processor)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        processor.shutdown()
        raise ConfigError("telemetry: another tracer provider, not the OpenTelemetry SDK's, is "
                          "already installed in this process; Turnout cannot export its spans")
    return Tracing(provider, processor)


def otlp_exporter(endpoint: str) -> SpanExporter:
    """An OTLP/HTTP span exporter for ``endpoint``; ConfigError if the extra is not installed."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError("telemetry.otlp_endpoint is set but the OTLP exporter is not installed; "
                          "pip install 'turnout[otlp]'") from None
    return OTLPSpanExporter(endpoint=endpoint)


class TelemetrySettings(BaseModel):
    """OpenTelemetry traces, the ``[telemetry]`` table; off unless an endpoint is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    otlp_endpoint: str | None = Field(default=None, description="OTLP/HTTP traces endpoint, e.g. "
                                      "http://127.0.0.1:4318/v1/traces.")
    service_name: str = Field(default="turnout", description="OpenTelemetry service.name.")


class Telemetry:
    """The tracing plugin: installs OTLP export at startup, flushes it at shutdown."""

    name = "telemetry"
    Settings = TelemetrySettings

    def __init__(self) -> None:
        self.tracing: Tracing | None = None

    @hookimpl
    def startup(self, kernel: Any) -> None:
        """Install OTLP export when ``telemetry.otlp_endpoint`` is set; otherwise do nothing."""
        settings: TelemetrySettings = kernel.plugin_settings(self)
        if not settings.otlp_endpoint or self.tracing is not None:
            return
        self.tracing = install_tracing(otlp_exporter(settings.otlp_endpoint),
                                       settings.service_name)
        log.info("tracing_enabled", endpoint=settings.otlp_endpoint,
                 service_name=settings.service_name)

    @hookimpl
    async def shutdown(self, kernel: Any) -> None:
        """Export the spans still buffered and stop exporting, off the event loop."""
        tracing, self.tracing = self.tracing, None
        if tracing is not None:
            await anyio.to_thread.run_sync(tracing.shutdown)
