"""The heuristic classifier: labels every request with cheap, explainable features routers match on.

The built-in plugin ``classify`` sets the labels documented in :mod:`turnout.kernel.labels`:
``task``, ``difficulty`` (and its alias ``complexity``), ``language``, ``prompt_tokens``,
``turns``, ``needs_tools``, ``needs_json``, ``needs_vision`` and ``classifier`` (``"heuristic"``).
It reads the last user message and runs on every request: some 30 microseconds for a short
prompt, a few hundred for a page; of a longer message only :data:`READ_CHARS` characters (its
head and its tail) are read for cues, while ``prompt_tokens`` counts the whole request. Cues are
phrases looked up in the set of the prose's word n-grams, not a scan per pattern.

**Task.** Each task type has cues, weighted patterns of how people ask for it ("translate ... into
Spanish", a stack trace, "prove that", "write a haiku", "return JSON with", "compare", "trade-offs");
the task with the highest total wins, ties going to the earlier in :data:`PRIORITY`. Code blocks
and stack traces are cut from the prose before prose cues are read, so a pasted trace's words do
not count as the request's. With no cue strong enough the request is ``chat``.

**Difficulty.** A 0..1 score built from what makes a prompt hard for a small model, whatever its
subject: the reasoning it asks for (design, analyse, trade-offs, compare, prove, step by step,
explain why, root causes, assumptions), how many separate things it asks (action verbs, questions,
clauses), the constraints it sets (must, without, at most, O(1), in the style of), code and stack
traces, proofs and advanced mathematics, its length and the conversation's, on top of a base per
task type. Subject names play no part.

**Language.** The script of the message (kana, Hangul, Han, Cyrillic, Arabic, ...) decides for
non-Latin writing; Latin text is scored on each language's most common words and letters (ñ, ß,
ç, ã). ``und`` when there is too little to tell.
"""

from __future__ import annotations

import re
from typing import Any

from turnout.kernel import tokens
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.request import ChatRequest
from turnout.kernel.types import Context

READ_CHARS = 4000
"""Characters of the last user message read for cues: its head and its last :data:`TAIL_CHARS`
(a pasted document is often followed by what to do with it)."""
TAIL_CHARS = 1000

PRIORITY = ("translation", "code", "math", "extraction", "summarize", "creative", "reasoning",
            "chat")
"""Tie-break between task types with equal cue totals, earliest first."""

MIN_CUE = 2.0
"""Lowest cue total for a task other than chat."""

_I = re.IGNORECASE

# --- separating code from prose --------------------------------------------------------------

_FENCE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_TRACE_LINE = re.compile(
    r"^\s*(?:Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|at [\w$.<>]+\(.*\)"
    r"|at [\w$.<>/\\]+:\d+|[\w.]*(?:Error|Exception)(?::|\s*$)|\w[\w.]*\.\w+\([\w.]*:\d+\)).*$",
    re.MULTILINE)
_TRACE = re.compile(r"Traceback \(most recent call last\)|^\s*at [\w$.<>]+\([\w.]*:\d+|"
                    r"\b[A-Z]\w*(?:Error|Exception)\b(?::|\s+at\b)|\(\w+\.\w{1,4}:\d+(?::\d+)?\)"
                    r"|\bsegmentation fault\b|\bpanic: ", re.MULTILINE)
_CODEY_LINE = re.compile(r"^\s*(?:def |class |function |import |from \w+ import|#include|public |"
                         r"private |return |const |let |var |if \(|for \(|\}|\{|SELECT |<\w+)",
                         re.MULTILINE)

# --- cues: phrases of one to three words, matched against the prose's word n-grams ------------

_NATURAL = frozenset(
    "english spanish french german italian portuguese dutch japanese chinese mandarin cantonese "
    "korean russian ukrainian polish arabic hebrew hindi turkish greek swedish norwegian danish "
    "finnish czech vietnamese thai indonesian latin anglais englische inglés ingles français "
    "deutsch espagnol allemand spanisch französisch".split())
_PROGRAMMING = frozenset(
    "python java javascript typescript golang go rust ruby kotlin swift php scala haskell sql "
    "bash".split())


