"""The plugin manager: async-correct hook calling, ordering, loading and failing fast."""

from __future__ import annotations

import pytest
import structlog

from turnout.kernel.errors import ConfigError, PluginError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.manager import PluginManager
from turnout.kernel.types import Escalation

pytestmark = pytest.mark.anyio


async def test_async_plugin_returning_none_hands_over_to_the_next() -> None:
    seen = []

    class Answers:
        @hookimpl
        def escalate(self, ctx):
            seen.append("answers")
            return Escalation("stop", "from the sync plugin")

    class Declines:
        @hookimpl
        async def escalate(self, ctx):
            seen.append("declines")
            return None

    pm = PluginManager()
    pm.register(Answers(), name="answers")
    pm.register(Declines(), name="declines")  # registered last: called first
    assert (await pm.hook.escalate(ctx=None, error=None, verdicts=[])).reason \
        == "from the sync plugin"
    assert seen == ["declines", "answers"]


async def test_first_answer_stops_the_walk_and_tryfirst_goes_first() -> None:
    called = []

    class Early:
        @hookimpl(tryfirst=True)
        async def escalate(self):
            called.append("early")
            return Escalation("stop", "early")

    class Late:
        @hookimpl
        def escalate(self):
            called.append("late")
            return Escalation("stop", "late")

    pm = PluginManager()
    pm.register(Early(), name="early")
    pm.register(Late(), name="late")
    assert (await pm.hook.escalate(ctx=None, error=None, verdicts=[])).reason == "early"
    assert called == ["early"]


async def test_call_all_gathers_sync_and_async_results_in_call_order() -> None:
    class A:
        @hookimpl
        async def classify(self, ctx):
            return {"a": 1}

    class B:
        @hookimpl
        def classify(self, ctx):
            return None

    class C:
        @hookimpl(trylast=True)
        def classify(self):
            return {"c": 3}

    pm = PluginManager()
    for p, n in ((A(), "a"), (B(), "b"), (C(), "c")):
        pm.register(p, name=n)
    assert await pm.hook.classify(ctx=None) == [{"a": 1}, {"c": 3}]


async def test_a_raising_plugin_is_named_in_the_error_and_the_log() -> None:
    class Broken:
        @hookimpl
        async def classify(self, ctx):
            raise KeyError("oops")

    pm = PluginManager()
    pm.register(Broken(), name="broken-classifier")
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(PluginError) as info:
            await pm.hook.classify(ctx=None)
    assert "broken-classifier" in str(info.value) and "classify" in str(info.value)
    assert any(e.get("plugin") == "broken-classifier" for e in logs)


async def test_isolated_hooks_log_and_continue() -> None:
    got = []

    class Broken:
        @hookimpl
        def record(self, ctx):
            raise RuntimeError("disk full")

    class Fine:
        @hookimpl
        async def record(self, ctx):
            got.append(ctx)

    pm = PluginManager()
    pm.register(Broken(), name="broken")
    pm.register(Fine(), name="fine")
    with structlog.testing.capture_logs() as logs:
        assert await pm.hook.record(ctx="c") == []
    assert got == ["c"]
    assert any(e["event"] == "plugin_failed" and e["plugin"] == "broken" for e in logs)


def test_misspelled_hook_fails_at_registration() -> None:
    class Typo:
        @hookimpl
        def clasify(self, ctx):
            return {}

    pm = PluginManager()
    with pytest.raises(ConfigError, match="typo.*clasify|clasify.*typo"):
        pm.register(Typo(), name="typo")
    assert "typo" not in pm.names()


def test_wrapper_implementations_are_refused() -> None:
    class Wraps:
        @hookimpl(wrapper=True)
        def classify(self, ctx):
            return (yield)

    with pytest.raises(ConfigError, match="wrapper"):
        PluginManager().register(Wraps(), name="wraps")


def test_unknown_plugin_name_in_disable_fails_fast() -> None:
    pm = PluginManager()
    with pytest.raises(ConfigError, match="plugins.disable names 'nope', which is no plugin"):
        pm.load(builtins={"log_alerts": "turnout.plugins.log_alerts"}, disable=["nope"])


def test_unimportable_plugin_path_says_what_is_missing() -> None:
    pm = PluginManager()
    with pytest.raises(ConfigError, match="not_a_module.*not found"):
        pm.load(builtins={}, paths=["not_a_module.plugin:Thing"])


def test_only_env_chooses_installed_plugins_and_names_unknown_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    builtins = {"classify": "turnout.plugins.classify", "log_alerts": "turnout.plugins.log_alerts"}
    monkeypatch.setenv("TURNOUT_PLUGINS", "")  # no installed plugin; built-ins always load
    pm = PluginManager()
    pm.load(builtins=builtins)
    assert pm.names() == ["classify", "log_alerts"]
    monkeypatch.setenv("TURNOUT_PLUGINS", "not_installed")
    with pytest.raises(ConfigError, match="TURNOUT_PLUGINS names not_installed, which no "
                                          "installed package provides"):
        PluginManager().load(builtins=builtins)


