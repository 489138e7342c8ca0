"""How well each built-in router spends strong-model calls, on per-prompt outcomes it never saw.

Reads CSVs of per-prompt outcomes (``--train DIR``, ``--eval DIR``, any ``*.csv`` files in them):
a ``prompt`` column, then one True/False correctness column per model, the weak model first,
the strong one second (the format of ``../shared/data/routellm/``). Every learned router is
trained on ``--train`` only; every router then scores each ``--eval`` prompt, and the prompts are
swept from the highest score (most in need of the strong model) to the lowest. Metrics, as the
RouteLLM paper defines them (see ``turnout.plugins.learned.metrics``): ``apgr`` (area under the
share of the weak-to-strong accuracy gap recovered, over the share of strong calls; random 0.5),
``cpt50`` and ``cpt80`` (the smallest share of strong calls recovering 50% and 80% of the gap),
``strong_share_at_95`` (the smallest share reaching 95% of the strong model's accuracy).
A training prompt that is also an evaluation prompt (the same question in two files) is dropped
from training.

Routers: ``random`` (the expectation over random orders), ``oracle`` (strong only where the weak
model fails and the strong one does not: the bound), ``difficulty`` (the heuristic classifier's
difficulty score, untrained) and ``learned`` (the learned router's model, trained on ``--train``
with ``turnout router train``'s code). ``--router NAME`` scores only that one beside random and
oracle. One JSON object per router; the last line is the best built-in router's (by APGR).

Acceptance split (train on some subjects, evaluate on the others): ``--folds K --data DIR`` splits
the files of DIR (one subject each) into K folds at random (``--seed``), trains on K-1 folds and
evaluates on the held-out one, for every fold; it prints each fold's rows (with ``fold``), then
each router's mean over the folds (with ``folds``, and the spread as ``apgr_std`` and
``strong_share_at_95_std``), the best router's mean last. For the issue's acceptance figures::

    python bench/routing.py --folds 5 --seed 0 --data ../shared/data/routellm/mmlu

and seeds 1 and 2 for other splits; one split by hand::

    mkdir -p /tmp/train /tmp/eval
    cp ../shared/data/routellm/mmlu/mmlu_{a,b,c}*.csv /tmp/eval/ && cp the rest to /tmp/train/
    python bench/routing.py --train /tmp/train --eval /tmp/eval
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import numpy as np

from turnout.plugins.learned import data as outcomes_data
from turnout.plugins.learned import features, metrics
from turnout.plugins.learned import model as m
from turnout.plugins.learned.train import fit_prompts

ROUTERS = ("difficulty", "learned")
"""The built-in routers that score prompts (``random`` and ``oracle`` are always reported)."""


def score(router: str, train_x: np.ndarray, train: outcomes_data.Outcomes, eval_x: np.ndarray,
          test: outcomes_data.Outcomes) -> np.ndarray:
    """The router's scores for the evaluation prompts (higher: more in need of the strong model)."""
    if router == "difficulty":
        return eval_x[:, features.NAMES.index("difficulty")]
    if router == "learned":
        model = fit_prompts(train.prompts, train_x, train.weak, train.strong, groups=train.groups)
        return model.predict_matrix(model.vectors(test.prompts, eval_x))
    raise SystemExit(f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}")


def rows(train: outcomes_data.Outcomes, train_x: np.ndarray, test: outcomes_data.Outcomes,
         eval_x: np.ndarray, routers: tuple[str, ...]) -> list[dict]:
    """One metrics row per router (random and oracle first)."""
    out = [{"router": "random", **metrics.evaluate(np.zeros(len(test)), test.weak, test.strong)},
           {"router": "oracle", **metrics.evaluate(metrics.oracle_scores(test.weak, test.strong),
                                                   test.weak, test.strong)}]
    for router in routers:
        out.append({"router": router, **metrics.evaluate(score(router, train_x, train, eval_x, test),
                                                         test.weak, test.strong)})
    return out


def best(found: list[dict]) -> dict:
    """The built-in router with the highest APGR."""
    return max((r for r in found if r["router"] not in ("random", "oracle")), key=lambda r: r["apgr"])


def unseen(train_rows: list[int], prompts: list[str], test_rows: list[int]) -> list[int]:
    """The training rows whose prompt is not also an evaluation prompt (the same question may sit
    in two subjects' files): a router is scored only on prompts it was not trained on."""
    held = {prompts[i] for i in test_rows}
    return [i for i in train_rows if prompts[i] not in held]


def split(args: argparse.Namespace, routers: tuple[str, ...]) -> None:
    train = outcomes_data.read_dir(args.train, args.limit)
    test = outcomes_data.read_dir(args.eval, args.limit)
    held = set(test.prompts)
    train = train.subset([i for i, p in enumerate(train.prompts) if p not in held])
    found = rows(train, m.matrix(train.prompts), test, m.matrix(test.prompts), routers)
    for row in found:
        print(json.dumps(row))
    print(json.dumps(best(found)))


def folds(args: argparse.Namespace, routers: tuple[str, ...]) -> None:
    every = outcomes_data.read_dir(args.data, args.limit)
    x = m.matrix(every.prompts)
    groups = sorted(set(every.groups))
    random.Random(args.seed).shuffle(groups)
    if not 2 <= args.folds <= len(groups):
        raise SystemExit(f"--folds must be between 2 and the number of files ({len(groups)})")
    per_router: dict[str, list[dict]] = {}
    for fold in range(args.folds):
        held_out = set(groups[fold::args.folds])
        test_rows = [i for i, g in enumerate(every.groups) if g in held_out]
        train_rows = unseen([i for i, g in enumerate(every.groups) if g not in held_out],
                            every.prompts, test_rows)
        found = rows(every.subset(train_rows), x[train_rows], every.subset(test_rows), x[test_rows],
                     routers)
        for row in found:
            print(json.dumps({**row, "fold": fold, "seed": args.seed}))
            per_router.setdefault(row["router"], []).append(row)
    means = []
    for router, found in per_router.items():
        mean = {"router": router, "n": sum(r["n"] for r in found), "folds": len(found),
                "seed": args.seed}
        for key in ("apgr", "cpt50", "cpt80", "strong_share_at_95"):
            mean[key] = round(statistics.fmean(r[key] for r in found), 4)
        for key in ("apgr", "strong_share_at_95"):
            mean[f"{key}_std"] = round(statistics.pstdev(r[key] for r in found), 4)
        means.append(mean)
        print(json.dumps(mean))
    print(json.dumps(best(means)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", help="folder of outcome CSVs the learned routers train on")
    parser.add_argument("--eval", help="folder of outcome CSVs every router is scored on")
    parser.add_argument("--data", help="with --folds: one folder, split by file (subject)")
    parser.add_argument("--folds", type=int, help="K-fold by file instead of --train/--eval")
    parser.add_argument("--seed", type=int, default=0, help="shuffles the files into folds")
    parser.add_argument("--router", choices=ROUTERS, help="score only this router (beside random "
                        "and oracle)")
    parser.add_argument("--limit", type=int, help="read only the first N rows of each file")
    args = parser.parse_args(argv)
    routers = (args.router,) if args.router else ROUTERS
    if args.folds:
        if not args.data:
            parser.error("--folds needs --data DIR")
        folds(args, routers)
    elif args.train and args.eval:
        split(args, routers)
    else:
        parser.error("give --train DIR and --eval DIR, or --folds K --data DIR")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
