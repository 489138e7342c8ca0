"""The LLM classifier: over HTTP with the official openai SDK against the fake OpenAI upstream,
whose classifier model answers from the message it is asked about (its verdict wins and the route
follows, a slow one times out, garbage and errors fall back, a repeat is cached, the call is a
recorded sub-request); then the verdict parser, the settings and the hook order."""

from __future__ import annotations

import json
import re
import time

import pytest

from turnout.kernel.config import parse
from turnout.kernel.errors import ConfigError
from turnout.kernel.kernel import Kernel
from turnout.kernel.labels import TASKS
from turnout.kernel.types import ChatRequest, Context
from turnout.plugins import llm_classifier
from turnout.plugins.llm_classifier import cache_key, parse_verdict, prompt_for

from .fakes import Delay, Reply, Script, Status, openai_app, serve
from .gateway import running_gateway

KEY = "sk-llm-classifier-upstream-0001"
HARD = ("Design a distributed architecture, analyze the trade-offs, compare options, step by "
        "step, and explain why")
TIMEOUT_S = 0.4


def message_of(prompt: str) -> str:
    """The user's message inside the classifier's prompt."""
    found = re.search(r"<<<MESSAGE\n(.*)\nMESSAGE>>>", prompt, re.DOTALL)
    assert found, "the classifier's prompt carries the message between its markers"
    return found.group(1)


def verdict(task: str, level: int) -> str:
    return json.dumps({"task": task, "difficulty": level})


def upstream(model: str, prompt: str):
    """The classifier model ``tiny`` judges by markers in the message; the others answer."""
    if model != "tiny":
        return Reply(f"answer from {model}")
    message = message_of(prompt)
    if "[slow]" in message:
        return Delay(5, Reply(verdict("reasoning", 5)))
    if "[garbage]" in message:
        return "What a lovely question! I would be delighted to help."
    if "[outside]" in message:
        return verdict("poetry", 3)
    if "[refused]" in message:
        return Status(400, "Invalid request.")
    if "[hard]" in message:
        return "Sure:\n```json\n" + verdict("reasoning", 5) + "\n```"
    return verdict("chat", 1)


@pytest.fixture(scope="module")
def fake():
    script = Script(answer=upstream)
    with serve(openai_app(script, api_key=KEY)) as url:
        yield script, url + "/v1"


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory: pytest.TempPathFactory):
    _, url = fake
    config = {
        "providers": {"up": {"kind": "openai", "base_url": url, "api_key": KEY}},
        "models": {name: {"provider": "up", "input_price": price, "output_price": 2 * price}
                   for name, price in (("tiny", 0.1), ("small", 1), ("large", 10))},
        "routes": {"cheap": {"models": ["small"]}, "strong": {"models": ["large"]}},
        "routing": {"default": "cheap", "rules": [
            {"name": "hard", "when": {"difficulty": ">= 0.6"}, "route": "strong"}]},
        "llm_classifier": {"model": "tiny", "timeout_s": TIMEOUT_S},
    }
    with running_gateway(config, tmp_path_factory.mktemp("llm_classifier")) as gw:
        yield gw


def ask(gw, text: str, model: str = "auto"):
    raw = gw.client(timeout=10).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}])
    return raw, raw.parse()


def row_of(gw, request_id: str) -> tuple[dict, dict, list[dict]]:
    """A request's row, its decision record, and its sub-requests' rows."""
    rows = gw.rows()
    row = next(r for r in rows if r["request_id"] == request_id)
    return row, json.loads(row["decision"]), [r for r in rows if r["parent_id"] == request_id]


def classifier_calls(script: Script, text: str) -> list:
    return [r for r in script.requests
            if r.body["model"] == "tiny" and text in r.body["messages"][-1]["content"]]


def test_the_models_verdict_wins_and_the_route_follows(gateway, fake) -> None:
    script, _ = fake
    text = "Hello there, how are you? [hard]"  # the heuristic calls this easy chat
    raw, completion = ask(gateway, text)
    assert raw.headers["x-turnout-route"] == "strong"
    assert completion.choices[0].message.content == "answer from large"
    _, decision, children = row_of(gateway, raw.headers["x-request-id"])
    labels = decision["labels"]
    assert (labels["task"], labels["difficulty"], labels["complexity"]) == ("reasoning", 1.0, 1.0)
    assert labels["classifier"] == "llm" and labels["language"] == "en"
    assert decision["classifier"]["by"] == "llm" and not decision["classifier"]["cached"]
    assert decision["rule"] == "hard"
    assert [c["model"] for c in children] == ["tiny"]


