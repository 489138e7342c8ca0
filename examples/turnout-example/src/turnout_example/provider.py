"""A provider plugin: registers its model at startup and answers ``call`` for it."""

from __future__ import annotations

from turnout.kernel import hookimpl
from turnout.kernel.types import Chunk, Completion, ModelProfile, Usage

PROVIDER = "example"
MODEL = ModelProfile(name="example-echo", provider=PROVIDER, upstream="echo-1",
                     context_window=8192, input_price=0.01, output_price=0.02, tier=0,
                     description="echoes the last user message")


class EchoProvider:
    """Answers ``example-echo`` with the last user message, reversed word by word."""

    @hookimpl
    def startup(self, kernel) -> None:
        if MODEL.name not in kernel.models:
            kernel.models.register(MODEL)

    @hookimpl
    async def call(self, ctx, step):
        if step.model.provider != PROVIDER:
            return None  # not ours: let the next provider answer
        last = next(m.text() for m in reversed(ctx.request.messages) if m.role == "user")
        words = last.split()
        answer = " ".join(reversed(words))
        usage = Usage(input_tokens=len(words), output_tokens=len(words))
        if ctx.request.stream:
            return self._stream(answer, usage)
        return Completion(content=answer, usage=usage)

    @staticmethod
    async def _stream(answer: str, usage: Usage):
        yield Chunk(role="assistant")
        for word in answer.split():
            yield Chunk(content=word + " ")
        yield Chunk(finish_reason="stop", usage=usage)
