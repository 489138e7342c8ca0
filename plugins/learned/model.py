"""The learned router's model: how much a prompt needs the strong model, from two views of it.

- Hand features (:mod:`.features`, standardised): two logistic regressions, P(strong model
  right) and P(weak model right); their difference is the *feature score*.
- Words (:mod:`.text`): a logistic regression over the TF-IDF of the prompt's words and word
  pairs, predicting that the weak model is wrong where the strong one is right; its logit is the
  *word score*.

Each score is turned into its rank among the training prompts' scores (a share, 0..1, from the
stored quantiles of each), and the *score* is the mean of the two ranks: 0.9 means the prompt
needs the strong model more than about 90% of the training prompts did. That combined score is
what the threshold is compared with. A prompt's *vector* is its feature values followed by its
word score (``VECTOR_NAMES``): the vector alone gives the score, so a recorded vector replays
exactly without the prompt.

Trained with numpy (Newton's method, L2-regularised, a fixed number of steps), saved as one JSON
file and loaded at start-up; scoring a prompt is pure Python.
"""

from __future__ import annotations

import json
import math
import os
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import features as feats
from .text import TextModel

if TYPE_CHECKING:  # numpy is for training and evaluation; scoring a prompt goes without it
    import numpy as np

FORMAT = "turnout-learned-router/2"

TEXT = "word_score"
"""The name of the vector's last element: the word model's score (its logit)."""

VECTOR_NAMES: tuple[str, ...] = (*feats.NAMES, TEXT)
"""What a prompt's vector holds, in order: the feature values, then the word score."""

DEFAULT_STRONG_SHARE = 0.45
"""The share of prompts sent to the strong model that training calibrates to by default."""


def rank(value: float, quantiles: Sequence[float]) -> float:
    """The share (0..1) of a distribution below ``value``, from its quantiles (ascending, evenly
    spaced shares), linear between them; a value equal to several quantiles takes their middle."""
    steps = len(quantiles) - 1
    if steps < 1:
        return 0.5
    low, high = bisect_left(quantiles, value), bisect_right(quantiles, value)
    if low != high:
        return (low + high - 1) / 2 / steps
    if low == 0:
        return 0.0
    if low > steps:
        return 1.0
    a, b = quantiles[low - 1], quantiles[low]
    return (low - 1 + (value - a) / (b - a)) / steps


