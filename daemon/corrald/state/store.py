"""Durable state in one SQLite file (WAL): sessions, tasks, attempts, allocations, events.

Every mutation is committed before the RPC answer that reports it is sent.
Rows hold the wire model as JSON plus the few columns we query by, so adding
a field needs no migration. WAL with `synchronous=NORMAL` survives any crash
of the daemon process (kill -9); only an OS crash or power loss may lose the
last transactions, which `durability = "full"` closes at the cost of an fsync
per commit.

Calls are synchronous and short (tens of microseconds without fsync); they
run on the trio thread so the order of commits is the order of mutations.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from corral.models import Agent, Session, Task, WorktreeAllocation
from corrald.core.taskrow import TaskRow

SCHEMA_VERSION = 2

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        ord INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    CREATE TABLE tasks (
        session_id TEXT NOT NULL,
        id TEXT NOT NULL,
        ord INTEGER NOT NULL,
        status TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (session_id, id)
    );
    CREATE INDEX tasks_by_order ON tasks (session_id, ord);
    CREATE TABLE attempts (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        pid INTEGER,
        pid_started REAL,
        live INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX attempts_live ON attempts (live);
    CREATE TABLE allocations (
        session_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        worktree_path TEXT NOT NULL UNIQUE,
        data TEXT NOT NULL,
        PRIMARY KEY (session_id, task_id)
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        session_id TEXT,
        data TEXT NOT NULL
    );
    """,
    # 2: what survives the daemon about each run (core.accounting.RunAccounting)
    """
    ALTER TABLE attempts ADD COLUMN accounting TEXT;
    """,
]


class StoreError(RuntimeError):
    """The state file cannot be used; never silently recreated."""


class Fault(enum.Enum):
    """Why a write did not reach the state file."""

    FULL = "full"  # no space: SQLite maps ENOSPC and EDQUOT to SQLITE_FULL
    READ_ONLY = "readOnly"  # the file or its filesystem refuses writes
    GONE = "gone"  # the file was removed or replaced while we had it open
    ERROR = "error"  # any other I/O or database error


class StoreFault(Exception):
    """A write transaction failed; nothing of it was kept."""

    def __init__(self, fault: Fault, detail: str, rescued: Path | None = None) -> None:
        super().__init__(detail)
        self.fault = fault
        self.detail = detail
        self.rescued = rescued


