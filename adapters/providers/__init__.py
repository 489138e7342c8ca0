"""The built-in provider kinds: OpenAI, OpenAI-compatible servers, Anthropic and Gemini.

A plugin like any other: it registers each kind with its adapter class, and the kernel builds one
adapter (with its own pooled HTTP client) per ``[providers.NAME]`` table that names the kind.
"""

from __future__ import annotations

from turnout.kernel.hookspecs import hookimpl

from .anthropic import AnthropicAdapter
from .base import ProviderAdapter
from .gemini import GeminiAdapter
from .openai import OpenAIAdapter, OpenAICompatibleAdapter

ADAPTERS: tuple[type[ProviderAdapter], ...] = (OpenAIAdapter, OpenAICompatibleAdapter,
                                               AnthropicAdapter, GeminiAdapter)
"""One adapter class per kind; each names its kind in ``kind``."""


@hookimpl
def register_providers(register) -> None:
    """Register the four HTTP wire formats by their kind."""
    for adapter in ADAPTERS:
        register(adapter.kind, adapter)