def ranks(values: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """:func:`rank` of each value."""
    import numpy as np

    return np.asarray([rank(float(v), quantiles) for v in values], dtype=float)


def quantiles_of(values: np.ndarray, points: int = 101) -> list[float]:
    """The ascending quantiles of ``values`` at ``points`` evenly spaced shares."""
    import numpy as np

    return [round(float(q), 6) for q in np.quantile(np.asarray(values, dtype=float),
                                                     np.linspace(0, 1, points))]


@dataclass
class Logistic:
    """One logistic regression over the standardised features."""

    weights: list[float]
    bias: float

    def logit(self, z: Sequence[float]) -> float:
        return sum(v * w for v, w in zip(z, self.weights)) + self.bias

    def probability(self, z: Sequence[float]) -> float:
        return 1.0 / (1.0 + math.exp(-max(min(self.logit(z), 40.0), -40.0)))


@dataclass
class Model:
    """A trained router: feature standardisation, the two feature models, the word model, the
    quantiles that rank each score, and the calibrated threshold."""

    names: list[str]
    mean: list[float]
    scale: list[float]
    strong: Logistic
    weak: Logistic
    text: TextModel = field(default_factory=TextModel)
    feature_quantiles: list[float] = field(default_factory=list)
    """The feature scores of the training prompts at shares 0, 1/100, ... 1 (ascending)."""
    text_quantiles: list[float] = field(default_factory=list)
    """The word scores of the training prompts (held out while fitting), likewise."""
    threshold: float = 0.5
    calibration: dict = field(default_factory=dict)
    trained_on: dict = field(default_factory=dict)
    quantiles: list[float] = field(default_factory=list)
    """Scores of the training prompts at shares 0, 1/100, ... 1 from the top: a target share of
    strong calls becomes a threshold without the training data."""

    def __post_init__(self) -> None:
        if isinstance(self.strong, dict):
            self.strong = Logistic(**self.strong)
        if isinstance(self.weak, dict):
            self.weak = Logistic(**self.weak)
        if isinstance(self.text, dict):
            self.text = TextModel(**self.text)

    # --- scoring -------------------------------------------------------------------------------

    def vector(self, text: str, difficulty_label: float | None = None) -> list[float]:
        """The vector of one prompt: its feature values, then its word score."""
        return [*feats.features(text, difficulty_label), self.text.score(text)]

    def feature_score(self, x: Sequence[float]) -> float:
        """P(strong right) - P(weak right) from the feature values."""
        z = [(v - m) / s for v, m, s in zip(x, self.mean, self.scale)]
        return self.strong.probability(z) - self.weak.probability(z)

    def predict_vector(self, vector: Sequence[float]) -> float:
        """The score (0..1) of one vector (ordered as ``VECTOR_NAMES``)."""
        if len(vector) != len(self.names) + 1:
            raise ValueError(f"a vector of {len(vector)} values; this model scores "
                             f"{len(self.names) + 1} (the features, then the word score)")
        parts = [rank(self.feature_score(vector[:-1]), self.feature_quantiles)]
        if self.text.terms:
            parts.append(rank(float(vector[-1]), self.text_quantiles))
        return sum(parts) / len(parts)

    def predict(self, text: str) -> float:
        """The score (0..1) of one prompt."""
        return self.predict_vector(self.vector(text))

    def feature_scores(self, x: np.ndarray) -> np.ndarray:
        """:meth:`feature_score` of each row of a feature matrix."""
        import numpy as np

        z = (np.asarray(x, dtype=float) - np.asarray(self.mean)) / np.asarray(self.scale)

        def p(part: Logistic) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-np.clip(z @ np.asarray(part.weights) + part.bias, -40, 40)))

        return p(self.strong) - p(self.weak)

    def predict_matrix(self, vectors: np.ndarray) -> np.ndarray:
        """The score of each row of a matrix of vectors (see :meth:`vectors`)."""
        import numpy as np

        vectors = np.asarray(vectors, dtype=float)
        parts = [ranks(self.feature_scores(vectors[:, :-1]), self.feature_quantiles)]
        if self.text.terms:
            parts.append(ranks(vectors[:, -1], self.text_quantiles))
        return sum(parts) / len(parts)

    def vectors(self, texts: Sequence[str], x: np.ndarray | None = None) -> np.ndarray:
        """The vectors of several prompts (their feature matrix ``x`` if already computed)."""
        import numpy as np

        x = matrix(texts) if x is None else np.asarray(x, dtype=float)
        words = np.asarray([self.text.score(t) for t in texts], dtype=float)
        return np.hstack([x, words[:, None]])

    def threshold_for_share(self, share: float) -> float:
        """The threshold that sends ``share`` of the training prompts to the strong model."""
        if not self.quantiles:
            raise ValueError("this model file has no score distribution; retrain it to use "
                             "target_strong_share, or set a threshold")
        share = min(max(share, 0.0), 1.0)
        steps = len(self.quantiles) - 1
        if steps == 0:
            return float(self.quantiles[0])
        i = min(int(share * steps), steps - 1)
        low, high = self.quantiles[i], self.quantiles[i + 1]
        return float(low + (high - low) * (share * steps - i))

    # --- the file ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The model as JSON-ready data."""
        data = {"format": FORMAT}
        data.update(asdict(self))
        return data

    def save(self, path: str | Path) -> None:
        """Write the model file (JSON, a line per field), whole or not at all: a gateway may be
        reading it."""
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
                 for k, v in self.to_dict().items()]
        temporary.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
        os.replace(temporary, target)

    @classmethod
    def load(cls, path: str | Path) -> Model:
        """Read a model file written by :meth:`save`; refuses one made for other features."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a learned-router model file of this version (format "
                             f"{data.get('format')!r}, this version reads {FORMAT!r}); train one "
                             f"with `turnout router train --data DIR --out FILE`")
        data.pop("format")
        model = cls(**data)
        if list(model.names) != list(feats.NAMES):
            raise ValueError(f"{path}: trained on other features than this version computes; "
                             f"retrain it with `turnout router train`")
        return model


def matrix(texts: Sequence[str]) -> np.ndarray:
    """The feature matrix of several prompts."""
    import numpy as np

    return np.asarray([feats.features(t) for t in texts], dtype=float).reshape(len(texts), len(feats.NAMES))


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and scale of each column (a constant column gets scale 1, so no weight)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    return mean, scale


def fit(z: np.ndarray, y: Sequence[float], l2: float = 1.0, iterations: int = 50) -> Logistic:
    """A logistic regression of ``y`` (0/1, or a share) on the (standardised) rows of ``z``:
    Newton's method, L2 penalty ``l2`` on the weights (not the bias), at most ``iterations``
    steps."""
    import numpy as np

    z = np.asarray(z, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(z) < 10:
        raise ValueError(f"too few examples to train on ({len(z)}); need at least 10")
    n, d = z.shape
    a = np.hstack([z, np.ones((n, 1))])
    beta = np.zeros(d + 1)
    prior = np.clip(y.mean(), 1e-4, 1 - 1e-4)
    beta[-1] = math.log(prior / (1 - prior))
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ beta, -40, 40)))
        gradient = a.T @ (p - y) + penalty * beta
        hessian = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return Logistic(weights=[float(w) for w in beta[:-1]], bias=float(beta[-1]))


def needed(weak: Sequence[bool], strong: Sequence[bool]) -> np.ndarray:
    """The word model's target: 1 where the strong model is right and the weak one is not."""
    import numpy as np

    return np.asarray([1.0 if (s and not w) else 0.0 for w, s in zip(weak, strong)])


