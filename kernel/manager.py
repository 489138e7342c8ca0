"""Loading plugins and calling hooks the async-correct way.

Pluggy is synchronous: an ``async def`` implementation returns a coroutine, which is never None, so
pluggy's own ``firstresult`` would stop at the first async plugin. The kernel therefore walks the
implementations itself, in pluggy's call order, passing each only the arguments it names and
awaiting what is awaitable (:func:`resolve`, the one way hook results are read).
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable

import anyio
import pluggy
import structlog

from . import hookspecs
from .errors import ConfigError, PluginError, TurnoutError

log = structlog.get_logger("turnout.plugins")

ENTRY_POINT_GROUP = "turnout"
ONLY_ENV = "TURNOUT_PLUGINS"
"""Comma-separated plugin names: when set, only these plugins (built-in or installed) load."""


async def resolve(value: Any) -> Any:
    """Await ``value`` if it is awaitable; return it as it is otherwise."""
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass(slots=True, frozen=True)
class Impl:
    """One hook implementation, ready to call."""

    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    is_async: bool


class PluginManager:
    """Pluggy's manager plus async-aware ``call_first``/``call_all`` and plugin loading."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._impls: dict[str, tuple[Impl, ...]] = {}

    # --- registration --------------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module; refuses wrappers and unknown hooks at once."""
        name = name or getattr(plugin, "name", None) or _default_name(plugin)
        if self.pm.get_plugin(name) is not None:
            raise ConfigError(f"two plugins are named {name!r}; give one another name")
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise ConfigError(
                f"plugin {name!r} does not fit the hook contract: {exc}. The hooks are "
                f"{', '.join(hook_names())}; see docs/plugins.md") from None
        for hook in hook_names():
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin_name == name and (impl.hookwrapper or impl.wrapper):
                    self.pm.unregister(name=name)
                    raise ConfigError(
                        f"plugin {name!r} implements {hook!r} as a wrapper; Turnout's hooks may be "
                        "async, so wrappers would see un-awaited coroutines. Implement the hook "
                        "plainly (use tryfirst/trylast to order it).")
        self._impls.clear()
        return name

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._impls.clear()

    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def get(self, name: str) -> object | None:
        return self.pm.get_plugin(name)

    def impls(self, hook: str) -> tuple[Impl, ...]:
        """Implementations of ``hook`` in call order: ``tryfirst``, plain, ``trylast``; within
        each group the plugin registered last is called first.

        This is pluggy's order except among ``trylast`` implementations, which pluggy calls
        earliest-registered first; here they follow the same rule as the other groups, so a
        plugin's trylast strategy is asked before the built-in one.
        """
        cached = self._impls.get(hook)
        if cached is None:
            ordered = list(reversed(getattr(self.pm.hook, hook).get_hookimpls()))
            last = [i for i in ordered if i.trylast]
            ordered = [i for i in ordered if not i.trylast] + last[::-1]
            cached = tuple(Impl(i.plugin_name, i.function, tuple(i.argnames),
                                inspect.iscoroutinefunction(i.function)) for i in ordered)
            self._impls[hook] = cached
        return cached

    # --- calling -------------------------------------------------------------------------------

    async def call_first(self, hook: str, **kwargs: Any) -> Any:
        """Walk the implementations in call order, awaiting each, until one returns non-None."""
        for impl in self.impls(hook):
            result = await self._invoke(hook, impl, kwargs)
            if result is not None:
                return result
        return None

    async def call_all(self, hook: str, *, isolate: bool = False, **kwargs: Any) -> list[Any]:
        """Run every implementation and return the non-None results in call order.

        Plain functions run one after another on the spot; ``async def`` implementations run
        concurrently in a task group (a lone one is simply awaited), so sync plugins cost no
        task. With ``isolate`` an implementation that raises is logged and skipped instead of
        failing the call (recorders, alerts, shutdown).
        """
        impls = self.impls(hook)
        results: list[Any] = [None] * len(impls)
        waiting: list[int] = []
        for i, impl in enumerate(impls):
            if impl.is_async:
                waiting.append(i)
            else:
                results[i] = await self._invoke_isolated(hook, impl, kwargs, isolate)
        if len(waiting) == 1:
            results[waiting[0]] = await self._invoke_isolated(hook, impls[waiting[0]], kwargs,
                                                              isolate)
        elif waiting:
            async def run(i: int) -> None:
                results[i] = await self._invoke_isolated(hook, impls[i], kwargs, isolate)

            try:
                async with anyio.create_task_group() as tg:
                    for i in waiting:
                        tg.start_soon(run, i)
            except BaseExceptionGroup as group:
                raise _first_leaf(group) from None
        return [r for r in results if r is not None]

    async def _invoke_isolated(self, hook: str, impl: Impl, kwargs: dict, isolate: bool) -> Any:
        if not isolate:
            return await self._invoke(hook, impl, kwargs)
        try:
            return await self._invoke(hook, impl, kwargs)
        except Exception as exc:  # noqa: BLE001 - isolated hooks never fail their caller
            log.error("plugin_failed", plugin=impl.plugin, hook=hook, error=str(exc),
                      error_type=type(getattr(exc, "__cause__", None) or exc).__name__)
            return None

    async def _invoke(self, hook: str, impl: Impl, kwargs: dict) -> Any:
        try:
            return await resolve(impl.function(*[kwargs[a] for a in impl.argnames]))
        except TurnoutError as exc:
            if not hasattr(exc, "plugin"):
                exc.plugin = impl.plugin  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            log.exception("plugin_raised", plugin=impl.plugin, hook=hook)
            raise PluginError(
                f"plugin {impl.plugin!r} raised {type(exc).__name__} in hook {hook!r}: {exc}",
                plugin=impl.plugin, hook=hook) from exc

    # --- loading -------------------------------------------------------------------------------

    def load(self, *, builtins: dict[str, str], paths: Iterable[str] = (),
             disable: Iterable[str] = (), entry_point_group: str = ENTRY_POINT_GROUP) -> None:
        """Load built-in modules, installed entry points and import paths named in config.

        ``builtins`` maps plugin names to import paths; ``paths`` are ``module`` or
        ``module:attribute`` strings, named by the attribute (or the module's last component).
        A class is instantiated once per manager. ``disable`` names plugins not to load;
        ``TURNOUT_PLUGINS`` restricts loading to the names it lists.
        """
        only = {n.strip() for n in os.environ.get(ONLY_ENV, "").split(",") if n.strip()}
        disable = set(disable)
        found: list[tuple[str, Callable[[], object], str]] = []
        for name, path in builtins.items():
            found.append((name, lambda p=path: import_object(p), "built-in"))
        for ep in entry_points(group=entry_point_group):
            found.append((ep.name, ep.load, f"entry point {ep.value}"))
        for path in paths:
            found.append((plugin_name(path), lambda p=path: import_object(p), "config"))
        known = {name for name, _, _ in found}
        for name in disable | only:
            if name not in known:
                raise ConfigError(
                    f"unknown plugin {name!r} (in plugins.disable or {ONLY_ENV}); "
                    f"known plugins: {', '.join(sorted(known))}")
        for name, loader, origin in found:
            if name in disable or (only and name not in only):
                continue
            try:
                obj = loader()
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"cannot load plugin {name!r} ({origin}): "
                                  f"{type(exc).__name__}: {exc}") from None
            if inspect.isclass(obj):
                obj = obj()
            self.register(obj, name=name)


def hook_names() -> list[str]:
    return [n for n, v in vars(hookspecs).items()
            if callable(v) and hasattr(v, hookspecs.PROJECT + "_spec")]


def plugin_name(path: str) -> str:
    module, _, attr = path.partition(":")
    return attr or module.rsplit(".", 1)[-1]


def import_object(path: str) -> object:
    """Import ``module`` or ``module:attribute``; errors say which part was not found."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"plugin {path!r}: module {exc.name!r} not found; is it installed, "
                          "or on PYTHONPATH?") from None
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"plugin {path!r}: module {module_name!r} has no {attr!r}") from None


def _default_name(plugin: object) -> str:
    if inspect.ismodule(plugin):
        return plugin.__name__.rsplit(".", 1)[-1]
    return type(plugin).__name__


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
