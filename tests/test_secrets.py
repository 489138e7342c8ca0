"""No secret and no prompt leaves by a side door.

Known secrets go in by every way they can: provider keys from config (``${ENV}``), gateway keys
(``key`` and ``sha256``), upstream errors that quote the request back (the credential they got,
the prompt, a gateway key) in their message and in their code, as HTTP 4xx/5xx answers and as
error events inside streams, and answers that echo the prompt. Then every way out is searched for
them: the client's responses (headers and bodies; only a successful answer may repeat the
client's own prompt), the logs (the events as the code logs them, and the rendered JSON lines),
the request record (every byte of the SQLite files, WAL included) and the exported spans.

The gateway runs for real over HTTP, its upstreams are the fakes speaking each provider's wire
format, and the client is the official openai SDK.
"""

from __future__ import annotations

import secrets as random
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import orjson
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr
from structlog.testing import capture_logs

from turnout.adapters.http.auth import KeyRing, hash_key
from turnout.adapters.http.wire import ChunkFramer, error_json
from turnout.adapters.providers.errors import (
    MAX_CODE_CHARS,
    MAX_MESSAGE_CHARS,
    error_for_status,
    stream_error,
)
from turnout.kernel import observability
from turnout.kernel.config import ApiKey
from turnout.kernel.errors import AuthenticationFailed, ContextTooLong, ProviderBadRequest, TurnoutError
from turnout.kernel.observability import (
    ECHO_WORK_LIMIT,
    PROMPT,
    PROMPT_ECHO_MIN_CHARS,
    REDACTED,
    log_processors,
    mask_prompt_echoes,
    redact,
    register_secret,
    scrub,
)
from turnout.plugins.telemetry import install_tracing

from .fakes import EchoRequest, Script, anthropic_app, gemini_app, openai_app, serve
from .gateway import Gateway, running_gateway


def fresh(prefix: str) -> str:
    """A value nobody has seen, and no pattern would take for a secret: only registration can
    mask it."""
    return f"{prefix}{random.token_hex(10)}"


PROVIDER_KEYS = {"openai": fresh("openai-cred-"), "anthropic": fresh("anthropic-cred-"),
                 "gemini": fresh("gemini-cred-")}
"""The upstreams' keys, given to the gateway as ``${ENV}``."""

ALICE = fresh("alice-gateway-key-")
"""Alice's gateway key, configured as ``key`` (from the environment)."""

ENV = {"openai": "TEST_SECRETS_OPENAI_KEY", "anthropic": "TEST_SECRETS_ANTHROPIC_KEY",
       "gemini": "TEST_SECRETS_GEMINI_KEY", "alice": "TEST_SECRETS_GATEWAY_KEY"}

MODELS = {"openai": "gpt", "anthropic": "claude", "gemini": "gemini"}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[dict[str, Script], dict[str, str]]]:
    scripts = {name: Script() for name in PROVIDER_KEYS}
    apps = {"openai": (openai_app, "/v1"), "anthropic": (anthropic_app, ""),
            "gemini": (gemini_app, "/v1beta")}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(serve(app(scripts[name],
                                                    api_key=PROVIDER_KEYS[name]))) + path
                for name, (app, path) in apps.items()}
        yield scripts, urls


def gateway_config(urls: dict[str, str], bob_digest: str) -> dict[str, Any]:
    once = {"retries_per_model": 0}  # one call per model, so one scripted failure is enough
    return {
        "server": {"api_keys": [{"name": "alice", "key": "${%s}" % ENV["alice"]},
                                {"name": "bob", "sha256": bob_digest}]},
        "providers": {
            "openai": {"kind": "openai", "base_url": urls["openai"],
                       "api_key": "${%s}" % ENV["openai"]},
            "anthropic": {"kind": "anthropic", "base_url": urls["anthropic"],
                          "api_key": "${%s}" % ENV["anthropic"]},
            "gemini": {"kind": "gemini", "base_url": urls["gemini"],
                       "api_key": "${%s}" % ENV["gemini"]},
        },
        "models": {
            "gpt": {"provider": "openai", "upstream": "gpt-4o-mini"},
            "claude": {"provider": "anthropic", "upstream": "claude-3-5-haiku-latest"},
            "gemini": {"provider": "gemini", "upstream": "gemini-2.0-flash"},
        },
        "routes": {
            "only-openai": {"models": ["gpt"], "fallback": once},
            "only-anthropic": {"models": ["claude"], "fallback": once},
            "only-gemini": {"models": ["gemini"], "fallback": once},
            "chain": {"models": ["gpt", "claude"], "fallback": once},
        },
    }