def test_classes_are_instantiated_per_manager() -> None:
    a, b = PluginManager(), PluginManager()
    for pm in (a, b):
        pm.load(builtins={"fallback": "turnout.plugins.fallback:Fallback"})
    assert a.get("fallback") is not b.get("fallback")


async def test_within_a_mark_the_plugin_registered_last_is_called_first() -> None:
    order = []

    def plugin(tag: str, **mark):
        class P:
            @hookimpl(**mark)
            def classify(self):
                order.append(tag)
        return P()

    pm = PluginManager()
    for tag, mark in (("last-1", {"trylast": True}), ("plain-1", {}), ("first-1", {"tryfirst": True}),
                      ("last-2", {"trylast": True}), ("plain-2", {}), ("first-2", {"tryfirst": True})):
        pm.register(plugin(tag, **mark), name=tag)
    assert [i.plugin for i in pm.impls("classify")] == [
        "first-2", "first-1", "plain-2", "plain-1", "last-2", "last-1"]


async def test_async_implementations_of_gathered_hooks_run_concurrently() -> None:
    import anyio

    ready = anyio.Event()

    class Waits:
        @hookimpl
        async def classify(self, ctx):
            await ready.wait()  # only another implementation running alongside can set it
            return {"waited": True}

    class Sets:
        @hookimpl(tryfirst=True)
        async def classify(self, ctx):
            ready.set()
            return {"set": True}

    class Plain:
        @hookimpl
        def classify(self, ctx):
            return {"plain": True}

    pm = PluginManager()
    for plugin, name in ((Waits(), "waits"), (Plain(), "plain"), (Sets(), "sets")):
        pm.register(plugin, name=name)
    with anyio.fail_after(5):
        assert await pm.hook.classify(ctx=None) == [{"set": True}, {"plain": True},
                                                    {"waited": True}]


async def test_dispatch_follows_the_spec_not_the_call_site() -> None:
    """escalate is declared first-answer-wins, classify all-answers-gathered: the same caller
    syntax gives each its own semantics."""
    pm = PluginManager()
    assert pm.specs["escalate"].firstresult and not pm.specs["classify"].firstresult
    assert pm.specs["record"].isolated and not pm.specs["classify"].isolated
    assert pm.specs["register_providers"].registration


async def test_a_hook_call_missing_an_argument_blames_the_caller() -> None:
    from turnout.kernel.errors import HookCallError

    class Counts:
        @hookimpl
        def escalate(self, ctx, verdicts):
            return None

    pm = PluginManager()
    pm.register(Counts(), name="counts")
    with pytest.raises(HookCallError) as info:
        await pm.hook.escalate(ctx=None, error=None)  # 'verdicts' left out
    message = str(info.value)
    assert "must provide argument(s) ['verdicts']" in message
    assert "test_manager.py" in message and "not a plugin's" in message
    assert "counts" not in message
    with pytest.raises(HookCallError) as info:  # the right count, a wrong name
        await pm.hook.escalate(ctx=None, error=None, verdict=[])
    assert "must provide argument(s) ['verdicts']" in str(info.value)
    assert "test_manager.py" in str(info.value)


def test_a_plugin_on_the_old_route_hook_is_told_which_phase_to_implement() -> None:
    class OldRouter:
        @hookimpl(tryfirst=True)
        def route(self, ctx):
            return None

    with pytest.raises(ConfigError) as info:
        PluginManager().register(OldRouter(), name="old-router")
    message = str(info.value)
    assert "'old-router'" in message
    assert all(hook in message for hook in ("select_route", "filter_candidates", "plan_route"))


async def test_a_filter_returning_a_plan_is_told_to_use_plan_route() -> None:
    from turnout.kernel.types import Plan

    class PlansInTheFilter:
        @hookimpl
        def filter_candidates(self, ctx):
            return Plan("fallback", [])

    pm = PluginManager()
    pm.register(PlansInTheFilter(), name="eager")
    with pytest.raises(PluginError) as info:
        await pm.hook.filter_candidates(ctx=None)
    message = str(info.value)
    assert "'eager' returned Plan from hook 'filter_candidates'" in message
    assert "return the plan from plan_route instead" in message


def test_async_registration_hooks_are_refused() -> None:
    class Late:
        @hookimpl
        async def register_strategies(self, register):
            register("late", object())

    with pytest.raises(ConfigError, match="'late-plugin' implements 'register_strategies' as "
                                          "async"):
        PluginManager().register(Late(), name="late-plugin")
