"""What a cascade saves: replays per-prompt outcomes of a weak and a strong model through the
kernel's ``cascade`` strategy, with a validator of a given precision and recall.

Reads every ``*.csv`` in ``--eval DIR`` (default: the RouteLLM MMLU data beside the repository,
``../shared/data/routellm/mmlu``): a ``prompt`` column, then one True/False column per model
saying whether it answered that prompt correctly, the weak model first, the strong one second.

Each row becomes a request through a real kernel and the real ``cascade`` strategy, on a route
``["weak", "strong"]``. A ``call`` plugin answers for both models from the row (content
``correct`` or ``wrong``; usage: the prompt's tokens as the kernel counts them and a fixed
``--answer-tokens``), so each request's cost is the kernel's own ``Answer.cost_usd``: the weak call,
plus the strong call when the cascade escalates. The same rows through a route of ``strong``
alone give the always-strong baseline.

The validator (``oracle``) judges the weak model's answers only (the strong one is the cascade's
last step: nothing to escalate to). For a requested precision P and recall R, with p the share of
rows the weak model got right:

- a correct answer passes with probability R (recall = P(pass | correct));
- a wrong one passes with probability q, chosen so that P(correct | pass) = P:
  P = R p / (R p + q (1 - p)), so q = R p (1 - P) / (P (1 - p)), capped at 1 (a precision below
  what the data allows at that recall cannot be reached; the observed precision says what was).

Draws come from a random generator seeded with ``--seed`` for each pair, one draw per row, so runs
are reproducible and every pair sees the same draws (pairs differ only in their thresholds).

Prices are $ per million tokens, ``INPUT[:OUTPUT]``. Defaults: Mixtral-8x7B-Instruct at
Together AI's list price, 0.6 in and out; GPT-4-1106-preview at OpenAI's list price, 10 in and
30 out.

Prints one JSON object per precision:recall pair as it finishes, a summary, and last one JSON
object: ``{"n", "pairs": [...], "cost_saved_pct", "quality_ratio", ...}``, the top-level figures
being those of the first pair. ``cost_saved_pct`` is the cost saved against always-strong, in
percent (negative: the cascade cost more); ``quality_ratio`` is the cascade's accuracy over
always-strong's.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict, Field

from turnout.kernel import tokens
from turnout.kernel.config import parse
from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.kernel import BUILTINS, Kernel
from turnout.kernel.observability import configure_logging
from turnout.kernel.types import ChatRequest, Completion, Context, Usage, Verdict

HERE = Path(__file__).resolve().parent
DEFAULT_EVAL = HERE.parent.parent / "shared" / "data" / "routellm" / "mmlu"
DEFAULT_PAIRS = "1.0:1.0,0.95:0.95,0.9:0.9,0.9:0.7,0.8:0.9,0.75:0.95"
PLUGINS = {name: BUILTINS[name] for name in
           ("classify", "rules_router", "fit", "fallback", "cascade", "providers", "stores")}
"""The built-ins the replay needs: no recorder, cache, budgets or telemetry."""
CORRECT, WRONG = "correct", "wrong"
BASELINE = "always-strong"


@dataclass(frozen=True, slots=True)
class Row:
    """One prompt and whether each model answered it correctly."""

    prompt: str
    weak: bool
    strong: bool


_TRUTH = {"true": True, "1": True, "false": False, "0": False}


def read_rows(directory: Path) -> list[Row]:
    """Every row of every ``*.csv`` in ``directory``, files in name order."""
    if not directory.is_dir():
        raise SystemExit(f"no evaluation data at {directory}: pass --eval DIR, a directory of "
                         "CSVs with columns prompt, <weak model>, <strong model>")
    files = sorted(directory.glob("*.csv"))
    if not files:
        raise SystemExit(f"{directory} has no *.csv files: pass --eval DIR, a directory of CSVs "
                         "with columns prompt, <weak model>, <strong model>")
    csv.field_size_limit(sys.maxsize)
    rows: list[Row] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or len(header) < 3 or header[0].strip() != "prompt":
                raise SystemExit(f"{path}: the header must be prompt, <weak model>, "
                                 f"<strong model>; found {header}")
            for record in reader:
                if not record:
                    continue
                try:
                    weak, strong = (_TRUTH[v.strip().lower()] for v in record[1:3])
                except (KeyError, ValueError):
                    raise SystemExit(f"{path}:{reader.line_num}: expected True/False in the "
                                     f"model columns, found {record[1:3]}") from None
                rows.append(Row(record[0], weak, strong))
    return rows


def parse_pairs(text: str) -> list[tuple[float, float]]:
    """``"0.9:0.9,0.8:0.95"`` as ``[(precision, recall), ...]``."""
    pairs = []
    for item in text.split(","):
        try:
            precision, recall = (float(v) for v in item.strip().split(":"))
        except ValueError:
            raise SystemExit(f"--pairs: {item!r} is not PRECISION:RECALL (e.g. 0.9:0.8)") from None
        if not (0 < precision <= 1 and 0 <= recall <= 1):
            raise SystemExit(f"--pairs: {item!r}: precision must be in (0, 1] and recall in "
                             "[0, 1]")
        pairs.append((precision, recall))
    return pairs


def parse_price(text: str) -> tuple[float, float]:
    """``"10:30"`` (input:output) or ``"0.6"`` (both), $ per million tokens."""
    try:
        values = [float(v) for v in text.split(":")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not PRICE or INPUT:OUTPUT ($ per million "
                                         "tokens, e.g. 10:30)")
    return values[0], values[-1]


def pass_wrong(precision: float, recall: float, base: float) -> float:
    """P(pass | wrong) giving ``precision`` at ``recall`` when a share ``base`` of weak answers
    is correct (see the module's docstring); capped at 1."""
    if base <= 0 or base >= 1:  # only one kind of answer: the other's rate does not matter
        return 0.0
    return min(1.0, recall * base * (1 - precision) / (precision * (1 - base)))


class OracleSettings(BaseModel):
    """``{ kind = "oracle" }``: passes weak answers at a given precision and recall."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: float = Field(gt=0, le=1, description="P(the answer is correct | it passed).")
    recall: float = Field(ge=0, le=1, description="P(it passes | the answer is correct).")


class Replay:
    """Answers each model from the row the request names, and judges the weak model's answers
    as a validator of known precision and recall."""

    def __init__(self, rows: list[Row], seed: int, answer_tokens: int) -> None:
        self.rows = rows
        self.seed = seed
        self.answer_tokens = answer_tokens
        self.base = sum(r.weak for r in rows) / len(rows) if rows else 0.0
        self.draws: dict[str, random.Random] = {}

    @hookimpl(tryfirst=True)
    def call(self, ctx: Context, step) -> Completion:
        row = self.rows[int((ctx.request.metadata or {})["row"])]
        right = getattr(row, step.model.name)
        return Completion(content=CORRECT if right else WRONG,
                          usage=Usage(tokens.prompt_tokens(ctx), self.answer_tokens))

    @hookimpl
    def register_validators(self, register) -> None:
        register("oracle", self.check, settings=OracleSettings)

    def check(self, ctx: Context, completion: Completion,
              settings: OracleSettings) -> Verdict | None:
        """Pass a correct weak answer with probability ``recall``, a wrong one with the
        probability that gives ``precision``; other models' answers are not judged."""
        if completion.model != "weak":
            return None
        draws = self.draws.get(ctx.route or "")
        if draws is None:
            draws = self.draws[ctx.route or ""] = random.Random(self.seed)
        chance = settings.recall if completion.content == CORRECT else \
            pass_wrong(settings.precision, settings.recall, self.base)
        if draws.random() < chance:
            return Verdict(True, "oracle")
        return Verdict(False, "oracle", "the simulated validator rejected the answer")


def build_kernel(pairs: list[tuple[float, float]], replay: Replay,
                 weak: tuple[float, float], strong: tuple[float, float]) -> Kernel:
    """A kernel with models ``weak`` and ``strong``, a cascade route per pair (``pair-N``) and
    the always-strong route; nothing recorded."""
    routes: dict = {BASELINE: {"models": ["strong"], "validators": []}}
    for i, (precision, recall) in enumerate(pairs):
        routes[f"pair-{i}"] = {"models": ["weak", "strong"], "strategy": "cascade",
                               "validators": [{"kind": "oracle", "precision": precision,
                                               "recall": recall}]}
    config = parse({
        "providers": {"replay": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {
            "weak": {"provider": "replay", "input_price": weak[0], "output_price": weak[1]},
            "strong": {"provider": "replay", "input_price": strong[0], "output_price": strong[1]},
        },
        "routes": routes,
        "logging": {"level": "warning"},
    }, source="bench/cascade.py")
    configure_logging(config.logging)  # warnings and errors only, on stderr
    kernel = Kernel(config, builtins=PLUGINS)
    kernel.plugins.register(replay, name="replay")
    kernel.load_plugins()
    return kernel


async def replay_route(kernel: Kernel, route: str, rows: list[Row]) -> dict:
    """Every row through ``route``: correct answers, escalations, cost, and the weak answers the
    validator passed (split by whether they were correct)."""
    correct = escalated = passed_right = passed = 0
    cost = 0.0
    for i, row in enumerate(rows):
        answer = await kernel.ask(ChatRequest(
            model=route, messages=[{"role": "user", "content": row.prompt}],
            metadata={"row": str(i)}))
        correct += answer.content == CORRECT
        cost += answer.cost_usd
        if answer.model == "strong" and answer.attempts > 1:
            escalated += 1
        elif answer.model == "weak":
            passed += 1
            passed_right += row.weak
    return {"correct": correct, "escalated": escalated, "cost": cost, "passed": passed,
            "passed_right": passed_right}


def figures(pair: tuple[float, float], run: dict, baseline: dict, rows: list[Row],
            base: float) -> dict:
    n = len(rows)
    weak_right = sum(r.weak for r in rows)
    accuracy = run["correct"] / n
    strong_accuracy = baseline["correct"] / n
    return {
        "precision": pair[0], "recall": pair[1], "n": n,
        "cost_saved_pct": round(100 * (1 - run["cost"] / baseline["cost"]), 4)
        if baseline["cost"] else None,
        "quality_ratio": round(accuracy / strong_accuracy, 6) if strong_accuracy else None,
        "accuracy": round(accuracy, 6),
        "strong_accuracy": round(strong_accuracy, 6),
        "weak_accuracy": round(base, 6),
        "escalated_pct": round(100 * run["escalated"] / n, 4),
        "observed_precision": round(run["passed_right"] / run["passed"], 6)
        if run["passed"] else None,
        "observed_recall": round(run["passed_right"] / weak_right, 6) if weak_right else None,
        "pass_wrong_rate": round(pass_wrong(pair[0], pair[1], base), 6),
        "cost_usd": round(run["cost"], 6),
        "strong_cost_usd": round(baseline["cost"], 6),
    }


async def bench(args: argparse.Namespace, rows: list[Row]) -> dict:
    replay = Replay(rows, args.seed, args.answer_tokens)
    kernel = build_kernel(args.pairs, replay, args.weak_price, args.strong_price)
    started = time.perf_counter()
    results = []
    async with kernel:
        baseline = await replay_route(kernel, BASELINE, rows)
        for i, pair in enumerate(args.pairs):
            result = figures(pair, await replay_route(kernel, f"pair-{i}", rows), baseline,
                             rows, replay.base)
            results.append(result)
            print(json.dumps(result), flush=True)
    elapsed = time.perf_counter() - started
    requests = len(rows) * (len(args.pairs) + 1)
    return {"n": len(rows), "pairs": results,
            "cost_saved_pct": results[0]["cost_saved_pct"],
            "quality_ratio": results[0]["quality_ratio"],
            "weak_price": list(args.weak_price), "strong_price": list(args.strong_price),
            "answer_tokens": args.answer_tokens, "seed": args.seed,
            "requests": requests, "seconds": round(elapsed, 3),
            "requests_per_s": round(requests / elapsed, 1) if elapsed else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, default=DEFAULT_EVAL,
                        help="directory of CSVs: prompt, weak model correct, strong model correct")
    parser.add_argument("--pairs", type=parse_pairs, default=parse_pairs(DEFAULT_PAIRS),
                        help=f"validator PRECISION:RECALL pairs, comma-separated "
                             f"(default {DEFAULT_PAIRS})")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validator's draws")
    parser.add_argument("--weak-price", type=parse_price, default=(0.6, 0.6),
                        help="$ per million tokens, INPUT[:OUTPUT] (default 0.6: Mixtral-8x7B)")
    parser.add_argument("--strong-price", type=parse_price, default=(10.0, 30.0),
                        help="$ per million tokens, INPUT[:OUTPUT] (default 10:30: GPT-4-1106)")
    parser.add_argument("--answer-tokens", type=int, default=16,
                        help="output tokens of every answer (default 16: a letter and a few words)")
    args = parser.parse_args()
    rows = read_rows(args.eval)
    if args.limit is not None:
        rows = rows[:max(args.limit, 0)]
    if not rows:
        raise SystemExit(f"{args.eval}: no rows to replay")
    out = anyio.run(bench, args, rows)
    print(f"{out['n']} prompts, {out['requests']} requests in {out['seconds']} s; weak "
          f"accuracy {out['pairs'][0]['weak_accuracy']:.3f}, strong "
          f"{out['pairs'][0]['strong_accuracy']:.3f}")
    for p in out["pairs"]:
        print(f"precision {p['precision']:<5} recall {p['recall']:<5}  cost saved "
              f"{p['cost_saved_pct']:7.2f}%  quality {p['quality_ratio']:.3f}  escalated "
              f"{p['escalated_pct']:6.2f}%")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
