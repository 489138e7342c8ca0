"""Structured logging for the gateway, and the one scrubber that keeps secrets out of everything.

:func:`scrub` is the single function through which text from outside the gateway passes before it
is kept or shown: an upstream's error message and code, a header, an exception's text. It masks
every registered secret (:func:`register_secret`: provider keys, gateway keys) and anything
secret-looking; given the request's prompt texts it replaces what repeats them with ``[PROMPT]``;
given a limit it cuts. :func:`redact` applies it to every string of a structure, and every log
event goes through :func:`redact_event` before it is rendered, so an API key that ends up in an
error message, a header dump or an upstream URL is masked before it reaches a terminal, a log file
or a collector. The request record, the trace exporter and the client's error bodies use the same.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import structlog
from pydantic import SecretBytes, SecretStr

from .config import Logging

REDACTED = "[REDACTED]"
"""What a masked value is replaced with."""

PROMPT = "[PROMPT]"
"""What a repeat of the request's prompt text (an upstream echoing it in an error) becomes."""

PROMPT_ECHO_MIN_CHARS = 16
"""A run of at least this many characters that a text shares with a prompt text is an echo of the
prompt and is replaced; shorter shared runs are ordinary phrasing ("the model", "Invalid value")
and are kept."""

ECHO_SCAN_CHARS = 4000
"""When prompt echoes are looked for, the text is first cut to this many characters, so the search
costs the same whatever an upstream sends (the callers keep far less than this anyway)."""

ECHO_WORK_LIMIT = 200_000
"""Steps the echo search may take (seed lookups and character comparisons). Only a text and a
prompt made of one short pattern repeated over and over get near it; past it the whole text is
treated as an echo and replaced by :data:`PROMPT`, which is safe and cheap."""

MIN_SECRET_LENGTH = 6
"""Registered secrets shorter than this are ignored: masking them would shred ordinary text."""

QUIET_LIBRARIES = ("httpx", "httpcore")
"""Libraries whose per-request logging stays at warning and above."""

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

# Keys whose values are secrets. Token *counts* (input_tokens, max_tokens, ...) are not secrets,
# hence ``token`` must not be followed by ``s``, ``iz`` (tokenizer) or ``_count``.
_SECRET_KEY = re.compile(
    r"authorization|api[_-]?key|apikey|passw(?:or)?d|secret|cookie|credential"
    r"|token(?!s|iz|[_-]?count)", re.IGNORECASE)

# Secret-looking substrings of any string. Groups kept as a prefix of the mask: 1 = an auth
# scheme, 2 = a URL query parameter name, 3 = a header or field name in dumped text
# ("x-api-key: ...", '"password": "..."'); everything else matched is masked whole.
_STATIC_PATTERNS = (
    r"\b(Bearer\s+|Basic\s+)[A-Za-z0-9._~+/=-]+"
    r"|([?&](?:key|api[_-]?key|apikey|access_token|token|password|secret|sig|signature)=)"
    r"[^&#\s\"']+"
    r"|\b((?:authorization|x-api-key|x-goog-api-key|api[_-]?key|password|client_secret)[\"']?"
    r"\s*[:=]\s*[\"']?)(?!Bearer\b|Basic\b)(?:(?:token|digest|key|apikey)\s+)?[^\s\"',;}&]+"
    r"|\bsk-[A-Za-z0-9_-]{8,}"
    r"|\bAIza[0-9A-Za-z_-]{20,}"
    r"|\bxox[abpr]-[A-Za-z0-9-]+"
)

