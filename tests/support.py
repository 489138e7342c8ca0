"""In-test plugins for kernel tests: a scripted provider and a recorder (no network involved)."""

from __future__ import annotations

from typing import Any

from turnout.kernel.config import parse
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import Alert, ChatRequest, Chunk, Completion, Usage

ROUTING = {
    "classify": "turnout.plugins.classify",
    "rules_router": "turnout.plugins.rules_router:RulesRouter",
    "fit": "turnout.plugins.fit",
    "fallback": "turnout.plugins.fallback:Fallback",
    "json_validator": "turnout.plugins.json_validator",
    "providers": "turnout.adapters.providers",
    "stores": "turnout.adapters.stores",
}


class Scripted:
    """A provider plugin answering from a per-model script of outcomes."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.calls: list[str] = []

    @hookimpl
    async def call(self, ctx, step):
        self.calls.append(step.model.name)
        outcome = self.script[step.model.name].pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        if ctx.request.stream:
            return _stream(outcome)
        return Completion(content=outcome, usage=Usage(10, 5))


async def _stream(outcome):
    for part in outcome:
        if isinstance(part, Exception):
            raise part
        yield Chunk(content=part)
    yield Chunk(finish_reason="stop", usage=Usage(10, len(outcome)))


class Recorder:
    def __init__(self) -> None:
        self.records = []
        self.alerts: list[Alert] = []

    @hookimpl
    def record(self, ctx):
        self.records.append((ctx.request_id, ctx.status, [a.status for a in ctx.attempts]))

    @hookimpl
    def alert(self, alert):
        self.alerts.append(alert)


def kernel_for(script, route: dict | None = None, models: dict | None = None,
               fallback: dict | None = None, plugins: dict[str, object] | None = None):
    """A kernel over two scripted models, small and big, on the route ``chain``; ``plugins``
    (by name) load with the built-ins, so their registration hooks count."""
    config = parse({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": models or {
            "small": {"provider": "p", "context_window": 2000, "input_price": 1,
                      "output_price": 2},
            "big": {"provider": "p", "context_window": 100_000, "input_price": 10,
                    "output_price": 20},
        },
        "routes": {"chain": {"models": ["small", "big"], **(route or {}),
                             "fallback": {"retry_after_cap_s": 0.2, **(fallback or {})}}},
        "routing": {"default": "chain"},
    }, source="test")
    kernel = Kernel(config, builtins=ROUTING)
    for name, plugin in (plugins or {}).items():
        kernel.plugins.register(plugin, name=name)
    kernel.load_plugins()
    provider, recorder = Scripted(script), Recorder()
    kernel.plugins.register(provider, name="scripted")
    kernel.plugins.register(recorder, name="recorder")
    return kernel, provider, recorder


def ask(text="hello", model="auto", **kw) -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": text}], **kw)


def user(text: str) -> dict:
    """A user message."""
    return {"role": "user", "content": text}


async def collect(stream):
    """Every chunk of a stream."""
    return [chunk async for chunk in stream]


def assert_no_secret(exc: BaseException, key: str, header: str) -> None:
    """Neither the credential nor its header appear in what an error says about itself."""
    for text in (str(exc), repr(exc.args)):
        assert key not in text
        assert header not in text.lower()


def reset_tracing() -> None:
    """Uninstall the global OpenTelemetry tracer provider, as OpenTelemetry's own test helpers
    do (it can otherwise be set only once per process)."""
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


def settings_kernel(settings: Any) -> Any:
    """A stand-in kernel for a plugin tested alone: the one thing it reads is its settings."""
    from types import SimpleNamespace

    return SimpleNamespace(plugin_settings=lambda plugin: settings)
