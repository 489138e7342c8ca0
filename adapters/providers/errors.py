"""Upstream failures translated into the kernel's error tree, at the adapter boundary.

Every adapter sends its HTTP status, error body and httpx exceptions through here, so the rest of
Turnout sees :class:`ProviderRateLimited`, :class:`ContextTooLong` and friends, never httpx.

An upstream's error body is reduced here, before anything keeps it: the kernel error keeps the
upstream's error code (or type) and a short message, both passed through the one scrubber
(:func:`turnout.kernel.observability.scrub`): every registered secret and anything secret-looking
masked, every repeat of the request's prompt text replaced by ``[PROMPT]``, then cut (the message
to :data:`MAX_MESSAGE_CHARS`, the code to :data:`MAX_CODE_CHARS`). The kernel turns errors into the
record's ``error`` and ``decision``, log lines and span events as they are, so what is not scrubbed
here would reach all of them. The messages never include request headers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from turnout.kernel.errors import (
    ContentPolicy,
    ContextTooLong,
    ProviderAuthFailed,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    StreamBroken,
)
from turnout.kernel.observability import (
    PROMPT_ECHO_MIN_CHARS,
    register_secret,
    truncate,
)
from turnout.kernel.observability import scrub as scrub_text

MAX_MESSAGE_CHARS = 200
"""How much of an upstream's error message a kernel error keeps, after secrets and prompt echoes
are masked: enough to tell what went wrong ("Rate limit reached for requests", "model not
found"), too little to carry a request body, a header dump or a prompt into logs, records, spans
and the client's error."""

MAX_CODE_CHARS = 64
"""How much of an upstream's error code or type is kept; real ones are short identifiers
(``context_length_exceeded``, ``RESOURCE_EXHAUSTED``, ``overloaded_error``)."""

CONVERSATION_KEYS = frozenset({"messages", "system", "contents", "systemInstruction", "input",
                               "instructions", "prompt"})
"""Top-level keys of a request body whose strings are the prompt (OpenAI ``messages``, Anthropic
``system`` and ``messages``, Gemini ``systemInstruction`` and ``contents``, and the prompt fields
of other OpenAI-style APIs). The model id, tool schemas and options are not prompt text: an
upstream quoting them ("model 'x' not found") says something useful."""

# Phrases by which providers say "the prompt does not fit" (OpenAI and compatibles, Anthropic,
# Gemini), for servers that send no machine-readable code.
_CONTEXT_PHRASES = re.compile(
    r"maximum context length|context length|context window|prompt is too long"
    r"|exceeds the maximum number of tokens|input is too long|too many input tokens", re.I)

# Phrases of content-policy refusals: Anthropic "Output blocked by content filtering policy",
# Azure OpenAI "content management policy", OpenAI "flagged as potentially violating our usage
# policy" / "rejected as a result of our safety system".
_POLICY_PHRASES = re.compile(
    r"content (?:filtering |management )?policy|usage polic|safety system", re.I)

_POLICY_CODES = {"content_policy_violation", "content_filter", "invalid_prompt"}
_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}


def upstream_error(body: Any) -> tuple[str, str | None]:
    """The (message, code) of an upstream error body in any of the providers' formats.

    OpenAI ``{"error": {"message", "type", "code"}}``, Anthropic ``{"type": "error", "error":
    {"type", "message"}}``, Gemini ``{"error": {"code", "message", "status", "details"}}`` (also
    wrapped in a list), vLLM ``{"object": "error", "message"}`` and Ollama ``{"error": "text"}``.
    """
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, Mapping):
        return (str(body) if body else "", None)
    error = body.get("error", body)
    if isinstance(error, str):
        return error, None
    if not isinstance(error, Mapping):
        return "", None
    message = str(error.get("message") or "")
    code = error.get("code")
    if not isinstance(code, str):
        code = None
    return message, code or error.get("status") or error.get("type")


def _reasons(body: Any) -> set[str]:
    """Gemini's ``google.rpc.ErrorInfo`` reasons in an error body (e.g. ``API_KEY_INVALID``)."""
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error") if isinstance(body, Mapping) else None
    details = error.get("details") if isinstance(error, Mapping) else None
    if not isinstance(details, list):
        return set()
    return {str(d.get("reason")) for d in details if isinstance(d, Mapping) and d.get("reason")}


_SECRET_HEADER = re.compile(r"auth|key|token|secret", re.I)


def config_secrets(config: Any) -> tuple[str, ...]:
    """The credentials of a provider config that must never show in a message: its API key and
    the values of credential-like extra headers. Each is registered for masking
    (:func:`~turnout.kernel.observability.register_secret`), so it is masked everywhere, not only
    in this adapter's messages."""
    found = []
    if getattr(config, "api_key", None) is not None:
        found.append(config.api_key.get_secret_value())
    for name, value in (getattr(config, "headers", None) or {}).items():
        if _SECRET_HEADER.search(name) and value:
            found.append(value)
    secrets = tuple(s for s in found if s)
    for secret in secrets:
        register_secret(secret)
    return secrets


