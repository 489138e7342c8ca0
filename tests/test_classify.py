"""The heuristic classifier: task and difficulty on realistic prompts (a tuned set and a held-out
set, see tests/classify_cases.py), routing with the embedded default config, language, the other
labels, and the label documentation."""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest

from turnout.kernel import labels as label_docs
from turnout.kernel import tokens
from turnout.kernel.config import parse
from turnout.kernel.defaults import embedded
from turnout.kernel.kernel import Kernel
from turnout.kernel.request import ChatRequest
from turnout.plugins import classify, llm_classifier

from .classify_cases import BANDS, HELD_OUT, TUNE, Case

pytestmark = pytest.mark.anyio

MOTIVATING = ("Design a distributed architecture, analyze the trade-offs, compare options, step by "
              "step, and explain why")


def request_of(case: Case) -> ChatRequest:
    extra = {"response_format": {"type": "json_object"}} if case.json else {}
    return ChatRequest(model="auto", messages=[{"role": "user", "content": case.prompt}], **extra)


def judged(case: Case) -> tuple[bool, bool]:
    """Whether the heuristic got the case's task, and its difficulty band, right."""
    got = classify.labels(request_of(case))
    low, high = BANDS[case.band]
    return got["task"] == case.task, low <= got["difficulty"] < high


@pytest.mark.parametrize("case", TUNE, ids=[c.prompt[:40] for c in TUNE])
def test_task_and_difficulty_band_on_the_tuned_prompts(case: Case) -> None:
    got = classify.labels(request_of(case))
    low, high = BANDS[case.band]
    assert (got["task"], case.band) == (case.task, case.band)
    assert low <= got["difficulty"] < high, f"{got['difficulty']} is not {case.band}"
    assert got["complexity"] == got["difficulty"]


def test_held_out_prompts_are_mostly_right(capsys: pytest.CaptureFixture) -> None:
    """Prompts the cues were never adjusted to: a drop here means the heuristic overfits."""
    results = [judged(case) for case in HELD_OUT]
    task = sum(t for t, _ in results) / len(results)
    band = sum(b for _, b in results) / len(results)
    both = sum(t and b for t, b in results) / len(results)
    with capsys.disabled():
        print(f"\nheld-out ({len(results)} prompts): task {task:.0%}, difficulty band {band:.0%}, "
              f"both {both:.0%}")
    assert task >= 0.85 and band >= 0.8


def test_held_out_and_tuned_prompts_do_not_overlap() -> None:
    assert not {c.prompt for c in TUNE} & {c.prompt for c in HELD_OUT}
    assert {c.task for c in HELD_OUT} == {c.task for c in TUNE} == set(label_docs.TASKS)


# --- routing with the embedded default config -----------------------------------------------------


@pytest.fixture
def default_kernel() -> Kernel:
    return Kernel(parse(embedded({}), source="test"))


async def routed(kernel: Kernel, prompt: str) -> dict:
    async with kernel:
        return await kernel.explain(kernel.context(ChatRequest(
            model="auto", messages=[{"role": "user", "content": prompt}])))


async def test_the_motivating_prompt_goes_to_the_strong_route(default_kernel: Kernel) -> None:
    decision = await routed(default_kernel, MOTIVATING)
    assert decision["labels"]["task"] == "reasoning"
    assert decision["labels"]["difficulty"] >= 0.6
    assert (decision["route"], decision["rule"]) == ("strong", "hard prompts go strong")


@pytest.mark.parametrize("case,route", [
    (TUNE[0], "cheap"),  # hi!
    (next(c for c in HELD_OUT if c.task == "chat"), "cheap"),
    (next(c for c in HELD_OUT if c.task == "code" and c.band == "easy"), "balanced"),
    (next(c for c in HELD_OUT if c.task == "math" and c.band == "hard"), "strong"),
    (next(c for c in HELD_OUT if c.task == "reasoning" and c.band == "hard"), "strong"),
], ids=["greeting", "chat", "easy code", "proof", "hard reasoning"])
async def test_the_default_rules_route_by_difficulty(default_kernel: Kernel, case: Case,
                                                     route: str) -> None:
    assert (await routed(default_kernel, case.prompt))["route"] == route


# --- language ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,code", [
    ("What is the capital of France, and why is it there?", "en"),
    ("¿Dónde está la estación de tren más cercana?", "es"),
    ("Je voudrais réserver une table pour deux personnes ce soir.", "fr"),
    ("Das Meeting wurde auf Donnerstag verschoben, bitte gib Bescheid.", "de"),
    ("Come si dice grazie in inglese? Non lo so.", "it"),
    ("Qual é o melhor caminho para o centro da cidade?", "pt"),
    ("Hoe laat gaat de trein naar Amsterdam?", "nl"),
    ("Как дела? Что ты делаешь сегодня?", "ru"),
    ("Привіт, як справи? Що ти робиш сьогодні?", "uk"),
    ("今天天气怎么样？", "zh"),
    ("今日はいい天気ですね。", "ja"),
    ("안녕하세요, 오늘 날씨 어때요?", "ko"),
    ("مرحبا، كيف حالك اليوم؟", "ar"),
    ("Καλημέρα, τι κάνεις σήμερα;", "el"),
    ("12345 !!", "und"),
])
def test_language(text: str, code: str) -> None:
    assert classify.language(text) == code
    got = classify.labels(ChatRequest(model="auto", messages=[{"role": "user", "content": text}]))
    assert got["language"] == code


