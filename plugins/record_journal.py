"""The request record's journal: each finished request's rows, and each score of an answer,
appended to a file before the answer's last byte leaves (before ``Kernel.feedback`` returns), so
that a killed gateway loses no record.

**Format.** One line per record, then ``\\n``; a line is one of two shapes, told apart by its
first character:

* a request: ``orjson`` of ``[requests_row, [attempts_row, ...]]``, the values in the order of
  ``COLUMNS`` and ``ATTEMPT_COLUMNS`` of :mod:`turnout.plugins.sqlite_recorder`. This is the only
  shape journals written before feedback was recorded hold, and it is unchanged, so they replay
  as they are;
* a score of an answer: ``orjson`` of ``{"feedback": feedback_row}``, the values in the order of
  ``FEEDBACK_COLUMNS`` (a :class:`FeedbackRecord`). A version that predates feedback logs such a
  line as unreadable and skips it, as below.

Either is exactly what the writer inserts into either database, SQLite or PostgreSQL (the error
text, the decision and the comment already redacted: the journal never holds what the record may
not). A line is written with one ``os.write`` on a file opened with ``O_APPEND``. A line that
cannot be read back (cut short by a power loss, or written by another version with other
columns) is logged and skipped at replay.

**Segments.** The active segment is the journal path itself (``record.journal``, or a default:
see ``RecordSettings.journal_path``); closing it renames it to ``<journal>.<n>`` (n counting up) and
opens a fresh, empty active file. The writer thread closes the active segment once it is over
:data:`SEGMENT_BYTES` or older than :data:`SEGMENT_AGE_S`; at a clean shutdown, once everything
queued is committed, it deletes the active segment too, so a cleanly stopped gateway leaves no
journal. A journal path that is not a regular file (a device) is never renamed, cut or deleted.

**The invariant: a segment is deleted only once every line in it is committed to the database** (or has
been found unwritable, logged and skipped). Appending a line and putting its rows on the writer's
queue happen under one lock, and so does closing a segment and putting a marker naming it on the
queue; the queue therefore holds the rows of segment n, then segment n's marker, then the rows of
segment n + 1. The writer deletes segment n when it takes the marker, after it has committed every
batch it took before it (a batch the database refuses for now is retried until it is committed,
never passed over).
A line appended while a segment is being closed waits for the lock and lands in the new segment,
behind the marker; none can land in a segment that is being deleted. If the process dies, or
shuts down while the database is unavailable, the segments stay.

**Replay.** At start the writer makes the active file a closed segment, opens a new one, and
inserts every closed segment's rows (oldest first) with ``ON CONFLICT DO NOTHING`` on the
primary keys (a feedback row's is its ``feedback_id``), a request's row and its attempts' rows in
one transaction: rows already committed
before the crash are no-ops, so a row is recorded exactly once however often replay runs. Each
segment is deleted once its rows are committed; then the writer takes live rows (journaled in
the new active segment and queued meanwhile).

**Durability.** No fsync. A line is in the operating system's page cache once ``os.write``
returns, so a process killed at any point (SIGKILL, the OOM killer, a crash) loses nothing that
was answered. A power loss or kernel crash can lose the last seconds of lines (as it can the
database's own WAL, which runs with ``synchronous=NORMAL``). An fsync per request would put a
disk flush (from a fraction of a millisecond on a local SSD to tens of milliseconds on network
or busy disks) on every answer's path and serialise requests behind the disk, for a risk the
database itself does not cover either.

**One journal, one process.** A journal's segments are replayed and deleted by the process that
holds it, so two gateways must never share one: each replica (on one machine, or on a shared
disk) needs its own ``record.journal``, even when they write to one PostgreSQL database. While a
process holds a journal it holds an exclusive ``flock`` on ``.<journal name>.lock`` beside it; a
second process (or a second recorder) naming the same journal fails to start with
:class:`JournalInUse` instead of replaying and deleting the other's rows. The lock dies with the
process, so a SIGKILLed gateway's journal is taken over at its next start.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import structlog

from turnout.kernel.errors import ConfigError

try:
    import fcntl
except ImportError:  # not POSIX: the journal is not guarded against a second process
    fcntl = None  # type: ignore[assignment]

log = structlog.get_logger("turnout.record")

SEGMENT_BYTES = 4 * 1024 * 1024
"""The active segment is closed (and deleted once committed) when it is at least this large."""

SEGMENT_AGE_S = 60.0
"""... or when it is at least this old and not empty."""

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)

Record = tuple[Any, list[Any]]
"""One request's rows: its ``requests`` row and its ``attempts`` rows."""

FEEDBACK_KEY = "feedback"
"""The one key of a feedback line's object."""


class FeedbackRecord(tuple):
    """One score of an answer: its ``feedback`` row, the values in ``FEEDBACK_COLUMNS`` order.
    A tuple like a request's :data:`Record`, so the writer queues and batches both alike."""

    __slots__ = ()


class JournalInUse(ConfigError):
    """Another running process (or recorder) holds this journal: it replays and deletes its
    segments, so a second one must use its own."""


def encode(record: Record | FeedbackRecord) -> bytes:
    """The journal line of ``record`` (a request's rows or a :class:`FeedbackRecord`), newline
    included."""
    if isinstance(record, FeedbackRecord):
        return orjson.dumps({FEEDBACK_KEY: list(record)}, option=orjson.OPT_APPEND_NEWLINE)
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