def _terms(text: str) -> frozenset[str]:
    """Phrases separated by commas: ``"step by step, trade offs, why"``."""
    return frozenset(t.strip() for t in text.split(",") if t.strip())


def _after(words: str, names: frozenset[str]) -> frozenset[str]:
    """Every ``"<word> <name>"`` bigram: ``in spanish``, ``using python``."""
    return frozenset(f"{w} {n}" for w in words.split() for n in names)


class Cue:
    """A weighted cue: every group of phrases has one in the prose (``near``: the second group
    within ``near`` words after the first)."""

    __slots__ = ("weight", "groups", "near")

    def __init__(self, weight: float, *groups: frozenset[str], near: int = 0) -> None:
        self.weight, self.groups, self.near = weight, groups, near

    def hit(self, prose: "Prose") -> bool:
        grams = prose.grams
        if any(grams.isdisjoint(group) for group in self.groups):
            return False
        if not self.near:
            return True
        first, then = self.groups
        words = prose.words
        return any(w in first and not then.isdisjoint(words[i + 1:i + 1 + self.near])
                   for i, w in enumerate(words))


_IN_NATURAL = _after("in into to en ins", _NATURAL)
_IN_PROGRAMMING = _after("in with using", _PROGRAMMING)

CUES: dict[str, tuple[Cue, ...]] = {
    "translation": (
        Cue(3, _terms("translate, translation, translating, translated, traduis, traduisez, "
                      "traduce, traducir, traduza, traduzir, tradurre, traduci, übersetze, "
                      "übersetzen, übersetzung, vertaal, переведи, переведите")),
        Cue(3, _terms("do you say, would you say, do i say, can i say"), _IN_NATURAL),
        Cue(1.5, _IN_NATURAL),
        Cue(1.5, _terms("render, put, say, write"), _IN_NATURAL),
    ),
    "code": (
        Cue(3, _terms("write, implement, code, create, build, fix, debug, refactor, optimize, "
                      "optimise"),
            _terms("function, method, class, script, program, query, regex, liner, endpoint, "
                   "test, tests, module, api, component, cli"), near=5),
        Cue(2, _terms("regex, regular expression, sql, bash, shell, one liner, stack trace, "
                      "stacktrace, traceback, segfault, compiler, compile, runtime error, "
                      "null pointer, unit test, unit tests, refactor, debug, lint")),
        Cue(2, _terms("how do i, how can i, how do you, how would i, how should i, how do we"),
            _IN_PROGRAMMING),
        Cue(1.5, _IN_PROGRAMMING | _terms(
            "python, javascript, typescript, java, golang, rust, react, django, flask, spring, "
            "node, nodejs, pandas, numpy, kubernetes, docker, git, npm, pip, jvm")),
        Cue(1, _terms("function, method, variable, array, list comprehension, dictionary, object, "
                      "loop, exception, error, bug, crash, api, library, package, module, repo, "
                      "deploy, build, compile")),
        Cue(1, _terms("pod, pods, heap, thread safe, thread, threads, mutex, deadlock, "
                      "race condition, memory leak, oomkilled, oom, re renders, rerenders")),
    ),
    "math": (
        Cue(2.5, _terms("solve, simplify, factorize, factorise, integrate, differentiate, "
                        "derivative, integral, equation, inequality, theorem, lemma, probability, "
                        "expected value, variance, matrix, eigenvalue, eigenvalues, eigenvector, "
                        "logarithm, modulo, divisible, prime, primes, irrational, polynomial, "
                        "induction, calculus, geometry, triangle, hypotenuse")),
        Cue(2, _terms("prove that, show that, proof")),
        Cue(1, _terms("divided by, times, multiplied by, plus, minus, squared, cubed, average, "
                      "mean, median, percent, percentage, per hour, per second, per minute, "
                      "speed, sum of, integer, integers, real number, real numbers, sequence, "
                      "converge, converges")),
    ),
    "extraction": (
        Cue(3, _terms("extract, pull, parse, identify, list, find, get"),
            _terms("name, names, email, emails, addresses, date, dates, number, numbers, "
                   "entities, people, person, persons, organization, organizations, "
                   "organisations, companies, field, fields, amount, amounts, skills, phone, "
                   "keywords, price, prices, mentioned"), near=5),
        Cue(2, _terms("extract, pull out, named entities, named entity")),
        Cue(2.5, _terms("parse, convert, turn, transform"),
            _terms("into json, into csv, into yaml, into a table, into tables, into structured, "
                   "json objects, json object")),
        Cue(2, _terms("return, output, respond, format, give"),
            _terms("json, csv, yaml, table, list, array, object"), near=8),
        Cue(1, _terms("json, csv, key value, field, fields")),
        Cue(2.5, _terms("classify, label, tag, categorize, categorise"), _terms("as, into, by"),
            near=6),
        Cue(2.5, _terms("sentiment")),
        Cue(1.5, _terms("from"),
            _terms("text, email, document, invoice, paragraph, sentence, review, reviews, "
                   "passage, signature, posting, log, page, receipt, resume, cv, article, "
                   "message, transcript"), near=4),
    ),
    "summarize": (
        Cue(3, _terms("summarize, summarise, summarizing, summarising, summarization, "
                      "summarisation, summary, tl dr, tldr, gist")),
        Cue(2, _terms("key points, main points, key takeaways, main takeaways, main ideas, "
                      "condense, recap, bullet points, bullets, one sentence, two sentences, "
                      "three sentences, few sentences")),
    ),
    "creative": (
        Cue(3, _terms("poem, haiku, limerick, sonnet, ballad, verse, verses, lyrics, song, rap, "
                      "story, stories, fable, fairy tale, tale, novel, screenplay, plot, bedtime, "
                      "slogan, slogans, tagline, taglines, jingle, toast, joke, jokes, pun, puns, "
                      "product description, ad copy, tweet, caption, monologue, "
                      "dialogue between, character, characters")),
        Cue(2, _terms("write, compose, draft, come up, invent, create, brainstorm, imagine, give"),
            _terms("funny, catchy, short, creative, original, whimsical, heartfelt, fictional, "
                   "name, names, idea, ideas, title, titles"), near=5),
        Cue(1, _terms("the style of, unreliable narrator, rhyme, rhyming, rhymes, funny, "
                      "heartfelt")),
    ),
    "reasoning": (
        Cue(2, _terms("design a, design an, design the, design our, architecture, architect, "
                      "trade off, trade offs, tradeoff, tradeoffs, pros and cons, weigh, "
                      "should i, should we, should our, should my, which is better, "
                      "which would be, vs, versus")),
        Cue(2, _terms("compare, comparing, comparison, analyze, analyse, analysis, analyzing, "
                      "evaluate, evaluation, assess, reason through, reasoning through, "
                      "walk me through, step by step, explain why, explain how, justify, "
                      "root cause, root causes, hypothesis, hypotheses, assumption, assumptions, "
                      "implication, implications, recommendation, recommend one, "
                      "recommend which, recommend whether, plan a, plan an, plan the, plan our, "
                      "strategy, strategies, diagnose, diagnosis, possible causes")),
        Cue(2, _terms("if all, are all, who owns, deduce, deduction, infer, logic, logical, "
                      "puzzle, riddle")),
        Cue(1, _terms("definitely, why, consider, decide, deciding, risk, risks, failure mode, "
                      "failure modes, scale, scalability, scalable, consistency, migrate, "
                      "migration, migrating")),
    ),
}
"""Each task type's cues; a task's total is the sum of the weights of its cues that hit."""

