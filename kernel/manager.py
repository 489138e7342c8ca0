"""Loading plugins and calling hooks the way their specs declare.

Pluggy is synchronous: an ``async def`` implementation returns a coroutine, which is never None, so
pluggy's own ``firstresult`` would stop at the first async plugin. The kernel therefore walks the
implementations itself, in pluggy's call order, passing each only the arguments it names and
awaiting what is awaitable (:func:`resolve`, the one way hook results are read). How a hook is
dispatched (first answer or all answers, isolated or not, what it may return) is read from its
spec in :mod:`turnout.kernel.hookspecs`, never chosen at the call site: the kernel calls
``plugins.hook.NAME(**kwargs)``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable

import anyio
import pluggy
import structlog

from . import hookspecs
from .errors import ConfigError, HookCallError, PluginError, TurnoutError

log = structlog.get_logger("turnout.plugins")

ENTRY_POINT_GROUP = "turnout"
ONLY_ENV = "TURNOUT_PLUGINS"
"""Comma-separated names of the installed (entry point) plugins to load; empty loads none.

Unset, every installed plugin loads. Built-ins and ``plugins.load`` paths always load (disable
them with ``plugins.disable``). Tests set it empty, so installing a plugin package cannot change
their results."""


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


@dataclass(slots=True, frozen=True)
class Spec:
    """What a hook's spec declares, read once: the dispatcher follows it."""

    name: str
    argnames: frozenset[str]
    firstresult: bool
    isolated: bool
    registration: bool
    in_order: bool
    returns: str
    """The return annotation as written in the spec, for error messages."""
    accepts: tuple[type, ...] | None
    """Types a result may have (None among them as ``NoneType``); None when not checkable."""

    @classmethod
    def read(cls, hook: pluggy.HookCaller) -> "Spec":
        spec = hook.spec
        assert spec is not None
        returns = spec.function.__annotations__.get("return", "Any")
        return cls(hook.name, frozenset(spec.argnames), bool(spec.opts.get("firstresult")),
                   getattr(spec.function, hookspecs.ISOLATED, False),
                   getattr(spec.function, hookspecs.REGISTRATION, False),
                   getattr(spec.function, hookspecs.IN_ORDER, False), str(returns),
                   _accepted_types(returns))


def _accepted_types(annotation: Any) -> tuple[type, ...] | None:
    """The classes ``isinstance`` can check a result against, from a spec's return annotation."""
    try:
        hint = eval(annotation, vars(hookspecs)) if isinstance(annotation, str) else annotation
    except Exception:  # noqa: BLE001 - an annotation we cannot read is simply not checked
        return None
    if hint is None:
        return (type(None),)
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or \
        typing.get_origin(hint) is typing.Union else (hint,)
    out: list[type] = []
    for arg in args:
        arg = type(None) if arg is None else (typing.get_origin(arg) or arg)
        if not isinstance(arg, type):
            return None
        out.append(arg)
    return tuple(out)


WRONG_RESULT_HINTS = {
    ("filter_candidates", "Plan"): "filters drop models with ctx.drop() and return None; "
                                   "return the plan from plan_route instead",
    ("select_route", "Plan"): "select_route returns a Selection(route=...); return the plan "
                              "from plan_route instead",
    ("select_route", "str"): "return Selection(route=...) rather than a bare route name",
}
"""Fixes named when a plugin answers a hook with what belongs to another phase."""


