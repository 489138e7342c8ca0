"""The ``turnout`` command: serve the gateway, check config, explain routes; plugins add the
rest (``stats``; ``keys`` and ``budget``, which talk to a running gateway's admin API)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import anyio

from turnout.kernel import config as config_module
from turnout.kernel.config import LOOPBACK, Config
from turnout.kernel.errors import BadRequest, ConfigError, TurnoutError
from turnout.kernel.kernel import BUILTINS, Command
from turnout.kernel.registry import Registry

EPILOG = """commands:
  serve                 start the gateway (embedded defaults when no config is given);
                        --workers N runs N processes on one port (needs [state] backend = "redis")
  config check FILE     validate a config file, plugins included; lists every problem
  config docs           print the configuration reference
  route --explain TEXT  show how a prompt would be routed, without calling any model
{plugin_commands}
The config file comes from --config or $TURNOUT_CONFIG; without either, the embedded defaults
(a simulated fleet, plus real providers for OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY)."""


def plugin_commands() -> Registry[Command]:
    """The commands built-in and installed plugins register (``register_commands``)."""
    from turnout.kernel.kernel import Kernel

    kernel = Kernel(config_module.parse({}, source="(commands)"))
    kernel.plugins.load(builtins=BUILTINS)
    kernel.plugins.hook.register_commands.register(kernel.commands.callback)
    return kernel.commands


def parser(commands: Registry[Command] | None = None) -> argparse.ArgumentParser:
    commands = commands if commands is not None else plugin_commands()
    listed = "".join(f"  {name:<22}{commands[name].help}\n" for name in commands.names())
    p = argparse.ArgumentParser(prog="turnout", description="Turnout: an LLM gateway that routes "
                                "every request to the right model.",
                                epilog=EPILOG.format(plugin_commands=listed),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="start the gateway")
    serve.add_argument("--config", help="config file (TOML or YAML)")
    serve.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: server.port, 4000)")
    serve.add_argument("--workers", type=workers_count, default=1, metavar="N",
                       help="worker processes sharing the port, each with its own kernel; "
                       "'auto' for one per CPU core (default 1: this process serves). More than "
                       "one needs a shared store, [state] backend = \"redis\"; each worker "
                       "gets its own request-log journal")

    check = sub.add_parser("config", help="config file tools")
    check_sub = check.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check_file = check_sub.add_parser("check", help="validate a config file")
    check_file.add_argument("file")
    check_sub.add_parser("docs", help="print the configuration reference (Markdown)")

    route = sub.add_parser("route", help="explain how a prompt would be routed")
    route.add_argument("--explain", required=True, metavar="PROMPT", help="the prompt")
    route.add_argument("--model", default="auto", help="model or route to ask for (default auto)")
    route.add_argument("--config", help="config file")
    route.add_argument("--json", action="store_true", help="print the raw decision record and "
                       "labels as JSON")
    for name in commands.names():
        command = commands[name]
        added = sub.add_parser(name, help=command.help)
        if command.arguments is not None:
            command.arguments(added)
    return p


def workers_count(value: str) -> int:
    """``--workers``: a whole number of 1 or more, or ``auto`` (one per CPU core)."""
    if value == "auto":
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes or 'auto', got "
                                         f"{value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (or 'auto'), got {count}")
    return count


def main(argv: list[str] | None = None) -> int:
    try:
        commands = plugin_commands()
    except TurnoutError as exc:
        print(f"turnout: {exc.message}", file=sys.stderr)
        return 2
    args = parser(commands).parse_args(argv)
    try:
        if args.command in commands:
            return commands[args.command].run(args)
        if args.command == "serve":
            return serve(args)
        if args.command == "config" and args.config_command == "check":
            return check(args.file)
        if args.command == "config" and args.config_command == "docs":
            from turnout.kernel.config_docs import reference

            print(reference())
            return 0
        if args.command == "route":
            from turnout.adapters.explain import render

            decision = anyio.run(explain, args)
            print(json.dumps(decision, indent=2, default=str) if args.json
                  else render(decision, args.explain))
            return 0
    except TurnoutError as exc:
        print(f"turnout: {exc.message}", file=sys.stderr)
        return 2
    parser().print_help()
    return 0 if args.command is None else 2


def check(path: str) -> int:
    """Validate a config file the way ``serve`` will: schema, references, plugins (loaded), and
    every table they own; every problem is listed, each with its line."""
    from turnout.kernel.kernel import Kernel

    config = config_module.load(path, references=False)
    Kernel(config).load_plugins()
    print(f"{path}: ok ({len(config.providers)} providers, {len(config.models)} models, "
          f"{len(config.routes)} routes)")
    return 0


def serve(args: argparse.Namespace) -> int:
    from turnout.adapters.http.app import Served
    from turnout.adapters.http.server import serve as serve_http
    from turnout.kernel.kernel import Kernel
    from turnout.kernel.observability import configure_logging

    config = config_module.load(args.config)
    server = config.server.model_copy(update={k: v for k, v in (("host", args.host),
                                                                ("port", args.port)) if v})
    if server.open and server.host not in LOOPBACK:
        raise ConfigError(f"--host {server.host} is not loopback and no server.api_keys (nor "
                          "server.admin_key) are configured; add a key (turnout keys hash) or "
                          "bind 127.0.0.1")
    workers = getattr(args, "workers", 1)
    if workers > 1 and config.state.backend == "memory":
        from turnout.adapters.http.workers import memory_store_refusal

        print(memory_store_refusal(workers), file=sys.stderr)
        return 2
    config = config.model_copy(update={"server": server})
    configure_logging(config.logging)
    kernel = Kernel(config)
    kernel.load_plugins()
    if server.open:
        note = "no API keys configured: accepting requests without a key, on loopback only"
    else:
        note = f"{len(server.api_keys)} API keys configured"
        note += ("; admin API on (/admin/), keys made at run time accepted"
                 if server.admin_key is not None else "; admin API off (no server.admin_key)")
    banner = (f"turnout: serving on http://{server.host}:{server.port}/v1 "
              f"({config.source}); {note}")
    if workers > 1:
        # The plugins loaded above only to check the config; each worker loads its own.
        from turnout.adapters.http.server import fit_connections
        from turnout.adapters.http.workers import supervise

        max_connections, fitted = fit_connections(server.max_connections)
        if fitted:  # raised here, the open-files limit is inherited by every worker
            print(f"turnout: {fitted} (per worker)", file=sys.stderr, flush=True)
        return supervise(args.config, server, workers, max_connections, banner)
    # uvicorn with the edge's limits (server.header_timeout_s, max_connections, ...): see
    # adapters/http/server.py for what uvicorn lacks and how it is added.
    serve_http(Served(kernel, banner), server)
    return 0


async def explain(args: argparse.Namespace) -> dict:
    from turnout.kernel.kernel import Kernel
    from turnout.kernel.types import ChatRequest

    try:
        request = ChatRequest(model=args.model, messages=[{"role": "user",
                                                           "content": args.explain}])
    except Exception as exc:  # pydantic's error, said plainly
        raise BadRequest(f"cannot build a request from that prompt: {exc}") from None
    config = config_module.load(args.config)
    quiet(config)
    async with Kernel(without_side_effects(config)) as kernel:
        return await kernel.explain(kernel.context(request))


SIDE_EFFECT_PLUGINS = frozenset({"record", "request_log", "alerts", "log_alerts", "webhook_alerts",
                                 "telemetry", "metrics", "admin", "slack"})
"""Built-in plugins a one-shot command's kernel runs without: they record, alert, export or serve,
which a benchmark or a replay must not do."""


def without_side_effects(config: Config, *, also: frozenset[str] = frozenset()) -> Config:
    """``config`` with :data:`SIDE_EFFECT_PLUGINS`, and ``also``, not loaded: for a command that
    reads the gateway's state (``route --explain`` sees its circuits) but records nothing."""
    disable = sorted(set(config.plugins.disable) | SIDE_EFFECT_PLUGINS | also)
    return config.model_copy(update={
        "plugins": config.plugins.model_copy(update={"disable": disable})})


def offline(config: Config, *, also: frozenset[str] = frozenset()) -> Config:
    """``config`` for a one-shot command's own kernel: :func:`without_side_effects`, and state in
    memory (no shared store is needed or touched)."""
    return without_side_effects(config, also=also).model_copy(
        update={"state": config_module.StateSection()})


def quiet(config: Config) -> None:
    """Logging for one-shot commands: the config's format, on stderr, warnings and up only."""
    from turnout.kernel.observability import configure_logging

    level = config.logging.level if config.logging.level in ("warning", "error") else "warning"
    configure_logging(config.logging.model_copy(update={"level": level}))


if __name__ == "__main__":
    sys.exit(main())
