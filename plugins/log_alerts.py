"""Delivers alerts as structured log events (``alert_fired`` / ``alert_resolved``)."""

from __future__ import annotations

import structlog

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.types import Alert

log = structlog.get_logger("turnout.alerts")


@hookimpl
def alert(alert: Alert) -> None:
    """Log the alert at warning (error for critical), or info when it resolves."""
    event = "alert_resolved" if alert.resolved else "alert_fired"
    method = log.info if alert.resolved else (log.error if alert.severity == "critical"
                                              else log.warning)
    fields = {**alert.labels, **alert.details,
              **{name: value for name, value in (("action", alert.action),
                                                 ("channel", alert.channel)) if value},
              "alert": alert.name, "key": alert.key, "severity": alert.severity,
              "summary": alert.summary}
    method(event, **fields)
