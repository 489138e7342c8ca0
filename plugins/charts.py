"""The charts Turnout draws, as PNG bytes (the model bench's heat map excepted, which its plugin
draws itself).

- :func:`stats_png`: the request log over time (a :func:`turnout.plugins.stats.timeline`):
  spend by model per bucket as stacked bars (calls by model when nothing cost anything), and the
  requests' p50, p95 and p99 latency per bucket below. ``turnout stats --png`` writes it; the
  Slack bot's ``/turnout stats`` uploads it for the last 7 days.
- :func:`estimate_png`: ``turnout estimate``'s cost against predicted quality, one labelled
  point per policy (what was recorded, and each policy replayed).

matplotlib is imported on first use, not when this module is, so the gateway does not pay for it
at start; it draws on the Agg canvas (no display needed). Drawing takes tens of milliseconds:
run it off the event loop.
"""

from __future__ import annotations

import io
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turnout.kernel.errors import ConfigError

COLORS = ("#1f3a5f", "#e07b39", "#3c8d5a", "#b8423c", "#7d5ba6", "#8c6d31", "#3b8bb8",
          "#c26ba0", "#6b6b6b")
"""Series colours, in order: one per model, the last for the models folded into "other"."""

MAX_SERIES = 8
"""Models shown apart in the stats chart; the rest are added up as "(other)"."""

LATENCY_STYLE = (("p50", "-", "o"), ("p95", "--", "s"), ("p99", ":", "^"))

MIN_SLOTS = 8
"""The stats chart is at least this many buckets wide, so that a few bars keep their width."""

TITLE_CHARS = 90


class NoData(ValueError):
    """Nothing to draw; the message says what was empty."""


def stats_png(timeline: dict[str, Any], *, title: str | None = None) -> bytes:
    """The chart of a :func:`turnout.plugins.stats.timeline`, as PNG bytes: above, spend by
    model per bucket (US dollars, stacked; calls by model when no call cost anything), the
    :data:`MAX_SERIES` largest models apart and the rest as "(other)"; below, the p50, p95 and
    p99 latency of the requests of each bucket (a gap where a bucket had none). Buckets are
    labelled in UTC. Raises :class:`NoData` when the timeline holds no request and no call."""
    starts = timeline.get("starts") or []
    by_model = timeline.get("by_model") or []
    if not starts or (not any(timeline.get("requests") or ()) and not by_model):
        raise NoData(f"no requests recorded in {timeline.get('path') or 'the request log'}"
                     + (" in that span" if timeline.get("since") is not None else ""))
    spent = any(v > 0 for m in by_model for v in m["spend_usd"])
    what = "spend_usd" if spent else "attempts"
    series = [(m["model"], [float(v) for v in m[what]]) for m in by_model[:MAX_SERIES]]
    rest = by_model[MAX_SERIES:]
    if rest:
        series.append(("(other)", [sum(float(m[what][i]) for m in rest)
                                   for i in range(len(starts))]))

    figure = new_figure(9.0, 6.4)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 2)})
    xs = list(range(len(starts)))
    base = [0.0] * len(starts)
    for n, (name, values) in enumerate(series):
        color = COLORS[n] if name != "(other)" else COLORS[-1]
        top.bar(xs, values, bottom=base, color=color, label=name, width=0.8)
        base = [b + v for b, v in zip(base, values)]
    top.set_ylabel("US dollars" if spent else "calls")
    figure.suptitle(_clip(title or "Requests over time"), fontsize=11)
    top.set_title(("Spend" if spent else "Calls") + " by model per " + _size(timeline["bucket_s"]),
                  loc="left", fontsize=9)
    pad = max(0.6, (MIN_SLOTS - len(xs)) / 2 + 0.5)  # a bar or two stay bars, not slabs
    top.set_xlim(-pad, len(xs) - 1 + pad)
    if series:
        top.legend(loc="upper right", fontsize=8, frameon=False, ncols=min(len(series), 3))
        top.margins(y=0.25)
    latency = timeline.get("latency_ms") or {}
    for key, line, marker in LATENCY_STYLE:
        values = [math.nan if v is None else float(v) for v in latency.get(key) or ()]
        if values and not all(math.isnan(v) for v in values):
            bottom.plot(xs, values, linestyle=line, marker=marker, markersize=4, label=key,
                        color=COLORS[0])
    bottom.set_ylabel("latency, ms")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper left", fontsize=8, frameon=False, ncols=3)
    labels = _labels(starts, timeline["bucket_s"])
    step = max(1, math.ceil(len(xs) / 12))
    bottom.set_xticks(xs[::step], labels[::step], rotation=30, ha="right", fontsize=8)
    bottom.set_xlabel("UTC")
    for axes in (top, bottom):
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
    figure.tight_layout()
    return _png(figure)


