"""The models the gateway knows, registered by config and by plugins at startup."""

from __future__ import annotations

from .config import Config
from .errors import ConfigError
from .types import ModelProfile


class ModelRegistry:
    """Model profiles by name; a name is registered once."""

    def __init__(self) -> None:
        self._models: dict[str, ModelProfile] = {}

    def register(self, profile: ModelProfile) -> None:
        """Add a model; a second model with the same name is a configuration error."""
        if profile.name in self._models:
            raise ConfigError(f"model {profile.name!r} is registered twice; rename one")
        self._models[profile.name] = profile

    def get(self, name: str) -> ModelProfile | None:
        return self._models.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def __iter__(self):
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    @classmethod
    def from_config(cls, config: Config) -> "ModelRegistry":
        registry = cls()
        for name, m in config.models.items():
            registry.register(ModelProfile(
                name=name, provider=m.provider, upstream=m.upstream or name,
                context_window=m.context_window, max_output_tokens=m.max_output_tokens,
                input_price=m.input_price, output_price=m.output_price,
                capabilities=frozenset(m.capabilities), tier=m.tier, description=m.description))
        return registry
