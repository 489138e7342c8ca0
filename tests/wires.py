"""The three provider wire formats as test data: each provider's adapter, fake server, key and the
messages its errors carry, plus the fixtures every provider test module uses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from turnout.adapters.providers.anthropic import AnthropicAdapter
from turnout.adapters.providers.base import ProviderAdapter
from turnout.adapters.providers.gemini import GeminiAdapter
from turnout.adapters.providers.openai import OpenAIAdapter
from turnout.adapters.providers.settings import HttpProviderSettings, Timeouts
from turnout.kernel.types import ChatRequest, ModelProfile

from .fakes import Script, anthropic_app, gemini_app, openai_app, serve
from .support import assert_no_secret


@dataclass(frozen=True)
class Wire:
    """One provider under test: its adapter, its fake upstream, and what its errors say."""

    adapter: type[ProviderAdapter]
    kind: str
    """The config's ``providers.NAME.kind``."""
    app: Callable[..., Any]
    """The fake upstream's ASGI app factory, called as ``app(script, api_key=key)``."""
    key: str
    base_path: str
    """What follows the fake's address in ``base_url`` ("/v1", "/v1beta" or nothing)."""
    model: ModelProfile
    key_header: str
    """How the key's header would show in an error message (checked lower-cased)."""
    wrong_key: tuple[str, str]
    """A key the fake rejects, and what the resulting error says."""
    unknown_model_says: str
    stream_error: tuple[str, str]
    """The message of an error event inside a 200 stream, and the pattern the error matches."""

    @contextmanager
    def serve(self) -> Iterator[tuple[Script, str]]:
        """Run this provider's fake with a fresh script; yield the script and the fake's URL."""
        script = Script()
        with serve(self.app(script, api_key=self.key)) as url:
            yield script, url

    def config(self, url: str, **kw: Any) -> HttpProviderSettings:
        """The provider config for the fake at ``url``: the key it accepts (unless ``api_key`` is
        given), a short read timeout (unless ``timeout`` is), and any other field in ``kw``."""
        kw.setdefault("api_key", self.key)
        kw.setdefault("timeout", Timeouts(read=0.5))
        return HttpProviderSettings(kind=self.kind, base_url=url + self.base_path, **kw)

    def connect(self, url: str, **kw: Any) -> ProviderAdapter:
        """An adapter (named after the model's provider) for the fake at ``url``; ``kw`` as in
        :meth:`config`."""
        return self.adapter(self.model.provider, self.config(url, **kw))

    def ask(self, *messages: dict, **kw: Any) -> ChatRequest:
        """A chat request for the test model."""
        return ChatRequest(model=self.model.name, messages=list(messages), **kw)

    def assert_clean(self, exc: BaseException) -> None:
        """No credential or key header in what an error says about itself."""
        assert_no_secret(exc, self.key, self.key_header)


OPENAI = Wire(
    adapter=OpenAIAdapter, kind="openai", app=openai_app, key="sk-test-0123456789abcdefABCDEF",
    base_path="/v1",
    model=ModelProfile(name="fast", provider="openai-main", upstream="gpt-4o-mini"),
    key_header="authorization",
    wrong_key=("sk-wrong-key-9876543210zyxw", "Incorrect API key provided"),
    unknown_model_says="does not exist",
    stream_error=("The server had an error mid-stream", "The server had an error mid-stream"),
)
ANTHROPIC = Wire(
    adapter=AnthropicAdapter, kind="anthropic", app=anthropic_app,
    key="sk-ant-test-0123456789abcdef", base_path="",
    model=ModelProfile(name="claude", provider="anthropic-main", upstream="claude-sonnet-4-5"),
    key_header="x-api-key:",
    wrong_key=("sk-ant-wrong-key-42", "invalid x-api-key"),
    unknown_model_says="not found",
    stream_error=("Overloaded", "overloaded_error.*Overloaded"),
)
GEMINI = Wire(
    adapter=GeminiAdapter, kind="gemini", app=gemini_app, key="AIzaSyTest0123456789abcdefghijk",
    base_path="/v1beta",
    model=ModelProfile(name="flash", provider="gemini-main", upstream="gemini-2.0-flash"),
    key_header="x-goog-api-key:",
    # Gemini answers a wrong key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID), not 401.
    wrong_key=("AIzaSyWrongKey000000000000000000", "API key not valid"),
    unknown_model_says="not found",
    stream_error=("Internal error mid-stream", "Internal error mid-stream"),
)


WIRES = {"openai": OPENAI, "anthropic": ANTHROPIC, "gemini": GEMINI}


def provider_fixtures(only: Wire | None = None) -> tuple[Any, Any, Any, Any]:
    """The ``wire``, ``upstream``, ``script`` and ``adapter`` fixtures of a provider test module,
    taken as ``wire, upstream, script, adapter = provider_fixtures(...)``.

    ``wire`` is ``only``, or each of :data:`WIRES` in turn; ``upstream`` (the fake's script and
    URL) is started once per module and provider; ``script`` is that fake's script, reset for each
    test; ``adapter`` is a fresh adapter for the fake.
    """

    if only is None:
        @pytest.fixture(scope="module", params=list(WIRES.values()), ids=list(WIRES))
        def wire(request: pytest.FixtureRequest) -> Wire:
            return request.param
    else:
        @pytest.fixture(scope="module")
        def wire() -> Wire:
            return only

    @pytest.fixture(scope="module")
    def upstream(wire: Wire) -> Iterator[tuple[Script, str]]:
        with wire.serve() as served:
            yield served

    @pytest.fixture
    def script(upstream: tuple[Script, str]) -> Script:
        upstream[0].reset()
        return upstream[0]

    @pytest.fixture
    async def adapter(wire: Wire, upstream: tuple[Script, str],
                      script: Script) -> AsyncIterator[ProviderAdapter]:
        adapter = wire.connect(upstream[1])
        yield adapter
        await adapter.aclose()

    return wire, upstream, script, adapter
