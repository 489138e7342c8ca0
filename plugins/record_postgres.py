"""The request record in PostgreSQL: ``[record] backend = "postgres"``.

The record writer of :mod:`.sqlite_recorder` (batches, backoff, journal, replay) is the same for
both databases; this module is only what differs, the :class:`PostgresSink`, plus what
``turnout stats`` reads (:func:`read_rows`). It speaks psycopg 3's synchronous API, from the
writer thread.

**Schema.** Versioned: :data:`MIGRATIONS` is an ordered list of SQL scripts, version n being the
n-th. At start the sink applies those missing from ``schema_migrations`` in one transaction,
holding ``pg_advisory_xact_lock`` on a key of the schema's name, so replicas starting together
apply each once and wait for each other; a script is never changed once released, a change is a
new script. Every statement runs with ``search_path`` set to ``record.schema``, which is created
if missing.

**Rows.** A batch is inserted in one transaction (``executemany``, pipelined), its ``requests``
rows, its ``attempts`` rows, then its ``feedback`` rows; a replayed batch with ``ON CONFLICT DO
NOTHING`` (a feedback row's key is ``feedback_id``, unique since migration 2). A lost
connection is opened again at the next try. Errors of class 22 (data) and 23 (integrity) mean a
bad row, skipped alone and logged; every other failure (server down, restarting, out of
connections, permission denied, a table gone) means "not now": the batch is kept, in memory and
in the journal, and retried with backoff until the server takes it.

**Secrets.** The dsn's password is registered as a secret when the settings are validated
(:func:`check_dsn`), so no log shows it; messages name the server by :func:`masked`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from turnout.kernel.errors import ConfigError
from turnout.kernel.observability import REDACTED, register_secret, scrub

from .sqlite_recorder import COLUMNS, TABLES, split

log = structlog.get_logger("turnout.record")

MIGRATIONS: list[str] = [
    # 1: the record (the same columns as SQLite's), feedback on answers, spend per day.
    """
    CREATE TABLE requests (
        request_id    text PRIMARY KEY,
        parent_id     text,
        created_at    double precision NOT NULL,
        client        text,
        requested     text,
        route         text,
        model         text,
        provider      text,
        status        text NOT NULL,
        error_kind    text,
        error         text,
        attempts      integer NOT NULL DEFAULT 0,
        input_tokens  bigint NOT NULL DEFAULT 0,
        output_tokens bigint NOT NULL DEFAULT 0,
        cost_usd      double precision NOT NULL DEFAULT 0,
        latency_ms    double precision,
        overhead_ms   double precision,
        stream        boolean NOT NULL DEFAULT false,
        decision      jsonb
    );
    CREATE INDEX requests_created_at ON requests (created_at);
    CREATE INDEX requests_model ON requests (model);
    CREATE TABLE attempts (
        request_id    text NOT NULL,
        n             integer NOT NULL,
        created_at    double precision NOT NULL,
        model         text,
        provider      text,
        status        text,
        error         text,
        latency_ms    double precision,
        input_tokens  bigint,
        output_tokens bigint,
        cost_usd      double precision,
        PRIMARY KEY (request_id, n)
    );
    CREATE INDEX attempts_created_at ON attempts (created_at);
    CREATE TABLE feedback (
        request_id    text NOT NULL,
        created_at    double precision NOT NULL,
        score         double precision,
        comment       text,
        source        text
    );
    CREATE INDEX feedback_request_id ON feedback (request_id);
    COMMENT ON TABLE feedback IS 'What people said of an answer (a score, a comment), by request.';
    CREATE VIEW spend AS
        SELECT (to_timestamp(created_at) AT TIME ZONE 'UTC')::date AS day,
               model, route, client,
               count(*) AS requests,
               sum(cost_usd) AS cost_usd,
               sum(input_tokens)::bigint AS input_tokens,
               sum(output_tokens)::bigint AS output_tokens
        FROM requests
        WHERE parent_id IS NULL
        GROUP BY 1, 2, 3, 4;
    COMMENT ON VIEW spend IS 'Spend per UTC day, model, route and client: top-level requests '
        'only, whose cost includes their sub-requests''.';
    """,
    # 2: feedback as the record writes it: its own id (the key a replay skips rows by) and who
    # gave it. Rows written before have neither; a unique index allows any number of NULLs.
    """
    ALTER TABLE feedback ADD COLUMN feedback_id text, ADD COLUMN user_id text;
    CREATE UNIQUE INDEX feedback_feedback_id ON feedback (feedback_id);
    CREATE INDEX feedback_created_at ON feedback (created_at);
    COMMENT ON COLUMN feedback.request_id IS 'The request judged; it may have no requests row '
        '(not written yet, or never recorded).';
    COMMENT ON COLUMN feedback.score IS 'From -1 (bad) through 0 (neutral) to 1 (good).';
    COMMENT ON COLUMN feedback.source IS 'Where the score came from: api, slack, ...';
    COMMENT ON COLUMN feedback.user_id IS 'Who judged (the gateway key''s name over the API).';
    """,
]
"""The schema's versions, in order: version n is ``MIGRATIONS[n - 1]``. Append, never edit."""