def test_a_verdict_can_also_send_a_hard_looking_prompt_to_the_cheap_route(gateway) -> None:
    raw, _ = ask(gateway, HARD)  # the heuristic alone sends this to the strong route
    assert raw.headers["x-turnout-route"] == "cheap"
    _, decision, _ = row_of(gateway, raw.headers["x-request-id"])
    assert (decision["labels"]["task"], decision["labels"]["difficulty"]) == ("chat", 0.0)


def test_the_classifiers_call_is_a_subrequest_recorded_under_the_request(gateway, fake) -> None:
    script, _ = fake
    text = "A question recorded with its classification. [hard]"
    raw, _ = ask(gateway, text)
    row, _, children = row_of(gateway, raw.headers["x-request-id"])
    assert len(children) == 1 and children[0]["model"] == "tiny"
    assert children[0]["status"] == "ok" and children[0]["cost_usd"] > 0
    own = sum(a["cost_usd"] for a in gateway.attempts(row["request_id"]))
    assert row["cost_usd"] == pytest.approx(own + children[0]["cost_usd"], abs=1e-9)
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(row["cost_usd"], abs=1e-9)
    # The classifier's own request was not classified by the classifier again.
    assert len(classifier_calls(script, text)) == 1
    _, child_decision, _ = row_of(gateway, children[0]["request_id"])
    assert child_decision["labels"]["classifier"] == "heuristic"
    assert "classifier" not in child_decision


def test_a_repeated_prompt_is_answered_from_the_cache(gateway, fake) -> None:
    script, _ = fake
    text = "Tell me something about lighthouses. [hard]"
    first, _ = ask(gateway, text)
    again, _ = ask(gateway, "  tell me something   about LIGHTHOUSES. [hard] ")
    assert len(classifier_calls(script, "lighthouses")) == 1
    assert again.headers["x-turnout-route"] == first.headers["x-turnout-route"] == "strong"
    _, decision, children = row_of(gateway, again.headers["x-request-id"])
    assert decision["classifier"]["cached"] is True and decision["labels"]["classifier"] == "llm"
    assert children == []  # no call, no cost


def test_a_slow_classifier_times_out_and_the_heuristic_labels_are_used(gateway, fake) -> None:
    script, _ = fake
    text = "Good morning! [slow]"
    raw, completion = ask(gateway, text)
    assert completion.choices[0].message.content == "answer from small"
    assert raw.headers["x-turnout-route"] == "cheap"  # easy chat, by the heuristic
    _, decision, children = row_of(gateway, raw.headers["x-request-id"])
    assert decision["labels"]["classifier"] == "heuristic"
    assert decision["labels"]["task"] == "chat"
    assert decision["classifier"]["by"] == "heuristic"
    assert "timeout_s" in decision["classifier"]["fallback"]
    assert [c["status"] for c in children] == ["cancelled"]
    # The upstream saw the gateway hang up: the call was cancelled, not waited out.
    deadline = time.monotonic() + 10
    while not [s for s in script.spans if s.model == "tiny" and text in s.prompt] \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    spans = [s for s in script.spans if s.model == "tiny" and text in s.prompt]
    assert len(spans) == 1 and spans[0].gone


@pytest.mark.parametrize("marker,why", [
    ("[garbage]", "outside the label set"),
    ("[outside]", "outside the label set"),
    ("[refused]", "the classifier failed"),
])
def test_an_unusable_answer_falls_back_and_is_not_kept(gateway, fake, marker, why) -> None:
    script, _ = fake
    text = f"What is the capital of Peru? {marker}"
    for _ in range(2):
        raw, completion = ask(gateway, text)
        assert completion.choices[0].message.content == "answer from small"
        _, decision, children = row_of(gateway, raw.headers["x-request-id"])
        assert decision["labels"]["classifier"] == "heuristic"
        assert decision["labels"]["task"] == "chat"
        assert why in decision["classifier"]["fallback"]
        assert decision["classifier"]["cached"] is False  # asked again, not a kept verdict
        assert [c["model"] for c in children] == ["tiny"]
    # An error is asked upstream again; an answer at temperature 0 may come from the response
    # cache (the sub-request is an ordinary request), and is refused again the same way.
    assert len(classifier_calls(script, text)) == (2 if marker == "[refused]" else 1)


