"""Training a learned-router model from per-prompt outcomes, or from recorded vectors."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from . import features as feats
from . import model as m
from . import text
from .data import Outcomes
from .model import DEFAULT_STRONG_SHARE

L2 = 100.0
"""Ridge penalty on the standardised weights of the two feature models: strong, so that no
feature leans on what is particular to the training subjects (measured best across subject folds
among 0.1..100)."""

TEXT_FOLDS = 5
"""The word scores that rank a prompt's word score are those of the training prompts, each
scored by a word model fitted without it (this many folds, by group where the prompts have
groups): a word model scores the prompts it was fitted on more confidently than new ones."""


def _check(weak: Sequence[bool], strong: Sequence[bool]) -> np.ndarray:
    y = m.needed(weak, strong)
    if len(y) and y.min() == y.max():
        raise ValueError(f"every one of the {len(y)} training examples has the same outcome "
                         f"(strong needed: {bool(y[0])}); a router needs both kinds to learn from")
    return y


def fit_vectors(x: np.ndarray, weak: Sequence[bool], strong: Sequence[bool], *,
                words: text.TextModel | None = None, target_strong_share: float | None = None,
                target_quality: float | None = None, l2: float = L2, source: str = "") -> m.Model:
    """Fit the two feature models on vectors (feature values, then the word score: see
    ``model.VECTOR_NAMES``) with outcomes, take ``words`` as the word model (whose scores the
    vectors' last column holds; None: no word model, the feature score alone), and calibrate the
    threshold on the same rows: to the quality level (a share of the strong model's accuracy) if
    given, else to the strong share."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(m.VECTOR_NAMES):
        raise ValueError(f"vectors of {x.shape[-1] if x.ndim == 2 else '?'} values; expected "
                         f"{len(m.VECTOR_NAMES)} (the features, then the word score)")
    y = _check(weak, strong)
    features = x[:, :-1]
    mean, scale = m.standardise(features)
    z = (features - mean) / scale
    model = m.Model(names=list(feats.NAMES), mean=mean.tolist(), scale=scale.tolist(),
                    strong=m.fit(z, np.asarray(strong, dtype=float), l2=l2),
                    weak=m.fit(z, np.asarray(weak, dtype=float), l2=l2),
                    text=words or text.TextModel())
    model.feature_quantiles = m.quantiles_of(model.feature_scores(features))
    if model.text.terms:
        model.text_quantiles = m.quantiles_of(x[:, -1])
    scores = model.predict_matrix(x)
    if target_quality is not None:
        m.calibrate_quality(model, scores, weak, strong, target_quality)
    else:
        share = DEFAULT_STRONG_SHARE if target_strong_share is None else target_strong_share
        m.calibrate_share(model, scores, share)
    model.trained_on = {"examples": int(len(y)), "strong_needed": int(y.sum()), "source": source,
                        "terms": len(model.text.terms),
                        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return model


def held_out_word_scores(prompts: Sequence[str], y: np.ndarray, groups: Sequence[str] | None = None,
                         folds: int = TEXT_FOLDS) -> np.ndarray:
    """Each prompt's word score from a word model fitted on the other folds: by group when there
    are groups enough, else by position."""
    names = sorted(set(groups)) if groups else []
    if len(names) >= folds:
        fold_of_group = {g: i % folds for i, g in enumerate(names)}
        fold = np.asarray([fold_of_group[g] for g in groups])
    else:
        fold = np.arange(len(prompts)) % folds
    scores = np.zeros(len(prompts))
    for k in range(folds):
        out, kept = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        if not len(out):
            continue
        words = text.fit([prompts[i] for i in kept], y[kept])
        scores[out] = [words.score(prompts[i]) for i in out]
    return scores


def fit_prompts(prompts: Sequence[str], x: np.ndarray | None, weak: Sequence[bool],
                strong: Sequence[bool], *, groups: Sequence[str] | None = None, **kw) -> m.Model:
    """Fit on prompts (and their feature matrix ``x``, computed if None): the word model on all of
    them, its ranking on held-out word scores, then :func:`fit_vectors`."""
    y = _check(weak, strong)
    x = m.matrix(prompts) if x is None else np.asarray(x, dtype=float)
    words = text.fit(prompts, y)
    held = held_out_word_scores(prompts, y, groups)
    return fit_vectors(np.hstack([x, held[:, None]]), weak, strong, words=words, **kw)


def fit_outcomes(data: Outcomes, **kw) -> m.Model:
    """Fit on per-prompt outcomes (prompts and whether each model was right)."""
    return fit_prompts(data.prompts, None, data.weak, data.strong, groups=data.groups, **kw)