class HookCaller:
    """Calls one hook as its spec declares; ``await plugins.hook.NAME(**kwargs)``."""

    __slots__ = ("manager", "spec")

    def __init__(self, manager: "PluginManager", spec: Spec) -> None:
        self.manager = manager
        self.spec = spec

    def blame_caller(self, kwargs: dict[str, Any]) -> HookCallError:
        """The error for a call whose arguments are not the spec's, naming the call site (the
        first frame outside this module)."""
        missing = sorted(self.spec.argnames - kwargs.keys())
        extra = sorted(kwargs.keys() - self.spec.argnames)
        frame = sys._getframe(1)
        while frame.f_back is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        problem = (f"must provide argument(s) {missing}" if missing
                   else f"passes argument(s) {extra} that the spec does not declare")
        return HookCallError(
            f"the call of hook {self.spec.name!r} at {where} {problem}; the spec takes "
            f"{sorted(self.spec.argnames)} (kernel/hookspecs.py). This is the caller's "
            "mistake, not a plugin's.")

    async def __call__(self, **kwargs: Any) -> Any:
        manager, spec = self.manager, self.spec
        # A count is cheap on every call; a wrong name with the right count surfaces as the
        # KeyError of the first implementation that names the argument (see _invoke).
        if len(kwargs) != len(spec.argnames):
            raise self.blame_caller(kwargs)
        if spec.firstresult:
            for impl in manager.impls(spec.name):
                result = await manager.invoke(spec, impl, kwargs)
                if result is not None:
                    return result
            return None
        return await manager.gather(spec, kwargs)

    def register(self, callback_for: Callable[[str], Callable[..., None]]) -> None:
        """Run a registration hook: each implementation gets ``callback_for(its plugin name)``."""
        for impl in self.manager.impls(self.spec.name):
            try:
                impl.function(callback_for(impl.plugin))
            except TurnoutError:
                raise
            except Exception as exc:
                raise ConfigError(f"plugin {impl.plugin!r} failed in {self.spec.name}: "
                                  f"{type(exc).__name__}: {exc}") from None