def classify(exc: sqlite3.Error) -> Fault:
    """A SQLite error's fault, from its (extended) result code."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return Fault.ERROR
    primary = code & 0xFF
    if primary == sqlite3.SQLITE_FULL:
        return Fault.FULL
    if primary == sqlite3.SQLITE_READONLY:
        return Fault.GONE if code == _SQLITE_READONLY_DBMOVED else Fault.READ_ONLY
    return Fault.ERROR


_SQLITE_READONLY_DBMOVED = sqlite3.SQLITE_READONLY | (4 << 8)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _dump(model: Any) -> str:
    return json.dumps(model.model_dump(mode="json", by_alias=True, exclude_none=True))


class Store:
    """The daemon's SQLite state file."""

    def __init__(self, path: Path, *, durability: str = "normal") -> None:
        self.path = path
        self._rescued: Path | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._open(durability)
        except OSError as exc:
            raise StoreError(f"{path} cannot be opened: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise StoreError(
                    f"{path} is corrupt or not a SQLite database ({exc});"
                    " move it aside to start fresh"
                ) from exc
            raise StoreError(self._unwritable(classify(exc), str(exc))) from exc
        except StoreFault as exc:
            raise StoreError(self._unwritable(exc.fault, exc.detail)) from exc
        self._ord = self._scalar("SELECT coalesce(max(ord), 0) FROM tasks")
        self._session_ord = self._scalar("SELECT coalesce(max(ord), 0) FROM sessions")

    def _open(self, durability: str) -> None:
        path = self.path
        existed = path.exists() and path.stat().st_size > 0
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA foreign_keys=ON")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if existed and version == 0:
            tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StoreError(f"{path} is not a corral state file (no schema version)")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}, newer than this corrald supports"
                f" ({SCHEMA_VERSION}); upgrade corral or use another --state-dir"
            )
        self._identity = _identity(path)
        self._migrate(version)
        # A file that cannot take a write is refused now, not at the first request.
        with self.transaction():
            self.set_meta("opened_by_pid", str(os.getpid()))

    def _unwritable(self, fault: Fault, detail: str) -> str:
        hint = {
            Fault.FULL: "free some space on its disk",
            Fault.READ_ONLY: "make it and its directory writable by this user",
        }.get(fault, "check the file and its disk")
        return (
            f"{self.path} cannot be written ({fault.value}: {detail}); corrald would keep"
            f" nothing it is asked to do, so it does not start: {hint}"
        )

    def _scalar(self, sql: str, *args: Any) -> int:
        return int(self.db.execute(sql, args).fetchone()[0])

    def _migrate(self, version: int) -> None:
        for number in range(version, SCHEMA_VERSION):
            # executescript commits on its own, so the script carries its transaction.
            script = MIGRATIONS[number]
            self.db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number + 1};\nCOMMIT;"
            )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic commit; nested use joins the outer transaction.

        Only the engine opens transactions (it is the store's one writer).
        Raises `StoreFault` when the write does not reach the file: SQLite's
        errors classified, and a state file that was removed or replaced
        (SQLite keeps writing to the old inode in WAL mode without a word).
        """
        if self.db.in_transaction:
            yield
            return
        self._check_identity()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:  # SQLite rolls back itself on SQLITE_FULL
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreFault(classify(exc), str(exc)) from exc

    def _check_identity(self) -> None:
        if _identity(self.path) == self._identity:
            return
        if self._rescued is None:
            self._rescued = self._rescue()
        where = f"; everything it held is copied to {self._rescued}" if self._rescued else ""
        raise StoreFault(
            Fault.GONE,
            f"{self.path} was removed or replaced while corrald had it open{where}",
            self._rescued,
        )

    def _rescue(self) -> Path | None:
        """Copy the open (unlinked) database beside where it was, for a person to restore."""
        target = self.path.with_name(self.path.name + ".rescued")
        try:
            if not target.parent.is_dir() or target.exists():
                return None
            dest = sqlite3.connect(target)
            try:
                self.db.backup(dest)
            finally:
                dest.close()
        except (OSError, sqlite3.Error):
            return None
        return target

    def close(self) -> None:
        self.db.close()

    # --- meta -----------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- sessions ---------------------------------------------------------------
    def put_session(self, session: Session) -> None:
        self._session_ord += 1
        self.db.execute(
            "INSERT INTO sessions(id, ord, data) VALUES(?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            (session.id, self._session_ord, _dump(session)),
        )

    def sessions(self) -> list[Session]:
        rows = self.db.execute("SELECT data FROM sessions ORDER BY ord")
        return [Session.model_validate_json(r[0]) for r in rows]

    # --- tasks ----------------------------------------------------------------------
    def put_tasks(self, session_id: str, tasks: Iterable[TaskRow | Task]) -> None:
        """Insert new tasks (in order) or update existing ones.

        A row is stored as its cached wire JSON, the very bytes a list sends.
        """
        rows = []
        for task in tasks:
            self._ord += 1
            data = task.json().decode() if isinstance(task, TaskRow) else _dump(task)
            rows.append((session_id, task.id, self._ord, task.state.value, data))
        self.db.executemany(
            "INSERT INTO tasks(session_id, id, ord, status, data) VALUES(?, ?, ?, ?, ?) "
            "ON CONFLICT(session_id, id) DO UPDATE SET status = excluded.status, "
            "data = excluded.data",
            rows,
        )

    def tasks(self, session_id: str) -> list[Task]:
        rows = self.db.execute(
            "SELECT data FROM tasks WHERE session_id = ? ORDER BY ord", (session_id,)
        )
        return [Task.model_validate_json(r[0]) for r in rows]

    # --- attempts (agents) ------------------------------------------------------------
    def put_agent(self, agent: Agent, pid_started: float | None = None) -> None:
        live = agent.ended_at is None
        self.db.execute(
            "INSERT INTO attempts(id, session_id, task_id, pid, pid_started, live, data) "
            "VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, "
            "pid_started = coalesce(excluded.pid_started, attempts.pid_started), "
            "live = excluded.live, data = excluded.data",
            (
                agent.id,
                agent.session_id,
                agent.task_id,
                agent.process_id,
                pid_started,
                int(live),
                _dump(agent),
            ),
        )

    def agent(self, agent_id: str) -> Agent | None:
        row = self.db.execute("SELECT data FROM attempts WHERE id = ?", (agent_id,)).fetchone()
        return None if row is None else Agent.model_validate_json(row[0])

    def agents(
        self, session_id: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[Agent]:
        """Attempts in the order they started; those after the attempt `after`, at most `limit`."""
        sql = "SELECT data FROM attempts WHERE 1=1"
        args: list[Any] = []
        if session_id is not None:
            sql += " AND session_id = ?"
            args.append(session_id)
        if after is not None:
            sql += " AND rowid > (SELECT rowid FROM attempts WHERE id = ?)"
            args.append(after)
        sql += " ORDER BY rowid"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [Agent.model_validate_json(r[0]) for r in self.db.execute(sql, args)]

    def live_agents(self, session_id: str) -> list[str]:
        """Ids of the session's agents whose row says they have not ended."""
        rows = self.db.execute(
            "SELECT id FROM attempts WHERE live = 1 AND session_id = ? ORDER BY rowid",
            (session_id,),
        )
        return [str(r[0]) for r in rows]

    def live_runs(self) -> list[tuple[Agent, str | None]]:
        """Agents whose row says they run, with their accounting JSON (core.accounting)."""
        rows = self.db.execute("SELECT data, accounting FROM attempts WHERE live = 1")
        return [(Agent.model_validate_json(r[0]), r[1]) for r in rows]

    def put_accounting(self, agent_id: str, accounting: str) -> None:
        """A run's process bookkeeping (core.accounting), as JSON."""
        self.db.execute("UPDATE attempts SET accounting = ? WHERE id = ?", (accounting, agent_id))

    # --- allocations --------------------------------------------------------------------
    def put_allocation(self, alloc: WorktreeAllocation) -> None:
        self.db.execute(
            "INSERT INTO allocations(session_id, task_id, worktree_path, data) "
            "VALUES(?, ?, ?, ?) ON CONFLICT(session_id, task_id) DO UPDATE SET "
            "worktree_path = excluded.worktree_path, data = excluded.data",
            (alloc.session_id, alloc.task_id, alloc.worktree_path, _dump(alloc)),
        )

    def delete_allocation(self, session_id: str, task_id: str) -> None:
        self.db.execute(
            "DELETE FROM allocations WHERE session_id = ? AND task_id = ?", (session_id, task_id)
        )

    def allocations(self, session_id: str | None = None) -> list[WorktreeAllocation]:
        if session_id is None:
            rows = self.db.execute("SELECT data FROM allocations ORDER BY rowid")
        else:
            rows = self.db.execute(
                "SELECT data FROM allocations WHERE session_id = ? ORDER BY rowid", (session_id,)
            )
        return [WorktreeAllocation.model_validate_json(r[0]) for r in rows]

    # --- events -------------------------------------------------------------------------
    def put_event(self, seq: int, type_: str, session_id: str | None, data: str) -> None:
        """Store one event's encoded JSON (`data` is what subscribers are sent)."""
        self.db.execute(
            "INSERT INTO events(seq, type, session_id, data) VALUES(?, ?, ?, ?)",
            (seq, type_, session_id, data),
        )

    def events_after(self, seq: int, limit: int) -> list[tuple[int, str, str | None, str]]:
        """(seq, type, session id, encoded JSON) of the stored events after `seq`."""
        rows = self.db.execute(
            "SELECT seq, type, session_id, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [(int(r[0]), str(r[1]), r[2], str(r[3])) for r in rows]

    def prune_events(self, keep: int) -> None:
        self.db.execute(
            "DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - ?", (keep,)
        )

    def __repr__(self) -> str:
        return f"Store({self.path})"
