"""Redaction, structured logging and trace export with secrets masked."""

from __future__ import annotations

import gzip
import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from turnout.kernel.config import Logging
from turnout.kernel.errors import ConfigError
from turnout.kernel.observability import (
    REDACTED,
    configure_logging,
    redact,
    redact_event,
    register_secret,
)
from turnout.plugins.telemetry import Telemetry, TelemetrySettings, install_tracing

from .support import settings_kernel

SERVICE = "turnout-test"

# --- redact ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, secret", [
    ("Authorization: Bearer sk-abcdefgh12345678", "sk-abcdefgh12345678"),
    ("upstream said: invalid key sk-proj-AbCdEf_123456789", "sk-proj-AbCdEf_123456789"),
    ("https://generativelanguage.googleapis.com/v1beta/models/x?alt=sse&key=AIzaSyD-1234567890ab"
     "cdefghij", "AIzaSyD-1234567890abcdefghij"),
    ("https://example.test/hook?token=opaque-value-42&x=1", "opaque-value-42"),
    ("posting with xoxb-1234-5678-abcdefABCDEF", "xoxb-1234-5678-abcdefABCDEF"),
    ('headers {"x-api-key": "ant-key-value-9"}', "ant-key-value-9"),
    ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
])
def test_redact_masks_secret_looking_substrings(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert REDACTED in cleaned


@pytest.mark.parametrize("text", [
    "the model gpt-4o-mini answered in 120 ms with 57 output tokens",
    "task-classification for ask-me-anything",      # 'sk-' inside a word is not a key
    "https://api.openai.com/v1/chat/completions?stream=true",
    "Bearer",                                        # the word alone carries no credential
])
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_masks_by_key_name_and_keeps_token_counts() -> None:
    event = {
        "Authorization": "anything at all",
        "api_key": "k1", "api-key": "k2", "x-api-key": "k3", "x-goog-api-key": "k4",
        "password": "hunter2", "client_secret": "s", "access_token": "t", "Cookie": "c=1",
        "input_tokens": 12, "output_tokens": 34, "max_tokens": 256, "prompt_tokens": 7,
        "nested": {"headers": [{"authorization": "Bearer zzz"}], "model": "gpt-4o"},
        "config_key": SecretStr("from-config"),
        "missing_token": None,
    }
    out = redact(event)
    for key in ("Authorization", "api_key", "api-key", "x-api-key", "x-goog-api-key", "password",
                "client_secret", "access_token", "Cookie"):
        assert out[key] == REDACTED, key
    assert (out["input_tokens"], out["output_tokens"], out["max_tokens"],
            out["prompt_tokens"]) == (12, 34, 256, 7)
    assert out["nested"] == {"headers": [{"authorization": REDACTED}], "model": "gpt-4o"}
    assert out["config_key"] == REDACTED
    assert out["missing_token"] is None
    assert event["password"] == "hunter2", "redact must not mutate its input"


def test_register_secret_masks_a_literal_that_matches_no_pattern() -> None:
    literal = "plain-words-credential-7731"
    assert redact(f"connecting with {literal}") == f"connecting with {literal}"
    register_secret(literal)
    assert redact(f"connecting with {literal}!") == f"connecting with {REDACTED}!"
    assert redact({"detail": [literal]}) == {"detail": [REDACTED]}
    register_secret("abc")   # too short to mask safely: ignored
    assert redact("abcdef") == "abcdef"


def test_redact_event_turns_objects_into_redacted_text() -> None:
    error = RuntimeError("upstream refused Bearer sk-zyxwvuts98765432")
    out = redact_event(None, "error", {"event": "call_failed", "error": error, "n": 3})
    assert out == {"event": "call_failed", "error": f"upstream refused Bearer {REDACTED}",
                   "n": 3}


# --- configure_logging -------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    """Put structlog and the root logger back as they were, for the tests that follow."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_carry_the_bound_request_id_and_no_secret(restore_logging, capsys) -> None:
    configure_logging(Logging(level="info", format="json"))
    log = structlog.get_logger("turnout.test.json")
    structlog.contextvars.bind_contextvars(request_id="req_0123456789abcdef01234567")
    try:
        log.info("upstream_failed", detail="401 for Bearer sk-abcdefgh12345678",
                 headers={"authorization": "Bearer sk-abcdefgh12345678"}, output_tokens=42)
        log.debug("too_detailed", note="filtered out at info")
    finally:
        structlog.contextvars.clear_contextvars()
    err = capsys.readouterr().err
    assert "sk-abcdefgh12345678" not in err
    lines = _json_lines(err)
    assert [line["event"] for line in lines] == ["upstream_failed"]
    line = lines[0]
    assert line["request_id"] == "req_0123456789abcdef01234567"
    assert line["level"] == "info"
    assert line["logger"] == "turnout.test.json"
    assert line["timestamp"].endswith("Z")
    assert line["detail"] == f"401 for Bearer {REDACTED}"
    assert line["headers"] == {"authorization": REDACTED}
    assert line["output_tokens"] == 42


def test_exception_tracebacks_are_redacted(restore_logging, capsys) -> None:
    configure_logging(Logging(level="warning", format="json"))
    log = structlog.get_logger("turnout.test.exc")
    try:
        raise ValueError("rejected key sk-live0123456789abcdef")
    except ValueError:
        log.exception("call_crashed")
    err = capsys.readouterr().err
    assert "sk-live0123456789abcdef" not in err
    (line,) = _json_lines(err)
    assert "ValueError: rejected key" in line["exception"]


def test_stdlib_logging_is_routed_through_redaction(restore_logging, capsys) -> None:
    configure_logging(Logging(level="info", format="json"))
    logging.getLogger("uvicorn.error").warning("client sent %s", "Bearer sk-abcdefgh12345678")
    logging.getLogger("uvicorn.error").debug("below the level")
    (line,) = _json_lines(capsys.readouterr().err)
    assert line == {**line, "event": f"client sent Bearer {REDACTED}", "level": "warning",
                    "logger": "uvicorn.error"}


def test_console_format_is_redacted_too(restore_logging, capsys) -> None:
    configure_logging(Logging(level="debug", format="console"))
    structlog.get_logger("turnout.test.console").debug("hello", api_key="k-123456",
                                                       url="https://h.test/?key=zzz999")
    err = capsys.readouterr().err
    assert "hello" in err and "k-123456" not in err and "zzz999" not in err
    assert not err.lstrip().startswith("{")


# --- tracing -----------------------------------------------------------------------------------


def test_install_tracing_exports_spans_with_attributes_redacted() -> None:
    exporter = InMemorySpanExporter()
    tracing = install_tracing(exporter, SERVICE)
    try:
        tracer = trace.get_tracer("turnout")
        with tracer.start_as_current_span("chat gpt-4o") as span:
            span.set_attribute("http.request.header.authorization", "Bearer sk-abcdefgh12345678")
            span.set_attribute("url.full", "https://g.test/v1?key=AIzaSyD-1234567890abcdefghij")
            span.set_attribute("gen_ai.usage.input_tokens", 12)
            span.set_attribute("gen_ai.request.model", "gpt-4o")
            span.add_event("retry", {"detail": "401 with sk-abcdefgh12345678"})
        with tracer.start_as_current_span("clean") as span:
            span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
        assert tracing.flush()
        spans = {s.name: s for s in exporter.get_finished_spans()}
    finally:
        tracing.shutdown()
    attrs = spans["chat gpt-4o"].attributes
    assert attrs["http.request.header.authorization"] == REDACTED
    assert attrs["url.full"] == f"https://g.test/v1?key={REDACTED}"
    assert attrs["gen_ai.usage.input_tokens"] == 12
    assert attrs["gen_ai.request.model"] == "gpt-4o"
    (event,) = spans["chat gpt-4o"].events
    assert event.attributes["detail"] == f"401 with {REDACTED}"
    assert spans["clean"].attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert isinstance(trace.get_tracer_provider(), type(tracing.provider))


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces receiver: decodes protobuf export requests into ``server.received``."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.received.append((self.path, self.headers.get("Content-Type"), request))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def collector():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.anyio
async def test_telemetry_plugin_exports_over_otlp_http(collector) -> None:
    endpoint = f"http://127.0.0.1:{collector.server_port}/v1/traces"
    kernel = settings_kernel(TelemetrySettings(otlp_endpoint=endpoint, service_name=SERVICE))
    plugin = Telemetry()
    plugin.startup(kernel)
    assert plugin.tracing is not None
    provider_resource = dict(plugin.tracing.provider.resource.attributes)
    with trace.get_tracer("turnout").start_as_current_span("turnout auto") as span:
        span.set_attribute("turnout.note", "failed with sk-abcdefgh12345678")
    await plugin.shutdown(kernel)
    assert plugin.tracing is None
    spans = []
    for path, content_type, request in collector.received:
        assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                spans += [(resource, s) for s in scope_spans.spans]
    (resource, span_pb), = [(r, s) for r, s in spans if s.name == "turnout auto"]
    assert resource["service.name"] == provider_resource["service.name"]
    attributes = {a.key: a.value.string_value for a in span_pb.attributes}
    assert attributes["turnout.note"] == f"failed with {REDACTED}"


def test_telemetry_without_endpoint_installs_nothing() -> None:
    before = trace.get_tracer_provider()
    plugin = Telemetry()
    plugin.startup(settings_kernel(TelemetrySettings()))
    assert plugin.tracing is None
    assert trace.get_tracer_provider() is before


def test_telemetry_without_the_otlp_extra_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                        None)
    kernel = settings_kernel(TelemetrySettings(otlp_endpoint="http://127.0.0.1:4318/v1/traces"))
    with pytest.raises(ConfigError, match=r"pip install 'turnout\[otlp\]'"):
        Telemetry().startup(kernel)


PIECES = ["Bearer ", "basic ", "sk-", "AIza", "abcdefgh12345678", "0123456789ABCDEFGHIJ", "?key=",
          "&token=", "&sig=", "password", ": ", "=", '"', "'", " ", "api_key", "x-api-key",
          "X-Goog-Api-Key", "xoxb-", "Authorization", "client_secret", "hello", "tokens", "\n",
          "signature=", "SK-", "BEARER", "apikey", "secret"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=12))
def test_the_cheap_prefilter_never_skips_a_secret(pieces: list[str]) -> None:
    """redact() skips the pattern when no trigger word is present; that must change nothing."""
    from turnout.kernel import observability

    text = "".join(pieces)
    assert redact(text) == observability._pattern.sub(observability._mask, text)