# --- what leaves the gateway ------------------------------------------------------------------


class _Tee(httpx.SyncByteStream):
    """A response body that keeps a copy of every byte the client reads."""

    def __init__(self, inner: httpx.SyncByteStream, sink: bytearray) -> None:
        self.inner, self.sink = inner, sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.sink.extend(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


@dataclass
class Seen:
    """One response as the client received it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytearray = field(default_factory=bytearray)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Recording(httpx.HTTPTransport):
    """The SDK's transport, keeping every response it hands the SDK: status, headers, body."""

    def __init__(self, seen: list[Seen]) -> None:
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        record = Seen(response.status_code, list(response.headers.raw))
        self.seen.append(record)
        response.stream = _Tee(response.stream, record.body)
        return response


def _render_into(lines: list[str]):
    """A processor that renders each event the way ``configure_logging`` does for JSON (redaction
    included) into ``lines``, and passes the event on untouched."""
    chain = log_processors("json")

    def tee(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        out: Any = dict(event)
        try:
            for processor in chain:
                out = processor(logger, method, out)
        except structlog.DropEvent:
            return event
        lines.append(out)
        return event
    return tee


@dataclass
class Observed:
    """A running gateway and every way out of it."""

    gateway: Gateway
    fakes: dict[str, Script]
    bob: str
    """Bob's key: configured only as its SHA-256, known once it has authenticated."""
    seen: list[Seen]
    logs: list[dict[str, Any]]
    """The log events as the code logged them (``capture_logs``), before any processor."""
    rendered: list[str]
    """The same events rendered by the configured JSON pipeline."""
    exporter: InMemorySpanExporter
    tracing: Any
    db: Path

    def client(self, key: str | None = None) -> openai.OpenAI:
        return self.gateway.client(key or self.bob,
                                   http_client=httpx.Client(transport=Recording(self.seen)))

    def spans(self) -> list[Any]:
        assert self.tracing.flush()
        return list(self.exporter.get_finished_spans())

    def record_bytes(self) -> bytes:
        """Every byte of the request record: the database, its WAL and shared memory."""
        self.gateway.kernel.plugins.get("record").flush()
        files = sorted(self.db.parent.glob(self.db.name + "*"))
        assert files, "the record was written"
        return b"".join(path.read_bytes() for path in files)

    def exits(self) -> dict[str, str]:
        """Each way out as text to search, by name."""
        errors, answers, headers = [], [], []
        for response in self.seen:
            headers.append(repr(response.headers))
            body = bytes(response.body).decode("utf-8", "replace")
            if response.ok:
                # A stream's error event is an error body; its chunks are the model's answer.
                events = [e for e in body.split("\n\n") if e.strip()]
                errors += [e for e in events if '"error"' in e]
                answers += [e for e in events if '"error"' not in e]
            else:
                errors.append(body)
        spans = [repr((s.name, dict(s.attributes or {}), s.status.description,
                       [(e.name, dict(e.attributes or {})) for e in s.events]))
                 for s in self.spans()]
        assert self.rendered and spans and self.seen, "logs, spans and responses were captured"
        return {
            "client headers": "\n".join(headers),
            "client error bodies": "\n".join(errors),
            "client answers": "\n".join(answers),
            "logs (as logged)": repr(self.logs),
            "logs (rendered JSON)": "\n".join(self.rendered),
            "record (SQLite bytes)": self.record_bytes().decode("utf-8", "replace"),
            "spans": "\n".join(spans),
        }

    def leaks(self, secrets: dict[str, str]) -> list[tuple[str, str]]:
        """(secret, way out) for every secret found where it must not be. The client's own
        prompt may come back in a successful answer, nowhere else."""
        found = []
        for where, text in self.exits().items():
            for name, secret in secrets.items():
                if name == "prompt" and where == "client answers":
                    continue
                if secret in text:
                    found.append((name, where))
        return found


@pytest.fixture
def observed(fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Observed]:
    scripts, urls = fakes
    for script in scripts.values():
        script.reset()
    for name, key in PROVIDER_KEYS.items():
        monkeypatch.setenv(ENV[name], key)
    monkeypatch.setenv(ENV["alice"], ALICE)
    bob = fresh("bob-gateway-key-")
    exporter = InMemorySpanExporter()
    tracing = install_tracing(exporter, "turnout-secrets-test")
    rendered: list[str] = []
    try:
        with capture_logs(processors=[_render_into(rendered)]) as logs, \
                running_gateway(gateway_config(urls, hash_key(bob)), tmp_path) as gateway:
            assert gateway.kernel.tracing, "the kernel makes spans"
            yield Observed(gateway, scripts, bob, [], logs, rendered, exporter, tracing,
                           gateway.db)
    finally:
        tracing.shutdown()


def prompt_text() -> tuple[str, str]:
    """A prompt, and the marker in it that must not show where the prompt must not."""
    marker = fresh("zq")
    return f"Summarise the figures of project {marker} for the board", marker


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def secrets_of(observed: Observed, marker: str) -> dict[str, str]:
    return {**{f"{name} key": key for name, key in PROVIDER_KEYS.items()},
            "alice's gateway key": ALICE, "bob's gateway key": observed.bob, "prompt": marker}


EXPLAIN = {"x-turnout-explain": "1"}


# --- upstream errors that echo the request ------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("status", [400, 401, 500])
def test_an_upstream_error_quoting_the_request_leaks_nothing(observed, provider, status) -> None:
    """A 401 also raises the provider_auth_failed alert, which goes out through the logs."""
    text, marker = prompt_text()
    observed.fakes[provider].push(EchoRequest(status, leak=f"{ALICE} {observed.bob}"))
    with pytest.raises(openai.APIStatusError) as info:
        observed.client().chat.completions.create(model=f"only-{provider}", messages=ask(text),
                                                  extra_headers=EXPLAIN)
    message = info.value.body["message"]
    assert REDACTED in message and PROMPT in message, "the echo reached the gateway, masked"
    (row,) = observed.gateway.rows()
    assert PROMPT in row["error"] and REDACTED in row["error"], "and the record keeps it so"
    if status == 401:
        assert any(e["event"] == "alert_fired" for e in observed.logs)
    assert observed.leaks(secrets_of(observed, marker)) == []


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("after_chunks", [0, 2], ids=["before-the-first-chunk", "mid-answer"])
def test_an_error_event_quoting_the_request_in_message_and_code_leaks_nothing(
        observed, provider, after_chunks) -> None:
    text, marker = prompt_text()
    observed.fakes[provider].push(EchoRequest(after_chunks=after_chunks,
                                              leak=f"{ALICE} {observed.bob}"))
    with pytest.raises(openai.APIError) as info:
        stream = observed.client().chat.completions.create(
            model=f"only-{provider}", messages=ask(text), stream=True, extra_headers=EXPLAIN)
        for _ in stream:
            pass
    assert "inside the stream" in str(info.value.message), "the error event was read"
    assert REDACTED in str(info.value.message)
    (row,) = observed.gateway.rows()
    assert PROMPT in row["error"] and REDACTED in row["error"], "the record keeps it masked"
    assert observed.leaks(secrets_of(observed, marker)) == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_failed_attempt_quoting_the_request_leaks_nothing_when_another_model_answers(
        observed, stream) -> None:
    text, marker = prompt_text()
    observed.fakes["openai"].push(EchoRequest(400, after_chunks=0 if stream else None,
                                              leak=f"{ALICE} {observed.bob}"))
    client = observed.client()
    if stream:
        answer = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="chain", messages=ask(text), stream=True, extra_headers=EXPLAIN) if c.choices)
    else:
        answer = client.chat.completions.create(model="chain", messages=ask(text),
                                                extra_headers=EXPLAIN).choices[0].message.content
    assert answer == f"Echo: {text}", "the client gets its own prompt back from the model"
    (row,) = observed.gateway.rows()
    assert PROMPT in row["decision"] and REDACTED in row["decision"], "the failed attempt is kept"
    assert observed.leaks(secrets_of(observed, marker)) == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_prompt_echoed_in_an_answer_reaches_the_client_only(observed, stream) -> None:
    text, marker = prompt_text()
    client = observed.client(ALICE)
    if stream:
        answer = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="only-gemini", messages=ask(text), stream=True) if c.choices)
    else:
        answer = client.chat.completions.create(model="only-anthropic",
                                                messages=ask(text)).choices[0].message.content
    assert marker in answer
    assert observed.leaks(secrets_of(observed, marker)) == []


