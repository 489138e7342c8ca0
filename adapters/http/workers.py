"""``turnout serve --workers N``: one supervisor process, N worker processes on one socket.

The supervisor binds the listening socket once (``server.host``, ``server.port``) and starts N
worker processes; each loads the config itself, runs its own kernel and the uvicorn-based
:class:`~.server.EdgeServer` (with every edge limit of ``server.*``) on that socket. The workers
share only what the config makes shared: the store (``[state] backend = "redis"``) and the
request log's database. With the memory store ``turnout serve`` refuses more than one worker
before anything starts (each worker would keep its own rate limits, budgets and cache).

**One inherited socket, not SO_REUSEPORT.** This is what uvicorn's own ``--workers`` and
gunicorn do (``Config.bind_socket`` then ``Multiprocess``), and it is chosen here because:

- the port is bound once, by the supervisor, so a port that is taken (or an address that cannot
  be bound) fails at once with one message and status 3, before any worker starts. With
  SO_REUSEPORT every worker binds by itself, and a second gateway (or anything run by the same
  user with the option set) binds the same port without error and silently takes half of the
  connections;
- connections waiting in the accept queue belong to the socket, not to a worker: a worker that
  dies loses only the connections it had accepted, and its replacement accepts from the same
  queue. With SO_REUSEPORT each worker has its own queue, and the connections hashed to a dying
  worker's queue are reset;
- a worker that is busy accepts less: idle workers take the next connections. SO_REUSEPORT
  spreads connections by a hash of their addresses, whatever each worker's load.

The price: every idle worker wakes when a connection arrives (all but one find nothing to
accept), and a *burst* of connections is not spread. A worker's event loop accepts every
connection waiting when it wakes, so when many arrive at once (a load generator, or a balancer
opening its keep-alive pool) the first worker to wake may take most of them, and keep-alive
keeps them there: 32 connections opened at once over two workers were split 31/1, 29/3 and
16/16 in three tries. SO_REUSEPORT would spread such a burst by hash. Traffic whose connections
come and go, or are opened as load grows, is spread by idleness.

**Processes** are started with multiprocessing's ``spawn`` (as uvicorn does): each worker is a
fresh interpreter that imports, validates and loads everything itself, so nothing a thread or a
connection of the supervisor holds is copied into it, and each process draws its own request-id
prefix. On Linux a worker is sent SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``), so a
killed supervisor leaves no worker serving.

**Each worker's request-log journal is its own.** A journal is held (``flock``) by one process
(see ``plugins/record_journal.py``), so worker 0 uses the journal one process would
(``record.journal``, else the backend's default) and worker k > 0 the same path with
``.workerK`` before its suffix (``turnout.db.worker1.journal``); a restarted worker takes its
slot's journal and replays what its predecessor left. With ``[record] backend = "sqlite"`` every
worker writes the one SQLite file: it is in WAL mode, a writer waits up to five seconds for
another's lock, and a batch refused as busy is retried with backoff, never dropped.

**Lifecycle.**

- Start: the supervisor waits until every worker's kernel has started (its lifespan finished)
  and then prints the banner. A worker that exits before (a store or database unreachable, a
  provider that cannot be built: the worker says why on standard error) stops the others, and
  the supervisor exits with status 3 instead of starting it again.
- A worker that dies while serving is logged (``worker_died``, with its exit status or signal)
  and replaced in its slot. A replacement that cannot start is retried after 1, 2, 4, 8 and
  16 s; after :data:`RESTART_ATTEMPTS` failures in a row the supervisor stops every worker and
  exits with status 3.
- SIGTERM or SIGINT to the supervisor is passed on (as SIGTERM) to every worker, which drains as
  one process does: it stops accepting, lets requests in flight finish (``server.
  shutdown_timeout_s``), stops its kernel (settling holds, flushing the record). The supervisor
  exits with status 0 once every worker has exited cleanly, 1 otherwise. A second SIGTERM or
  SIGINT (or a drain past :func:`drain_deadline_s`) kills the workers that are left (SIGKILL; the
  journals keep what they answered). Ctrl-C in a terminal reaches the workers too: a worker
  treats a repeated signal as the first one, so only the supervisor's second signal forces.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from turnout.kernel.config import Config, Server

from .server import CANCEL_GRACE_S, EdgeServer

log = structlog.get_logger("turnout.workers")

BACKLOG = 2048
"""The listening socket's accept queue (uvicorn's default)."""

RESTART_ATTEMPTS = 5
"""Replacements of one worker that may fail to start in a row before the supervisor gives up."""

RESTART_BACKOFF_S = 1.0
"""The pause before the second attempt to replace a worker; it doubles with each failure."""

POLL_S = 0.2
"""How often the supervisor looks at its workers and at the signals it received."""

DRAIN_SLACK_S = 30.0
"""Beyond ``server.shutdown_timeout_s`` and the cancelled requests' grace: how long a stopping
worker may take to stop its kernel (settle holds, flush the request log) before it is killed."""

_spawn = multiprocessing.get_context("spawn")


def memory_store_refusal(workers: int) -> str:
    """What ``turnout serve --workers N`` (N > 1) says with the memory store, on one line."""
    return (f"turnout: --workers {workers} needs a shared store: each worker would keep its own "
            "rate limits, budgets and cache. Set [state] backend = \"redis\" (and [state] url) in "
            "the config, or run one worker.")


def drain_deadline_s(server: Server) -> float:
    """How long the supervisor waits for its workers to stop after passing on SIGTERM."""
    return server.shutdown_timeout_s + CANCEL_GRACE_S + DRAIN_SLACK_S


# --- the socket ------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from, bound and listening; OSError when the
    address cannot be bound (taken, not local)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


# --- a worker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with (pickled to it): where the config is, the server
    overrides of the command line, the connection cap fitted by the supervisor, its slot."""

    config_path: str | None
    host: str
    port: int
    max_connections: int
    index: int
    count: int


