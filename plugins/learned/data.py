"""Per-prompt outcome CSVs: a ``prompt`` column, then one True/False correctness column per model,
the weak (cheap) model first and the strong one second. Any number of files, any names."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

_TRUE = {"true", "1", "yes", "t", "1.0"}
_FALSE = {"false", "0", "no", "f", "0.0", ""}


@dataclass(slots=True)
class Outcomes:
    """Prompts with whether the weak and the strong model answered each correctly, and the group
    (the file's stem) each came from."""

    prompts: list[str] = field(default_factory=list)
    weak: list[bool] = field(default_factory=list)
    strong: list[bool] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, keep: list[int]) -> Outcomes:
        """The rows at the indices ``keep``."""
        return Outcomes([self.prompts[i] for i in keep], [self.weak[i] for i in keep],
                        [self.strong[i] for i in keep], [self.groups[i] for i in keep])


def _flag(value: str, where: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where}: expected True or False, got {value[:20]!r}")


def read_file(path: Path, into: Outcomes | None = None) -> Outcomes:
    """Read one CSV (``prompt``, weak column, strong column) into ``into`` (or a new set)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    out = into if into is not None else Outcomes()
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[0].strip() != "prompt" or len(header) < 3:
            raise ValueError(f"{path}: the first row must be 'prompt', then the weak model's column, "
                             f"then the strong model's (got {header!r})")
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"{path}:{number}"
            out.prompts.append(row[0])
            out.weak.append(_flag(row[1], where))
            out.strong.append(_flag(row[2], where))
            out.groups.append(path.stem)
    return out


def read_dir(directory: str | Path, limit: int | None = None) -> Outcomes:
    """Read every ``*.csv`` under ``directory`` (sorted by name); ``limit`` keeps the first rows
    of each file."""
    root = Path(directory)
    files = sorted(root.rglob("*.csv")) if root.is_dir() else [root]
    if not files:
        raise ValueError(f"{root}: no .csv files found; point at a folder of per-prompt outcome CSVs")
    out = Outcomes()
    for path in files:
        part = read_file(path)
        keep = range(len(part)) if limit is None else range(min(limit, len(part)))
        for i in keep:
            out.prompts.append(part.prompts[i])
            out.weak.append(part.weak[i])
            out.strong.append(part.strong[i])
            out.groups.append(part.groups[i])
    return out
