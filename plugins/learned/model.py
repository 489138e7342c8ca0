"""The learned router's model: a logistic regression over the prompt features of
:mod:`.features`, predicting P(strong needed), the chance that the weak model's answer is wrong
where the strong model's is right.

Trained with Newton's method (L2-regularised, on standardised features), saved as a small JSON
file (names, means, scales, weights, threshold), and loaded at start-up. Scoring a prompt is the
features plus one dot product.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import features as feats

if TYPE_CHECKING:  # numpy is for training and evaluation; scoring a prompt goes without it
    import numpy as np

FORMAT = "turnout-learned-router/1"

DEFAULT_STRONG_SHARE = 0.45
"""The share of prompts sent to the strong model that training calibrates to by default."""


@dataclass
class Model:
    """A trained router: feature standardisation, weights and the calibrated threshold."""

    names: list[str]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    threshold: float = 0.5
    calibration: dict = field(default_factory=dict)
    trained_on: dict = field(default_factory=dict)
    quantiles: list[float] = field(default_factory=list)
    """Scores of the training prompts at shares 0, 1/100, ... 1 from the top: a target share of
    strong calls becomes a threshold without the training data."""

    def __post_init__(self) -> None:
        self._compile()

    def _compile(self) -> None:
        self._mean = [float(m) for m in self.mean]
        self._w = [float(w) / float(s) for w, s in zip(self.weights, self.scale)]

    def predict_vector(self, x: Sequence[float]) -> float:
        """P(strong needed) for one feature vector (ordered as ``names``)."""
        z = sum((v - m) * w for v, m, w in zip(x, self._mean, self._w)) + self.bias
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """P(strong needed) for each row of a feature matrix."""
        import numpy as np

        z = (x - np.asarray(self._mean)) @ np.asarray(self._w) + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))

    def predict(self, text: str) -> float:
        """P(strong needed) for one prompt."""
        return self.predict_vector(feats.features(text))

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

    def to_dict(self) -> dict:
        """The model as JSON-ready data."""
        data = {"format": FORMAT}
        data.update({k: v for k, v in asdict(self).items() if not k.startswith("_")})
        return data

    def save(self, path: str | Path) -> None:
        """Write the model file (JSON), whole or not at all: a gateway may be reading it."""
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, target)

    @classmethod
    def load(cls, path: str | Path) -> Model:
        """Read a model file written by :meth:`save`; refuses one made for other features."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a learned-router model file (format {data.get('format')!r}); "
                             f"train one with `turnout router train --data DIR --out FILE`")
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


def fit(x: np.ndarray, y: Sequence[float], l2: float = 1.0, iterations: int = 50) -> Model:
    """Fit a logistic regression of ``y`` (0/1, or a share) on the rows of ``x``."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 10:
        raise ValueError(f"too few examples to train on ({len(x)}); need at least 10")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0                       # a constant feature gets no weight
    z = (x - mean) / scale
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
    return Model(names=list(feats.NAMES), mean=mean.tolist(), scale=scale.tolist(),
                 weights=beta[:-1].tolist(), bias=float(beta[-1]))


def needed(weak: Sequence[bool], strong: Sequence[bool]) -> np.ndarray:
    """The training target: 1 where the strong model is right and the weak one is not."""
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
