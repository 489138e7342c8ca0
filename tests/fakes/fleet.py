"""One fake upstream per provider wire format, served together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from .anthropic_server import anthropic_app
from .gemini_server import gemini_app
from .openai_server import openai_app
from .script import Script
from .server import serve


@contextmanager
def every_provider(openai_key: str, anthropic_key: str,
                   gemini_key: str) -> Iterator[tuple[dict[str, Script], dict[str, str]]]:
    """The OpenAI, Anthropic and Gemini fakes, each checking its key: their scripts and the base
    URLs a provider of each kind is configured with, both by kind (``openai``, ``anthropic``,
    ``gemini``)."""
    scripts = {"openai": Script(), "anthropic": Script(), "gemini": Script()}
    with ExitStack() as stack:
        urls = {
            "openai": stack.enter_context(serve(openai_app(scripts["openai"],
                                                           api_key=openai_key))) + "/v1",
            "anthropic": stack.enter_context(serve(anthropic_app(scripts["anthropic"],
                                                                 api_key=anthropic_key))),
            "gemini": stack.enter_context(serve(gemini_app(scripts["gemini"],
                                                           api_key=gemini_key))) + "/v1beta",
        }
        yield scripts, urls


def each_test_scripted(scripts: dict[str, Script]) -> Iterator[None]:
    """Around one test (a fixture's body): the scripts start empty, and every behaviour the test
    scripted was used by the time it ends."""
    for script in scripts.values():
        script.reset()
    yield
    for script in scripts.values():
        assert not script.pending, "a scripted behaviour was not used"
