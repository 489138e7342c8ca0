"""A provider kind: ``echo``, usable from a gateway config as ``[providers.NAME] kind = "echo"``.

The kind's settings are its own pydantic model, validated at start-up with the same
``file:line: key: message`` errors as the rest of the config. A real provider would call its
upstream where this one echoes.
"""

from __future__ import annotations

from pydantic import Field

from turnout.kernel import hookimpl
from turnout.kernel.provider import Provider, ProviderSettings
from turnout.kernel.types import Chunk, Completion, Usage


class EchoSettings(ProviderSettings):
    """An echo provider: answers with the last user message, its words reversed."""

    prefix: str = Field(default="", description="Put before every answer.")


class EchoProvider(Provider):
    """Answers every model it serves with the last user message, reversed word by word."""

    Settings = EchoSettings

    def __init__(self, name: str, settings: EchoSettings) -> None:
        self.name = name
        self.settings = settings

    def _answer(self, request) -> tuple[str, Usage]:
        last = next(m.text() for m in reversed(request.messages) if m.role == "user")
        words = last.split()
        answer = self.settings.prefix + " ".join(reversed(words))
        return answer, Usage(input_tokens=len(words), output_tokens=len(words))

    async def complete(self, request, model) -> Completion:
        answer, usage = self._answer(request)
        return Completion(content=answer, usage=usage, model=model.name, provider=self.name)

    async def stream(self, request, model):
        answer, usage = self._answer(request)
        yield Chunk(role="assistant")
        for word in answer.split():
            yield Chunk(content=word + " ")
        yield Chunk(finish_reason="stop", usage=usage)


class EchoKind:
    """The plugin: registers the provider kind ``echo``."""

    name = "example_provider"

    @hookimpl
    def register_providers(self, register) -> None:
        register("echo", EchoProvider)
