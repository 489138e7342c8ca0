"""The ``conversation`` plugin: a history too long for the next model is trimmed (oldest turns
first, system prompt kept) or summarised by a cheap model, per route; in the kernel with a
capturing provider, and over HTTP with the official openai SDK against the OpenAI fake."""

from __future__ import annotations

import json

import openai
import pytest

from turnout.kernel import errors, tokens
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.request import Message
from turnout.kernel.types import ChatRequest, Completion, Usage
from turnout.plugins import conversation
from turnout.plugins.conversation import SUMMARY_PREFIX, message_tokens

from .fakes import Script, Status, openai_app, serve
from .gateway import running_gateway
from .support import kernel_for

pytestmark = pytest.mark.anyio

SYSTEM = {"role": "system", "content": "You are a travel agent. Answer in one sentence."}


def words(tag: str, n: int = 40) -> str:
    """A message of about ``n`` tokens, recognisable by ``tag``."""
    return f"{tag}: " + " ".join(f"{tag.lower()}word{i}" for i in range(n))


def history(turns: int, n: int = 40) -> list[dict]:
    """The system prompt, ``turns`` exchanges (user Qi, assistant Ai), and a last question."""
    messages = [SYSTEM]
    for i in range(turns):
        messages += [{"role": "user", "content": words(f"Q{i}", n)},
                     {"role": "assistant", "content": words(f"A{i}", n)}]
    return messages + [{"role": "user", "content": "And which city should I visit last?"}]


def size(messages: list[dict]) -> int:
    """Prompt tokens of ``messages``, as the gateway counts them."""
    return tokens.count_request(ChatRequest(model="x", messages=messages))


def weight(messages: list[dict]) -> int:
    """Tokens the messages add to a prompt."""
    return sum(message_tokens(Message(**m)) for m in messages)


class Capture:
    """A provider plugin that answers every call and keeps the messages each model got."""

    def __init__(self, answers: dict[str, object] | None = None) -> None:
        self.answers = answers or {}
        self.got: list[tuple[str, list[dict]]] = []

    @hookimpl(tryfirst=True)
    def call(self, ctx, step):
        name = step.model.name
        self.got.append((name, [m.model_dump(exclude_none=True) for m in ctx.request.messages]))
        answer = self.answers.get(name, f"{name} answered")
        if isinstance(answer, Exception):
            raise answer
        return Completion(content=answer, usage=Usage(10, 5))


def kernel(window: int, capture: Capture, models: dict | None = None,
           models_list: list[str] | None = None, **route):
    """A kernel whose route ``chain`` has the one model ``small`` (context window ``window``),
    or ``models_list``, with ``route``'s keys and the conversation plugin loaded."""
    profiles = {"small": {"provider": "p", "context_window": window, "input_price": 1,
                          "output_price": 2},
                "cheap": {"provider": "p", "context_window": 100_000, "input_price": 0.1,
                          "output_price": 0.2},
                **(models or {})}
    found, _, _ = kernel_for({}, route={"models": models_list or ["small"], **route},
                             models=profiles, plugins={"conversation": conversation.Conversation(),
                                                       "capture": capture})
    return found


async def answer(kernel_, messages: list[dict], **kw):
    async with kernel_:
        ctx = kernel_.context(ChatRequest(model="chain", messages=messages, **kw))
        await kernel_.complete(ctx)
    return ctx


# --- trimming --------------------------------------------------------------------------------


async def test_the_oldest_turns_are_dropped_first_and_the_system_prompt_kept() -> None:
    messages = history(8)
    window = size(messages) // 2 + 50
    capture = Capture()
    ctx = await answer(kernel(window, capture), messages, max_tokens=50)

    (model, got), = capture.got
    assert model == "small"
    assert got[0] == SYSTEM
    kept = got[1:]
    # The newest messages, in order, from a user turn on; the oldest went.
    assert kept == messages[len(messages) - len(kept):]
    assert kept[0]["role"] == "user" and kept[-1] == messages[-1]
    dropped = messages[1:len(messages) - len(kept)]
    assert dropped and dropped[0]["content"].startswith("Q0")
    # It fits now, and no more was dropped than needed: one turn fewer would not fit.
    assert size(got) + 50 <= window
    assert size([SYSTEM, *dropped[-2:], *kept]) + 50 > window
    record = ctx.decision["history"]
    assert record == {"mode": "trim", "model": "small", "dropped_messages": len(dropped),
                      "dropped_tokens": weight(dropped), "prompt_tokens": size(got)}
    assert size(messages) - size(got) == weight(dropped)
    # The request's size is recounted for what comes after (fit, budgets, the estimate).
    assert ctx.labels["prompt_tokens"] == size(got)
    assert ctx.request.messages[0].content == SYSTEM["content"]