def test_the_language_is_the_prompts_not_the_target_of_a_translation() -> None:
    assert classify.language("Translate 'good night' into Japanese, please.") == "en"


# --- the other labels ----------------------------------------------------------------------------


def test_size_turns_and_needs() -> None:
    request = ChatRequest(model="auto", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is in this picture?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"},
                                     {"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,AAAA"}}]},
    ], tools=[{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {}}}}], response_format={"type": "json_object"})
    got = classify.labels(request)
    assert got["prompt_tokens"] == tokens.count_request(request) > 0
    assert got["turns"] == 2
    assert got["needs_tools"] and got["needs_json"] and got["needs_vision"]
    assert got["classifier"] == "heuristic"
    plain = classify.labels(ChatRequest(model="auto", messages=[{"role": "user", "content": "hi"}]))
    assert not (plain["needs_tools"] or plain["needs_json"] or plain["needs_vision"])
    assert plain["turns"] == 1


def test_a_programming_language_translation_is_code() -> None:
    got = classify.labels(ChatRequest(model="auto", messages=[{
        "role": "user", "content": "Translate this Python function into Go: def add(a, b): "
                                   "return a + b"}]))
    assert got["task"] == "code"


def test_the_ask_after_a_long_pasted_text_is_read() -> None:
    pasted = "The committee met on Monday and reviewed the quarterly figures. " * 200
    got = classify.labels(ChatRequest(model="auto", messages=[{
        "role": "user", "content": pasted + "\n\nSummarize the above in three bullet points."}]))
    assert got["task"] == "summarize"
    assert got["difficulty"] < 0.3


def test_a_pasted_stack_traces_words_are_not_the_request() -> None:
    trace = ("Traceback (most recent call last):\n  File \"design.py\", line 3, in <module>\n"
             "    analyze(tradeoffs)\nNameError: name 'tradeoffs' is not defined")
    got = classify.labels(ChatRequest(model="auto", messages=[{"role": "user",
                                                                "content": trace}]))
    assert got["task"] == "code"
    assert got["difficulty"] < 0.6


def test_a_longer_conversation_is_harder() -> None:
    one = ChatRequest(model="auto", messages=[{"role": "user", "content": "Compare Go and Rust."}])
    many = ChatRequest(model="auto", messages=[
        *[{"role": r, "content": "more detail please"} for r in ("user", "assistant") * 4],
        {"role": "user", "content": "Compare Go and Rust."}])
    assert classify.labels(many)["difficulty"] > classify.labels(one)["difficulty"]


# --- the labels are typed and documented -------------------------------------------------------


def test_every_label_is_typed_and_documented() -> None:
    typed = get_type_hints(label_docs.Labels)
    assert set(label_docs.DOCS) == set(typed)
    assert all(len(doc) > 30 for doc in label_docs.DOCS.values())
    assert set(label_docs.TASK_VALUES) == set(label_docs.TASKS)
    assert set(get_args(typed["task"])) == set(label_docs.TASKS)


def test_every_emitted_label_and_task_is_documented() -> None:
    emitted = set()
    for case in TUNE + HELD_OUT:
        got = classify.labels(request_of(case))
        emitted |= set(got)
        assert got["task"] in label_docs.TASKS
        assert isinstance(got["difficulty"], float) and 0 <= got["difficulty"] <= 1
    emitted |= set(llm_classifier.labels_of({"task": "code", "difficulty": 0.5}))
    assert emitted <= set(label_docs.DOCS)
    assert set(classify.PRIORITY) == set(label_docs.TASKS)
    for task in label_docs.TASKS:
        assert task in label_docs.DOCS["task"]


async def test_the_classify_plugin_sets_the_labels_in_the_kernel(default_kernel: Kernel) -> None:
    decision = await routed(default_kernel, "Write a haiku about autumn rain.")
    labels = decision["labels"]
    assert labels["task"] == "creative" and labels["language"] == "en"
    assert labels["classifier"] == "heuristic" and labels["complexity"] == labels["difficulty"]


def test_the_configuration_guide_lists_every_label_and_task() -> None:
    from pathlib import Path

    from turnout.kernel.labels import DOCS, TASKS

    guide = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    section = guide.split("## Labels rules can match", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{label}`" in section for label in DOCS), "a label is missing from the guide"
    assert all(f"`{task}`" in section for task in TASKS), "a task is missing from the guide"