_CUES_OF: dict[str, list[tuple[str, Cue]]] = {}
for _task, _cues in CUES.items():
    for _cue in _cues:
        for _term in _cue.groups[0]:
            _CUES_OF.setdefault(_term, []).append((_task, _cue))
_ANY_CUE = frozenset(_CUES_OF)
"""Each phrase that opens a cue (is in its first group), and the cues it opens."""

_ARITHMETIC = re.compile(r"(?<![\d:-])\d+(?:\.\d+)?\s*[+*/×÷^]\s*\(?\d|\d\s+-\s+\d|\d\s*%\s*of\b|"
                         r"[a-z]\^\d|\bsqrt\b|[√∫∑]", _I)
_CJK_TRANSLATE = re.compile(r"翻[译訳]|번역")
_INLINE_CODE = re.compile(r"\bdef \w+\(|\bfunction \w*\(|=>|\w\(\)|\w\.\w+\(|#include|"
                          r"\breturn [^.?!]*[-+*/;)]|\bconsole\.log|`[^`]*[(=.][^`]*`|;\s*$")
_SYNTAX = frozenset("(=;{`")
"""Characters without which no inline code is looked for."""
_CALCULATE = _terms("what's, what is, calculate, compute, find")

# --- difficulty cues -------------------------------------------------------------------------

