"""Subject-agnostic features of a prompt: its size, its structure (answer options, statements,
scenarios), the arithmetic and reasoning it asks for, how hard its wording reads, and what kind
of answer its options and question ask for (true/false pairs, one word, a number, a definition,
the best of several).

No feature looks at what a prompt is about: there is no vocabulary of subjects, only counts of
shapes (digits, operators, units, option lengths, negations, reasoning cues), so a model over
them carries to subjects and prompt styles it never saw. ``features(text)`` returns the values
in the order of ``NAMES``; every value is finite and small (logs of counts, shares in 0..1).
"""

from __future__ import annotations

import math
import re

from turnout.kernel import tokens
from turnout.kernel.request import ChatRequest
from turnout.plugins import classify

NAMES: tuple[str, ...] = (
    "log_tokens",          # log(1 + prompt tokens)
    "log_stem_tokens",     # log(1 + tokens before the answer options)
    "log_option_tokens",   # log(1 + mean tokens per answer option)
    "options",             # number of lettered answer options (A. B. C. ...)
    "option_spread",       # (longest - shortest option) / mean option length, in characters
    "options_numeric",     # share of options that are mostly numbers
    "option_overlap",      # mean word overlap (Jaccard) between pairs of options
    "digit_share",         # digits / characters
    "log_numbers",         # log(1 + numbers in the prompt)
    "log_operators",       # log(1 + arithmetic operators and formula symbols)
    "log_units",           # log(1 + numbers followed by a unit or %, $)
    "negation",            # NOT, EXCEPT, LEAST, false, incorrect ... in the question
    "which_following",     # "which of the following"
    "statements",          # "Statement 1 | ...", roman-numeral statement lists (I only, II and III)
    "scenarios",           # "Scenario 1 | ..." style paired judgements
    "all_none_above",      # "all of the above" / "none of the above" among the options
    "compute_cues",        # calculate, how many, what is the value, approximately, probability ...
    "reasoning_cues",      # step by step, explain why, analyze, prove, derive, compare ...
    "code",                # code in the prompt
    "log_sentences",       # log(1 + sentences before the options)
    "long_word_share",     # share of words of 10+ letters (a readability proxy)
    "mean_word_len",       # mean letters per word / 10
    "capital_share",       # share of capitalized words not starting a sentence (names, places)
    "years",               # log(1 + four-digit years)
    "quoted",              # quotation marks: a quoted passage or phrase
    "blank",               # a fill-in blank (___)
    "question_mark",       # the question ends with a question mark
    "difficulty",          # the heuristic classifier's difficulty (0..1)
    # what the options and the question ask for
    "options_true_false",  # share of options that are "True, False" style pairs
    "options_one_word",    # share of one-word options
    "options_decimal",     # share of options with a decimal number (3.5)
    "option_number_range", # log(1 + largest / smallest number leading the options) / 10, to 1
    "stem_equation",       # an equation or a product in the stem (=, ^, 3 x 4)
    "asks_best",           # the question asks for the best / most likely / most appropriate
    "asks_what_is",        # the question starts "what is", "who was", "where are" ...
    "passage",             # a passage to read (named, or a stem of 1,200+ characters)
    "roman_numerals",      # roman numerals I..IV (statement lists), up to 8, / 8
    "option_stem_ratio",   # log(1 + option characters / stem characters)
    "negation_upper",      # NOT, EXCEPT or LEAST in capitals in the stem
    "both_neither",        # an option starting "both" or "neither"
    "options_sentences",   # share of options of 8+ words
    "asks_why",            # the question asks why
    "asks_definition",     # "is defined as", "refers to", "is called", "term for" ...
)

_OPTION = re.compile(r"^\s*\(?([A-J])[.)]\s+(.*)$")
_NUMBER = re.compile(r"(?<![A-Za-z])[-+]?\d+(?:[.,]\d+)*")
_OPERATOR_CHARS = "=+*/^×÷√∑∫π≈≤≥<>±"
_OPERATOR_WORDS = ("\\frac", "sqrt", "log(", "ln(", "sin(", "cos(", " mod ", "\\", "$")
_NOT_OPERATORS = str.maketrans("", "", _OPERATOR_CHARS)
_UNIT = re.compile(r"\d\s*(?:%|°|[kcmμnM]?(?:m|g|s|Hz|J|N|W|V|A|K|L|Pa|mol|eV)\b|"
                   r"(?:km|kg|cm|mm|ms|ns|hours?|days?|years?|percent|dollars?|meters?|seconds?)\b)"
                   r"|\$\s*\d")
# Cue phrases are counted as literal substrings (of the lower-cased text unless upper-case matters):
# an order of magnitude faster than word-boundary regexes over long prompts.
_NEGATION_UPPER = (" NOT ", "EXCEPT", "LEAST", "FALSE")
_NEGATION = (" not true", " false", "incorrect", "cannot", " never ", " neither", "least likely",
             " not a ", " not an ", " not the ", "n't ")