def test_a_digest_only_key_is_masked_once_it_has_authenticated(observed) -> None:
    bob = observed.bob
    assert redact(f"echo {bob}") == f"echo {bob}", "unknown until it authenticates"
    observed.client(bob).models.list()
    assert redact(f"echo {bob}") == f"echo {REDACTED}"


# --- the gateway's keys -------------------------------------------------------------------------


def test_a_configured_key_is_masked_from_the_start() -> None:
    key = fresh("configured-")
    KeyRing([ApiKey(name="carol", key=SecretStr(key))])
    assert redact(f"upstream said {key}") == f"upstream said {REDACTED}"


def test_a_token_that_fails_is_never_registered_nor_quoted() -> None:
    good, bad = fresh("good-"), fresh("bad-")
    ring = KeyRing([ApiKey(name="dave", sha256=hash_key(good))])
    for header in (f"Bearer {bad}", f"Basic {bad}", bad, f"Bearer  {bad} ", f"bearer{bad}"):
        with pytest.raises(AuthenticationFailed) as info:
            anyio.run(ring.check, header)
        assert bad not in str(info.value) and bad not in repr(info.value.args)
        assert bad not in orjson.dumps(error_json(info.value)).decode()
    assert redact(f"text {bad}") == f"text {bad}", "a failed token masks nothing"
    assert anyio.run(ring.check, f"Bearer {good}").name == "dave"
    assert redact(f"text {good}") == f"text {REDACTED}"