LOAD = _terms(
    "design, designs, designing, architecture, architectures, architect, trade off, trade offs, "
    "tradeoff, tradeoffs, analyze, analyse, analysis, analyzing, analysing, compare, comparing, "
    "comparison, evaluate, evaluating, evaluation, assess, assessing, weigh, step by step, "
    "explain why, explain how, justify, prove, proof, show that, derive, generalize, generalise, "
    "root cause, root causes, hypothesis, hypotheses, assumption, assumptions, implication, "
    "implications, recommendation, recommend one, recommend which, recommend whether, "
    "failure mode, failure modes, edge case, edge cases, bottleneck, bottlenecks, optimize, "
    "optimise, optimization, optimisation, distributed, concurrency, concurrent, consistency, "
    "scale, scalable, scalability, thread safe, invariant, invariants, contention, migrate, "
    "migration, migrating, rollback, roll back, risk, risks, diagnose, diagnosis, pros and cons, "
    "decide, deciding, decision, strategy, strategies, reason, reasoning, discuss, consider, "
    "causes, whether")
"""Phrases of reasoning load: each distinct one adds to the difficulty."""
DEMANDS = _terms(
    "explain, compare, analyze, analyse, design, propose, suggest, recommend, list, describe, "
    "discuss, evaluate, justify, prove, derive, implement, plan, lay out, outline, weigh, "
    "consider, estimate, diagnose, test, show, support, handle, avoid, tell me, give, write, "
    "find, generalize, generalise, reason through, walk me through, summarize, summarise, "
    "identify, keep, use, end")
"""Verbs of separate asks: each distinct one beyond the first adds to the difficulty."""
CONSTRAINTS = _terms(
    "must, without, at most, at least, within, ensure, guarantee, guaranteed, exactly, strict, "
    "strictly, the style of, no more than, only on, only for, only if, only when, across, "
    "under load, high load, high concurrency, high availability")
"""Phrases of constraints on the answer."""
_CONSTRAINT = re.compile(r"\bO\([^)]*\)|\d[\d,]*[- ](?:words?|characters|lines|tokens)\b|"
                         r"\bper-\w|\bunder (?:\d|five|ten|a )")
PROOF = _terms("prove, proof, show that, infinitely many, for all, induction, no largest")
ADVANCED = _terms("derivative, differentiate, integral, integrate, probability, expected value, "
                  "variance, eigenvalue, eigenvalues, eigenvector, matrix, matrices, limit of, "
                  "differential, show your work, without replacement, converge, converges, "
                  "convergence")
SMALL_TALK = _terms("hi, hello, hey, yo, thanks, thank, thx, ok, okay, cool, great, lol, bye, "
                    "cheers, good")

BASE = {"chat": 0.05, "translation": 0.1, "extraction": 0.1, "summarize": 0.1, "creative": 0.12,
        "math": 0.15, "code": 0.2, "reasoning": 0.3}
"""Difficulty of a bare request of each task type, before its cues add to it."""

_WORD = re.compile(r"\w+(?:'\w+)?")


