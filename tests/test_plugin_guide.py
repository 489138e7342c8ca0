"""Every example in docs/plugins.md registers cleanly and does what the guide says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from turnout.kernel import errors
from turnout.kernel.manager import PluginManager

from .support import ask, kernel_for

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
HOOKS = {"classify", "route", "call", "validate", "escalate", "record", "startup", "shutdown",
         "alert"}


def guide_plugins() -> dict[str, type]:
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S):
        exec(compile(block, str(GUIDE), "exec"), namespace)
    return {name: obj for name, obj in namespace.items()
            if isinstance(obj, type) and obj.__module__ == "builtins" and name[0].isupper()}


def test_every_hook_has_a_worked_example_that_registers() -> None:
    plugins = guide_plugins()
    pm = PluginManager()
    for name, cls in plugins.items():
        pm.register(cls(), name=name)
    implemented = {impl for hook in HOOKS for impl in [hook] if pm.impls(hook)}
    assert implemented == HOOKS


@pytest.mark.anyio
async def test_guide_examples_work_in_the_pipeline() -> None:
    plugins = guide_plugins()
    kernel, provider, recorder = kernel_for({
        "small": [errors.ProviderTimeout("slow"), "eins zwei drei vier"],
        "big": ["big one", "big answer, too long"]})
    instances = {name: plugins[name]() for name in
                 ("ScriptLabel", "CheapestFirst", "ExactCache", "MaxWords", "NoRetryOnTimeout",
                  "SpendByClient")}
    for name, plugin in instances.items():
        kernel.plugins.register(plugin, name=name)
    async with kernel:
        ctx = kernel.context(ask("Привет, как дела?"), client="team-a")
        first = await kernel.complete(ctx)
        again = await kernel.complete(kernel.context(ask("Привет, как дела?"), client="team-a"))
        capped = kernel.context(ask("hello", metadata={"max_words": "2"}))
        with pytest.raises(errors.ValidationFailed):
            await kernel.complete(capped)
    assert ctx.labels["script"] == "non-latin"
    assert ctx.decision["strategy"] == "cheapest-first"
    # NoRetryOnTimeout: small timed out, big answered at once, no retry of small
    assert provider.calls[:2] == ["small", "big"] and first.content == "big one"
    assert again.cached and again.content == "big one" and again.cost_usd == 0
    assert instances["SpendByClient"].spend["team-a"] == pytest.approx(first.cost_usd)
    assert [a.status for a in capped.attempts] == ["rejected", "rejected"]
