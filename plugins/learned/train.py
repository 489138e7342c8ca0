"""Training a learned-router model from per-prompt outcomes, or from recorded feature vectors."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from . import model as m
from .data import Outcomes
from .model import DEFAULT_STRONG_SHARE

L2 = 100.0
"""Ridge penalty on the standardised weights: strong, so that no feature leans on what is
particular to the training subjects (measured best across subject folds among 0.1..100)."""

def fit_vectors(x: np.ndarray, weak: Sequence[bool], strong: Sequence[bool], *,
                target_strong_share: float | None = None, target_quality: float | None = None,
                l2: float = L2, source: str = "") -> m.Model:
    """Fit on feature vectors with outcomes and calibrate the threshold on the same rows: to the
    quality level (a share of the strong model's accuracy) if given, else to the strong share."""
    y = m.needed(weak, strong)
    if y.min() == y.max():
        raise ValueError(f"every one of the {len(y)} training examples has the same outcome "
                         f"(strong needed: {bool(y[0])}); a router needs both kinds to learn from")
    model = m.fit(x, y, l2=l2)
    scores = model.predict_matrix(x)
    if target_quality is not None:
        m.calibrate_quality(model, scores, weak, strong, target_quality)
    else:
        share = DEFAULT_STRONG_SHARE if target_strong_share is None else target_strong_share
        m.calibrate_share(model, scores, share)
    model.trained_on = {"examples": int(len(y)), "strong_needed": int(y.sum()), "source": source,
                        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return model


def fit_outcomes(data: Outcomes, **kw) -> m.Model:
    """Fit on per-prompt outcomes (prompts and whether each model was right)."""
    return fit_vectors(m.matrix(data.prompts), data.weak, data.strong, **kw)
