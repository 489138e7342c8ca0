"""The learned router's word model: a logistic regression over the TF-IDF of a prompt's words and
word pairs, predicting that the weak model is wrong where the strong one is right.

Words are runs of two or more letters or digits, lower-cased; the terms of a prompt are its
words and each pair of neighbouring words (``"which following"`` is not one: ``"of the"`` is).
A term's weight in a prompt is ``(1 + log count) * idf`` with ``idf = log((1 + n) / (1 + df)) +
1`` over the ``n`` training prompts, ``df`` of them holding the term; the prompt's weights are
scaled to unit length. Only terms found in at least ``MIN_DF`` training prompts are kept, the
``VOCABULARY`` most frequent of them. Scoring is pure Python (a dictionary look-up per term);
training uses numpy, sparse products by hand, and Newton's method with conjugate gradients.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

VOCABULARY = 20_000
"""Most terms a model keeps (the most frequent in its training prompts)."""

MIN_DF = 3
"""Fewest training prompts a term must appear in to be kept."""

L2 = 1.0
"""Ridge penalty on the term weights (the loss is summed over the training prompts)."""

_TOKEN = re.compile(r"\b\w\w+\b")


def terms(text: str) -> Counter:
    """The counts of a prompt's words and neighbouring word pairs."""
    words = _TOKEN.findall(text.lower())
    found = Counter(words)
    found.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    return found


@dataclass
class TextModel:
    """Term -> ``[idf, weight]``, and the bias: the score of a prompt is the logit of P(strong
    needed)."""

    terms: dict[str, list[float]] = field(default_factory=dict)
    bias: float = 0.0

    def score(self, text: str) -> float:
        """The logit of P(strong needed) for one prompt (the bias alone for no known term)."""
        table = self.terms
        total = norm = 0.0
        for term, count in terms(text).items():
            entry = table.get(term)
            if entry is None:
                continue
            value = (1.0 + math.log(count)) * entry[0]
            norm += value * value
            total += value * entry[1]
        return self.bias + (total / math.sqrt(norm) if norm else 0.0)

    def to_dict(self) -> dict:
        return {"terms": self.terms, "bias": self.bias}


def vocabulary(counted: Sequence[Counter], size: int = VOCABULARY, min_df: int = MIN_DF
               ) -> dict[str, float]:
    """Term -> idf for the ``size`` most frequent terms found in ``min_df`` or more prompts."""
    df: Counter = Counter()
    total: Counter = Counter()
    for found in counted:
        df.update(found.keys())
        total.update(found)
    kept = sorted((t for t, k in df.items() if k >= min_df), key=lambda t: (-total[t], t))[:size]
    n = len(counted)
    return {t: math.log((1 + n) / (1 + df[t])) + 1.0 for t in sorted(kept)}


class Sparse:
    """A prompts x terms TF-IDF matrix as (row, column, value) triples, rows of unit length."""

    def __init__(self, counted: Sequence[Counter], idf: dict[str, float]) -> None:
        import numpy as np

        index = {t: i for i, t in enumerate(idf)}
        weight = list(idf.values())
        rows, cols, vals = [], [], []
        for r, found in enumerate(counted):
            entries = [(index[t], (1.0 + math.log(c)) * weight[index[t]])
                       for t, c in found.items() if t in index]
            norm = math.sqrt(sum(v * v for _, v in entries)) or 1.0
            for c, v in entries:
                rows.append(r)
                cols.append(c)
                vals.append(v / norm)
        self.shape = (len(counted), len(idf))
        self.rows = np.asarray(rows, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.vals = np.asarray(vals, dtype=float)

    def dot(self, w: np.ndarray) -> np.ndarray:
        """X @ w."""
        import numpy as np

        return np.bincount(self.rows, weights=self.vals * w[self.cols], minlength=self.shape[0])

    def tdot(self, r: np.ndarray) -> np.ndarray:
        """X.T @ r."""
        import numpy as np

        return np.bincount(self.cols, weights=self.vals * r[self.rows], minlength=self.shape[1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    import numpy as np

    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def logistic(x: Sparse, y: np.ndarray, l2: float = L2, newton: int = 12, cg: int = 60
             ) -> tuple[np.ndarray, float]:
    """(weights, bias) minimising the summed log loss + ``l2`` / 2 * |weights|^2 (the bias is not
    penalised): a fixed number of Newton steps, each solved by at most ``cg`` conjugate-gradient
    steps; deterministic."""
    import numpy as np

    n, d = x.shape
    y = np.asarray(y, dtype=float)
    prior = float(np.clip(y.mean(), 1e-4, 1 - 1e-4))
    w, b = np.zeros(d), math.log(prior / (1 - prior))
    for _ in range(newton):
        p = _sigmoid(x.dot(w) + b)
        g = np.append(x.tdot(p - y) + l2 * w, np.sum(p - y))
        if np.max(np.abs(g)) < 1e-6:
            break
        h = p * (1 - p)

        def hv(v: np.ndarray, h: np.ndarray = h) -> np.ndarray:
            u = h * (x.dot(v[:-1]) + v[-1])
            return np.append(x.tdot(u) + l2 * v[:-1], u.sum() + 1e-9 * v[-1])

        step = np.zeros(d + 1)
        r = g.copy()
        direction = r.copy()
        rr = r @ r
        for _ in range(cg):
            hd = hv(direction)
            alpha = rr / (direction @ hd)
            step += alpha * direction
            r -= alpha * hd
            new = r @ r
            if new < 1e-12 * (g @ g):
                break
            direction = r + (new / rr) * direction
            rr = new
        w -= step[:-1]
        b -= step[-1]
    return w, float(b)


def fit(texts: Sequence[str], y: Sequence[float], *, size: int = VOCABULARY, min_df: int = MIN_DF,
        l2: float = L2) -> TextModel:
    """A word model of ``y`` (1: strong needed) fitted on ``texts``."""
    counted = [terms(t) for t in texts]
    idf = vocabulary(counted, size, min_df)
    if not idf:
        raise ValueError(f"no word appears in {min_df} or more of the {len(texts)} training "
                         f"prompts; train on more prompts")
    w, b = logistic(Sparse(counted, idf), y, l2)
    table = {t: [round(v, 5), round(float(wt), 5)] for (t, v), wt in zip(idf.items(), w)}
    return TextModel(terms=table, bias=round(b, 6))
