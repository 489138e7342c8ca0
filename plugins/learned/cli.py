"""``turnout router train|eval|retrain``: the learned router's model, from CSVs of per-prompt
outcomes or from the request record."""

from __future__ import annotations

import argparse
import sys

from .model import DEFAULT_STRONG_SHARE


def arguments(parser: argparse.ArgumentParser) -> None:
    """The sub-commands and their options."""
    sub = parser.add_subparsers(dest="router_command", required=True)
    train = sub.add_parser("train", help="train a model on CSVs of per-prompt outcomes "
                           "(prompt, weak model correct, strong model correct)")
    train.add_argument("--data", required=True, help="folder of CSVs (or one CSV)")
    train.add_argument("--out", default="turnout-router.json", help="model file to write "
                       "(default turnout-router.json)")
    _calibration(train)
    evaluate = sub.add_parser("eval", help="score a model on CSVs of per-prompt outcomes it was "
                              "not trained on; prints APGR, CPT(50%%), CPT(80%%) and the strong "
                              "share at 95%% quality as JSON")
    evaluate.add_argument("--data", required=True, help="folder of CSVs (or one CSV)")
    evaluate.add_argument("--model", help="model file (default: the shipped one)")
    retrain = sub.add_parser("retrain", help="train a model on the recorded outcomes of requests "
                             "the learned router routed (validation and feedback)")
    retrain.add_argument("--config", help="config file (for record.path)")
    retrain.add_argument("--db", help="SQLite record file (default: record.path)")
    retrain.add_argument("--out", default="turnout-router.json", help="model file to write; point "
                         "the route's model_path at it (a running gateway re-reads it)")
    retrain.add_argument("--data", help="also train on this folder of outcome CSVs")
    retrain.add_argument("--since", metavar="AGE", help="only requests newer than AGE: 24h, 7d")
    retrain.add_argument("--every", metavar="AGE", help="keep running, retraining every AGE (24h)")
    retrain.add_argument("--min-examples", type=int, default=50, help="fewest recorded examples "
                         "to train on (default 50)")
    _calibration(retrain)


def _calibration(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--target-strong-share", type=float, help="calibrate the threshold to send "
                       f"this share of the training prompts to the strong model (default "
                       f"{DEFAULT_STRONG_SHARE})")
    group.add_argument("--target-quality", type=float, help="calibrate the threshold to the "
                       "smallest strong share reaching this share of the strong model's accuracy "
                       "on the training prompts (e.g. 0.95)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen sub-command."""
    from . import commands

    try:
        work = {"train": commands.train, "eval": commands.evaluate, "retrain": commands.retrain}
        return work[args.router_command](args)
    except ValueError as exc:
        print(f"turnout router {args.router_command}: {exc}", file=sys.stderr)
        return 2
