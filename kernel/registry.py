"""What plugins hand the kernel by name: models, and the registries filled by registration hooks.

Each registration hook (``register_providers``, ``register_strategies``, ...) fills one
:class:`Registry`; afterwards dispatch is a lookup by name, not a walk over every plugin. A name
registered twice is a configuration error naming both plugins.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import ConfigError
from .types import ModelProfile

T = TypeVar("T")


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

    def __iter__(self) -> Iterator[ModelProfile]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    @classmethod
    def from_config(cls, config: Any) -> "ModelRegistry":
        registry = cls()
        for name, m in config.models.items():
            registry.register(ModelProfile(
                name=name, provider=m.provider, upstream=m.upstream or name,
                context_window=m.context_window, max_output_tokens=m.max_output_tokens,
                input_price=m.input_price, output_price=m.output_price,
                cached_input_price=m.cached_input_price,
                capabilities=frozenset(m.capabilities), tier=m.tier, description=m.description,
                quality=m.qualities()))
        return registry


@dataclass(frozen=True, slots=True)
class Validator:
    """A registered validator: ``check``, and the pydantic model of its route settings, if any."""

    check: Callable[..., Any]
    """``check(ctx, completion)``, or ``check(ctx, completion, settings)``; may be async."""
    settings: type | None = None
    """Validates the validator's table in ``routes.NAME.validators``; None: it takes no keys."""
    takes_settings: bool = False
    """Whether ``check`` declares a third parameter (its validated settings)."""

    @classmethod
    def of(cls, check: Callable[..., Any], settings: type | None = None) -> "Validator":
        """What ``register(name, check, settings=Model)`` registers."""
        try:
            params = list(inspect.signature(check).parameters.values())
        except (TypeError, ValueError):
            params = []
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes = len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)
        return cls(check, settings, takes)

    def bind(self, settings: Any) -> Callable[..., Any]:
        """``check`` as ``f(ctx, completion)``, called with ``settings`` if it takes them."""
        if not self.takes_settings:
            return self.check
        check = self.check
        return lambda ctx, completion: check(ctx, completion, settings)


class Registry(Generic[T]):
    """Things of one kind by name, each remembered with the plugin that registered it."""

    def __init__(self, what: str, make: Callable[..., T] | None = None) -> None:
        self.what = what
        """What a name names here ("provider kind", "strategy", ...), for error messages."""
        self._make = make
        self._items: dict[str, T] = {}
        self.owners: dict[str, str] = {}

    def callback(self, plugin: str) -> Callable[..., None]:
        """The ``register`` callback handed to ``plugin``'s registration hook."""
        def register(name: str, *args: Any, **kwargs: Any) -> None:
            item = self._make(*args, **kwargs) if self._make else args[0]
            self.add(name, item, plugin)
        return register

    def add(self, name: str, item: T, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"plugin {plugin!r} registered a {self.what} without a name")
        if name in self._items:
            raise ConfigError(f"{self.what} {name!r} is registered by both {self.owners[name]!r} "
                              f"and {plugin!r}; disable one (plugins.disable)")
        self._items[name] = item
        self.owners[name] = plugin

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def known(self) -> str:
        """The registered names, for an error message."""
        return ", ".join(self.names()) or "none"