_STATEMENTS = ("Statement 1", "Statement 2", "I only", "II only", "I and II", "II and III", "I and III",
               "I, II", "\nI. ", "\nII. ", "\nIII. ", "\nIV. ")
_COMPUTE = ("calculat", "comput", "how many", "how much", "how long", "how far", "what is the value",
            "probability", "approximately", "estimat", "solve", "find the", "determine the", "expected",
            "minimum", "maximum", "nearest", "sum of", "ratio", "rate of")
_REASONING = ("step by step", "step-by-step", "explain why", "analy", "prove", "derive", "compare",
              "trade-off", "tradeoff", "justify", "evaluate", "implies", "if and only if", "therefore",
              "suppose", "assume", "given that", "consider", "because")
_CODE = ("```", "def ", "function", "import ", "#include", "SELECT ", "=>", "return ", "print(", "{\n",
         ";\n", "()", "//", "</")
_LEADING_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_TRUE_FALSE = re.compile(r"^(true|false)\s*,\s*(true|false)$", re.I)
_DECIMAL = re.compile(r"\d\.\d")
_EQUATION = re.compile(r"\d\s*[x×*/]\s*\d")      # "=" and "^" are looked for as substrings
_ASKS_BEST = re.compile(r"\b(best|most likely|most accurate|primarily|most appropriate)\b")
_ASKS_WHAT_IS = re.compile(r"^(what|who|when|where) (is|was|are|were)\b")
_ROMAN = re.compile(r"\b(?:I|II|III|IV)\b")
_NEGATION_WORDS = ("NOT", "EXCEPT", "LEAST")
_NEGATION_WORD = re.compile(r"\b(NOT|EXCEPT|LEAST)\b")
_WHY = re.compile(r"\bwhy\b")
_DEFINITIONS = ("is defined as", "refers to", "is called", "is known as", "term for")
_DEFINITION = re.compile(r"\b(is defined as|refers to|is called|is known as|term for)\b")
# (the regexes above run only once a substring test says they may match: long prompts are common)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_SENTENCE = re.compile(r"[.!?](?:\s|$)")
_CAPITAL = re.compile(r"(?<=[a-z,;:] )[A-Z][a-z]")
_DIGITS = str.maketrans("", "", "0123456789")
_YEAR = re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2})s?\b")


def split_options(text: str) -> tuple[str, list[str]]:
    """The question's stem and its lettered answer options (``A. ...`` lines), if any; a
    trailing ``Answer:`` line is dropped."""
    lines = text.strip().splitlines()
    if lines and lines[-1].strip().lower().rstrip(":") == "answer":
        lines = lines[:-1]
    options: list[str] = []
    first = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        match = _OPTION.match(lines[index])
        if not match:
            break
        options.append(match.group(2).strip())
        first = index
    options.reverse()
    if len(options) < 2:
        return "\n".join(lines), []
    return "\n".join(lines[:first]), options


def _count(text: str, phrases: tuple[str, ...]) -> int:
    return sum(text.count(phrase) for phrase in phrases)


def _has(text: str, phrases: tuple[str, ...]) -> bool:
    return any(phrase in text for phrase in phrases)


def _log(n: float) -> float:
    return math.log1p(n)


def _overlap(options: list[str]) -> float:
    sets = [set(w.lower() for w in _WORD.findall(o)) for o in options]
    pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1:] if a or b]
    if not pairs:
        return 0.0
    return sum(len(a & b) / len(a | b) for a, b in pairs) / len(pairs)


def _numeric(option: str) -> bool:
    digits = len(option) - len(option.translate(_DIGITS))
    letters = sum(map(str.isalpha, option))
    return digits > 0 and digits >= letters


def _number_range(options: list[str]) -> float:
    """log(1 + largest / smallest) of the numbers that lead the options, / 10 and at most 1."""
    numbers = []
    for option in options:
        head = option.strip().replace(",", "").split(" ")[0]
        match = _LEADING_NUMBER.fullmatch(head) if head else None
        if match:
            numbers.append(abs(float(match.group(0))))
    if len(numbers) < 2 or max(numbers) <= 0:
        return 0.0
    return min(math.log1p(max(numbers) / (min(numbers) + 1e-9)), 10.0) / 10