class Prose:
    """The prose of a message as lower-case words and the set of its one- to three-word
    phrases, read once for every cue."""

    __slots__ = ("text", "words", "grams")

    def __init__(self, text: str) -> None:
        self.text = text
        words = _WORD.findall(text.lower())
        self.words = words
        grams = set(words)
        grams.update(f"{a} {b}" for a, b in zip(words, words[1:]))
        grams.update(f"{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:]))
        self.grams = grams


# --- language ----------------------------------------------------------------------------------

_SCRIPTS = (  # (language, pattern): the first script with enough letters decides
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")),
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("he", re.compile(r"[\u0590-\u05ff]")),
    ("el", re.compile(r"[\u0370-\u03ff]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
)
_UKRAINIAN = re.compile(r"[іїєґІЇЄҐ]")
_STOPWORDS = {
    "en": "the and is are of to that it you what how this for with be on my can do does please "
          "me your was have from why which who an will would there their they we our i not but "
          "if or about into thanks hey",
    "es": "el la los las que y en un una es por para con del al lo como más pero su sus está qué "
          "cómo yo mi se no hay muy gracias hola cuál dónde tiene",
    "fr": "le la les des est et un une du pour pas que qui dans sur avec ce cette je vous nous "
          "il elle sont au aux mais où très voudrais bonjour merci comment pourquoi",
    "de": "der die das und ist nicht ein eine ich du sie wir es mit auf für von zu den dem des "
          "im wurde bitte auch wie was warum kann ins sind hallo danke",
    "it": "il lo la gli le di che e è un una per con non sono della del questo come perché anche "
          "ma mi ti ciao grazie cosa",
    "pt": "o a os as de que e é um uma para com não do da dos das em no na por se mais como você "
          "eu isso está obrigado olá",
    "nl": "de het een en van is dat niet op te in ik je zijn met voor er maar om wat hoe waarom "
          "ook bedankt hallo",
}
_WORDS_OF = {lang: frozenset(words.split()) for lang, words in _STOPWORDS.items()}
_LETTERS = {"es": re.compile(r"[ñ¿¡]"), "fr": re.compile(r"[çœêèàù]"), "de": re.compile(r"[ßäöü]"),
            "pt": re.compile(r"[ãõç]"), "it": re.compile(r"[òìù]")}


def language(text: str, words: list[str] | None = None) -> str:
    """The ISO 639-1 code of ``text``'s language, or ``und`` when there is too little to tell;
    ``words``: its lower-case words, when already split."""
    sample = text[:1000]
    if words is None:
        words = _WORD.findall(sample.lower())
    if not sample.isascii():
        letters = sum(1 for c in sample if c.isalpha())
        for code, pattern in _SCRIPTS:
            if letters and len(pattern.findall(sample)) * 3 >= letters:
                return "uk" if code == "ru" and _UKRAINIAN.search(sample) else code
    scores = {lang: sum(1 for w in words[:200] if w in vocab) for lang, vocab in _WORDS_OF.items()}
    if not sample.isascii():
        for lang, pattern in _LETTERS.items():
            scores[lang] += min(len(pattern.findall(sample)), 3)
    best = max(scores, key=lambda lang: scores[lang])
    return best if scores[best] > 0 else "und"


# --- the hook ----------------------------------------------------------------------------------


@hookimpl
def classify(ctx: Context) -> dict[str, Any]:
    """Add the heuristic labels (see :mod:`turnout.kernel.labels`)."""
    return labels(ctx.request)


def labels(request: ChatRequest) -> dict[str, Any]:
    """Every heuristic label for ``request``."""
    last_user = next((m.text() for m in reversed(request.messages) if m.role == "user"), "")
    turns = sum(1 for m in request.messages if m.role == "user")
    if len(last_user) > READ_CHARS:  # the head and the tail, where the ask usually is
        last_user = last_user[:READ_CHARS - TAIL_CHARS] + "\n" + last_user[-TAIL_CHARS:]
    text, code_lines, traced = split_code(last_user)
    prose = Prose(text)
    task = task_of(prose, code_lines, traced, request.wants_json)
    score = difficulty(prose, task, code_lines, traced, turns)
    return {
        "task": task,
        "difficulty": score,
        "complexity": score,
        "language": language(text, prose.words),
        "prompt_tokens": tokens.count_request(request),
        "turns": turns,
        "needs_tools": bool(request.tools),
        "needs_json": request.wants_json,
        "needs_vision": any(isinstance(m.content, list) and any(p.get("type") == "image_url"
                                                                for p in m.content)
                            for m in request.messages),
        "classifier": "heuristic",
    }


def split_code(text: str) -> tuple[str, int, bool]:
    """``(prose, lines of code, whether a stack trace or error message is present)``: fenced
    blocks and stack-trace lines are cut from the prose."""
    traced = bool(_TRACE.search(text))
    code_lines = 0
    if "```" in text:
        blocks = _FENCE.findall(text)
        code_lines += sum(b.count("\n") for b in blocks)
        text = _FENCE.sub(" ", text)
    if traced:
        kept: list[str] = []
        quoted = False  # the source line a Python traceback shows after each File line
        for line in text.splitlines():
            if quoted or _TRACE_LINE.match(line):
                code_lines += 1
                quoted = line.lstrip().startswith('File "')
            else:
                kept.append(line)
        text = "\n".join(kept)
    if "\n" in text:
        code_lines += len(_CODEY_LINE.findall(text))
    return text, code_lines, traced


def task_scores(prose: Prose, code_lines: int, traced: bool, wants_json: bool) -> dict[str, float]:
    """Each task type's cue total for the prose of a message."""
    scores = dict.fromkeys(CUES, 0.0)
    present = prose.grams & _ANY_CUE
    if present:  # only cues with a phrase in the prose are tried
        for task, cue in {found for term in present for found in _CUES_OF[term]}:
            if cue.hit(prose):
                scores[task] += cue.weight
    has_digit = any(c.isdigit() for c in prose.text)
    if has_digit and _ARITHMETIC.search(prose.text):
        scores["math"] += 2.5
    if has_digit and not prose.grams.isdisjoint(_CALCULATE):
        scores["math"] += 1
    if not _SYNTAX.isdisjoint(prose.text) and _INLINE_CODE.search(prose.text):
        scores["code"] += 2.5
    if not prose.text.isascii() and _CJK_TRANSLATE.search(prose.text):
        scores["translation"] += 3
    if code_lines:
        scores["code"] += 2 + min(code_lines, 10) / 5
    if traced:
        scores["code"] += 4
    if wants_json:
        scores["extraction"] += 2
    if prose.words and prose.words[-1] == "explain":
        scores["reasoning"] += 1
    if scores["translation"] and not prose.grams.isdisjoint(_PROGRAMMING) and \
            prose.grams.isdisjoint(_NATURAL):
        scores["code"] += scores["translation"]  # one programming language into another
        scores["translation"] = 0
    return scores


def task_of(prose: Prose, code_lines: int, traced: bool, wants_json: bool) -> str:
    """The task type: the highest cue total of at least :data:`MIN_CUE`, else ``chat``."""
    scores = task_scores(prose, code_lines, traced, wants_json)
    best = max(PRIORITY[:-1], key=lambda t: (scores[t], -PRIORITY.index(t)))
    return best if scores[best] >= MIN_CUE else "chat"


def difficulty(prose: Prose, task: str, code_lines: int, traced: bool, turns: int) -> float:
    """A 0..1 score: how likely a small model is to get the request wrong."""
    words, grams, text = prose.words, prose.grams, prose.text
    if len(words) <= 6 and words and words[0] in SMALL_TALK:
        return 0.0
    load = len(grams & LOAD)
    demands = len(grams & DEMANDS) + text.count("?")
    clauses = text.count(",") + text.count(";") + words.count("and") + words.count("then")
    constraints = len(grams & CONSTRAINTS) + len(_CONSTRAINT.findall(text))
    score = BASE[task]
    score += min(load * 0.09, 0.45)
    score += min(max(demands - 1, 0) * 0.04, 0.16)
    score += min(clauses * 0.01, 0.06)
    score += min(constraints * 0.05, 0.15)
    scale = 0.3 if task in ("translation", "extraction", "summarize") else 1.0
    score += min(len(words) / 500, 0.12) * scale
    if task == "math":
        if not grams.isdisjoint(PROOF):
            score += 0.4
        elif not grams.isdisjoint(ADVANCED):
            score += 0.15
    if traced:
        score += 0.1
    if code_lines:
        score += 0.1 + min(code_lines / 100, 0.1)
    score += min(max(turns - 1, 0) * 0.02, 0.1)
    return round(min(max(score, 0.0), 1.0), 3)