def test_a_request_for_a_route_is_not_classified_by_default(gateway, fake) -> None:
    script, _ = fake
    text = "Which route is this? [hard]"
    raw, _ = ask(gateway, text, model="cheap")
    assert raw.headers["x-turnout-route"] == "cheap"
    assert classifier_calls(script, text) == []


# --- in the kernel -------------------------------------------------------------------------------


def kernel_with(settings: dict) -> Kernel:
    config = parse({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"tiny": {"provider": "p"}, "small": {"provider": "p"}},
        "routes": {"cheap": {"models": ["small"]}},
        "routing": {"default": "cheap"},
        "llm_classifier": settings,
    }, source="test")
    return Kernel(config)


def test_its_labels_are_merged_after_the_heuristics() -> None:
    kernel = kernel_with({"model": "tiny"})
    kernel.load_plugins()
    order = [impl.plugin for impl in kernel.plugins.impls("classify")]
    assert order.index("llm_classifier") > order.index("classify")
    assert order[-1] == "llm_classifier"


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="auto is not allowed"):
        kernel_with({"model": "auto"}).load_plugins()
    with pytest.raises(ConfigError, match="no model or route 'nowhere'.*tiny"):
        kernel_with({"model": "nowhere"}).load_plugins()
    with pytest.raises(ConfigError, match="timeout_s"):
        kernel_with({"model": "tiny", "timeout_s": 0}).load_plugins()


def test_every_setting_is_described() -> None:
    for name, field in llm_classifier.LLMClassifierSettings.model_fields.items():
        assert field.description, name


def test_idle_without_a_model() -> None:
    ctx = Context(request=ChatRequest(model="auto", messages=[{"role": "user", "content": "x"}]))
    for settings, idle in (({}, True), ({"model": "tiny"}, False)):
        kernel = kernel_with(settings)
        kernel.load_plugins()
        plugin = kernel.plugins.get("llm_classifier")
        plugin.startup(kernel)
        pending = plugin.classify(ctx)
        assert (pending is None) == idle
        if pending is not None:
            pending.close()  # a coroutine, not awaited here


# --- reading the verdict -------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ('{"task": "code", "difficulty": 3}', {"task": "code", "difficulty": 0.5}),
    ('Here you go:\n```json\n{"task": "math", "difficulty": 5}\n```', {"task": "math",
                                                                       "difficulty": 1.0}),
    ('I think {"task": "Translate", "difficulty": "2/5"} fits.', {"task": "translation",
                                                                  "difficulty": 0.25}),
    ('task: coding\ndifficulty: 4', {"task": "code", "difficulty": 0.75}),
    ('{"task": "summarization", "difficulty": 1}', {"task": "summarize", "difficulty": 0.0}),
    ('{"task": "poetry", "difficulty": 2}', None),
    ('{"task": "chat", "difficulty": 9}', None),
    ('{"task": "chat"}', None),
    ('{"difficulty": 2}', None),
    ("no idea", None),
    ("", None),
])
def test_parse_verdict(text: str, expected: dict | None) -> None:
    assert parse_verdict(text) == expected


def test_the_prompt_lists_the_whole_label_set() -> None:
    prompt = prompt_for("What is 2 + 2?")
    assert all(f"- {task}:" in prompt for task in TASKS)
    assert "What is 2 + 2?" in prompt and '"difficulty"' in prompt


def test_the_cache_key_ignores_case_and_spacing_but_not_the_model() -> None:
    assert cache_key("tiny", "Hello  World") == cache_key("tiny", " hello world ")
    assert cache_key("tiny", "hello world") != cache_key("other", "hello world")
    assert cache_key("tiny", "hello world") != cache_key("tiny", "hello there")