class PluginManager:
    """Pluggy's manager, plus dispatch by spec, ordering and plugin loading."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._impls: dict[str, tuple[Impl, ...]] = {}
        self.disabled: set[str] = set()
        """Plugins that ``plugins.disable`` kept from loading (their config tables are ignored)."""
        self.specs = {name: Spec.read(getattr(self.pm.hook, name)) for name in hook_names()}
        self.hook = types.SimpleNamespace(
            **{name: HookCaller(self, spec) for name, spec in self.specs.items()})
        """One caller per hook: ``await plugins.hook.classify(ctx=ctx)``."""

    # --- registration --------------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module; refuses unknown hooks, wrappers and async
        registration hooks at once, naming the plugin and the fix."""
        name = name or getattr(plugin, "name", None) or _default_name(plugin)
        if self.pm.get_plugin(name) is not None:
            raise ConfigError(f"two plugins are named {name!r}; give one another name")
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise ConfigError(_contract_problem(name, plugin, exc)) from None
        for hook in hook_names():
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin_name != name:
                    continue
                problem = None
                if impl.hookwrapper or impl.wrapper:
                    problem = (f"implements {hook!r} as a wrapper; Turnout's hooks may be async, "
                               "so wrappers would see un-awaited coroutines. Implement the hook "
                               "plainly (use tryfirst/trylast to order it).")
                elif self.specs[hook].registration and inspect.iscoroutinefunction(impl.function):
                    problem = (f"implements {hook!r} as async; registration hooks run once while "
                               "plugins load: make it a plain def.")
                if problem:
                    self.pm.unregister(name=name)
                    raise ConfigError(f"plugin {name!r} {problem}")
        self._impls.clear()
        return name

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._impls.clear()

    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def get(self, name: str) -> object | None:
        return self.pm.get_plugin(name)

    def name_of(self, plugin: object) -> str | None:
        """The name ``plugin`` (an object or module) is registered under."""
        return self.pm.get_name(plugin)

    def items(self) -> list[tuple[str, object]]:
        """Every registered plugin with its name, in registration order."""
        return list(self.pm.list_name_plugin())

    def impls(self, hook: str) -> tuple[Impl, ...]:
        """Implementations of ``hook`` in call order: ``tryfirst``, plain, ``trylast``; within
        each group the plugin registered last is called first.

        This is pluggy's order except among ``trylast`` implementations, which pluggy calls
        earliest-registered first; here they follow the same rule as the other groups.
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

    async def gather(self, spec: Spec, kwargs: dict[str, Any]) -> list[Any]:
        """Run every implementation and return the non-None results in call order.

        Plain functions run one after another on the spot; ``async def`` implementations run
        concurrently in a task group (a lone one is simply awaited), so sync plugins cost no
        task. For isolated specs an implementation that raises is logged and skipped.
        """
        impls = self.impls(spec.name)
        if spec.in_order:
            return await self._gather_in_order(spec, impls, kwargs)
        results: list[Any] = [None] * len(impls)
        waiting: list[int] = []
        for i, impl in enumerate(impls):
            if impl.is_async:
                waiting.append(i)
            else:
                results[i] = await self.invoke(spec, impl, kwargs)
        if len(waiting) == 1:
            results[waiting[0]] = await self.invoke(spec, impls[waiting[0]], kwargs)
        elif waiting:
            async def run(i: int) -> None:
                results[i] = await self.invoke(spec, impls[i], kwargs)

            try:
                async with anyio.create_task_group() as tg:
                    for i in waiting:
                        tg.start_soon(run, i)
            except BaseExceptionGroup as group:
                raise _first_leaf(group) from None
        return [r for r in results if r is not None]

    async def _gather_in_order(self, spec: Spec, impls: tuple[Impl, ...],
                               kwargs: dict[str, Any]) -> list[Any]:
        """Await each implementation in turn; an error carries the answers before it as
        ``error.partial``."""
        results: list[Any] = []
        for impl in impls:
            try:
                result = await self.invoke(spec, impl, kwargs)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    exc.partial = results  # type: ignore[attr-defined]
                raise
            if result is not None:
                results.append(result)
        return results

    async def invoke(self, spec: Spec, impl: Impl, kwargs: dict[str, Any]) -> Any:
        """Call one implementation with the arguments it names; check what it returns."""
        if not spec.isolated:
            return await self._invoke(spec, impl, kwargs)
        try:
            return await self._invoke(spec, impl, kwargs)
        except Exception as exc:  # noqa: BLE001 - isolated hooks never fail their caller
            log.error("plugin_failed", plugin=impl.plugin, hook=spec.name, error=str(exc),
                      error_type=type(getattr(exc, "__cause__", None) or exc).__name__)
            return None

    async def _invoke(self, spec: Spec, impl: Impl, kwargs: dict[str, Any]) -> Any:
        try:
            args = [kwargs[a] for a in impl.argnames]
        except KeyError:
            raise getattr(self.hook, spec.name).blame_caller(kwargs) from None
        try:
            result = impl.function(*args)
            if impl.is_async:
                result = await result
            elif result is not None and inspect.isawaitable(result):
                result = await result
        except TurnoutError as exc:
            if not hasattr(exc, "plugin"):
                exc.plugin = impl.plugin  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            log.exception("plugin_raised", plugin=impl.plugin, hook=spec.name)
            raise PluginError(
                f"plugin {impl.plugin!r} raised {type(exc).__name__} in hook {spec.name!r}: "
                f"{exc}", plugin=impl.plugin, hook=spec.name) from exc
        if result is not None and spec.accepts is not None \
                and not isinstance(result, spec.accepts):
            got = type(result).__name__
            hint = WRONG_RESULT_HINTS.get((spec.name, got)) or "see docs/plugins.md"
            raise PluginError(f"plugin {impl.plugin!r} returned {got} from hook {spec.name!r}, "
                              f"which returns {spec.returns}; {hint}.",
                              plugin=impl.plugin, hook=spec.name)
        return result

    # --- loading -------------------------------------------------------------------------------

    def load(self, *, builtins: dict[str, str], paths: Iterable[str] = (),
             disable: Iterable[str] = (), entry_point_group: str = ENTRY_POINT_GROUP,
             problems: list | None = None) -> None:
        """Load built-in modules, installed entry points and import paths named in config.

        A plugin's name is its built-in key or its entry point's name (a ``name`` attribute
        that says otherwise is an error); a ``plugins.load`` path is named by the object's
        ``name`` attribute, else the attribute (or the module's last component). A class is
        instantiated once per manager. ``disable`` names plugins not to load;
        ``TURNOUT_PLUGINS`` chooses which installed plugins load.

        With ``problems`` (a list), a plugin that cannot be loaded is noted there as a config
        problem (the key path where it is named, and why) and the rest still load; without it,
        the first such plugin raises ConfigError.
        """

        def fail(where: tuple, message: str) -> None:
            if problems is None:
                raise ConfigError(message)
            problems.append((where, message))

        only_env = os.environ.get(ONLY_ENV)
        only = None if only_env is None else {n.strip() for n in only_env.split(",") if n.strip()}
        disable = set(disable)
        # (name, or None to take it from the object; loader; origin; fallback name)
        found: list[tuple[str | None, Callable[[], object], str, str]] = []
        for name, path in builtins.items():
            found.append((name, lambda p=path: import_object(p), "built-in", name))
        installed = list(entry_points(group=entry_point_group))
        for ep in installed:
            if only is None or ep.name in only:
                found.append((ep.name, ep.load, f"entry point {ep.value}", ep.name))
        for path in paths:
            found.append((None, lambda p=path: import_object(p), f"plugins.load {path!r}",
                          plugin_name(path)))
        where = {f"plugins.load {path!r}": ("plugins", "load", i) for i, path in enumerate(paths)}
        if only:
            unknown = only - {ep.name for ep in installed}
            if unknown:
                fail((), f"{ONLY_ENV} names {', '.join(sorted(unknown))}, which no installed "
                         f"package provides; installed plugins: "
                         f"{', '.join(sorted(ep.name for ep in installed)) or 'none'}")
        loaded: list[tuple[str, object, tuple]] = []
        for name, loader, origin, fallback in found:
            if name is not None and name in disable:
                self.disabled.add(name)
                continue
            try:
                obj = loader()
            except ConfigError as exc:
                fail(where.get(origin, ()), exc.message)
                continue
            except Exception as exc:
                fail(where.get(origin, ()), f"cannot load plugin {name or origin!r} ({origin}): "
                                            f"{type(exc).__name__}: {exc}")
                continue
            declared = getattr(obj, "name", None)
            if not isinstance(declared, str):
                declared = None
            if name is None:
                name = declared or fallback
            elif declared and declared != name and origin != "built-in":
                fail((), f"plugin {origin} is named {name!r} but declares name = {declared!r}; "
                         "make the two the same")
                continue
            if name in disable:
                self.disabled.add(name)
                continue
            loaded.append((name, obj, where.get(origin, ())))
        for name in disable:
            if name not in {n for n, _, _ in loaded} and name not in builtins \
                    and name not in {ep.name for ep in installed}:
                fail(("plugins", "disable"), f"plugins.disable names {name!r}, which is no "
                     f"plugin; known plugins: "
                     f"{', '.join(sorted({n for n, _, _ in loaded} | set(builtins)))}")
        for name, obj, named_at in loaded:
            try:
                self.register(obj() if inspect.isclass(obj) else obj, name=name)
            except ConfigError as exc:
                fail(named_at, exc.message)
            except Exception as exc:
                fail(named_at, f"cannot create plugin {name!r}: {type(exc).__name__}: {exc}")


def hook_names() -> list[str]:
    """The hooks, in the order the spec module declares them."""
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


def _contract_problem(name: str, plugin: object, exc: pluggy.PluginValidationError) -> str:
    """Why a plugin does not fit the hook contract, with the fix."""
    for hook, instead in hookspecs.MOVED.items():
        impl = getattr(plugin, hook, None)
        if impl is not None and hasattr(impl, hookspecs.PROJECT + "_impl"):
            return f"plugin {name!r} implements {hook!r}, which is no hook any more: {instead}."
    return (f"plugin {name!r} does not fit the hook contract: {exc}. The hooks are "
            f"{', '.join(hook_names())}; see docs/plugins.md")


def _default_name(plugin: object) -> str:
    if inspect.ismodule(plugin):
        return plugin.__name__.rsplit(".", 1)[-1]
    return type(plugin).__name__


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