def prompt_texts(sent: bytes | str | None) -> tuple[str, ...]:
    """The prompt texts of a request body as sent upstream (JSON): every string under the
    :data:`CONVERSATION_KEYS`, and its JSON-escaped form where that differs (an upstream may quote
    the raw body), leaving out strings too short to be told from ordinary phrasing."""
    if not sent:
        return ()
    try:
        body = orjson.loads(sent)
    except orjson.JSONDecodeError:
        return ()
    if not isinstance(body, Mapping):
        return ()
    found: dict[str, None] = {}
    stack = [v for k, v in body.items() if k in CONVERSATION_KEYS]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if len(node) >= PROMPT_ECHO_MIN_CHARS:
                found[node] = None
                escaped = orjson.dumps(node).decode()[1:-1]
                if escaped != node:
                    found[escaped] = None
        elif isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return tuple(found)


def scrub(text: Any, secrets: Iterable[str | None] = (), *, sent: bytes | str | None = None,
          limit: int = MAX_MESSAGE_CHARS) -> str:
    """Upstream text as a kernel error may keep it: through the one scrubber
    (:func:`turnout.kernel.observability.scrub`) with the prompt texts of ``sent`` (the request
    body as sent upstream), cut to ``limit`` characters. ``secrets`` are registered first, so
    they are masked here and everywhere else from now on."""
    for secret in secrets:
        register_secret(secret)
    return scrub_text(text, prompts=prompt_texts(sent), limit=limit)


def _upstream_text(message: Any, code: Any, secrets: Iterable[str | None],
                   sent: bytes | str | None) -> tuple[str, str | None]:
    """An upstream's error (message, code) reduced: both scrubbed with the request's prompt
    texts, the message not yet cut (it is classified first), the code cut to
    :data:`MAX_CODE_CHARS`."""
    for secret in secrets:
        register_secret(secret)
    prompts = prompt_texts(sent)
    shown = scrub_text(message, prompts=prompts) if message else ""
    kind = scrub_text(code, prompts=prompts, limit=MAX_CODE_CHARS) if code else None
    return shown, kind or None


def _request_body(response: httpx.Response) -> bytes | None:
    """The body of the request ``response`` answers, when it is at hand (not streamed)."""
    try:
        return response.request.content
    except (RuntimeError, httpx.RequestNotRead):
        return None


def retry_after(headers: Mapping[str, str], body: Any = None, *,
                now: float | None = None) -> float | None:
    """Seconds the upstream asks us to wait: ``retry-after-ms``, ``Retry-After`` (seconds or an
    HTTP-date), or Gemini's ``RetryInfo.retryDelay`` in the body; None when it says nothing."""
    headers = httpx.Headers(headers)
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - (time.time() if now is None else now))
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error") if isinstance(body, Mapping) else None
    for detail in (error.get("details") or []) if isinstance(error, Mapping) else []:
        delay = detail.get("retryDelay") if isinstance(detail, Mapping) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                pass
    return None


def error_for_status(status: int, headers: Mapping[str, str], content: bytes, provider: str,
                     model: str | None = None, *, secrets: Iterable[str | None] = (),
                     sent: bytes | str | None = None) -> ProviderError:
    """The kernel error for an upstream's non-2xx answer, from its status, headers and body.

    ``sent`` is the request body as sent upstream: any repeat of its prompt text in the answer
    is replaced by ``[PROMPT]``. The message keeps the upstream's code and at most
    :data:`MAX_MESSAGE_CHARS` of its message, secrets masked.
    """
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = content.decode("utf-8", "replace")
    raw_message, raw_code = upstream_error(body)
    # Classified on the scrubbed text: a prompt that talks about "context length" and is echoed
    # back does not make an error look like an overflow.
    message, shown_code = _upstream_text(raw_message or f"HTTP {status}", raw_code, secrets, sent)
    code = raw_code if isinstance(raw_code, str) else None
    kind = f" ({shown_code})" if shown_code else ""
    text = f"{provider} answered {status}{kind}: {truncate(message, MAX_MESSAGE_CHARS)}"
    kw = {"provider": provider, "model": model}
    reasons = _reasons(body)
    if status == 429:
        if code == "insufficient_quota":
            # OpenAI's "you exceeded your current quota" is a billing problem, not a rate limit:
            # waiting does not help, and someone has to be told.
            return ProviderAuthFailed(text, **kw)
        return ProviderRateLimited(text, retry_after=retry_after(headers, body), **kw)
    if status in (408, 504):
        return ProviderTimeout(text, **kw)
    if status in (401, 403) or reasons & {"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED"} \
            or "api key not valid" in message.lower():
        # Gemini answers a wrong key with 400 INVALID_ARGUMENT and reason API_KEY_INVALID.
        return ProviderAuthFailed(text, **kw)
    if status == 402:
        # Payment required (OpenRouter and others out of credit): an account problem to alert on.
        return ProviderAuthFailed(text, **kw)
    if status >= 500:  # 529 is Anthropic's "overloaded"
        return ProviderUnavailable(text, **kw)
    if code in _CONTEXT_CODES or _CONTEXT_PHRASES.search(message):
        return ContextTooLong(text, **kw)
    if code in _POLICY_CODES or _POLICY_PHRASES.search(message):
        return ContentPolicy(text, **kw)
    if status == 404:
        return ProviderBadRequest(f"{provider} does not know model {model!r} ({status}{kind}: "
                                  f"{truncate(message, MAX_MESSAGE_CHARS)})" if model else text,
                                  **kw)
    return ProviderBadRequest(text, **kw)


