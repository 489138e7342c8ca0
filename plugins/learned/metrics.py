"""Routing metrics as the RouteLLM paper defines them (arXiv 2406.18665).

Prompts are sorted by a router's score (highest first: most in need of the strong model) and
the share ``c`` of calls sent to the strong model sweeps 0..1; ``r(c)`` is the accuracy at that
share. Tied scores are taken in every order at once (the expected curve of a random order among
them), so a constant score is exactly the random router.
- PGR(c) = (r(c) - r_weak) / (r_strong - r_weak)
- APGR: the area under PGR(c) for c in [0, 1]; random scores 0.5
- CPT(x): the smallest share c at which PGR(c) >= x
- strong share at 95%: the smallest c at which r(c) >= 0.95 * r_strong
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy_curve(scores: Sequence[float], weak: Sequence[bool], strong: Sequence[bool]) -> np.ndarray:
    """Accuracy with the top ``k`` prompts (by score) on the strong model, for k = 0..n."""
    s = np.asarray(scores, dtype=float)
    w = np.asarray(weak, dtype=float)
    g = np.asarray(strong, dtype=float) - w          # gain of sending each prompt to strong
    n = len(s)
    order = np.argsort(-s, kind="stable")
    s, g = s[order], g[order]
    curve = np.empty(n + 1)
    curve[0] = w.sum()
    start = 0
    while start < n:
        end = start
        while end < n and s[end] == s[start]:
            end += 1
        size = end - start
        mean_gain = g[start:end].sum() / size
        curve[start + 1:end + 1] = curve[start] + mean_gain * np.arange(1, size + 1)
        start = end
    return curve / n


def evaluate(scores: Sequence[float], weak: Sequence[bool], strong: Sequence[bool]) -> dict[str, float]:
    """``n``, ``apgr``, ``cpt50``, ``cpt80`` and ``strong_share_at_95`` of one router's scores."""
    n = len(scores)
    if n == 0:
        raise ValueError("no prompts to evaluate")
    curve = accuracy_curve(scores, weak, strong)
    r_weak, r_strong = curve[0], curve[-1]
    shares = np.arange(n + 1) / n
    gap = r_strong - r_weak
    if gap <= 0:
        raise ValueError(f"the strong model is not more accurate than the weak one here "
                         f"({r_strong:.3f} vs {r_weak:.3f}): PGR is undefined")
    pgr = (curve - r_weak) / gap
    apgr = float(np.sum((pgr[1:] + pgr[:-1]) / 2) / n)

    def first(mask: np.ndarray) -> float:
        hits = np.flatnonzero(mask)
        return float(shares[hits[0]]) if len(hits) else 1.0

    eps = 1e-12
    return {
        "n": n,
        "apgr": round(apgr, 4),
        "cpt50": round(first(pgr >= 0.5 - eps), 4),
        "cpt80": round(first(pgr >= 0.8 - eps), 4),
        "strong_share_at_95": round(first(curve >= 0.95 * r_strong - eps), 4),
    }


def oracle_scores(weak: Sequence[bool], strong: Sequence[bool]) -> list[float]:
    """The perfect router's scores: 1 where only the strong model is right, -1 where only the weak
    one is, 0 where they agree."""
    return [float(s) - float(w) for w, s in zip(weak, strong)]
