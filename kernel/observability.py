"""Structured logging for the gateway, and the redaction that keeps secrets out of logs and records.

Every log event goes through :func:`redact_event` before it is rendered, so an API key that ends up
in an error message, a header dump or an upstream URL is masked before it reaches a terminal, a log
file or a collector. The same :func:`redact` is used by the request record and the trace exporter.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from pydantic import SecretBytes, SecretStr

from .config import Logging

REDACTED = "[REDACTED]"
"""What a masked value is replaced with."""

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

_known: set[str] = set()
_lock = threading.Lock()
_pattern = re.compile(_STATIC_PATTERNS, re.IGNORECASE)


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears from now on, e.g. a provider key read from config.

    Values shorter than :data:`MIN_SECRET_LENGTH` characters are ignored.
    """
    global _pattern
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _known:
            return
        _known.add(value)
        literals = "|".join(re.escape(s) for s in sorted(_known, key=len, reverse=True))
        # Known literals first, so a registered key is masked whole even where a pattern would
        # match only part of it.
        _pattern = re.compile(f"(?-i:{literals})|{_STATIC_PATTERNS}", re.IGNORECASE)


# Every branch of the pattern needs one of these (lower-cased) substrings to match, so text
# without any of them is returned as it is, without running the pattern (the common case).
_TRIGGERS = ("bearer", "basic", "key=", "token=", "sig=", "signature=", "password", "secret",
             "authorization", "api-key", "api_key", "apikey", "sk-", "aiza", "xox")


def _may_hold_secret(text: str) -> bool:
    """A cheap necessary condition for the pattern to match ``text``."""
    lowered = text.lower()
    return any(t in lowered for t in _TRIGGERS) or any(s in text for s in _known)


def _mask(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(2) or match.group(3)
    return f"{prefix}{REDACTED}" if prefix else REDACTED


def is_secret_key(key: str) -> bool:
    """True when a mapping key names a secret (authorization, api_key, password, token, ...)."""
    return _SECRET_KEY.search(key) is not None


def redact(value: Any) -> Any:
    """A copy of ``value`` with secrets masked: by key name in mappings, by pattern in strings.

    Recurses into mappings, lists, tuples and sets; ``SecretStr`` values are always masked; other
    objects are returned unchanged.
    """
    if isinstance(value, str):
        return _pattern.sub(_mask, value) if _may_hold_secret(value) else value
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


def configure_logging(config: Logging) -> None:
    """Configure structlog (and stdlib logging) per the ``[logging]`` section: JSON or console
    lines on stderr, filtered by level, every event redacted."""
    level = _LEVELS[config.level]
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_dumps)
                     if config.format == "json"
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Exceptions become text before redaction, so a secret in a traceback is masked too.
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
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