def _option_values(text: str, stem: str, options: list[str]) -> dict[str, float]:
    """The values of the option and question-type features (the last block of ``NAMES``)."""
    lower = stem.lower()
    question = lower.rstrip().rsplit("\n", 1)[-1]
    n = max(len(options), 1)
    return {
        "options_true_false": sum(bool(_TRUE_FALSE.match(o.strip())) for o in options) / n,
        "options_one_word": sum(len(o.split()) == 1 for o in options) / n,
        "options_decimal": sum(bool(_DECIMAL.search(o)) for o in options) / n,
        "option_number_range": _number_range(options),
        "stem_equation": 1.0 if ("=" in stem or "^" in stem or _EQUATION.search(stem)) else 0.0,
        "asks_best": 1.0 if _ASKS_BEST.search(question) else 0.0,
        "asks_what_is": 1.0 if _ASKS_WHAT_IS.search(question.strip()) else 0.0,
        "passage": 1.0 if ("refers to the following" in lower or "passage" in lower
                           or len(stem) > 1200) else 0.0,
        "roman_numerals": min(len(_ROMAN.findall(text)), 8) / 8,
        "option_stem_ratio": math.log1p(sum(map(len, options)) / max(len(stem), 1)),
        "negation_upper": 1.0 if (_has(stem, _NEGATION_WORDS) and _NEGATION_WORD.search(stem))
        else 0.0,
        "both_neither": 1.0 if any(o.strip().lower().startswith(("both", "neither"))
                                   for o in options) else 0.0,
        "options_sentences": sum(len(o.split()) >= 8 for o in options) / n,
        "asks_why": 1.0 if _WHY.search(question) else 0.0,
        "asks_definition": 1.0 if (_has(lower, _DEFINITIONS) and _DEFINITION.search(lower))
        else 0.0,
    }


def difficulty(text: str) -> float:
    """The heuristic classifier's ``difficulty`` label of a one-message prompt (see
    :mod:`turnout.plugins.classify`), as the gateway labels such a request."""
    request = ChatRequest(model="auto", messages=[{"role": "user", "content": text or " "}])
    return float(classify.labels(request)["difficulty"])


def features(text: str, difficulty_label: float | None = None) -> list[float]:
    """The feature values of one prompt, in the order of ``NAMES``; ``difficulty_label`` is the
    classifier's ``difficulty`` label when the request already has it (computed if None)."""
    stem, options = split_options(text)
    stem_lower = stem.lower()
    words = _WORD.findall(text)
    n_words = max(len(words), 1)
    stem_words = max(len(stem.split()), 1)
    option_lens = [len(o) for o in options]
    mean_option = sum(option_lens) / len(options) if options else 0.0
    option_tokens = sum(tokens.count(o) for o in options) / len(options) if options else 0.0
    lines = stem.count("\n") + 1
    last = stem.rstrip().rsplit("\n", 1)[-1]
    operators = len(text) - len(text.translate(_NOT_OPERATORS)) + _count(text, _OPERATOR_WORDS)
    code = _count(text, _CODE)
    values = {
        "log_tokens": _log(tokens.count(text)),
        "log_stem_tokens": _log(tokens.count(stem)),
        "log_option_tokens": _log(option_tokens),
        "options": float(len(options)),
        "option_spread": (max(option_lens) - min(option_lens)) / mean_option if mean_option else 0.0,
        "options_numeric": sum(_numeric(o) for o in options) / len(options) if options else 0.0,
        "option_overlap": _overlap(options),
        "digit_share": (len(text) - len(text.translate(_DIGITS))) / max(len(text), 1),
        "log_numbers": _log(len(_NUMBER.findall(text))),
        "log_operators": _log(operators),
        "log_units": _log(len(_UNIT.findall(text))),
        "negation": min(_count(stem, _NEGATION_UPPER) + _count(stem_lower, _NEGATION), 2) / 2,
        "which_following": 1.0 if "which of the following" in stem_lower else 0.0,
        "statements": min(_count(text, _STATEMENTS), 4) / 4,
        "scenarios": 1.0 if "Scenario 1" in text else 0.0,
        "all_none_above": 1.0 if any("of the above" in o.lower() for o in options) else 0.0,
        "compute_cues": min(_count(stem_lower, _COMPUTE), 3) / 3,
        "reasoning_cues": min(_count(stem_lower, _REASONING), 3) / 3,
        "code": min(code, 4) / 4,
        "log_sentences": _log(len(_SENTENCE.findall(stem)) + lines - 1),
        "long_word_share": sum(len(w) >= 10 for w in words) / n_words,
        "mean_word_len": sum(map(len, words)) / n_words / 10,
        "capital_share": len(_CAPITAL.findall(stem)) / stem_words,
        "years": _log(len(_YEAR.findall(text))),
        "quoted": 1.0 if ('"' in stem or "“" in stem) else 0.0,
        "blank": 1.0 if "__" in text else 0.0,
        "question_mark": 1.0 if last.rstrip().endswith("?") else 0.0,
        "difficulty": difficulty(text) if difficulty_label is None else float(difficulty_label),
        **_option_values(text, stem, options),
    }
    return [float(values[name]) for name in NAMES]
