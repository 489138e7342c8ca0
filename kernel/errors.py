"""The one error tree of Turnout.

Provider adapters translate upstream failures into these classes at their boundary; the HTTP API
translates these into OpenAI-style JSON errors at its boundary. Nothing in between sees httpx or
SDK exceptions. Each class carries the HTTP status it maps to, the OpenAI error ``type`` and a
stable ``code``, and ``retryable`` tells the fallback policy whether another attempt may help.
"""

from __future__ import annotations


def clip(value: object, limit: int = 80) -> str:
    """``repr``-free text of a client's value for an error message, cut to ``limit`` characters
    (a 1 MB model name is not echoed back)."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class TurnoutError(Exception):
    """Base of every error Turnout raises on purpose."""

    status = 500
    type = "api_error"
    code = "internal_error"
    retryable = False

    def __init__(self, message: str, *, param: str | None = None, provider: str | None = None,
                 model: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.provider = provider
        self.model = model

    @property
    def kind(self) -> str:
        """Short name of the error class, as used in records and decision logs."""
        return self.code

    def to_openai(self) -> dict:
        """The error body in OpenAI's JSON error format."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# --- errors in the request itself -------------------------------------------------------------

class BadRequest(TurnoutError):
    """The client's request is malformed or out of range (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(BadRequest):
    """The request body exceeds ``server.max_body_bytes`` (413)."""

    status = 413
    code = "request_too_large"


class RequestTimeout(BadRequest):
    """The request's headers or body did not arrive in time (``server.header_timeout_s``,
    ``server.body_timeout_s``) (408)."""

    status = 408
    code = "request_timeout"


class UnsupportedMediaType(BadRequest):
    """The request body is declared as something other than JSON (415)."""

    status = 415
    code = "unsupported_media_type"


class ClientGone(BadRequest):
    """The client closed the connection before its request was complete; nobody reads the
    answer, which exists only for the log (400)."""

    code = "client_disconnected"


class AuthenticationFailed(TurnoutError):
    """Missing or wrong gateway API key (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class UnknownModel(TurnoutError):
    """The requested model is neither a model, a route nor ``auto`` (404)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ContextLengthExceeded(BadRequest):
    """No candidate model can take the prompt and the answer's room (``max_tokens``) (400)."""

    code = "context_length_exceeded"


class CapabilityMissing(BadRequest):
    """The request needs a capability (vision, tools, JSON mode, streaming) that no candidate
    model has (400)."""

    code = "unsupported_capability"


class NotFound(TurnoutError):
    """No such endpoint (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


# --- errors from a provider, by kind -----------------------------------------------------------

class ProviderError(TurnoutError):
    """An upstream provider failed; subclasses say how."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class ProviderRateLimited(ProviderError):
    """The provider answered 429; ``retry_after`` holds its Retry-After in seconds, if it sent one."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    """The provider did not answer within the attempt's deadline (504)."""

    status = 504
    code = "upstream_timeout"
    retryable = True


class ProviderUnavailable(ProviderError):
    """The provider answered 5xx or could not be reached (502/503)."""

    status = 503
    code = "upstream_unavailable"
    retryable = True


class ProviderBadRequest(ProviderError):
    """The provider rejected the request as malformed (400); another provider may accept it."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_bad_request"


class ContextTooLong(ProviderBadRequest):
    """The prompt does not fit the model's context window."""

    code = "context_length_exceeded"


class ContentPolicy(ProviderError):
    """The provider refused on content-policy grounds; not re-asked elsewhere unless the route allows."""

    status = 400
    type = "invalid_request_error"
    code = "content_policy_violation"


class ProviderAuthFailed(ProviderError):
    """The gateway's credentials for a provider were refused (401/403); raises an alert."""

    status = 502
    code = "upstream_auth_failed"


class ProviderMissing(ProviderError):
    """No plugin answered a step and no configured provider serves its model (503); the
    strategy moves on to the next model."""

    status = 503
    code = "provider_missing"


class StreamBroken(ProviderError):
    """A stream was cut, or carried an error event, after it had started."""

    status = 502
    code = "stream_interrupted"
    retryable = True


# --- errors of policy --------------------------------------------------------------------------

class BudgetExceeded(TurnoutError):
    """A budget would be exceeded by this request (429)."""

    status = 429
    type = "budget_exceeded"
    code = "budget_exceeded"


class RateLimited(TurnoutError):
    """A gateway rate limit rejected the request (429 with Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class NoRoute(TurnoutError):
    """No candidate model is left for the request (503): all were filtered out or failed."""

    status = 503
    type = "upstream_error"
    code = "no_route"


class AttemptsExhausted(TurnoutError):
    """The request made every call it may (``routes.NAME.max_attempts`` or
    ``server.max_attempts_per_request``) without an answer (502)."""

    status = 502
    type = "upstream_error"
    code = "attempts_exhausted"


class ValidationFailed(TurnoutError):
    """Every answer failed validation and no escalation was left (502)."""

    status = 502
    type = "upstream_error"
    code = "validation_failed"


class PluginError(TurnoutError):
    """A plugin raised an unexpected exception; the message names the plugin and the hook."""

    status = 500
    code = "plugin_error"

    def __init__(self, message: str, *, plugin: str, hook: str) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook


class HookCallError(TurnoutError):
    """The kernel (or a strategy) called a hook without an argument its spec declares; a bug in
    the caller, not in any plugin."""

    code = "hook_call_error"


class ConfigError(TurnoutError):
    """The configuration is invalid; the message names the key, file and line, and what is expected."""

    code = "config_error"