def raise_for_status(response: httpx.Response, provider: str, model: str | None = None, *,
                     secrets: Iterable[str | None] = ()) -> None:
    """Raise the kernel error for a non-2xx ``response`` (its body already read); else nothing.
    The request it answers gives the prompt texts to keep out of the message."""
    if response.is_success:
        return
    raise error_for_status(response.status_code, response.headers, response.content, provider,
                           model, secrets=secrets, sent=_request_body(response))


async def araise_for_status(response: httpx.Response, provider: str, model: str | None = None,
                            *, secrets: Iterable[str | None] = ()) -> None:
    """:func:`raise_for_status` for a streamed response: reads the error body first."""
    if response.is_success:
        return
    await response.aread()
    raise_for_status(response, provider, model, secrets=secrets)


def stream_error(body: Any, provider: str, model: str | None = None, *,
                 secrets: Iterable[str | None] = (),
                 sent: bytes | str | None = None) -> StreamBroken:
    """The error for an error event inside a 200 stream: always :class:`StreamBroken`. Its code
    and message are scrubbed alike (``sent``: the request body, for its prompt texts)."""
    raw_message, raw_code = upstream_error(body)
    message, code = _upstream_text(raw_message or "unknown error", raw_code, secrets, sent)
    kind = f" ({code})" if code else ""
    return StreamBroken(f"{provider} sent an error inside the stream{kind}: "
                        f"{truncate(message, MAX_MESSAGE_CHARS)}", provider=provider, model=model)


def transport_error(exc: httpx.HTTPError, provider: str, model: str | None = None, *,
                    mid_stream: bool = False) -> ProviderError:
    """The kernel error for an httpx exception.

    Timeouts are :class:`ProviderTimeout`; anything else is :class:`ProviderUnavailable`, or
    :class:`StreamBroken` once a stream's 200 has arrived (``mid_stream``): the answer was cut.
    """
    kw = {"provider": provider, "model": model}
    what = type(exc).__name__
    detail = scrub(str(exc)) if str(exc) else what
    if isinstance(exc, httpx.TimeoutException):
        phase = {httpx.ConnectTimeout: "connect", httpx.ReadTimeout: "read",
                 httpx.WriteTimeout: "write", httpx.PoolTimeout: "pool"}.get(type(exc), "")
        label = f"{phase} timeout" if phase else "timeout"
        return ProviderTimeout(f"{provider} did not answer in time ({label})", **kw)
    if mid_stream:
        return StreamBroken(f"{provider} cut the stream ({what}: {detail})", **kw)
    if isinstance(exc, httpx.ConnectError):
        return ProviderUnavailable(f"{provider} cannot be reached ({detail})", **kw)
    return ProviderUnavailable(f"{provider} failed ({what}: {detail})", **kw)


@contextmanager
def map_exceptions(provider: str, model: str | None = None, *,
                   mid_stream: bool = False) -> Iterator[None]:
    """Translate httpx exceptions raised in the block into the kernel's error tree."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise transport_error(exc, provider, model, mid_stream=mid_stream) from None


@contextmanager
def unexpected_shape(provider: str, model: str | None = None, *,
                     mid_stream: bool = False) -> Iterator[None]:
    """Translate what reading valid JSON of the wrong shape raises (a string where an object
    belongs, a list where a number does) into the kernel's error tree: the upstream's failure.
    Only the exception's type is named: its text may quote what the upstream sent."""
    try:
        yield
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        cls = StreamBroken if mid_stream else ProviderUnavailable
        what = "a stream event" if mid_stream else "an answer"
        raise cls(f"{provider} sent {what} of an unexpected shape ({type(exc).__name__})",
                  provider=provider, model=model) from None


def parse_json(content: bytes | str, provider: str, model: str | None = None, *,
               mid_stream: bool = False) -> Any:
    """Decode an upstream JSON body or SSE payload; garbage is the upstream's failure."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        cls = StreamBroken if mid_stream else ProviderUnavailable
        raise cls(f"{provider} sent a body that is not valid JSON", provider=provider,
                  model=model) from None