async def test_every_system_message_is_kept_wherever_it_is() -> None:
    messages = history(6)
    note = {"role": "developer", "content": "The user prefers trains."}
    messages.insert(3, note)  # inside the oldest turn
    capture = Capture()
    await answer(kernel(size(messages) // 2, capture), messages, max_tokens=50)
    (_, got), = capture.got
    assert got[:2] == [SYSTEM, note]
    assert not any(m["content"].startswith("Q0") for m in got)


async def test_a_tool_call_goes_with_its_results() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Lisbon"}'}}
    old = [{"role": "user", "content": "Weather in Lisbon?"},
           {"role": "assistant", "tool_calls": [call]},
           {"role": "tool", "tool_call_id": "call_1", "content": words("Sunny", 60)},
           {"role": "assistant", "content": "It is sunny in Lisbon."}]
    recent = [{"role": "user", "content": words("Q1")},
              {"role": "assistant", "content": words("A1")},
              {"role": "user", "content": "And in Porto?"}]
    messages = [SYSTEM, *old, *recent]
    # Dropping the first user message alone would be enough; the turn goes whole.
    window = size(messages) + 50 - weight(old[:1])
    capture = Capture()
    ctx = await answer(kernel(window, capture), messages, max_tokens=50)
    (_, got), = capture.got
    assert got == [SYSTEM, *recent]
    assert ctx.decision["history"]["dropped_messages"] == 4


async def test_a_tool_call_in_a_kept_turn_keeps_its_results() -> None:
    call = {"id": "call_7", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Porto"}'}}
    messages = [SYSTEM, {"role": "user", "content": words("Q0", 80)},
                {"role": "assistant", "content": words("A0", 80)},
                {"role": "user", "content": "Weather in Porto?"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_7", "content": "Rain."},
                {"role": "user", "content": "So, umbrella?"}]
    capture = Capture()
    ctx = await answer(kernel(size(messages) - 100, capture), messages, max_tokens=50,
                       tools=[{"type": "function", "function": {"name": "weather"}}])
    (_, got), = capture.got
    assert got == [messages[0], *messages[3:]]
    assert ctx.decision["history"]["dropped_messages"] == 2


async def test_the_last_user_turn_is_never_dropped() -> None:
    # The last question alone is over the window: nothing is dropped, fit refuses with a 400.
    messages = [SYSTEM, {"role": "user", "content": words("Q0")},
                {"role": "assistant", "content": words("A0")},
                {"role": "user", "content": words("Last", 300)}]
    capture = Capture()
    k = kernel(size(messages[:1] + messages[-1:]) + 20, capture)
    async with k:
        ctx = k.context(ChatRequest(model="chain", messages=messages, max_tokens=50))
        with pytest.raises(errors.ContextLengthExceeded) as caught:
            await k.complete(ctx)
    assert "Shorten the prompt" in str(caught.value)
    assert capture.got == []
    assert "history" not in ctx.decision and len(ctx.request.messages) == len(messages)


async def test_keep_last_turns_keeps_that_many_user_turns() -> None:
    messages = history(6)
    window = size([SYSTEM, *messages[-5:]]) + 50 + 5
    capture = Capture()
    await answer(kernel(window, capture, keep_last_turns=3), messages, max_tokens=50)
    (_, got), = capture.got
    assert got == [SYSTEM, *messages[-5:]]  # Q4 A4 Q5 A5 and the last question
    # When only the kept turns are left to drop, the request is refused instead...
    window = size([SYSTEM, *messages[-5:]]) + 50 - 5
    capture = Capture()
    with pytest.raises(errors.ContextLengthExceeded):
        await answer(kernel(window, capture, keep_last_turns=3), messages, max_tokens=50)
    assert capture.got == []
    # ...where the default keeps one turn, and drops one more.
    capture = Capture()
    await answer(kernel(window, capture), messages, max_tokens=50)
    (_, got), = capture.got
    assert got == [SYSTEM, *messages[-3:]]


async def test_nothing_is_done_when_it_fits() -> None:
    messages = history(3)
    capture = Capture()
    ctx = await answer(kernel(size(messages) + 50, capture), messages, max_tokens=50)
    (_, got), = capture.got
    assert got == messages
    assert "history" not in ctx.decision


async def test_the_answer_room_counts_as_fit_counts_it() -> None:
    # No max_tokens: the model's max_output_tokens is kept for the answer.
    messages = history(4)
    capture = Capture()
    window = size(messages) + 100
    ctx = await answer(kernel(window, capture, models={
        "small": {"provider": "p", "context_window": window, "max_output_tokens": 300}}),
        messages)
    (_, got), = capture.got
    assert size(got) + 300 <= window < size(messages) + 300
    assert ctx.decision["history"]["dropped_messages"] == 2


async def test_history_off_leaves_the_request_to_fit() -> None:
    messages = history(6)
    capture = Capture()
    with pytest.raises(errors.ContextLengthExceeded):
        await answer(kernel(size(messages) // 2, capture, history="off"), messages,
                     max_tokens=50)
    assert capture.got == []


async def test_it_fits_the_model_that_will_answer_first() -> None:
    messages = history(8)
    tools = [{"type": "function", "function": {"name": "weather"}}]
    models = {"notools": {"provider": "p", "context_window": 300, "capabilities": []},
              "big": {"provider": "p", "context_window": size(messages) + 100}}
    # fit drops the first candidate whatever the prompt; the second takes it as it is.
    capture = Capture()
    ctx = await answer(kernel_for_route(["notools", "big"], models, capture), messages,
                       max_tokens=50, tools=tools)
    assert capture.got == [("big", messages)] and "history" not in ctx.decision
    # With the small one second, the prompt is fitted to it: the first that can answer.
    capture = Capture()
    ctx = await answer(kernel_for_route(["notools", "small"], models, capture, window=400),
                       messages, max_tokens=50, tools=tools)
    (model, got), = capture.got
    assert model == "small" and size(got) + 50 <= 400 and len(got) < len(messages)
    assert ctx.decision["history"]["model"] == "small"


def kernel_for_route(names: list[str], models: dict, capture: Capture, window: int = 400):
    return kernel(window, capture, models=models, models_list=names)


async def test_the_plugin_class_works_registered_by_itself() -> None:
    messages = history(6)
    capture = Capture()
    found, _, _ = kernel_for({}, route={"models": ["small"]}, models={
        "small": {"provider": "p", "context_window": size(messages) // 2}},
        plugins={"history": conversation.Conversation(), "capture": capture})
    ctx = await answer(found, messages, max_tokens=50)
    (_, got), = capture.got
    assert got[0] == SYSTEM and len(got) < len(messages)
    assert ctx.decision["history"]["mode"] == "trim"


async def test_each_gateway_in_a_process_reads_its_own_routes() -> None:
    messages = history(6)
    trims, refuses = Capture(), Capture()
    first = kernel(size(messages) // 2, trims)
    second = kernel(size(messages) // 2, refuses, history="off")
    async with first, second:
        ctx = first.context(ChatRequest(model="chain", messages=messages, max_tokens=50))
        await first.complete(ctx)
        with pytest.raises(errors.ContextLengthExceeded):
            await second.complete(second.context(ChatRequest(model="chain", messages=messages,
                                                             max_tokens=50)))
    assert ctx.decision["history"]["mode"] == "trim" and refuses.got == []


# --- summarising -----------------------------------------------------------------------------


async def test_summarize_puts_a_summary_after_the_system_prompt() -> None:
    messages = history(8)
    window = size(messages) // 2 + 50
    capture = Capture({"cheap": "They compared Lisbon and Porto."})
    ctx = await answer(kernel(window, capture, history="summarize", summarizer="cheap"),
                       messages, max_tokens=50)
    (who, asked), (model, got) = capture.got
    assert (who, model) == ("cheap", "small")
    summary = {"role": "system", "content": SUMMARY_PREFIX + "They compared Lisbon and Porto."}
    assert got[:2] == [SYSTEM, summary]
    kept = got[2:]
    assert kept == messages[len(messages) - len(kept):] and kept[0]["role"] == "user"
    dropped = messages[1:len(messages) - len(kept)]
    # The summarizer saw every dropped message, and none of the kept ones.
    prompt = asked[-1]["content"]
    assert all(m["content"] in prompt for m in dropped)
    assert messages[-1]["content"] not in prompt
    assert size(got) + 50 <= window
    record = ctx.decision["history"]
    assert record["mode"] == "summarize" and record["summarizer"] == "cheap"
    assert record["dropped_messages"] == len(dropped)
    assert record["dropped_tokens"] == weight(dropped)
    assert record["summary_tokens"] == weight([summary])
    # The summary is a sub-request of this one, and paid for in it.
    (child,) = ctx.children
    assert child.request.model == "cheap" and child.status == "ok"
    assert ctx.spend_usd == pytest.approx(sum(a.cost_usd for a in ctx.attempts)
                                          + child.spend_usd)
    assert "history" not in child.decision


async def test_a_failed_summary_falls_back_to_trimming() -> None:
    messages = history(8)
    window = size(messages) // 2 + 50
    capture = Capture({"cheap": errors.ProviderUnavailable("503 from upstream")})
    ctx = await answer(kernel(window, capture, history="summarize", summarizer="cheap"),
                       messages, max_tokens=50)
    (_, got) = capture.got[-1]
    assert got[0] == SYSTEM and got[1]["role"] == "user"
    assert not any(m["content"].startswith(SUMMARY_PREFIX) for m in got)
    record = ctx.decision["history"]
    assert record["mode"] == "trim" and "summary_tokens" not in record
    assert "cheap" in record["fallback"] and "did not answer" in record["fallback"]
    assert record["dropped_tokens"] == size(messages) - size(got)


async def test_a_summary_that_would_not_fit_falls_back_to_trimming() -> None:
    messages = history(8)
    window = size(messages) // 2 + 50
    capture = Capture({"cheap": words("Long", 600)})
    ctx = await answer(kernel(window, capture, history="summarize", summarizer="cheap",
                              summary_max_tokens=16), messages, max_tokens=50)
    (_, got) = capture.got[-1]
    assert got[0] == SYSTEM and got[1]["role"] == "user"
    assert ctx.decision["history"]["fallback"] == "the summary did not fit"


async def test_a_summarizer_that_the_transcript_does_not_fit_falls_back_to_trimming() -> None:
    # The summarizer's own request is not shortened: fit refuses it, and the turns are trimmed.
    messages = history(8)
    window = size(messages) // 2 + 50
    capture = Capture()
    tiny = {"cheap": {"provider": "p", "context_window": 256}}
    ctx = await answer(kernel(window, capture, models=tiny, history="summarize",
                              summarizer="cheap"), messages, max_tokens=50)
    assert [name for name, _ in capture.got] == ["small"]
    record = ctx.decision["history"]
    assert record["mode"] == "trim"
    assert "Shorten the prompt" in record["fallback"]
    (child,) = ctx.children
    assert child.status == "error" and "history" not in child.decision


# --- settings ----------------------------------------------------------------------------------


def test_summarize_needs_a_summarizer() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        kernel(1000, Capture(), history="summarize")
    assert "summarizer" in str(caught.value) and "routes.chain" in str(caught.value)


async def test_an_unknown_summarizer_is_refused_before_any_request() -> None:
    # At load: the config check knows the configured models and routes.
    with pytest.raises(errors.ConfigError) as caught:
        k = kernel(1000, Capture(), history="summarize", summarizer="nowhere")
        try:
            await k.start()
        finally:
            await k.stop()
    assert "routes.chain" in str(caught.value) and "'nowhere'" in str(caught.value)
    assert "name one of them" in str(caught.value)


# --- over HTTP ---------------------------------------------------------------------------------

KEY = "sk-conversation-upstream"


def upstream_answer(model: str, prompt: str) -> str:
    if model == "summ-up":
        return "The user compared Lisbon, Porto and Faro for a week in May."
    return f"{model} says: visit Faro last."


@pytest.fixture(scope="module")
def fake():
    script = Script(answer=upstream_answer)
    with serve(openai_app(script, api_key=KEY)) as url:
        yield script, url + "/v1"


WINDOW = 700


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory: pytest.TempPathFactory):
    _, url = fake
    config = {
        "providers": {"up": {"kind": "openai", "base_url": url, "api_key": KEY}},
        "models": {
            "mini": {"provider": "up", "upstream": "mini-up", "context_window": WINDOW,
                     "input_price": 0.5, "output_price": 1.5},
            "summ": {"provider": "up", "upstream": "summ-up", "input_price": 0.1,
                     "output_price": 0.3},
        },
        "routes": {
            "chat": {"models": ["mini"]},
            "recap": {"models": ["mini"], "history": "summarize", "summarizer": "summ"},
            "strict": {"models": ["mini"], "history": "off"},
        },
    }
    with running_gateway(config, tmp_path_factory.mktemp("conversation")) as gw:
        yield gw


def sent(script: Script, since: int) -> list[dict]:
    """Bodies the fake received after the first ``since`` requests."""
    return [r.body for r in script.requests[since:]]


def test_a_long_conversation_is_trimmed_to_the_window_over_http(fake, gateway) -> None:
    script, _ = fake
    messages = history(10)
    assert size(messages) + 100 > WINDOW
    since = len(script.requests)
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="chat", messages=messages, max_tokens=100)
    assert raw.parse().choices[0].message.content == "mini-up says: visit Faro last."
    (body,) = sent(script, since)
    got = body["messages"]
    assert got[0] == SYSTEM and got[-1] == messages[-1]
    kept = got[1:]
    assert kept == messages[len(messages) - len(kept):] and kept[0]["role"] == "user"
    dropped = messages[1:len(messages) - len(kept)]
    assert dropped

    rows = {r["request_id"]: r for r in gateway.rows()}
    row = rows[raw.headers["x-request-id"]]
    record = json.loads(row["decision"])["history"]
    assert record["mode"] == "trim" and record["model"] == "mini"
    assert record["dropped_messages"] == len(dropped)
    assert record["dropped_tokens"] == weight(dropped)
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(row["cost_usd"])
    assert row["cost_usd"] == pytest.approx(
        sum(a["cost_usd"] for a in gateway.attempts(row["request_id"])))


def test_a_streaming_conversation_is_trimmed_too(fake, gateway) -> None:
    script, _ = fake
    messages = history(10)
    since = len(script.requests)
    stream = gateway.client().chat.completions.create(
        model="chat", messages=messages, max_tokens=100, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "mini-up says: visit Faro last."
    (body,) = sent(script, since)
    assert body["messages"][0] == SYSTEM and len(body["messages"]) < len(messages)


def test_a_long_conversation_is_summarised_over_http(fake, gateway) -> None:
    script, _ = fake
    messages = history(10)
    since = len(script.requests)
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="recap", messages=messages, max_tokens=100)
    assert raw.parse().choices[0].message.content == "mini-up says: visit Faro last."
    summarised, answered = sent(script, since)
    assert summarised["model"] == "summ-up" and answered["model"] == "mini-up"
    got = answered["messages"]
    assert got[:2] == [SYSTEM, {"role": "system", "content": SUMMARY_PREFIX + upstream_answer(
        "summ-up", "")}]
    kept = got[2:]
    assert kept == messages[len(messages) - len(kept):] and kept[-1] == messages[-1]
    dropped = messages[1:len(messages) - len(kept)]
    assert all(m["content"] in summarised["messages"][-1]["content"] for m in dropped)

    rows = {r["request_id"]: r for r in gateway.rows()}
    parent = rows[raw.headers["x-request-id"]]
    (child,) = [r for r in rows.values() if r["parent_id"] == parent["request_id"]]
    assert child["model"] == "summ" and child["status"] == "ok" and child["cost_usd"] > 0
    record = json.loads(parent["decision"])["history"]
    assert record["mode"] == "summarize" and record["summarizer"] == "summ"
    assert record["dropped_messages"] == len(dropped)
    assert record["dropped_tokens"] == weight(dropped)
    assert record["summary_tokens"] == weight(got[1:2])
    own = sum(a["cost_usd"] for a in gateway.attempts(parent["request_id"]))
    assert own > 0
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(own + child["cost_usd"])
    assert parent["cost_usd"] == pytest.approx(own + child["cost_usd"])


def test_a_summarizer_outage_trims_instead_over_http(fake, gateway) -> None:
    script, _ = fake
    messages = history(10, 41)  # not the summarised one: its summary is cached (temperature 0)
    since = len(script.requests)
    script.push(Status(400, "Unsupported model."))  # the summarizer's call: not retried
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="recap", messages=messages, max_tokens=100)
    assert raw.parse().choices[0].message.content == "mini-up says: visit Faro last."
    bodies = sent(script, since)
    assert bodies[0]["model"] == "summ-up" and bodies[-1]["model"] == "mini-up"
    assert bodies[-1]["messages"][1]["role"] == "user"
    row = next(r for r in gateway.rows() if r["request_id"] == raw.headers["x-request-id"])
    record = json.loads(row["decision"])["history"]
    assert record["mode"] == "trim" and "summ" in record["fallback"]


def test_history_off_refuses_a_long_conversation_over_http(fake, gateway) -> None:
    script, _ = fake
    since = len(script.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="strict", messages=history(10),
                                                 max_tokens=100)
    assert caught.value.code == "context_length_exceeded"
    assert sent(script, since) == []