class Journal:
    """The journal's files on disk. Not thread-safe: the writer calls :meth:`append` and
    :meth:`rotate` under its own lock."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.fd: int | None = None
        self.size = 0
        """Bytes in the active segment: where a short write is cut back to."""
        self.opened_at = time.monotonic()
        self.regular = True
        """False for a device or pipe (``/dev/full``): never renamed, cut or deleted."""
        self.lock_fd: int | None = None
        """The open lock file while this process holds the journal (see :meth:`start`)."""

    # --- the active segment ----------------------------------------------------------------------

    def start(self) -> list[Path]:
        """Take over what an earlier process left: its active file becomes a closed segment.
        Returns every closed segment, oldest first, and opens a new, empty active segment.

        Raises OSError when the journal cannot be opened (the caller logs it; appends retry), and
        :class:`JournalInUse` when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._hold()
        if self.path.is_file() and self.path.stat().st_size:
            os.rename(self.path, self._next_segment())
        segments = self.segments()
        self._open()
        return segments

    def append(self, line: bytes) -> None:
        """Append one line with a single write; raises OSError (ENOSPC, EIO, ...) when it is not
        wholly written, leaving no part of it behind."""
        if self.fd is None:
            self._open()
        assert self.fd is not None
        try:
            written = os.write(self.fd, line)
        except OSError:
            self._cut()
            raise
        if written != len(line):
            self._cut()
            raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes written")
        self.size += written

    def rotate(self) -> Path | None:
        """Close the active segment (renamed to the next ``<journal>.<n>``) and open a new one.
        Returns the closed segment; None when there is nothing to close (empty, not a regular
        file, or never opened). Raises OSError when the rename fails (nothing changed then)."""
        if self.fd is None or not self.regular or self.size == 0:
            return None
        closed = self._next_segment()
        os.rename(self.path, closed)
        old, self.fd = self.fd, None
        os.close(old)
        try:
            self._open()
        except OSError as exc:  # the next append retries, and reports it if it fails again
            log.warning("record_journal_failed", path=str(self.path), error=str(exc))
        return closed

    def close(self, *, discard: bool) -> None:
        """Close the active segment; with ``discard``, delete it (every line is committed)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if discard and self.regular:
            self.path.unlink(missing_ok=True)
        self._release()

    def _open(self) -> None:
        fd = os.open(self.path, _FLAGS, 0o600)
        info = os.fstat(fd)
        self.fd, self.size = fd, info.st_size
        self.regular = stat.S_ISREG(info.st_mode)
        self.opened_at = time.monotonic()

    # --- the lock ---------------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        """The lock file: hidden, beside the journal, so it is never taken for a segment."""
        return self.path.with_name(f".{self.path.name}.lock")

    def _hold(self) -> None:
        """Take the journal's lock for as long as this object has it open; raises
        :class:`JournalInUse` when another holder has it. A device (``/dev/full``) is not locked."""
        if fcntl is None or self.lock_fd is not None or (self.path.exists()
                                                          and not self.path.is_file()):
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise JournalInUse(
                    f"record.journal: {self.path} is in use by another running gateway (or "
                    "recorder); every gateway, every replica of one, needs its own journal: set "
                    "record.journal to a path of its own") from None
            except OSError:
                os.close(fd)
                raise
            # The last holder deletes the file when it lets go: if it did between our open and
            # our lock, we hold a deleted file; take the one that is there now.
            try:
                current = os.stat(self.lock_path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                self.lock_fd = fd
                return
            os.close(fd)

    def _release(self) -> None:
        """Let go of the lock: the file is deleted while still held, then closed."""
        if self.lock_fd is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)
        except OSError:  # left behind: harmless, the next holder locks it again
            pass
        os.close(self.lock_fd)
        self.lock_fd = None

    def _cut(self) -> None:
        """Remove what a failed write may have left, so the next line starts a line."""
        if self.fd is not None and self.regular:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass

    # --- closed segments -------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """The closed segments ``<journal>.<n>``, oldest (lowest n) first."""
        pattern = re.compile(re.escape(self.path.name) + r"\.(\d+)")
        try:
            names = os.listdir(self.path.parent)
        except FileNotFoundError:
            return []
        found = [(int(m.group(1)), name) for name in names if (m := pattern.fullmatch(name))]
        return [self.path.parent / name for _, name in sorted(found)]

    def _next_segment(self) -> Path:
        last = self.segments()
        n = int(last[-1].name.rsplit(".", 1)[1]) + 1 if last else 1
        return self.path.with_name(f"{self.path.name}.{n}")


def read_segment(path: Path, columns: int, attempt_columns: int,
                 feedback_columns: int) -> Iterator[Record | FeedbackRecord]:
    """The records of a closed segment, in order: a request's ``(row, attempts)``, or a
    :class:`FeedbackRecord`. Lines that cannot be read are logged and skipped (a line cut short
    by a power loss, or written with other columns)."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
                if isinstance(value, dict):
                    row = value[FEEDBACK_KEY]
                    if len(value) != 1 or not isinstance(row, list) \
                            or len(row) != feedback_columns:
                        raise ValueError("not the feedback record's columns")
                    record: Record | FeedbackRecord = FeedbackRecord(row)
                else:
                    row, attempts = value
                    if len(row) != columns or any(len(a) != attempt_columns for a in attempts):
                        raise ValueError("not the record's columns")
                    record = (row, attempts)
            except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
                log.warning("record_journal_corrupt", path=str(path), line=number,
                            error=f"{type(exc).__name__}: {exc}")
                continue
            yield record