def calibrate_share(model: Model, scores: np.ndarray, share: float) -> float:
    """Set the threshold so that ``share`` of these (training) prompts score at or above it."""
    import numpy as np

    if not 0.0 <= share <= 1.0:
        raise ValueError(f"target_strong_share must be between 0 and 1, got {share}")
    ordered = np.sort(np.asarray(scores, dtype=float))[::-1]
    k = int(round(share * len(ordered)))
    if k <= 0:
        threshold = float(ordered[0]) + 1e-9 if len(ordered) else 1.0
    elif k >= len(ordered):
        threshold = float(ordered[-1])
    else:
        threshold = float((ordered[k - 1] + ordered[k]) / 2)
    model.threshold = threshold
    model.quantiles = [round(float(q), 6) for q in np.quantile(ordered[::-1], np.linspace(1, 0, 101))]
    model.calibration = {"target_strong_share": share,
                         "strong_share_on_training": float(np.mean(scores >= threshold))}
    return threshold


def calibrate_quality(model: Model, scores: np.ndarray, weak: Sequence[bool], strong: Sequence[bool],
                      quality: float) -> float:
    """Set the threshold at the smallest strong share whose accuracy on these (training) prompts
    reaches ``quality`` times the strong model's."""
    import numpy as np

    from .metrics import accuracy_curve

    if not 0.0 < quality <= 1.0:
        raise ValueError(f"target_quality must be in (0, 1], got {quality}")
    curve = accuracy_curve(scores, weak, strong)
    hits = np.flatnonzero(curve >= quality * curve[-1] - 1e-12)
    share = float(hits[0] / len(scores)) if len(hits) else 1.0
    calibrate_share(model, scores, share)
    model.calibration["target_quality"] = quality
    return model.threshold
