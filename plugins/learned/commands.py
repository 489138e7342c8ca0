"""The ``turnout router`` sub-commands' work: training, evaluation and retraining (numpy and
the training code load only when a command runs, not with the gateway)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import data, metrics, store
from . import model as m
from .train import fit_outcomes, fit_vectors


def train(args: argparse.Namespace) -> int:
    outcomes = data.read_dir(args.data)
    model = fit_outcomes(outcomes, target_strong_share=args.target_strong_share,
                         target_quality=args.target_quality, source=Path(args.data).name)
    model.save(args.out)
    print(json.dumps({"model": str(args.out), "examples": len(outcomes),
                      "threshold": round(model.threshold, 4), **model.calibration}))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    outcomes = data.read_dir(args.data)
    model = m.Model.load(args.model) if args.model else store.load()
    scores = model.predict_matrix(model.vectors(outcomes.prompts))
    print(json.dumps({"router": "learned", **metrics.evaluate(scores, outcomes.weak, outcomes.strong)}))
    return 0


def retrain(args: argparse.Namespace) -> int:
    from turnout.plugins.stats import _record_settings, parse_age

    every = parse_age(args.every) if args.every else None
    while True:
        path = args.db or _record_settings(args.config).path
        since = time.time() - parse_age(args.since) if args.since else None
        status = _retrain_once(args, path, since)
        if every is None:
            return status
        time.sleep(every)


def word_model_of(out: str | Path) -> m.Model:
    """The model whose word model a retrained one keeps: the one at ``out`` (which the gateway
    reads, so the recorded word scores are its), else the shipped one. The record holds no
    prompts, so the word model itself is not refitted; the feature models are."""
    try:
        return m.Model.load(out)
    except (OSError, ValueError):
        return store.load()


def _retrain_once(args: argparse.Namespace, path: str, since: float | None) -> int:
    import numpy as np

    from .records import examples

    x, weak, strong = examples(path, since)
    if len(x) < args.min_examples:
        print(f"turnout router retrain: {len(x)} recorded examples in {path} (need "
              f"{args.min_examples}); route more requests with router 'learned' through a cascade, "
              f"collect feedback, or lower --min-examples", file=sys.stderr)
        return 1
    source = f"record ({len(x)} requests)"
    base = word_model_of(args.out)
    if args.data:
        extra = data.read_dir(args.data)
        x = np.vstack([x, base.vectors(extra.prompts)])
        weak, strong = list(weak) + extra.weak, list(strong) + extra.strong
        source += f" + {Path(args.data).name}"
    model = fit_vectors(x, weak, strong, words=base.text, target_strong_share=args.target_strong_share,
                        target_quality=args.target_quality, source=source)
    model.save(args.out)
    print(json.dumps({"model": str(args.out), "examples": len(x),
                      "threshold": round(model.threshold, 4), **model.calibration}))
    return 0
