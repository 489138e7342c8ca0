"""Checks what the config names against what the loaded plugins registered, and validates every
plugin-owned table with the owner's own pydantic model.

Runs once, after plugins load and their registration hooks ran: plugin sections (``[record]``,
``[my_plugin]``), provider tables by kind, route sub-tables by strategy, the validators and the
router a route names, and the store backend. Every problem is collected, each with its file and
line, and reported at once; ``turnout config check`` runs the same check as ``turnout serve``.

Every model is validated with a pydantic validation context (``info.context`` in a validator)
holding ``models`` and ``routes``, the configured names, so a setting naming a model or route can
be checked; what a route owns (its plugins' keys, its strategy's sub-table, its validators, its
router) also gets ``route`` (its name) and ``strategy`` (the strategy it names). Each validation
gets a fresh context dict. A route without ``models`` is a problem unless its strategy declares
``needs_models = False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, SecretStr, ValidationError

from .config import KERNEL_SECTIONS, Problem, validation_problems
from .observability import register_secret
from .strategy import NoSettings

if TYPE_CHECKING:
    from .kernel import Kernel


@dataclass(slots=True)
class Wiring:
    """Validated settings, by owner."""

    plugins: dict[str, BaseModel] = field(default_factory=dict)
    """Plugin name -> its validated section."""
    providers: dict[str, BaseModel] = field(default_factory=dict)
    """Provider name -> its validated table."""
    strategies: dict[tuple[str, str], BaseModel] = field(default_factory=dict)
    """(route, strategy) -> the route's validated sub-table for that strategy."""
    routes: dict[tuple[str, str], BaseModel] = field(default_factory=dict)
    """(route, plugin) -> the plugin's keys of that route (its ``RouteSettings``), validated."""
    validators: dict[str, list[tuple[str, BaseModel | None]]] = field(default_factory=dict)
    """Route -> the validators it lists, in order: (registered name, its validated settings)."""
    routers: dict[str, tuple[str, BaseModel | None]] = field(default_factory=dict)
    """Route -> its router: (registered name, its validated settings, None without a model)."""
    route_models: dict[str, type[BaseModel]] = field(default_factory=dict)
    """Plugin -> the ``RouteSettings`` model it declares."""
    store: BaseModel | None = None
    passthrough: frozenset[str] = frozenset()
    """Request fields some configured provider passes through (``passthrough_params``)."""
    problems: list[Problem] = field(default_factory=list)