_known: frozenset[str] = frozenset()
_lock = threading.Lock()
_pattern = re.compile(_STATIC_PATTERNS, re.IGNORECASE)
# What scrub reads: the registered secrets and the pattern that masks them, replaced together
# (never changed in place), since secrets are registered while other threads scrub (a gateway key
# at its first use, while the recorder's writer thread builds rows).
_state: tuple[frozenset[str], re.Pattern[str]] = (_known, _pattern)


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears from now on, e.g. a provider key read from config.

    Values shorter than :data:`MIN_SECRET_LENGTH` characters are ignored.
    """
    global _known, _pattern, _state
    if not value or len(value) < MIN_SECRET_LENGTH or value in _known:
        return
    with _lock:
        if value in _known:
            return
        known = _known | {value}
        literals = "|".join(re.escape(s) for s in sorted(known, key=len, reverse=True))
        # Known literals first, so a registered key is masked whole even where a pattern would
        # match only part of it.
        pattern = re.compile(f"(?-i:{literals})|{_STATIC_PATTERNS}", re.IGNORECASE)
        _state = (known, pattern)
        _known, _pattern = known, pattern


# Every branch of the pattern needs one of these (lower-cased) substrings to match, so text
# without any of them is returned as it is, without running the pattern (the common case).
_TRIGGERS = ("bearer", "basic", "key=", "token=", "sig=", "signature=", "password", "secret",
             "authorization", "api-key", "api_key", "apikey", "sk-", "aiza", "xox")


def _may_hold_secret(text: str, known: frozenset[str] | None = None) -> bool:
    """A cheap necessary condition for the pattern to match ``text`` (``known``: the registered
    secrets, by default the current ones)."""
    lowered = text.lower()
    return any(t in lowered for t in _TRIGGERS) or any(
        s in text for s in (_known if known is None else known))


def _mask(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(2) or match.group(3)
    return f"{prefix}{REDACTED}" if prefix else REDACTED


def scrub(value: Any, *, prompts: Iterable[str] = (), limit: int | None = None) -> str:
    """The one scrubber for text that comes from outside the gateway (an upstream's error message
    or code, a header, an exception's text), as text that may be logged, recorded, traced or sent.

    In this order:

    1. Secrets are masked with :data:`REDACTED`: every registered secret (provider keys, gateway
       keys, see :func:`register_secret`) and anything secret-looking (``Bearer ...``, ``sk-...``,
       ``?key=...``, ``"api_key": "..."``). This runs on the whole text, before any cut, so a cut
       never leaves half a secret behind.
    2. With ``prompts`` (the texts of the request being answered), the text is cut to
       :data:`ECHO_SCAN_CHARS` and every run of :data:`PROMPT_ECHO_MIN_CHARS` or more characters it
       shares with one of them becomes :data:`PROMPT` (:func:`mask_prompt_echoes`).
    3. With ``limit``, the text is cut to ``limit`` characters and ``...`` appended.

    ``value`` is turned into text with ``str`` if it is not a string already.
    """
    text = value if isinstance(value, str) else str(value)
    known, pattern = _state
    if _may_hold_secret(text, known):
        text = pattern.sub(_mask, text)
    if prompts:
        text = mask_prompt_echoes(text[:ECHO_SCAN_CHARS], prompts)
    if limit is not None:
        text = truncate(text, limit)
    return text


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ``...`` appended when something was cut."""
    return text if len(text) <= limit else text[:limit] + "..."


def mask_prompt_echoes(text: str, prompts: Iterable[str]) -> str:
    """``text`` with every run of at least :data:`PROMPT_ECHO_MIN_CHARS` characters that also
    occurs in one of ``prompts`` replaced by :data:`PROMPT`.

    How, cheaply: with ``k`` half the minimum (8), every ``k``-character piece of ``text`` is put
    in a table, and each prompt is read ``k`` characters at a time (positions 0, k, 2k, ...). A
    shared run of ``2k - 1`` characters or more always contains one of those aligned pieces, so
    looking them up finds every run of the minimum length; from each hit the run is extended
    character by character both ways, and kept when it is long enough. The work is about the
    prompt's length divided by ``k`` plus the text's length; should a repetitive text and prompt
    make it exceed :data:`ECHO_WORK_LIMIT`, the whole text is returned as :data:`PROMPT`.
    Pieces of a repeat shorter than the minimum that touch a replaced run may stay.
    """
    spans = _echo_spans(text, prompts)
    if spans is None:
        return PROMPT
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for start, end in spans:
        out.append(text[last:start])
        out.append(PROMPT)
        last = end
    out.append(text[last:])
    return "".join(out)


def _echo_spans(text: str, prompts: Iterable[str]) -> list[tuple[int, int]] | None:
    """The merged (start, end) runs of ``text`` found in ``prompts``; None when the search went
    over :data:`ECHO_WORK_LIMIT` (see :func:`mask_prompt_echoes`)."""
    n = len(text)
    least = PROMPT_ECHO_MIN_CHARS
    k = max(1, least // 2)
    if n < least:
        return []
    pieces: dict[str, list[int]] = {}
    for i in range(n - k + 1):
        pieces.setdefault(text[i:i + k], []).append(i)
    covered = bytearray(n)
    found: list[tuple[int, int]] = []
    uncovered = n
    work = 0
    for prompt in prompts:
        m = len(prompt)
        if m < least:
            continue
        for p in range(0, m - k + 1, k):
            hits = pieces.get(prompt[p:p + k])
            if hits is None:
                continue
            for i in hits:
                work += 1
                if covered[i] and covered[i + k - 1]:
                    continue
                start, q = i, p
                while start > 0 and q > 0 and text[start - 1] == prompt[q - 1]:
                    start -= 1
                    q -= 1
                end, q = i + k, p + k
                while end < n and q < m and text[end] == prompt[q]:
                    end += 1
                    q += 1
                work += end - start
                if end - start >= least:
                    found.append((start, end))
                    uncovered -= end - start - sum(covered[start:end])
                    covered[start:end] = b"\x01" * (end - start)
                    if not uncovered:
                        return [(0, n)]
                if work > ECHO_WORK_LIMIT:
                    return None
    found.sort()
    merged: list[tuple[int, int]] = []
    for start, end in found:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def is_secret_key(key: str) -> bool:
    """True when a mapping key names a secret (authorization, api_key, password, token, ...)."""
    return _SECRET_KEY.search(key) is not None


def redact(value: Any) -> Any:
    """A copy of ``value`` with secrets masked: by key name in mappings, every string through
    :func:`scrub`.

    Recurses into mappings, lists, tuples and sets; ``SecretStr`` values are always masked; other
    objects are returned unchanged.
    """
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if v is not None and isinstance(k, str) and is_secret_key(k)
                    else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, (SecretStr, SecretBytes)):
        return REDACTED
    return value


_PLAIN = (str, int, float, bool, type(None), Mapping, list, tuple, set, frozenset)


def redact_event(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask secrets in every value of the event before it is rendered.

    Objects that are not plain data (exceptions, URLs, ...) are turned into strings first, since
    that is how the renderer would show them.
    """
    out: dict[str, Any] = {}
    for key, value in event_dict.items():
        if value is not None and is_secret_key(key):
            out[key] = REDACTED
        elif isinstance(value, _PLAIN):
            out[key] = redact(value)
        elif isinstance(value, (SecretStr, SecretBytes)):
            out[key] = REDACTED
        else:
            out[key] = redact(str(value))
    return out


class _StderrLogger:
    """Writes rendered lines to the current ``sys.stderr``, one whole line at a time."""

    _write_lock = threading.Lock()

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        with self._write_lock:
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _logger_factory(*args: Any) -> _StderrLogger:
    return _StderrLogger(args[0] if args and isinstance(args[0], str) else None)


def _add_logger_name(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    name = getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _StdlibHandler(logging.Handler):
    """Sends stdlib log records (uvicorn, httpx, ...) through the structlog pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger(record.name)
            fields: dict[str, Any] = {}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            logger.log(record.levelno, record.getMessage(), **fields)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def log_processors(format: str) -> list[Any]:
    """The structlog processor chain of :func:`configure_logging` for ``format`` (``json`` or
    ``console``): context, level, logger name, time, exception text, redaction, renderer."""
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_dumps)
                     if format == "json"
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Exceptions become text before redaction, so a secret in a traceback is masked too.
        structlog.processors.format_exc_info,
        redact_event,
        renderer,
    ]


def configure_logging(config: Logging) -> None:
    """Configure structlog (and stdlib logging) per the ``[logging]`` section: JSON or console
    lines on stderr, filtered by level, every event redacted."""
    level = _LEVELS[config.level]
    structlog.configure(
        processors=log_processors(config.format),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(handler)
    root.addHandler(_StdlibHandler(level))
    root.setLevel(level)
    # httpx and httpcore log every upstream request at info/debug; the kernel records attempts
    # itself, so those lines would only double the volume (and cost time on the hot path).
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
