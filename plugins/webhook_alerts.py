"""Delivers alerts to a webhook: each one POSTed as JSON, retried with backoff, never in a
request's way.

```toml
[webhook_alerts]
url = "https://hooks.example.com/turnout"   # omitted: the sink is off
timeout_s = 5
retries = 3
```

**The body** (``Content-Type: application/json``)::

    {"name": "latency_p95", "severity": "warning", "summary": "p95 latency of model ...",
     "labels": {"model": "strong", "above_ms": "8000"}, "key": "latency_p95{...}",
     "resolved": false, "action": "shift_traffic", "channel": "#llm-ops",
     "started_at": 1750000000.0, "details": {"p95_ms": 9120.5, "requests": 240, ...}}

``key`` is the same when the alert fires, repeats and resolves: group and update by it. Nothing
else goes out: the summary is scrubbed of anything secret-looking once more, and the URL (it
may hold a token) is masked wherever it could be logged.

**Delivery.** The ``alert`` hook hands the POST to the kernel's deferred work and returns, so
the request or tick that raised the alert does not wait; alerts go out one at a time, in the
order raised. A 2xx answer delivers it. A 5xx, a connection error or a timeout (``timeout_s``)
is retried after 0.5 s, 1 s, 2 s... (doubling, at most ``retry_after_cap_s``); a 429 after its
``Retry-After`` (seconds or an HTTP date, at most ``retry_after_cap_s``; the backoff when it
sends none). After ``retries`` retries, or at once on another 4xx (the receiver refuses it:
retrying will not help), the alert is dropped and ``webhook_alert_failed`` logged with the
alert's key and the last status or error. The gateway's stop waits for deliveries under way.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from typing import Any

import anyio
import httpx
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from turnout.kernel.hookspecs import hookimpl
from turnout.kernel.observability import scrub
from turnout.kernel.types import Alert

log = structlog.get_logger("turnout.alerts.webhook")

BACKOFF_S = 0.5
"""The first wait before a retry; it doubles with each one."""


class WebhookSettings(BaseModel):
    """The webhook alert sink, the ``[webhook_alerts]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr | None = Field(default=None, description="Where each alert is POSTed as "
                                  "JSON; omitted, the sink is off. Kept secret (masked in logs): "
                                  "webhook URLs often carry a token.")
    timeout_s: float = Field(default=5.0, gt=0, description="Seconds one POST may take, "
                             "connecting included.")
    retries: int = Field(default=3, ge=0, description="How many times a failed POST (5xx, 429, "
                         "connection error, timeout) is tried again before the alert is dropped "
                         "and logged.")
    retry_after_cap_s: float = Field(default=30.0, gt=0, description="Longest wait before a "
                                     "retry, a 429's Retry-After included.")


def body(alert: Alert) -> bytes:
    """The JSON an alert is POSTed as."""
    return orjson.dumps({
        "name": alert.name, "severity": alert.severity, "summary": scrub(alert.summary),
        "labels": alert.labels, "key": alert.key, "resolved": alert.resolved,
        "action": alert.action, "channel": alert.channel, "started_at": alert.started_at,
        "details": alert.details}, default=str)


def retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number or an HTTP date); None when
    absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max((when - (now or dt.datetime.now(dt.timezone.utc))).total_seconds(), 0.0)


class WebhookAlerts:
    """The ``webhook_alerts`` plugin: POSTs every alert to ``[webhook_alerts] url``."""

    name = "webhook_alerts"
    Settings = WebhookSettings

    def __init__(self) -> None:
        self.settings = WebhookSettings()
        self.kernel: Any = None
        self.client: httpx.AsyncClient | None = None
        self._one_at_a_time = anyio.Lock()

    @hookimpl
    def startup(self, kernel) -> None:
        self.kernel = kernel
        self.settings = kernel.plugin_settings(self) or WebhookSettings()
        if self.settings.url is not None:
            self.client = httpx.AsyncClient(timeout=self.settings.timeout_s,
                                            follow_redirects=False)

    @hookimpl
    async def shutdown(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()

    @hookimpl
    def alert(self, alert: Alert) -> None:
        """Hand the POST to the kernel's deferred work; returns at once."""
        if self.client is None or self.kernel is None:
            return
        self.kernel.defer(self.deliver, alert.key, body(alert))

    async def deliver(self, key: str, payload: bytes) -> bool:
        """POST one alert, retrying as the module says; True when delivered. Never raises."""
        async with self._one_at_a_time:
            settings, client = self.settings, self.client
            if client is None or settings.url is None:
                return False
            url = settings.url.get_secret_value()
            cap = settings.retry_after_cap_s
            problem = ""
            for attempt in range(settings.retries + 1):
                wait = min(BACKOFF_S * 2 ** attempt, cap)
                try:
                    response = await client.post(url, content=payload,
                                                 headers={"content-type": "application/json"})
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {scrub(str(exc), limit=200)}"
                else:
                    status = response.status_code
                    if 200 <= status < 300:
                        log.debug("webhook_alert_delivered", alert=key, attempts=attempt + 1)
                        return True
                    problem = f"HTTP {status}"
                    if status == 429:
                        asked = retry_after(response.headers.get("retry-after"))
                        wait = min(asked, cap) if asked is not None else wait
                    elif status < 500:
                        log.error("webhook_alert_failed", alert=key, attempts=attempt + 1,
                                  error=problem, hint="the receiver refused the alert; check "
                                  "what it expects (webhook_alerts.url)")
                        return False
                if attempt < settings.retries:
                    await anyio.sleep(wait)
            log.error("webhook_alert_failed", alert=key, attempts=settings.retries + 1,
                      error=problem, hint="the receiver kept failing; the alert is dropped")
            return False
