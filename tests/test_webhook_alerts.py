"""The webhook alert sink against a local receiver: the JSON delivered, retries on 5xx and
connection errors, a 429's Retry-After waited out (and capped), giving up after ``retries`` with a
log line, and never holding up whoever raised the alert."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from turnout.kernel.config import parse
from turnout.kernel.kernel import Kernel
from turnout.kernel.types import Alert
from turnout.plugins import webhook_alerts
from turnout.plugins.webhook_alerts import WebhookAlerts, retry_after

from .fakes.server import free_port, serve

pytestmark = pytest.mark.anyio

TOKEN = "T0KEN-in-the-url-4f9a2c"
ALERT = Alert("latency_p95", "warning", "p95 latency of model 'strong' is 9100 ms",
              {"model": "strong", "above_ms": "8000"}, channel="#llm-ops",
              action="shift_traffic", started_at=1_750_000_000.0,
              details={"p95_ms": 9100.0, "requests": 240, "window_s": 60.0})


class Receiver:
    """A webhook that answers from a script of (status, headers) and notes what it got."""

    def __init__(self, *answers: tuple[int, dict[str, str]] | int, delay_s: float = 0.0) -> None:
        self.answers = [a if isinstance(a, tuple) else (a, {}) for a in answers]
        self.delay_s = delay_s
        self.got: list[tuple[float, dict, str]] = []

    async def hook(self, request):
        self.got.append((time.monotonic(), await request.json(),
                         request.headers.get("content-type", "")))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, headers = self.answers.pop(0) if self.answers else (204, {})
        return Response(status_code=status, headers=headers)

    def app(self) -> Starlette:
        return Starlette(routes=[Route(f"/hook/{TOKEN}", self.hook, methods=["POST"])])


def sink(url: str | None, **settings) -> Kernel:
    tree = {"webhook_alerts": {**({"url": url} if url else {}), **settings}}
    return Kernel(parse(tree, source="test"), builtins={
        "stores": "turnout.adapters.stores",
        "webhook_alerts": "turnout.plugins.webhook_alerts:WebhookAlerts"})


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook_alerts, "BACKOFF_S", 0.02)


async def test_an_alert_is_posted_as_json() -> None:
    receiver = Receiver(200)
    with serve(receiver.app()) as url:
        async with sink(f"{url}/hook/{TOKEN}") as kernel:
            await kernel.alert(ALERT)
            await kernel.idle()
    (_, body, content_type), = receiver.got
    assert content_type == "application/json"
    assert body == {"name": "latency_p95", "severity": "warning",
                    "summary": "p95 latency of model 'strong' is 9100 ms",
                    "labels": {"model": "strong", "above_ms": "8000"},
                    "key": 'latency_p95{above_ms="8000",model="strong"}', "resolved": False,
                    "action": "shift_traffic", "channel": "#llm-ops",
                    "started_at": 1_750_000_000.0,
                    "details": {"p95_ms": 9100.0, "requests": 240, "window_s": 60.0}}


async def test_a_5xx_is_retried_with_growing_waits() -> None:
    receiver = Receiver(500, 503, 204)
    with serve(receiver.app()) as url:
        async with sink(f"{url}/hook/{TOKEN}", retries=3) as kernel:
            await kernel.alert(ALERT)
            await kernel.idle()
    times = [at for at, _, _ in receiver.got]
    assert len(times) == 3 and receiver.answers == []
    assert times[1] - times[0] >= 0.02 and times[2] - times[1] >= 0.04


async def test_a_429s_retry_after_is_waited_out_and_capped() -> None:
    receiver = Receiver((429, {"Retry-After": "1"}), (429, {"Retry-After": "3600"}), 204)
    with serve(receiver.app()) as url:
        async with sink(f"{url}/hook/{TOKEN}", retry_after_cap_s=0.3) as kernel:
            await kernel.alert(ALERT)
            await kernel.idle()
    times = [at for at, _, _ in receiver.got]
    assert len(times) == 3
    assert 0.28 <= times[1] - times[0] < 1, "Retry-After: 1 capped at 0.3 s"
    assert 0.28 <= times[2] - times[1] < 1, "an hour capped at 0.3 s"

    receiver = Receiver((429, {"Retry-After": "1"}), 204)
    with serve(receiver.app()) as url:
        async with sink(f"{url}/hook/{TOKEN}") as kernel:
            await kernel.alert(ALERT)
            await kernel.idle()
    first, second = (at for at, _, _ in receiver.got)
    assert second - first >= 0.95, "waits the whole second it was asked to"


async def test_it_gives_up_after_its_retries_and_says_so_without_the_url() -> None:
    receiver = Receiver(500, 500, 500, 500)
    with serve(receiver.app()) as url, capture_logs() as logs:
        async with sink(f"{url}/hook/{TOKEN}", retries=2) as kernel:
            await kernel.alert(ALERT)
            await kernel.idle()
    assert len(receiver.got) == 3
    failed = [e for e in logs if e["event"] == "webhook_alert_failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 3 and failed[0]["error"] == "HTTP 500"
    assert failed[0]["alert"] == ALERT.key
    assert TOKEN not in repr(logs)


async def test_a_refusal_is_not_retried_and_an_unreachable_hook_is() -> None:
    receiver = Receiver(400)
    with serve(receiver.app()) as url, capture_logs() as logs:
        async with sink(f"{url}/hook/{TOKEN}") as kernel:
            await kernel.alert(ALERT)
            await kernel.idle()
    assert len(receiver.got) == 1
    assert [e["error"] for e in logs if e["event"] == "webhook_alert_failed"] == ["HTTP 400"]

    with capture_logs() as logs:
        async with sink(f"http://127.0.0.1:{free_port()}/hook/{TOKEN}", retries=1) as kernel:
            await kernel.alert(ALERT)
            await kernel.idle()
    failed, = (e for e in logs if e["event"] == "webhook_alert_failed")
    assert failed["attempts"] == 2 and failed["error"].startswith("ConnectError")
    assert TOKEN not in repr(logs)


async def test_whoever_raises_the_alert_does_not_wait_for_the_webhook() -> None:
    receiver = Receiver(204, 204, delay_s=0.5)
    with serve(receiver.app()) as url:
        async with sink(f"{url}/hook/{TOKEN}") as kernel:
            started = time.monotonic()
            await kernel.alert(ALERT)
            await kernel.alert(Alert(ALERT.name, "warning", "resolved", ALERT.labels,
                                     resolved=True))
            assert time.monotonic() - started < 0.2
            await kernel.idle()
    assert [body["resolved"] for _, body, _ in receiver.got] == [False, True], "in order"


async def test_without_a_url_the_sink_is_off() -> None:
    async with sink(None) as kernel:
        plugin = kernel.plugins.get("webhook_alerts")
        assert isinstance(plugin, WebhookAlerts) and plugin.client is None
        await kernel.alert(ALERT)
        assert not kernel._deferred


def test_retry_after_reads_seconds_and_dates() -> None:
    now = dt.datetime(2025, 6, 16, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert retry_after("2") == 2.0 and retry_after("0.5") == 0.5
    assert retry_after("Mon, 16 Jun 2025 12:00:30 GMT", now) == 30.0
    assert retry_after("Mon, 16 Jun 2025 11:00:00 GMT", now) == 0.0
    assert retry_after(None) is None and retry_after("soon") is None


async def test_secret_looking_text_in_a_summary_is_masked() -> None:
    receiver = Receiver(204)
    with serve(receiver.app()) as url:
        async with sink(f"{url}/hook/{TOKEN}") as kernel:
            await kernel.alert(Alert("x", "info", "upstream said Bearer sk-abcdefgh12345678"))
            await kernel.idle()
    assert "sk-abcdefgh12345678" not in receiver.got[0][1]["summary"]
