"""A thread's conversation, kept in the shared store so any replica can answer its next turn.

Key ``slack:thread:<team>:<channel>:<thread_ts>``, value a JSON list of ``{role, content}``
messages (the questions and the answers given), the last ``[slack] history_turns`` turns of
it, kept a week after the thread's last answer. Turns of one thread are answered one at a time
(a lock of the same key under ``slack:thread-lock:``), so each sees the one before it.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import orjson
import structlog

from turnout.kernel.store import LockTimeout, Store

log = structlog.get_logger("turnout.slack")

HISTORY_TTL_S = 7 * 24 * 3600.0
"""How long a thread's history is kept after its last answer."""

TURN_LOCK_TTL_S = 600.0
"""How long a turn may hold its thread before the lock expires (a replica that died)."""

TURN_WAIT_S = 300.0
"""How long a question waits for the thread's previous turn before it is answered anyway."""


def thread_key(team: str | None, channel: str, thread_ts: str) -> str:
    """The store key of a thread's history."""
    return f"slack:thread:{team or '-'}:{channel}:{thread_ts}"


async def load(store: Store, key: str) -> list[dict[str, str]]:
    """The thread's messages so far; none for a new thread or an unreadable value."""
    raw = await store.get(key)
    if not raw:
        return []
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(found, list):
        return []
    return [{"role": m["role"], "content": m["content"]} for m in found
            if isinstance(m, dict) and m.get("role") in ("user", "assistant")
            and isinstance(m.get("content"), str)]


async def save(store: Store, key: str, messages: list[dict[str, str]], turns: int) -> None:
    """Keep the last ``turns`` turns (a question and its answer each) of ``messages``."""
    if turns <= 0:
        return
    kept = messages[-2 * turns:]
    await store.set(key, orjson.dumps(kept), ttl_s=HISTORY_TTL_S)


@contextlib.asynccontextmanager
async def turn(store: Store, key: str) -> AsyncIterator[None]:
    """Hold the thread for one turn; after :data:`TURN_WAIT_S` of waiting, go on without it
    (an answer late is better than none)."""
    lock = store.lock(f"slack:thread-lock:{key.removeprefix('slack:thread:')}",
                      ttl_s=TURN_LOCK_TTL_S, wait_s=TURN_WAIT_S)
    try:
        await lock.__aenter__()
    except LockTimeout:
        log.warning("slack_thread_busy", waited_s=TURN_WAIT_S)
        yield
        return
    try:
        yield
    finally:
        await lock.__aexit__(None, None, None)
