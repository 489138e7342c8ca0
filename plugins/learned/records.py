"""Training examples from the request record (SQLite), for ``turnout router retrain``.

Prompts are never recorded; the ``learned`` router records the prompt's vector (feature values,
then the word score) in the decision (``decision["router"]["vector"]``), with the names of the
weak and the strong model. A routed request becomes an example when its outcome says whether
the weak model sufficed:
- answered by the weak model: strong needed if its feedback averages below 0 (a person or a
  judge found the answer bad), else not needed (it passed the route's validators);
- the weak model's attempt failed validation (``rejected``, as a cascade records it) and the
  strong model answered: strong needed, unless the strong answer's feedback averages below 0 too
  (both wrong: the strong model did not help).
Requests the strong model answered without a weak attempt say nothing about the weak model and
are left out.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np

from .model import VECTOR_NAMES


def examples(path: str | Path, since: float | None = None) -> tuple[np.ndarray, list[bool], list[bool]]:
    """Vectors (``model.VECTOR_NAMES``) with (weak right, strong right) outcomes from the record
    at ``path``."""
    if not Path(path).exists():
        raise ValueError(f"no request record at {path!r}; point --db (or record.path in --config) "
                         f"at the gateway's record file")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        query = ("SELECT request_id, model, status, decision FROM requests WHERE decision LIKE ?"
                 + (" AND created_at >= ?" if since else ""))
        params: tuple = ('%"learned"%', since) if since else ('%"learned"%',)
        requests = db.execute(query, params).fetchall()
        attempts: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for rid, model, status in db.execute("SELECT request_id, model, status FROM attempts "
                                             "ORDER BY request_id, n"):
            attempts[rid].append((model, status))
        scores: dict[str, list[float]] = defaultdict(list)
        for rid, score in db.execute("SELECT request_id, score FROM feedback"):
            scores[rid].append(score)
    vectors, weak_ok, strong_ok = [], [], []
    for rid, answered_by, status, decision in requests:
        outcome = label(json.loads(decision or "{}").get("router") or {}, answered_by, status,
                        attempts.get(rid, []), scores.get(rid, []))
        if outcome is None:
            continue
        vector, needed = outcome
        vectors.append(vector)
        weak_ok.append(not needed)
        strong_ok.append(True)
    return np.asarray(vectors, dtype=float).reshape(len(vectors), len(VECTOR_NAMES)), weak_ok, strong_ok


def label(router: dict, answered_by: str | None, status: str, attempts: list[tuple[str, str]],
          feedback: list[float]) -> tuple[list[float], bool] | None:
    """(vector, strong needed) for one recorded request, or None when it does not tell."""
    vector = router.get("vector")
    if router.get("kind") != "learned" or not isinstance(vector, list) or \
            len(vector) != len(VECTOR_NAMES):
        return None
    if status != "ok":
        return None
    weak, strong = router.get("weak"), router.get("strong")
    judged_bad = bool(feedback) and sum(feedback) / len(feedback) < 0
    if answered_by == weak:
        return vector, judged_bad
    weak_rejected = any(model == weak and state == "rejected" for model, state in attempts)
    if answered_by == strong and weak_rejected:
        return vector, not judged_bad
    return None
