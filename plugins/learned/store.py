"""Model files as the router loads them: read once per path, and read again when the file
changes (checked at most every ``RECHECK_S`` seconds), so ``turnout router retrain`` writing a
new model reaches a running gateway without a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from .model import Model

SHIPPED = Path(__file__).with_name("mmlu.json")
"""The model shipped with Turnout: trained on the per-prompt outcomes of two models on MMLU."""

RECHECK_S = 30.0
"""How often a loaded model file's modification time is looked at again."""

_lock = threading.Lock()
_loaded: dict[str, tuple[float, float, Model]] = {}     # path -> (mtime, checked at, model)


def load(path: str | Path | None = None) -> Model:
    """The model in ``path`` (default: the shipped one), from memory unless the file changed."""
    where = str(Path(path).expanduser() if path else SHIPPED)
    now = time.monotonic()
    with _lock:
        entry = _loaded.get(where)
        if entry is not None and now - entry[1] < RECHECK_S:
            return entry[2]
    try:
        mtime = Path(where).stat().st_mtime
    except OSError as exc:
        if entry is not None:           # keep serving the model we have
            return entry[2]
        raise ValueError(f"cannot read the learned router's model {where!r} ({exc.strerror}); "
                         f"train one with `turnout router train --data DIR --out FILE`") from None
    if entry is not None and entry[0] == mtime:
        model = entry[2]
    else:
        model = Model.load(where)
    with _lock:
        _loaded[where] = (mtime, now, model)
    return model
