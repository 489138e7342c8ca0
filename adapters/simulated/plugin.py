"""The ``simulation`` plugin: the provider kind ``simulated``, served by a local fleet.

Its settings are the ``[simulation]`` table (the tiers the fleet serves, with their behaviour).
The fleet starts with the first provider of kind ``simulated`` that sets no ``base_url``, and
stops at shutdown; every such provider talks to it over real local HTTP.
"""

from __future__ import annotations

from typing import Any

from turnout.adapters.providers.openai import OpenAICompatibleAdapter
from turnout.adapters.providers.settings import HttpProviderSettings
from turnout.kernel.hookspecs import hookimpl

from .fleet import Fleet
from .settings import Simulation as SimulationSettings


class Simulation:
    """Registers kind ``simulated`` and owns the fleet that serves it."""

    name = "simulation"
    Settings = SimulationSettings

    def __init__(self) -> None:
        self.settings = SimulationSettings()
        self.fleet: Fleet | None = None

    @hookimpl
    def register_providers(self, register) -> None:
        register("simulated", self.provider, settings=HttpProviderSettings)

    @hookimpl
    def startup(self, kernel: Any) -> None:
        self.settings = kernel.plugin_settings(self)

    def provider(self, name: str, settings: HttpProviderSettings) -> OpenAICompatibleAdapter:
        """An OpenAI-format adapter for ``name``, pointed at the fleet unless it sets a
        base_url of its own."""
        base_url = settings.base_url
        if not base_url:
            if self.fleet is None:
                self.fleet = Fleet(self.settings, seed=self.settings.seed)
                self.fleet.start()
            base_url = self.fleet.url
        return OpenAICompatibleAdapter(name, settings, base_url=base_url)

    @hookimpl
    def shutdown(self) -> None:
        fleet, self.fleet = self.fleet, None
        if fleet is not None:
            fleet.stop()