# --- the scrubber's rules -----------------------------------------------------------------------


def test_scrub_masks_registered_and_secret_looking_text_before_it_cuts() -> None:
    secret = fresh("plain-")
    register_secret(secret)
    text = "x" * 195 + secret + " and Bearer abcdef123456"
    out = scrub(text, limit=200)
    assert secret[:5] not in out, "the cut never leaves half a secret"
    assert out == "x" * 195 + REDACTED[:5] + "..."
    assert scrub(f"{secret} / Bearer abcdef123456") == f"{REDACTED} / Bearer {REDACTED}"
    assert scrub(12345) == "12345"


def test_scrub_replaces_runs_repeating_a_prompt() -> None:
    prompt = "Please summarise the attached quarterly report for the board"
    assert scrub(f"bad input: '{prompt}'", prompts=[prompt]) == f"bad input: '{PROMPT}'"
    piece = prompt[7:7 + PROMPT_ECHO_MIN_CHARS]           # a repeat just long enough
    assert scrub(f"near '{piece}' here", prompts=[prompt]) == f"near '{PROMPT}' here"
    short = prompt[7:7 + PROMPT_ECHO_MIN_CHARS - 1]       # ordinary phrasing length: kept
    assert scrub(f"near '{short}' here", prompts=[prompt]) == f"near '{short}' here"
    two = f"{prompt[:20]}|{prompt[-20:]}"
    assert mask_prompt_echoes(two, [prompt]) == f"{PROMPT}|{PROMPT}"
    assert mask_prompt_echoes("nothing in common at all here", [prompt]) == \
        "nothing in common at all here"


@pytest.mark.parametrize("offset", range(8))
def test_every_repeat_of_the_minimum_length_is_found_wherever_it_starts(offset) -> None:
    prompt = "".join(chr(0x41 + (i * 7) % 26) + chr(0x61 + (i * 11) % 26) for i in range(60))
    piece = prompt[offset + 30:offset + 30 + PROMPT_ECHO_MIN_CHARS]
    assert mask_prompt_echoes(f"<<{piece}>>", [prompt]) == f"<<{PROMPT}>>"