def settings_model(owner: Any, attribute: str = "Settings") -> type[BaseModel] | None:
    """The pydantic model a plugin, strategy or factory declares as ``Settings`` (or another
    ``attribute``: ``RouteSettings``), if any."""
    model = getattr(owner, attribute, None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def wire(kernel: Kernel) -> Wiring:
    """Validate every plugin-owned part of ``kernel.config``; problems are collected, not raised."""
    config = kernel.config
    out = Wiring()

    names = {"models": frozenset(config.models), "routes": frozenset(config.routes)}

    def validate(model: type[BaseModel], raw: Any, where: tuple, keep: Callable,
                 context: dict[str, Any] | None = None) -> None:
        try:
            value = model() if raw is None else \
                model.model_validate(raw, context={**names, **(context or {})})
        except ValidationError as exc:
            out.problems.extend(validation_problems(exc, where))
            return
        _register_secrets(value)
        keep(value)

    claimed: set[str] = set()
    for name, plugin in kernel.plugins.items():
        model = settings_model(plugin)
        if model is None:
            continue
        if name in KERNEL_SECTIONS:
            out.problems.append(((name,), f"plugin {name!r} declares settings, but {name!r} is a "
                                 "kernel section; the plugin must be given another name"))
            continue
        claimed.add(name)
        validate(model, config.section(name), (name,),
                 lambda v, n=name: out.plugins.__setitem__(n, v))
    for key in config.model_extra or {}:
        if key not in claimed and key not in kernel.plugins.disabled:
            owners = ", ".join(sorted(claimed)) or "none"
            out.problems.append(((key,), f"unknown key: neither a kernel section "
                                 f"({', '.join(KERNEL_SECTIONS)}) nor a loaded plugin with settings "
                                 f"({owners})"))

    kinds = kernel.provider_kinds
    for name, entry in config.providers.items():
        kind = kinds.get(entry.kind)
        if kind is None:
            out.problems.append((("providers", name, "kind"), f"unknown provider kind "
                                 f"{entry.kind!r}; registered kinds: {kinds.known()} (is the "
                                 "plugin that provides it installed and loaded?)"))
            continue
        validate(kind.settings, entry.model_dump(), ("providers", name),
                 lambda v, n=name: out.providers.__setitem__(n, v))
    out.passthrough = frozenset(p for settings in out.providers.values()
                                for p in getattr(settings, "passthrough_params", ()))

    route_keys: dict[str, str] = {}  # a plugin's route key -> the plugin
    for plugin_name, plugin in kernel.plugins.items():
        model = settings_model(plugin, "RouteSettings")
        if model is None:
            continue
        out.route_models[plugin_name] = model
        for key in model.model_fields:
            if key in route_keys:
                out.problems.append((("routes",), f"plugins {route_keys[key]!r} and "
                                     f"{plugin_name!r} both declare the route key {key!r}"))
            route_keys[key] = plugin_name

    strategies, validators = kernel.strategies, kernel.validators
    for name, route in config.routes.items():
        owned: dict[str, dict[str, Any]] = {p: {} for p in out.route_models}
        context = {"route": name, "strategy": route.strategy}
        routed = partial(validate, context=context)
        chosen = strategies.get(route.strategy)
        if chosen is None:
            out.problems.append((("routes", name, "strategy"), f"unknown strategy "
                                 f"{route.strategy!r}; registered: {strategies.known()}"))
        elif not route.models and getattr(chosen, "needs_models", True):
            out.problems.append((("routes", name, "models"), f"strategy {route.strategy!r} "
                                 "needs models: list them in preference order, models = "
                                 "[\"a-model\", ...]"))
        elif route.models and not getattr(chosen, "needs_models", True):
            out.problems.append((("routes", name, "models"), f"strategy {route.strategy!r} "
                                 "takes no models (they would be ignored): remove the key; its "
                                 "own settings name the models it calls"))
        if route.validators is not None:
            out.validators[name] = _route_validators(validators, name, route.validators,
                                                     routed, out.problems)
        if route.router is not None:
            _route_router(kernel.routers, name, route.router, routed, out)
        for key, raw in (route.model_extra or {}).items():
            if key in route_keys:
                owned[route_keys[key]][key] = raw
                continue
            strategy = strategies.get(key)
            if strategy is None:
                plugin_keys = ", ".join(sorted(route_keys)) or "none"
                out.problems.append((("routes", name, key), "unknown key; a route takes its own "
                                     "keys, the keys plugins declare for routes "
                                     f"({plugin_keys}) and one sub-table per registered strategy "
                                     f"({strategies.known()})"))
                continue
            routed(settings_model(strategy) or NoSettings, raw, ("routes", name, key),
                   lambda v, k=(name, key): out.strategies.__setitem__(k, v))
        if chosen is not None and route.strategy not in (route.model_extra or {}):
            # No sub-table: the strategy's defaults, which must be complete on their own.
            routed(settings_model(chosen) or NoSettings, {}, ("routes", name, route.strategy),
                   lambda v, k=(name, route.strategy): out.strategies.__setitem__(k, v))
        for plugin_name, raw in owned.items():
            routed(out.route_models[plugin_name], raw, ("routes", name),
                   lambda v, k=(name, plugin_name): out.routes.__setitem__(k, v))

    backend = config.state.backend
    factory = kernel.store_backends.get(backend)
    if factory is None:
        out.problems.append((("state", "backend"), f"unknown store backend {backend!r}; "
                             f"registered: {kernel.store_backends.known()}"))
    else:
        validate(settings_model(factory) or NoSettings, config.state.model_extra or {},
                 ("state",), lambda v: setattr(out, "store", v))
    return out


def _route_validators(validators: Any, route: str, entries: list, validate: Callable,
                      problems: list[Problem]) -> list[tuple[str, BaseModel | None]]:
    """A route's ``validators``: each a registered name, or a table ``{ kind = "<name>", ...}``
    validated by the settings model the validator was registered with."""
    found: list[tuple[str, BaseModel | None]] = []
    for i, entry in enumerate(entries):
        where = ("routes", route, "validators", i)
        raw: dict[str, Any] = {}
        if isinstance(entry, str):
            kind = entry
        else:
            raw = dict(entry)
            kind = raw.pop("kind", None)
            if not isinstance(kind, str):
                problems.append(((*where, "kind"), "a validator table needs kind = \"<name>\"; "
                                 f"registered: {validators.known()}"))
                continue
        registered = validators.get(kind)
        if registered is None:
            problems.append(((*where, "kind") if raw or not isinstance(entry, str) else where,
                             f"unknown validator {kind!r}; registered: {validators.known()}"))
            continue
        model = registered.settings or NoSettings
        kept: list[BaseModel] = []
        validate(model, raw, where, kept.append)
        if kept:
            found.append((kind, kept[0] if registered.settings is not None else None))
    return found


def _route_router(routers: Any, route: str, entry: str | dict[str, Any], validate: Callable,
                  out: Wiring) -> None:
    """A route's ``router``: a registered name, or a table ``{ kind = "<name>", ...}`` validated
    by the settings model the router was registered with."""
    where = ("routes", route, "router")
    raw: dict[str, Any] = {}
    if isinstance(entry, str):
        kind = entry
    else:
        raw = dict(entry)
        kind = raw.pop("kind", None)
        if not isinstance(kind, str):
            out.problems.append(((*where, "kind"), "a router table needs kind = \"<name>\"; "
                                 f"registered: {routers.known()}"))
            return
    registered = routers.get(kind)
    if registered is None:
        out.problems.append(((*where, "kind") if raw or not isinstance(entry, str) else where,
                             f"unknown router {kind!r}; registered: {routers.known()} (is the "
                             "plugin that provides it installed and loaded?)"))
        return
    model = registered.settings or NoSettings
    validate(model, raw, where, lambda v: out.routers.__setitem__(
        route, (kind, v if registered.settings is not None else None)))


def _register_secrets(settings: BaseModel) -> None:
    """Mask every secret a validated table holds, wherever it may show up later."""
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            register_secret(value.get_secret_value())
        elif isinstance(value, BaseModel):
            _register_secrets(value)
