"""What every provider adapter is: one pooled HTTP client and two calls, translated at the edge.

An adapter turns the canonical (OpenAI-format) request into its provider's wire format, and the
provider's answer, stream and errors back into :class:`Completion`, :class:`Chunk` and the
kernel's error tree. No httpx exception leaves an adapter, nor what reading an answer of an
unexpected shape raises.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from turnout.kernel.provider import Provider
from turnout.kernel.types import ChatRequest, ModelProfile

from .errors import (
    araise_for_status,
    config_secrets,
    map_exceptions,
    parse_json,
    raise_for_status,
    transport_error,
)
from .settings import HttpProviderSettings


class ProviderAdapter(Provider):
    """Base of the HTTP adapters; ``kind`` is the config's ``providers.NAME.kind``."""

    Settings = HttpProviderSettings
    kind = ""
    default_base_url: str | None = None
    key_header = "authorization"
    """The header that carries the API key."""

    def __init__(self, name: str, config: HttpProviderSettings, *, client: httpx.AsyncClient | None = None,
                 base_url: str | None = None) -> None:
        self.name = name
        self.config = config
        self.base_url = (base_url or config.base_url or self.default_base_url or "").rstrip("/")
        self.secrets = config_secrets(config)
        """Credential values to mask in any message this adapter builds."""
        self.headers = self.build_headers()
        """Headers of every request, built once: JSON, fixed headers, the key, config headers."""
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(connect=config.timeout.connect, read=config.timeout.read,
                                  write=config.timeout.write, pool=config.timeout.pool),
            limits=httpx.Limits(max_connections=config.max_connections,
                                max_keepalive_connections=config.max_connections),
        )

    def build_headers(self) -> dict[str, str]:
        """The headers of every request to this provider."""
        headers = {"content-type": "application/json", **self.fixed_headers()}
        key = self.config.api_key.get_secret_value() if self.config.api_key is not None else ""
        if key:
            headers[self.key_header] = self.key_value(key)
        headers.update(self.config.headers)
        return headers

    def fixed_headers(self) -> dict[str, str]:
        """Headers the provider's protocol requires besides the key (an API version, say)."""
        return {}

    def key_value(self, key: str) -> str:
        """How the key is written in ``key_header``."""
        return key

    async def post_json(self, url: str, body: bytes, model: ModelProfile) -> Any:
        """POST a JSON ``body`` and return the decoded answer; every failure is mapped to the
        kernel's error tree (status, transport, a body that is not JSON)."""
        with map_exceptions(self.name, model.name):
            response = await self.client.post(url, content=body, headers=self.headers)
        raise_for_status(response, self.name, model.name, secrets=self.secrets)
        return parse_json(response.content, self.name, model.name)

    async def sse_events(self, url: str, body: bytes, model: ModelProfile
                         ) -> AsyncIterator[ServerSentEvent]:
        """POST a JSON ``body`` and yield the answer's server-sent events that carry data.

        An error status raises its mapped error before any event; a transport failure after the
        stream has started raises :class:`StreamBroken`. Close it (``contextlib.aclosing``) to
        release the connection when stopping early.
        """
        started = False
        try:
            async with aconnect_sse(self.client, "POST", url, content=body,
                                    headers=self.headers) as source:
                await araise_for_status(source.response, self.name, model.name,
                                        secrets=self.secrets)
                started = True
                async for event in source.aiter_sse():
                    if event.data.strip():
                        yield event
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name, model.name, mid_stream=started) from None

    async def aclose(self) -> None:
        """Close the pooled HTTP client."""
        await self.client.aclose()

    def passed_through(self, request: ChatRequest) -> dict[str, Any]:
        """The request's fields OpenAI's API does not define that this provider's
        ``passthrough_params`` lists, as the client sent them."""
        extra = request.model_extra or {}
        return {name: extra[name] for name in self.config.passthrough_params if name in extra}


def append_turn(turns: list[dict[str, Any]], key: str, role: str,
                items: list[dict[str, Any]]) -> None:
    """Append ``items`` as a turn of ``role`` (under ``key``: Anthropic's ``content``, Gemini's
    ``parts``), merged into the previous turn when the role repeats, as both APIs require."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: list(items)})
