"""What every provider adapter promises, whatever its wire format: each fault maps to the same
kernel error, streams are released and checked for their end, and no error repeats the key.

Each test runs once per provider against that provider's fake over real local HTTP; a
:class:`~tests.wires.Wire` row holds what differs between them. The provider files test the rest
(request translation, tools, JSON mode, usage fields and each provider's own error shapes).
"""

from __future__ import annotations

import pytest

from turnout.adapters.providers.settings import Timeouts
from turnout.kernel.errors import (
    ContentPolicy,
    ContextTooLong,
    ProviderAuthFailed,
    ProviderBadRequest,
    ProviderTimeout,
    ProviderUnavailable,
    StreamBroken,
)

from .fakes import CutStream, Delay, ErrorInStream, Status, free_port
from .support import collect, user
from .wires import provider_fixtures

pytestmark = pytest.mark.anyio

wire, upstream, script, adapter = provider_fixtures()


# --- streams -----------------------------------------------------------------------------------


async def test_closing_a_stream_early_releases_the_connection(wire, upstream, script):
    adapter = wire.connect(upstream[1], max_connections=1, timeout=Timeouts(read=0.5, pool=0.5))
    try:
        stream = adapter.stream(wire.ask(user("one two three four"), stream=True), wire.model)
        assert (await anext(stream)).content == "Echo: "
        await stream.aclose()
        # With one pooled connection, a response left open would make this wait for the pool.
        answer = await adapter.complete(wire.ask(user("again")), wire.model)
    finally:
        await adapter.aclose()
    assert answer.content == "Echo: again"


@pytest.mark.parametrize("abrupt", [False, True], ids=["clean-end", "dropped-connection"])
async def test_cut_stream_is_stream_broken_after_the_chunks_seen(wire, adapter, script, abrupt):
    script.push(CutStream(after_chunks=2, abrupt=abrupt))
    seen = []
    with pytest.raises(StreamBroken) as caught:
        async for chunk in adapter.stream(wire.ask(user("one two three four five"), stream=True),
                                          wire.model):
            seen.append(chunk.content)
    assert seen == ["Echo: ", "one "]
    wire.assert_clean(caught.value)


async def test_error_event_inside_a_200_stream_is_stream_broken(wire, adapter, script):
    message, says = wire.stream_error
    script.push(ErrorInStream(after_chunks=1, message=message))
    seen = []
    with pytest.raises(StreamBroken, match=says) as caught:
        async for chunk in adapter.stream(wire.ask(user("one two three"), stream=True),
                                          wire.model):
            seen.append(chunk.content)
    assert seen == ["Echo: "]
    wire.assert_clean(caught.value)


# --- timeouts and unreachable upstreams --------------------------------------------------------


async def test_slow_answer_is_timeout(wire, adapter, script):
    script.push(Delay(2))
    with pytest.raises(ProviderTimeout, match="read timeout") as caught:
        await adapter.complete(wire.ask(user("hi")), wire.model)
    wire.assert_clean(caught.value)


async def test_slow_stream_start_is_timeout(wire, adapter, script):
    script.push(Delay(2))
    with pytest.raises(ProviderTimeout, match="read timeout") as caught:
        await collect(adapter.stream(wire.ask(user("hi"), stream=True), wire.model))
    wire.assert_clean(caught.value)


async def test_connection_refused_is_unavailable(wire):
    adapter = wire.connect(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ProviderUnavailable, match="cannot be reached") as caught:
            await adapter.complete(wire.ask(user("hi")), wire.model)
        wire.assert_clean(caught.value)
        with pytest.raises(ProviderUnavailable) as caught:
            await collect(adapter.stream(wire.ask(user("hi"), stream=True), wire.model))
        wire.assert_clean(caught.value)
    finally:
        await adapter.aclose()


# --- error statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_5xx_is_unavailable(wire, adapter, script, code):
    script.push(Status(code))
    with pytest.raises(ProviderUnavailable) as caught:
        await adapter.complete(wire.ask(user("hi")), wire.model)
    assert f"answered {code}" in str(caught.value)
    wire.assert_clean(caught.value)


async def test_wrong_key_is_auth_failed_and_the_key_is_not_repeated(wire, upstream, script):
    wrong, says = wire.wrong_key
    adapter = wire.connect(upstream[1], api_key=wrong)
    try:
        with pytest.raises(ProviderAuthFailed, match=says) as caught:
            await adapter.complete(wire.ask(user("hi")), wire.model)
    finally:
        await adapter.aclose()
    assert wrong not in str(caught.value) and wrong not in repr(caught.value.args)
    wire.assert_clean(caught.value)


async def test_scripted_401_is_auth_failed(wire, adapter, script):
    script.push(Status(401))
    with pytest.raises(ProviderAuthFailed) as caught:
        await adapter.complete(wire.ask(user("hi")), wire.model)
    wire.assert_clean(caught.value)


async def test_unknown_upstream_model_is_bad_request(wire, adapter, script):
    script.push(Status(404))
    with pytest.raises(ProviderBadRequest, match=wire.unknown_model_says) as caught:
        await adapter.complete(wire.ask(user("hi")), wire.model)
    assert not isinstance(caught.value, (ContextTooLong, ContentPolicy))
    assert repr(wire.model.name) in str(caught.value)
    wire.assert_clean(caught.value)