def journal_for(path: str, index: int) -> str:
    """Worker ``index``'s request-log journal, from the path one process would use: worker 0
    keeps it, worker k > 0 gets ``.workerK`` before the suffix (``turnout.db.worker1.journal``)."""
    if index == 0:
        return path
    p = Path(path)
    if p.suffix:
        return str(p.with_name(f"{p.stem}.worker{index}{p.suffix}"))
    return f"{path}.worker{index}"


def worker_config(config: Config, index: int) -> Config:
    """``config`` for worker ``index``: its own request-log journal (see :func:`journal_for`),
    everything else as written."""
    if index == 0 or "record" in config.plugins.disable:
        return config
    from turnout.plugins.sqlite_recorder import RecordSettings

    table = dict(config.section("record") or {})
    settings = RecordSettings.model_validate(table)
    base = settings.journal_path(config.server.port) if settings.enabled else None
    if base is None:  # no record, or ':memory:' (no journal)
        return config
    table["journal"] = journal_for(base, index)
    return config.model_copy(update={"record": table})


class WorkerServer(EdgeServer):
    """The edge server of one worker: says when it serves (``ready``), and ends on SIGTERM or
    SIGINT without re-raising the signal after its graceful shutdown (the worker exits 0), a
    repeated signal changing nothing (a terminal's Ctrl-C reaches every worker; forcing is the
    supervisor's)."""

    def __init__(self, *args: Any, ready: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.ready.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.should_exit = True


def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when the supervisor dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def _tag(index: int) -> Any:
    """A structlog processor adding ``worker=index`` to every log line of this process."""
    def add_worker(logger: Any, method: str, event: dict) -> dict:
        event.setdefault("worker", index)
        return event

    return add_worker


def run_worker(spec: WorkerSpec, sock: socket.socket, ready: Any, parent: int) -> None:
    """A worker process's life: load the config, start the kernel and serve on ``sock`` until
    SIGTERM; exits 3 when it cannot start, 0 after a graceful shutdown."""
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the line above
        sys.exit(1)
    from turnout.adapters.http.app import Served
    from turnout.kernel import config as config_module
    from turnout.kernel.errors import TurnoutError
    from turnout.kernel.kernel import Kernel
    from turnout.kernel.observability import configure_logging

    from .server import build, run

    try:
        config = config_module.load(spec.config_path)
        server = config.server.model_copy(update={"host": spec.host, "port": spec.port})
        config = worker_config(config.model_copy(update={"server": server}), spec.index)
        configure_logging(config.logging)
        structlog.configure(processors=[_tag(spec.index),
                                        *structlog.get_config()["processors"]])
        kernel = Kernel(config)
        kernel.load_plugins()
    except TurnoutError as exc:
        print(f"turnout: worker {spec.index}: {exc.message}", file=sys.stderr, flush=True)
        sys.exit(3)
    edge = build(Served(kernel), server, spec.max_connections, server_class=WorkerServer,
                 ready=ready)
    if not run(edge, sockets=[sock]):
        sys.exit(3)


# --- the supervisor --------------------------------------------------------------------------


class Slot:
    """One worker's place: its process (replaced when it dies) and its readiness."""

    def __init__(self, supervisor: "Supervisor", index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.process: Any = None
        self.ready: Any = None
        self.failures = 0  # replacements that failed to start, in a row
        self.retry_at: float | None = None  # when to try again after such a failure

    def start(self) -> None:
        s = self.supervisor
        spec = WorkerSpec(config_path=s.config_path, host=s.server.host, port=s.port,
                          max_connections=s.max_connections, index=self.index, count=s.count)
        self.ready = _spawn.Event()
        self.process = _spawn.Process(target=run_worker, name=f"turnout-worker-{self.index}",
                                      args=(spec, s.sock, self.ready, os.getpid()), daemon=False)
        self.process.start()
        self.retry_at = None
        log.info("worker_started", worker=self.index, pid=self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                os.kill(self.process.pid, sig)
            except ProcessLookupError:
                pass


def how_it_ended(exitcode: int | None) -> dict[str, Any]:
    """A worker's end for a log line: its exit status, or the signal that ended it."""
    if exitcode is not None and exitcode < 0:
        try:
            return {"signal": signal.Signals(-exitcode).name}
        except ValueError:
            return {"signal": -exitcode}
    return {"status": exitcode}


class Supervisor:
    """Starts ``count`` workers on ``sock``, keeps them running, stops them on a signal."""

    def __init__(self, config_path: str | None, server: Server, sock: socket.socket,
                 count: int, max_connections: int, banner: str) -> None:
        self.config_path = config_path
        self.server = server
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.count = count
        self.max_connections = max_connections
        self.banner = banner
        self.slots = [Slot(self, i) for i in range(count)]
        self.signals: list[int] = []

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)

    def run(self) -> int:
        """Serve until a signal; the supervisor's exit status."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not self._start_all():
                return 3 if not self.signals else self._stop()
            print(self.banner, file=sys.stderr, flush=True)
            while not self.signals:
                self._watch()
                if self._gave_up():
                    self._stop()
                    return 3
            return self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.sock.close()

    def _start_all(self) -> bool:
        """Start every worker and wait until each serves; False (the others stopped) when one
        exits first, or a signal comes."""
        for slot in self.slots:
            slot.start()
        while not all(slot.ready.is_set() for slot in self.slots):
            if self.signals:
                return False
            for slot in self.slots:
                if not slot.alive and not slot.ready.is_set():
                    log.error("worker_failed_to_start", worker=slot.index, pid=slot.process.pid,
                              **how_it_ended(slot.process.exitcode))
                    print(f"turnout: cannot start: worker {slot.index} exited before it served "
                          "(its reason is above); stopping the others", file=sys.stderr,
                          flush=True)
                    self._stop()
                    return False
            wait([slot.process.sentinel for slot in self.slots if slot.alive], timeout=POLL_S)
        log.info("workers_ready", workers=self.count,
                 pids=[slot.process.pid for slot in self.slots])
        return True

    def _watch(self) -> None:
        """Wait a moment for a worker to end; replace the ones that did."""
        wait([slot.process.sentinel for slot in self.slots if slot.alive], timeout=POLL_S)
        now = time.monotonic()
        for slot in self.slots:
            if slot.alive:
                if slot.failures and slot.ready.is_set():
                    slot.failures = 0
                continue
            if slot.retry_at is not None:
                if now >= slot.retry_at:
                    slot.start()
                continue
            ended = how_it_ended(slot.process.exitcode)
            if slot.ready.is_set():
                log.warning("worker_died", worker=slot.index, pid=slot.process.pid, **ended)
                slot.failures = 0
                slot.start()
                continue
            slot.failures += 1
            log.error("worker_failed_to_start", worker=slot.index, pid=slot.process.pid,
                      failures=slot.failures, **ended)
            if slot.failures < RESTART_ATTEMPTS:
                slot.retry_at = now + RESTART_BACKOFF_S * 2 ** (slot.failures - 1)

    def _gave_up(self) -> bool:
        for slot in self.slots:
            if slot.failures >= RESTART_ATTEMPTS and not slot.alive:
                print(f"turnout: worker {slot.index} failed to start {slot.failures} times in a "
                      "row (its reason is above); stopping", file=sys.stderr, flush=True)
                return True
        return False

    def _stop(self) -> int:
        """Pass SIGTERM on to every worker and wait for them to drain; 0 when all exited
        cleanly. A second signal, or the drain deadline, kills what is left."""
        seen = len(self.signals)
        self.sock.close()  # the workers hold their own copies until they stop accepting
        log.info("workers_stopping", workers=sum(slot.alive for slot in self.slots))
        for slot in self.slots:
            slot.signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_deadline_s(self.server)
        while any(slot.alive for slot in self.slots):
            if len(self.signals) > seen:
                log.warning("workers_killed", reason="a second signal")
                break
            if time.monotonic() > deadline:
                log.warning("workers_killed", reason="the drain deadline passed",
                            deadline_s=drain_deadline_s(self.server))
                break
            wait([slot.process.sentinel for slot in self.slots if slot.alive], timeout=POLL_S)
        clean = True
        for slot in self.slots:
            if slot.alive:
                slot.signal(signal.SIGKILL)
                slot.process.join()
                clean = False
            elif slot.process is not None:
                slot.process.join()
                if slot.process.exitcode != 0 and slot.ready.is_set():
                    clean = False
                    log.warning("worker_stopped_uncleanly", worker=slot.index,
                                pid=slot.process.pid, **how_it_ended(slot.process.exitcode))
        log.info("workers_stopped", clean=clean)
        return 0 if clean else 1


def supervise(config_path: str | None, server: Server, workers: int, max_connections: int,
              banner: str) -> int:
    """Bind ``server.host:server.port`` and run ``workers`` worker processes on it until SIGTERM
    or SIGINT; the exit status (0 after a clean drain, 3 when the port or a worker cannot
    start)."""
    try:
        sock = bind(server.host, server.port)
    except OSError as exc:
        print(f"turnout: cannot start: cannot listen on {server.host}:{server.port}: "
              f"{exc.strerror or exc}; stop what uses the port or choose another (--port)",
              file=sys.stderr, flush=True)
        return 3
    port = sock.getsockname()[1]
    banner = banner.replace(f":{server.port}/", f":{port}/", 1)
    return Supervisor(config_path, server, sock, workers, max_connections,
                      f"{banner}; {workers} worker processes").run()
