"""The plugin manager: async-correct hook calling, ordering, loading and failing fast."""

from __future__ import annotations

import pytest
import structlog

from turnout.kernel.errors import ConfigError, PluginError
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.manager import PluginManager

pytestmark = pytest.mark.anyio


async def test_async_plugin_returning_none_hands_over_to_the_next() -> None:
    seen = []

    class Answers:
        @hookimpl
        def escalate(self, ctx):
            seen.append("answers")
            return "from the sync plugin"

    class Declines:
        @hookimpl
        async def escalate(self, ctx):
            seen.append("declines")
            return None

    pm = PluginManager()
    pm.register(Answers(), name="answers")
    pm.register(Declines(), name="declines")  # registered last: called first
    assert await pm.call_first("escalate", ctx=None, error=None, verdicts=[]) \
        == "from the sync plugin"
    assert seen == ["declines", "answers"]


async def test_first_answer_stops_the_walk_and_tryfirst_goes_first() -> None:
    called = []

    class Early:
        @hookimpl(tryfirst=True)
        async def escalate(self):
            called.append("early")
            return "early"

    class Late:
        @hookimpl
        def escalate(self):
            called.append("late")
            return "late"

    pm = PluginManager()
    pm.register(Early(), name="early")
    pm.register(Late(), name="late")
    assert await pm.call_first("escalate", ctx=None, error=None, verdicts=[]) == "early"
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
    assert await pm.call_all("classify", ctx=None) == [{"a": 1}, {"c": 3}]


async def test_a_raising_plugin_is_named_in_the_error_and_the_log() -> None:
    class Broken:
        @hookimpl
        async def classify(self, ctx):
            raise KeyError("oops")

    pm = PluginManager()
    pm.register(Broken(), name="broken-classifier")
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(PluginError) as info:
            await pm.call_all("classify", ctx=None)
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
        assert await pm.call_all("record", isolate=True, ctx="c") == []
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
    with pytest.raises(ConfigError, match="unknown plugin 'nope'"):
        pm.load(builtins={"log_alerts": "turnout.plugins.log_alerts"}, disable=["nope"])


def test_unimportable_plugin_path_says_what_is_missing() -> None:
    pm = PluginManager()
    with pytest.raises(ConfigError, match="not_a_module.*not found"):
        pm.load(builtins={}, paths=["not_a_module.plugin:Thing"])


def test_only_env_restricts_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_PLUGINS", "classify")
    pm = PluginManager()
    pm.load(builtins={"classify": "turnout.plugins.classify",
                      "log_alerts": "turnout.plugins.log_alerts"})
    assert pm.names() == ["classify"]


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
        async def record(self, ctx):
            await ready.wait()  # only another implementation running alongside can set it
            return "waited"

    class Sets:
        @hookimpl(tryfirst=True)
        async def record(self, ctx):
            ready.set()
            return "set"

    class Plain:
        @hookimpl
        def record(self, ctx):
            return "plain"

    pm = PluginManager()
    for plugin, name in ((Waits(), "waits"), (Plain(), "plain"), (Sets(), "sets")):
        pm.register(plugin, name=name)
    with anyio.fail_after(5):
        assert await pm.call_all("record", ctx=None) == ["set", "plain", "waited"]
