"""The embedded default configuration: what ``turnout serve`` runs with no config file.

A simulated fleet of four tiers (and an embedding model), served over real local HTTP, behind
three routes and two rules, so routing, fallbacks and costs show from the first request. Provider
keys in the environment (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``) add the
real providers' models at the front of the routes.
"""

from __future__ import annotations

from typing import Any, Mapping

SIMULATED = {
    # name: (tier, latency_ms, error_rate, rate_limit_rate, quality, input $/M, output $/M, tok/s)
    "sim-small": (0, 120, 0.02, 0.0, 0.62, 0.10, 0.40, 200),
    "sim-flaky": (0, 150, 0.30, 0.10, 0.60, 0.05, 0.20, 200),
    "sim-medium": (1, 350, 0.03, 0.02, 0.78, 0.60, 2.40, 120),
    "sim-large": (2, 900, 0.01, 0.05, 0.90, 3.00, 15.00, 60),
}

REAL = {
    # env var: (provider name, kind, [(model, upstream, context, in $/M, out $/M, tier)])
    "OPENAI_API_KEY": ("openai", "openai", [
        ("gpt-4o-mini", "gpt-4o-mini", 128_000, 0.15, 0.60, 0),
        ("gpt-4o", "gpt-4o", 128_000, 2.50, 10.00, 2)]),
    "ANTHROPIC_API_KEY": ("anthropic", "anthropic", [
        ("claude-haiku", "claude-3-5-haiku-latest", 200_000, 0.80, 4.00, 1),
        ("claude-sonnet", "claude-sonnet-4-5", 200_000, 3.00, 15.00, 2)]),
    "GEMINI_API_KEY": ("gemini", "gemini", [
        ("gemini-flash", "gemini-2.0-flash", 1_000_000, 0.10, 0.40, 0),
        ("gemini-pro", "gemini-2.5-pro", 1_000_000, 1.25, 10.00, 2)]),
}


def embedded(environ: Mapping[str, str]) -> dict[str, Any]:
    """The default config tree, with real providers for the keys present in ``environ``."""
    models: dict[str, Any] = {}
    providers: dict[str, Any] = {"fleet": {"kind": "simulated"}}
    for name, (tier, _, _, _, quality, pin, pout, _) in SIMULATED.items():
        # The simulated quality is known by construction: declared, it is what the score and
        # cost_tiers routers and `turnout estimate` judge these models by.
        models[name] = {"provider": "fleet", "context_window": 32_000 * (tier + 1),
                        "input_price": pin, "output_price": pout, "tier": tier,
                        "quality": quality, "description": f"simulated tier {tier}"}
    models["sim-embed"] = {"provider": "fleet", "capabilities": ["embeddings"],
                           "input_price": 0.02, "description": "simulated embeddings"}
    routes = {
        "cheap": ["sim-flaky", "sim-small", "sim-medium"],
        "balanced": ["sim-medium", "sim-small", "sim-large"],
        "strong": ["sim-large", "sim-medium"],
    }
    for env, (provider, kind, offered) in REAL.items():
        if not environ.get(env):
            continue
        providers[provider] = {"kind": kind, "api_key": "${%s}" % env}
        for name, upstream, context, pin, pout, tier in offered:
            models[name] = {"provider": provider, "upstream": upstream, "context_window": context,
                            "input_price": pin, "output_price": pout, "tier": tier}
            target = "strong" if tier == 2 else "cheap"
            routes[target].insert(0, name)
    return {
        "providers": providers,
        "models": models,
        "routes": {name: {"models": chain} for name, chain in routes.items()},
        "routing": {
            "default": "balanced",
            "rules": [
                {"name": "hard prompts go strong", "when": {"complexity": ">= 0.6"},
                 "route": "strong"},
                {"name": "small talk goes cheap", "when": {"task": "chat",
                                                           "complexity": "< 0.25"},
                 "route": "cheap"},
            ],
        },
        "simulation": {"models": {
            name: {"latency_ms": latency, "error_rate": errors, "rate_limit_rate": limited,
                   "quality": quality, "tokens_per_s": tps}
            for name, (_, latency, errors, limited, quality, _, _, tps) in SIMULATED.items()}
            | {"sim-embed": {"latency_ms": 5}}},
        "logging": {"format": "console"},
    }