def estimate_png(points: list[tuple[str, float, float | None]], *,
                 title: str = "Cost against predicted quality") -> bytes:
    """A scatter of ``points`` (label, cost in US dollars, mean predicted quality), each point
    labelled, as PNG bytes. Points whose quality is unknown cannot be placed: they are listed
    under the axes instead. Raises :class:`NoData` when no point has a quality."""
    placed = [(label, cost, quality) for label, cost, quality in points if quality is not None]
    if not placed:
        raise NoData("no policy has a predicted quality to place it by")

    figure = new_figure(7.0, 5.0)
    axes = figure.add_subplot()
    for n, (label, cost, quality) in enumerate(placed):
        axes.scatter([cost], [quality], s=60, color=COLORS[n % (len(COLORS) - 1)], zorder=3)
        axes.annotate(f"{label}\n${cost:,.4g}, {quality:.3f}", (cost, quality),
                      textcoords="offset points", xytext=(8, 6), fontsize=9)
    axes.set_xlabel("cost, US dollars")
    axes.set_ylabel("mean predicted quality")
    axes.set_title(title)
    axes.set_xlim(left=0)
    axes.margins(x=0.35, y=0.25)
    axes.grid(alpha=0.3)
    missing = [label for label, _, quality in points if quality is None]
    if missing:
        figure.text(0.01, 0.01, "no predicted quality: " + ", ".join(missing), fontsize=8)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    figure.tight_layout()
    return _png(figure)


def _clip(text: str) -> str:
    """A title short enough for the figure: long paths lose their middle."""
    if len(text) <= TITLE_CHARS:
        return text
    half = (TITLE_CHARS - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


def write(command: str, file: str, draw: Callable[[], bytes]) -> int:
    """Draw a chart for ``turnout COMMAND --png FILE`` and write it to ``file``; the exit status.
    No data to draw is said on stderr (status 1, no file written); a missing matplotlib or an
    unwritable path is a ConfigError saying what to do."""
    try:
        png = draw()
    except NoData as exc:
        print(f"turnout {command}: no chart drawn: {exc}", file=sys.stderr)
        return 1
    except ImportError:
        raise ConfigError("--png needs matplotlib, which is not installed: pip install "
                          "matplotlib") from None
    try:
        Path(file).write_bytes(png)
    except OSError as exc:
        raise ConfigError(f"--png {file}: cannot write it ({exc.strerror}); give a writable "
                          "path") from None
    print(f"turnout {command}: chart written to {file} ({len(png):,} bytes)", file=sys.stderr)
    return 0


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure of ``width`` by ``height`` inches at 100 dpi on the Agg canvas (no
    display); matplotlib is imported here, on first use."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def heat_map_png(rows: list[str], columns: list[str], values: list[list[float | None]], *,
                 title: str) -> bytes:
    """A heat map of ``values`` (0 to 1, one row per name in ``rows``, one column per name in
    ``columns``; None where unknown), each cell annotated, red for 0 to green for 1, as PNG
    bytes."""
    grid = [[float("nan") if v is None else v for v in row] for row in values]
    figure = new_figure(1.6 + 1.1 * len(columns), 1.2 + 0.55 * max(len(rows), 1))
    axes = figure.subplots()
    image = axes.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(columns)), labels=columns, rotation=30, ha="right")
    axes.set_yticks(range(len(rows)), labels=rows)
    for y, row in enumerate(values):
        for x, value in enumerate(row):
            dark = value is not None and not 0.25 <= value <= 0.8  # the map's deep ends
            axes.text(x, y, "-" if value is None else f"{value:.2f}", ha="center", va="center",
                      fontsize=9, color="white" if dark else "black")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    figure.tight_layout()
    return _png(figure)


def _png(figure: Any) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _size(seconds: int) -> str:
    for unit, length in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % length == 0:
            n = seconds // length
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds} s"


def _labels(starts: list[float], bucket_s: int) -> list[str]:
    """Bucket starts in UTC: dates for buckets of a day or more, else times, with the date where
    it changes."""
    if bucket_s >= 86400:
        return [time.strftime("%b %d", time.gmtime(t)) for t in starts]
    found, day = [], None
    for t in starts:
        moment = time.gmtime(t)
        today = time.strftime("%b %d", moment)
        found.append(time.strftime("%H:%M", moment) if today == day
                     else f"{today} {time.strftime('%H:%M', moment)}")
        day = today
    return found
