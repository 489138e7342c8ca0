"""The built-in provider plugin: one adapter per configured provider, answering the ``call`` event.

At startup it builds an adapter (with its own pooled HTTP client) for every ``[providers.NAME]``,
starting the simulated fleet first when a provider of kind ``simulated`` is configured. On
``call`` it answers only for models whose provider is one of its own, so third-party provider
plugins serve the rest.
"""

from __future__ import annotations

from turnout.kernel.config import Provider
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Completion, Context, Step, Stream

from .anthropic import AnthropicAdapter
from .base import ProviderAdapter
from .gemini import GeminiAdapter
from .openai import OpenAIAdapter, OpenAICompatibleAdapter

KINDS: dict[str, type[ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "openai-compatible": OpenAICompatibleAdapter,
    "simulated": OpenAICompatibleAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
}
"""Adapter class for each ``providers.NAME.kind``."""


class Providers:
    """Owns the adapters of the configured providers for one kernel."""

    def __init__(self) -> None:
        self.adapters: dict[str, ProviderAdapter] = {}
        self.fleet = None
        self.fleet_url: str | None = None

    @hookimpl
    def startup(self, kernel) -> None:
        from turnout.kernel.observability import register_secret

        config = kernel.config
        for name, provider in config.providers.items():
            if provider.api_key is not None:
                register_secret(provider.api_key.get_secret_value())
            self.adapters[name] = KINDS[provider.kind](
                name, provider, base_url=self._fleet_url(config, provider))

    def _fleet_url(self, config, provider: Provider) -> str | None:
        if provider.kind != "simulated" or provider.base_url:
            return None
        if self.fleet is None:
            from turnout.adapters.simulated import Fleet

            self.fleet = Fleet(config.simulation, seed=config.simulation.seed)
            self.fleet_url = self.fleet.start()
        return self.fleet_url

    @hookimpl
    async def call(self, ctx: Context, step: Step) -> Completion | Stream | None:
        """Send the step to the adapter of its model's provider, if that provider is ours."""
        adapter = self.adapters.get(step.model.provider)
        if adapter is None:
            return None
        if ctx.request.stream:
            return adapter.stream(ctx.request, step.model)
        return await adapter.complete(ctx.request, step.model)

    @hookimpl
    async def shutdown(self) -> None:
        for adapter in self.adapters.values():
            await adapter.aclose()
        self.adapters.clear()
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None
