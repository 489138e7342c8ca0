"""What every provider adapter is: one pooled HTTP client and two calls, translated at the edge.

An adapter turns the canonical (OpenAI-format) request into its provider's wire format, and the
provider's answer, stream and errors back into :class:`Completion`, :class:`Chunk` and the
kernel's error tree. No httpx exception leaves an adapter.
"""

from __future__ import annotations

from typing import AsyncIterator

import httpx

from turnout.kernel.config import Provider
from turnout.kernel.types import ChatRequest, Chunk, Completion, ModelProfile

from .errors import config_secrets


class ProviderAdapter:
    """Base of the adapters; ``kind`` is the config's ``providers.NAME.kind``."""

    kind = ""
    default_base_url: str | None = None

    def __init__(self, name: str, config: Provider, *, client: httpx.AsyncClient | None = None,
                 base_url: str | None = None) -> None:
        self.name = name
        self.config = config
        self.base_url = (base_url or config.base_url or self.default_base_url or "").rstrip("/")
        self.secrets = config_secrets(config)
        """Credential values to mask in any message this adapter builds."""
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(connect=config.timeout.connect, read=config.timeout.read,
                                  write=config.timeout.write, pool=config.timeout.pool),
            limits=httpx.Limits(max_connections=config.max_connections,
                                max_keepalive_connections=config.max_connections),
        )

    async def complete(self, request: ChatRequest, model: ModelProfile) -> Completion:
        """Send a non-streaming request and return the whole answer."""
        raise NotImplementedError

    def stream(self, request: ChatRequest, model: ModelProfile) -> AsyncIterator[Chunk]:
        """Send a streaming request; iterate the answer's chunks, the last carrying usage."""
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.client.aclose()
