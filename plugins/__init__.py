"""Built-in plugins: classifiers, routers, fallback, validators, recorders, alerts, telemetry.

Each is loaded through the same plugin contract (``turnout.kernel.hookspecs``) as a third-party
plugin, and can be disabled by name in ``[plugins] disable``.
"""
