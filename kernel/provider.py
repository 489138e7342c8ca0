"""The provider seam: what a provider kind registered with ``register_providers`` builds.

A provider serves the models whose ``provider`` is its configured name. The kernel builds one per
``[providers.NAME]`` table at start-up, with ``factory(name, settings)`` where ``settings`` is the
table validated by the kind's settings model, and calls it by a lookup on ``step.model.provider``
for every attempt no ``call`` plugin answered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, AsyncIterator, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .errors import ProviderBadRequest
from .types import ChatRequest, Chunk, Completion, ModelProfile

if TYPE_CHECKING:
    from .embeddings import EmbeddingRequest, Embeddings


class ProviderSettings(BaseModel):
    """Base of a provider kind's settings (one ``[providers.NAME]`` table): unknown keys are
    errors. ``kind`` is what chose the kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description="The provider kind: one registered by a plugin "
                      "(built in: openai, openai-compatible, anthropic, gemini, simulated).")
    passthrough_params: list[str] = Field(
        default_factory=list, description="Request fields OpenAI's API does not define that "
        "clients may send and this provider receives as they are (vLLM's top_k, "
        "repetition_penalty...): beside the others on OpenAI-format kinds, at the top of the "
        "body on anthropic (top_k), inside generationConfig on gemini (topK). Any other "
        "unknown field is refused with a 400.")


class Provider(ABC):
    """One configured provider: answers whole or streamed, and releases its pools on close."""

    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings
    """Validates this kind's ``[providers.NAME]`` table."""

    name: str
    """The provider's configured name (the key of ``[providers]``)."""

    @abstractmethod
    async def complete(self, request: ChatRequest, model: ModelProfile) -> Completion:
        """Send a non-streaming request and return the whole answer; failures are raised as
        ``turnout.kernel.errors.ProviderError`` subclasses."""

    @abstractmethod
    def stream(self, request: ChatRequest, model: ModelProfile) -> AsyncIterator[Chunk]:
        """Send a streaming request; iterate the answer's chunks, the last carrying usage."""

    async def embed(self, request: "EmbeddingRequest", model: ModelProfile) -> "Embeddings":
        """Embed ``request.texts`` with ``model``: one vector per text, in order, and the usage
        the provider reported (zeros: the kernel counts). Optional: a kind that cannot embed
        keeps this default, which fails the attempt (the kernel moves on to the next model)."""
        raise ProviderBadRequest(
            f"provider {self.name!r} (kind {type(self).__name__}) does not embed; give "
            f"{model.name!r} a provider of a kind that does (openai, openai-compatible, gemini, "
            "simulated) or drop 'embeddings' from its capabilities",
            provider=self.name, model=model.name)

    async def aclose(self) -> None:  # noqa: B027 - optional: most providers hold no pool
        """Release connections; called once at shutdown."""