CONNECTION_DEFAULTS = {"connect_timeout": "5", "tcp_user_timeout": "30000",
                       "application_name": "turnout-record"}
"""Connection parameters the dsn may set, else these: give up connecting after 5 s, and on a
server that stopped answering (not even TCP acknowledgements) after 30 s, instead of the
operating system's many minutes, so the writer retries and shutdown does not hang."""

_COLUMN_SQL = {"stream": "%s::int::boolean", "decision": "%s::jsonb"}
"""Placeholders that convert a journal value (SQLite's types) to the PostgreSQL column's."""

_KEYS = {"requests": "request_id", "attempts": "request_id, n", "feedback": "feedback_id"}

_DECISION = COLUMNS.index("decision")

_BAD_ROWS = (psycopg.DataError, psycopg.IntegrityError)
"""What a row, not the server, is to blame for: SQLSTATE classes 22 and 23, and values the
driver cannot send."""


# --- the dsn -----------------------------------------------------------------------------------


def check_dsn(dsn: str) -> str:
    """``dsn`` once it parses as a libpq connection string, its password registered as a secret;
    ValueError saying the accepted forms otherwise."""
    if "://" in dsn and urlsplit(dsn).scheme not in ("postgresql", "postgres"):
        raise ValueError("must start with postgresql:// (or be 'key=value' pairs such as "
                         "'host=127.0.0.1 dbname=turnout')")
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:  # libpq's message may quote the string, password and all
        raise ValueError("not a PostgreSQL connection string: write "
                         "postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE or 'key=value' pairs "
                         "such as 'host=127.0.0.1 dbname=turnout'") from None
    register_secret(params.get("password"))
    return dsn


def masked(dsn: str) -> str:
    """``dsn`` without its password, for messages and logs."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
        dsn = urlunsplit(parts)
    # Key/value pairs: a quoted password may hold spaces, which scrub's pattern stops at.
    dsn = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)",
                 lambda m: m.group(1) + REDACTED, dsn)
    return scrub(dsn)


def server_identity(dsn: str) -> str:
    """Which database ``dsn`` names, without user or password: host, port and database."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return dsn
    return "|".join(params.get(key) or "" for key in ("host", "hostaddr", "port", "dbname"))


# --- connecting --------------------------------------------------------------------------------


def connect(dsn: str, schema: str) -> psycopg.Connection:
    """An autocommit connection whose ``search_path`` is ``schema``; raises psycopg's errors."""
    given = conninfo_to_dict(dsn)
    extra = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
    conn = psycopg.connect(dsn, autocommit=True, **extra)
    try:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    except BaseException:
        conn.close()
        raise
    return conn


