"""A state file that cannot take a write gives an error, never a lie.

Real faults, not mocks: a full disk is a small tmpfs filled to the last
block; a read-only file is one the daemon's user may not write (root runs
the daemon without its override capabilities); a vanished file is unlinked
or replaced under the running daemon.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import errors
from corral.client import Client
from corrald.state.events import EventBus
from corrald.state.store import Fault, Store, StoreError, StoreFault, classify
from tests.daemon_proc import DaemonProcess, unprivileged

CONFIG = {"agentType": "fake", "integrate": False}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a filesystem we can fill without filling the machine's."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free block of `disk`; remove the returned file to give them back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def tasks(n: int, prefix: str) -> list[dict[str, Any]]:
    # Big enough that one batch needs blocks the WAL does not already have.
    return [{"id": f"{prefix}{i}", "title": "x" * 400, "description": "y" * 8000} for i in range(n)]


def start(d: DaemonProcess, repo: Path) -> Client:
    c = d.client()
    c.init_parallel_scheduler(repo_path=str(repo), session_id="s", config=CONFIG)
    return c


def ids(c: Client) -> list[str]:
    return [t.id for t in c.parallel_list_tasks(session_id="s")]


# --- a full disk ------------------------------------------------------------------------
def test_full_disk_refuses_the_request_and_recovers_when_space_returns(
    small_disk: Path, repo: Path
) -> None:
    state = small_disk / "state"
    with DaemonProcess(state) as d:
        with start(d, repo) as c:
            c.parallel_add_tasks(session_id="s", tasks=tasks(3, "ok"))
            seq_before = c.daemon_status().event_seq
            filler = fill(small_disk)
            with pytest.raises(errors.StorageFull) as info:
                c.parallel_add_tasks(session_id="s", tasks=tasks(200, "lost"))
            assert info.value.code == 7002
            assert info.value.data["storage"] == "full"
            assert "nothing of this request was kept" in info.value.message
            # Memory follows disk: the refused tasks are nowhere.
            assert ids(c) == ["ok0", "ok1", "ok2"]
            status = c.daemon_status()
            assert status.storage is not None and status.storage.state == "full"
            assert status.storage.failed_writes >= 1 and status.storage.since is not None
            assert status.event_seq == seq_before  # its events were never numbered
            # Reads and the connection go on working while the disk is full.
            assert c.session_get(session_id="s").id == "s"

            filler.unlink()
            added = c.parallel_add_tasks(session_id="s", tasks=tasks(200, "later"))
            assert len(added) == 200
            status = c.daemon_status()
            assert status.storage is not None and status.storage.state == "ok"
            assert status.storage.error is None
            acknowledged = ids(c)
        d.kill()
    with DaemonProcess(state) as d2, d2.client() as c2:
        assert ids(c2) == acknowledged  # everything acknowledged, nothing refused
        assert not any(i.startswith("lost") for i in acknowledged)


def test_a_full_disk_at_startup_is_a_clear_refusal(small_disk: Path) -> None:
    state = small_disk / "state"
    filler = fill(small_disk)
    out = _start(state)
    assert out.returncode == 2, out
    assert "cannot" in out.stderr and "corrald" in out.stderr
    assert "Traceback" not in out.stderr
    filler.unlink()
    with DaemonProcess(state) as d, d.client() as c:  # space again: it starts
        assert c.daemon_status().storage is not None


def test_event_numbering_never_repeats_after_a_failed_reservation(small_disk: Path) -> None:
    """The first event of a store reserves a block of seqs in the same transaction.

    If that transaction fails, the reservation must be forgotten with it, or
    the seqs issued next would be handed out again after a restart.
    """
    from corrald.state.engine import Engine

    path = small_disk / "corral.db"
    store = Store(path)
    engine = Engine(store, EventBus(store))
    filler = fill(small_disk)
    assert engine.bus.seq == 0
    with pytest.raises(errors.StorageFull):  # its WAL frames need blocks there are none of
        engine.init_session(_config(), "/nonexistent-repo", "first")
    assert engine.bus.seq == 0 and "first" not in engine.sessions
    filler.unlink()
    engine.init_session(_config(), "/nonexistent-repo", "after")
    issued = engine.bus.seq
    store.close()
    reopened = Store(path)
    assert EventBus(reopened).seq >= issued
    reopened.close()


def _config() -> Any:
    from corral.models import SchedulerConfig

    return SchedulerConfig.model_validate(CONFIG)


# --- a read-only state file -------------------------------------------------------------
def _start(state: Path, *, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "corrald.app",
        "--socket",
        str(state.parent / "s.sock"),
        "--state-dir",
        str(state),
    ]
    return subprocess.run(
        [*(prefix or []), *cmd], capture_output=True, text=True, timeout=30, check=False
    )


def test_a_read_only_state_file_is_refused_at_startup_and_kept(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with DaemonProcess(state) as d:
        with start(d, repo) as c:
            c.parallel_add_tasks(session_id="s", tasks=tasks(2, "t"))
        d.stop()
    db = state / "corral.db"
    before = db.read_bytes()
    db.chmod(0o444)
    try:
        out = _start(state, prefix=unprivileged([]))
    finally:
        db.chmod(0o600)
    assert out.returncode == 2, out
    assert "readOnly" in out.stderr and str(db) in out.stderr, out.stderr
    assert "writable" in out.stderr and "Traceback" not in out.stderr
    assert db.read_bytes() == before
    with DaemonProcess(state) as d2, d2.client() as c2:  # writable again: all there
        assert ids(c2) == ["t0", "t1"]


def test_sqlite_faults_are_classified_from_real_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.Error) as info:
        ro.execute("INSERT INTO t VALUES (1)")
    assert classify(info.value) is Fault.READ_ONLY
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(sqlite3.Error) as corrupt:
        sqlite3.connect(path).execute("SELECT * FROM t")
    assert classify(corrupt.value) is Fault.ERROR


# --- a state file removed or replaced under the daemon -------------------------------
@pytest.mark.parametrize("how", ["unlinked", "replaced"])
def test_a_vanished_state_file_refuses_writes_and_is_rescued(
    repo: Path, tmp_path: Path, how: str
) -> None:
    state = tmp_path / "state"
    db = state / "corral.db"
    with DaemonProcess(state) as d, start(d, repo) as c:
        c.parallel_add_tasks(session_id="s", tasks=tasks(3, "kept"))
        if how == "unlinked":
            db.unlink()
        else:
            other = state / "other.db"
            sqlite3.connect(other).close()
            os.replace(other, db)
        # SQLite alone would go on writing into the unlinked inode and answer "ok".
        with pytest.raises(errors.StateFileGone) as info:
            c.parallel_add_task(session_id="s", task={"id": "never", "title": "never"})
        assert info.value.code == 7004
        rescued = Path(info.value.data["rescued"])
        assert rescued == state / "corral.db.rescued"
        assert "removed or replaced" in info.value.message
        with pytest.raises(errors.StateFileGone):  # sticky: every later write too
            c.parallel_add_task(session_id="s", task={"id": "never2", "title": "never"})
        assert ids(c) == ["kept0", "kept1", "kept2"]  # reads go on
        status = c.daemon_status()
        assert status.storage is not None and status.storage.state == "gone"
        assert status.storage.rescued == str(rescued)
    # The copy holds everything acknowledged: put it back and start again.
    os.replace(rescued, db)
    with DaemonProcess(state) as d2, d2.client() as c2:
        assert ids(c2) == ["kept0", "kept1", "kept2"]


def test_store_fault_carries_the_kind(tmp_path: Path) -> None:
    store = Store(tmp_path / "corral.db")
    (tmp_path / "corral.db").unlink()
    with pytest.raises(StoreFault) as info, store.transaction():
        store.set_meta("k", "v")
    assert info.value.fault is Fault.GONE
    store.close()
    with pytest.raises(StoreError):
        Store(tmp_path)  # a directory where the file should be: a clear error
