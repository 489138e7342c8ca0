"""Edges to the outside: model providers, the simulated fleet, the HTTP API and the CLI."""