def unreachable(dsn: str, exc: psycopg.Error) -> ConfigError:
    """The start-up error for a server that cannot be reached: which one, and what to do."""
    said = " ".join(str(exc).split())
    return ConfigError(
        f"record.dsn: cannot reach PostgreSQL at {masked(dsn)} ({scrub(said)}). Start the "
        "server there (e.g. `systemctl start postgresql` or `pg_ctl -D DATADIR start`) and "
        "create the database if it does not exist (`createdb`), or fix record.dsn (host, port, "
        'user, password, database); or set record.backend = "sqlite" to record to a local '
        "file instead")


def lock_key(schema: str) -> int:
    """The advisory lock that serialises migrations of ``schema`` (a signed 64-bit key)."""
    digest = hashlib.sha256(f"turnout.record.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def migrate(conn: psycopg.Connection, schema: str) -> list[int]:
    """Create ``schema`` if missing and apply the :data:`MIGRATIONS` it lacks, in one transaction
    under an advisory lock; the versions applied now (none when another replica did)."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(schema)])
        # Looked up first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
        # database even when the schema is there.
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone() \
                is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        for version, script in enumerate(MIGRATIONS, 1):
            if version not in done:
                conn.execute(script)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", [version])
                applied.append(version)
    return applied


# --- the sink ----------------------------------------------------------------------------------


class PostgresSink:
    """The record in a PostgreSQL schema, for the record writer (see :class:`Sink` in
    :mod:`.sqlite_recorder`). Made on any thread; used from the writer thread only."""

    errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __init__(self, dsn: str, schema: str = "public") -> None:
        """Connect and bring the schema up to date; ConfigError saying which server cannot be
        reached, or what keeps the tables from being created, and what to do."""
        self.dsn, self.schema = dsn, schema
        self.where = f"{masked(dsn)} (schema {schema})"
        self.conn: psycopg.Connection | None = None
        try:
            self.conn = connect(dsn, schema)
        except psycopg.OperationalError as exc:
            raise unreachable(dsn, exc) from None
        try:
            self.migrated = migrate(self.conn, schema)
        except psycopg.Error as exc:
            self.close()
            raise ConfigError(
                f"record.schema: cannot create the request record's tables in schema {schema!r} "
                f"at {masked(dsn)}: {self.reason(exc)}. Grant the user CREATE on the database "
                "(or on the schema), or point record.schema or record.dsn elsewhere") from None
        if self.migrated:
            log.info("record_schema_migrated", path=self.where, versions=self.migrated)
        self._sql = {(table, replay): _insert_sql(table, replay)
                     for table in TABLES for replay in (False, True)}

    def insert(self, records: list[Any], replay: bool) -> int:
        """Insert ``records`` in one transaction; the request and feedback rows inserted.
        Reconnects first when the connection was lost (the server restarted)."""
        conn = self._connection()
        requests, feedback = split(records)
        inserted = 0
        with conn.transaction(), conn.cursor() as cur:
            if requests:
                cur.executemany(self._sql["requests", replay], [_clean(r) for r, _ in requests])
                inserted += cur.rowcount
            attempts = [_clean(a) for _, rows in requests for a in rows]
            if attempts:
                cur.executemany(self._sql["attempts", replay], attempts)
            if feedback:
                cur.executemany(self._sql["feedback", replay], [_clean(f) for f in feedback])
                inserted += cur.rowcount
        return inserted

    def _connection(self) -> psycopg.Connection:
        conn = self.conn
        if conn is None or conn.closed or conn.broken:
            self.close()
            conn = connect(self.dsn, self.schema)
            migrate(conn, self.schema)  # the same server after a restart: a no-op
            self.conn = conn
        return conn

    def transient(self, exc: Exception) -> bool:
        """Everything but a bad row: the server is down, restarting, full, or refuses us."""
        return isinstance(exc, psycopg.Error) and not isinstance(exc, _BAD_ROWS)

    def duplicate(self, exc: Exception) -> bool:
        """A unique violation: the request (or feedback) is recorded already."""
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def reason(self, exc: Exception) -> str:
        """The server's primary message (not the failing row it details), on one line."""
        diag = getattr(exc, "diag", None)
        text = getattr(diag, "message_primary", None) or str(exc) or type(exc).__name__
        return " ".join(text.split())

    def close(self) -> None:
        """Close the connection, if open."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass


def _insert_sql(table: str, replay: bool) -> sql.Composed:
    """The INSERT of one row of ``table``; for replay, a no-op on a primary key already there."""
    columns = TABLES[table]
    conflict = f" ON CONFLICT ({_KEYS[table]}) DO NOTHING" if replay else ""
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}){}").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.SQL(_COLUMN_SQL.get(c, "%s")) for c in columns),
        sql.SQL(conflict))


def _clean(row: Any) -> Any:
    """``row`` as PostgreSQL takes it: text cannot hold NUL characters, which SQLite and the
    journal keep, so they become U+FFFD (in the decision's JSON, its ``\\u0000`` escapes)."""
    if not any(isinstance(v, str) and ("\x00" in v or "\\u0000" in v) for v in row):
        return row
    cleaned = [v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row]
    if len(row) == len(COLUMNS) and isinstance(cleaned[_DECISION], str):
        cleaned[_DECISION] = cleaned[_DECISION].replace("\\u0000", "\\ufffd")
    return cleaned


# --- reading, for turnout stats ----------------------------------------------------------------

REQUEST_FIELDS = "route, status, cost_usd, latency_ms, overhead_ms"
ATTEMPT_FIELDS = "model, provider, status, cost_usd, latency_ms, input_tokens, output_tokens"
FEEDBACK_QUERY = ("SELECT r.model, r.provider, f.score FROM feedback f "
                  "LEFT JOIN requests r ON r.request_id = f.request_id "
                  "WHERE f.created_at >= %s AND f.score IS NOT NULL")
"""Every score given at or after a time, with the model and provider that answered (NULL when
the request is not recorded)."""


@contextmanager
def snapshot(dsn: str, schema: str) -> Iterator[psycopg.Connection]:
    """A read-only connection to the record in ``schema``, every query in one repeatable-read
    snapshot: for commands that read the record while gateways write it. ConfigError when the
    server cannot be reached or holds no record in ``schema``."""
    try:
        conn = connect(dsn, schema)
    except psycopg.OperationalError as exc:
        raise unreachable(dsn, exc) from None
    try:
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        if conn.execute("SELECT to_regclass('requests') IS NOT NULL AND "
                        "to_regclass('attempts') IS NOT NULL").fetchone()[0] is not True:
            raise ConfigError(
                f"no requests have been recorded in schema {schema!r} at {masked(dsn)} yet (no "
                'record tables). Start the gateway with [record] backend = "postgres" and this '
                "dsn, or point at another with --dsn DSN and --schema NAME (or record.dsn and "
                "record.schema in the config).")
        yield conn
        conn.rollback()
    finally:
        conn.close()


def read_rows(dsn: str, schema: str,
              since: float | None) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """The top-level requests and every attempt created at or after ``since``, and every score
    given since then with its request's model, in one snapshot: what
    :func:`turnout.plugins.stats.summarize_rows` needs."""
    window = [since if since is not None else float("-inf")]
    with snapshot(dsn, schema) as conn:
        requests = conn.execute(f"SELECT {REQUEST_FIELDS} FROM requests "
                                "WHERE created_at >= %s AND parent_id IS NULL", window).fetchall()
        attempts = conn.execute(f"SELECT {ATTEMPT_FIELDS} FROM attempts WHERE created_at >= %s",
                                window).fetchall()
        feedback = conn.execute(FEEDBACK_QUERY, window).fetchall()
    return requests, attempts, feedback
