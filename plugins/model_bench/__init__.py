"""``turnout bench models``: the capability matrix of the configured models.

The command starts a kernel from the config (``--config``, ``$TURNOUT_CONFIG``, else the embedded
defaults and their simulated fleet), sends every prompt of the suite (:mod:`.suite`: code, math,
reasoning, extraction, creative, chat and translation, each prompt with an automatic check) to
every configured chat model by name, each model on its own (:mod:`.runner`: straight to its
provider, no router, strategy, retry or cache in between; embedding-only models are skipped),
checks every answer with the gateway's validators, and writes the matrix (:mod:`.report`):
quality by task type, latency percentiles and cost per 1,000 requests, as ``matrix.json``,
``matrix.md`` and a ``matrix.png`` heat map, with ``quality.toml``, the ``[models.NAME] quality``
tables that seed the ``score`` and ``cost_tiers`` routers.

For the run the kernel keeps its state in memory (a Redis ``[state]`` is not needed) and the
plugins that would act outside the run are not loaded: the request record, alert rules and their
sinks, the Slack bot, the admin API, metrics and telemetry. Nothing the bench sends is recorded.

``bench`` is a command with sub-commands; ``models`` is the first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from turnout.kernel.hookspecs import hookimpl

from . import suite

DEFAULT_OUT = "model-bench"
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 120.0


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give one or more names, separated by commas")
    return names


def _tasks(text: str) -> list[str]:
    names = _names(text)
    unknown = [n for n in names if n not in suite.TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task type {unknown[0]!r}; the suite has "
                                         f"{', '.join(suite.TASKS)}")
    return names


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0")
        return value
    return parse


def arguments(parser: argparse.ArgumentParser) -> None:
    """The sub-commands of ``turnout bench``."""
    sub = parser.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    models = sub.add_parser(
        "models", help="run the prompt suite against every configured chat model and write the "
        "capability matrix (quality by task type, latency, cost) and quality.toml")
    models.add_argument("--config", help="config file (default: $TURNOUT_CONFIG, else the "
                        "embedded defaults and their simulated fleet)")
    models.add_argument("--models", metavar="A,B", type=_names, help="only these models "
                        "(default: every configured chat model)")
    models.add_argument("--tasks", metavar="T,U", type=_tasks, help="only these task types: "
                        f"{', '.join(suite.TASKS)} (default: all)")
    models.add_argument("--repeat", metavar="K", type=_positive(int), default=1, help="send "
                        "every prompt K times to every model (default 1); quality is the share "
                        "over all K")
    models.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help="folder to write "
                        f"matrix.json, matrix.md, matrix.png and quality.toml into (default "
                        f"./{DEFAULT_OUT}/)")
    models.add_argument("--concurrency", metavar="C", type=_positive(int),
                        default=DEFAULT_CONCURRENCY, help="calls in flight at once, over all "
                        f"models (default {DEFAULT_CONCURRENCY})")
    models.add_argument("--timeout", metavar="S", type=_positive(float),
                        default=DEFAULT_TIMEOUT_S, help="seconds one call may take before it "
                        f"counts as failed (upstream_timeout; default {DEFAULT_TIMEOUT_S:g})")
    parser.set_defaults(bench_parser=parser)


def run(args: argparse.Namespace) -> int:
    """``turnout bench SUBCOMMAND``."""
    if getattr(args, "bench_command", None) != "models":
        args.bench_parser.print_help()
        return 2
    return bench_models(args)


def bench_models(args: argparse.Namespace) -> int:
    """``turnout bench models``: run the suite, write the matrix, print it and the paths."""
    from turnout.adapters.cli import offline, quiet
    from turnout.kernel import config as config_module

    from . import report

    config = config_module.load(args.config)
    quiet(config)
    found = anyio.run(measure, offline(config), args)
    paths = report.write(found, Path(args.out))
    print(report.markdown(found))
    for kind in ("json", "markdown", "png", "toml"):
        print(f"wrote {paths[kind]}")
    return 0


def chat_models(kernel: Any, wanted: list[str] | None) -> tuple[list[Any], dict[str, str]]:
    """The models to bench (``wanted``, else every configured one, in config order) and the
    ones skipped, with why; a ConfigError for a name the config lacks."""
    from turnout.kernel.errors import ConfigError
    from turnout.plugins.fit import EMBEDDINGS_ONLY

    names = wanted or list(kernel.config.models)
    unknown = [n for n in names if n not in kernel.models]
    if unknown:
        raise ConfigError(f"--models names {unknown[0]!r}, which the config ({kernel.config.source}) "
                          f"does not define; its models: {', '.join(kernel.config.models)}")
    chosen, skipped = [], {}
    for name in dict.fromkeys(names):
        model = kernel.models.get(name)
        if model.capabilities == EMBEDDINGS_ONLY:
            skipped[name] = "an embedding model: it does not answer chat requests"
        else:
            chosen.append(model)
    return chosen, skipped


async def measure(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Start a kernel on ``config``, run the suite and return the matrix."""
    from turnout.kernel.errors import ConfigError
    from turnout.kernel.kernel import Kernel
    from turnout.plugins import sandbox

    from . import report, runner

    tasks = [t for t in suite.TASKS if t in (args.tasks or suite.TASKS)]
    skipped_tasks: dict[str, str] = {}
    missing = sandbox.support().missing() if "code" in tasks else []
    if missing:
        skipped_tasks["code"] = (f"this machine cannot sandbox model-written code (missing: "
                                 f"{', '.join(missing)}); see the code validator's sandbox")
        tasks.remove("code")
        print(f"turnout bench models: skipping code: {skipped_tasks['code']}", file=sys.stderr)
    items = suite.items(tasks)
    async with Kernel(config) as kernel:
        models, skipped = chat_models(kernel, args.models)
        if not models:
            raise ConfigError("no chat model to bench: "
                              + ("; ".join(f"{n}: {why}" for n, why in skipped.items())
                                 or "the config defines no models"))
        print(f"turnout bench models: {len(items)} prompts x {len(models)} models x "
              f"{args.repeat} = {len(items) * len(models) * args.repeat} calls, "
              f"{args.concurrency} at a time", file=sys.stderr)
        began = time.time()
        outcomes = await runner.run(kernel, models, items, repeat=args.repeat,
                                    concurrency=args.concurrency, timeout_s=args.timeout)
        meta = {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
            "config": config.source,
            "duration_s": round(time.time() - began, 3),
            "suite": {"size": len(items), "repeat": args.repeat,
                      "items": {t: sum(i.task == t for i in items) for t in tasks}},
            "skipped": {"models": skipped, "tasks": skipped_tasks},
            "prices": {m.name: {"input": m.input_price, "output": m.output_price}
                       for m in models},
        }
        return report.matrix(outcomes, [m.name for m in models], tasks, meta)


class ModelBench:
    """Registers ``turnout bench`` (sub-command ``models``)."""

    @hookimpl
    def register_commands(self, register) -> None:
        """``turnout bench models``."""
        register("bench", run, help="benchmarks of the configured models: the capability "
                 "matrix (models)", arguments=arguments)
