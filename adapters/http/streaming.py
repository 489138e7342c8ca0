"""The base of every streamed answer the API sends (chat SSE frames, Responses events)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse


class ClosingStream(StreamingResponse):
    """A server-sent event stream of ``content`` that, whatever ends the response (the last
    frame, an error event, the client hanging up, even before the first frame was sent), closes
    the kernel's stream ``chunks``, so the upstream connection is released and the request is
    recorded."""

    def __init__(self, content: AsyncIterator[bytes], chunks: Any, headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.chunks = chunks

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.chunks.aclose()