def test_a_repetitive_text_too_costly_to_search_is_all_prompt() -> None:
    prompt = "abcdefghX" * 200_000
    text = "abcdefghY" * 400
    assert mask_prompt_echoes(text, [prompt]) == PROMPT
    assert ECHO_WORK_LIMIT < 10_000_000


def _sent(text: str) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini-2024-07-18", "messages": ask(text)})


def test_an_upstream_error_keeps_its_code_and_a_short_message_free_of_secrets() -> None:
    key = fresh("upstream-key-")
    text = 'He said "stop" and\nleft: summarise the meeting notes of 4 May'
    body = orjson.dumps({"error": {
        "message": f"bad key {key}; you sent {_sent(text).decode()} "
                   + "x" * 1000,
        "type": "invalid_request_error", "code": "invalid_thing"}})
    error = error_for_status(400, {}, body, "openai", "gpt", secrets=[key], sent=_sent(text))
    assert isinstance(error, ProviderBadRequest)
    shown = str(error)
    assert shown.startswith("openai answered 400 (invalid_thing): bad key [REDACTED]; you sent")
    assert key not in shown and "meeting notes" not in shown and "\\nleft" not in shown
    assert "gpt-4o-mini-2024-07-18" in shown, "what is not prompt text stays"
    assert len(shown) <= len("openai answered 400 (invalid_thing): ") + MAX_MESSAGE_CHARS + 3
    assert "x" * 300 not in shown, "the rest of a long message is cut"


def test_an_echoed_prompt_does_not_change_how_an_error_is_read() -> None:
    text = "What is the maximum context length of a model, roughly?"
    body = orjson.dumps({"error": {"message": f"Invalid input: {text}", "code": None}})
    error = error_for_status(400, {}, body, "openai", "gpt", sent=_sent(text))
    assert type(error) is ProviderBadRequest and not isinstance(error, ContextTooLong)


def test_an_error_event_scrubs_its_code_like_its_message() -> None:
    key = fresh("stream-key-")
    register_secret(key)
    text = "Draft a letter to the landlord about the broken heating"
    event = {"error": {"message": f"failed for {key}: {text}",
                       "code": f"{key}:{text}:" + "y" * 200}}
    error = stream_error(event, "openai", "gpt", sent=_sent(text))
    shown = str(error)
    assert key not in shown and "landlord" not in shown
    code = shown.split("(", 1)[1].split("):", 1)[0]
    assert code.startswith(f"{REDACTED}:{PROMPT}:y") and len(code) <= MAX_CODE_CHARS + 3


def test_client_error_bodies_are_scrubbed_json_and_sse_alike() -> None:
    key = fresh("late-key-")
    error = TurnoutError(f"failed with {key}")
    error.code = f"code-{key}"
    register_secret(key)  # known only after the error was made
    for body in (orjson.dumps(error_json(error)), ChunkFramer.error(error)):
        assert key.encode() not in body and REDACTED.encode() in body


def test_exception_events_on_spans_are_exported_scrubbed() -> None:
    key = fresh("span-key-")
    exporter = InMemorySpanExporter()
    tracing = install_tracing(exporter, "turnout-secrets-test")
    try:
        tracer = trace.get_tracer("turnout.test.secrets")
        with pytest.raises(RuntimeError):
            with tracer.start_as_current_span("failing"):
                register_secret(key)
                raise RuntimeError(f"upstream quoted {key}")
        with tracer.start_as_current_span("annotated") as span:
            span.add_event(f"retry after {key}", {"detail": key})
        assert tracing.flush()
    finally:
        tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    (event,) = spans["failing"].events
    assert event.name == "exception"
    assert key not in event.attributes["exception.message"]
    assert REDACTED in event.attributes["exception.stacktrace"]
    assert key not in event.attributes["exception.stacktrace"]
    assert key not in spans["failing"].status.description
    (note,) = spans["annotated"].events
    assert (note.name, note.attributes["detail"]) == (f"retry after {REDACTED}", REDACTED)


def test_the_scrubber_is_what_redaction_uses() -> None:
    key = fresh("shared-")
    register_secret(key)
    assert redact({"a": [f"x {key}"]}) == {"a": [f"x {REDACTED}"]}
    assert observability.redact_event(None, "info", {"detail": f"x {key}"}) == \
        {"detail": f"x {REDACTED}"}
