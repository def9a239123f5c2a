"""How ``index/`` opens and writes its SQLite databases (the item store of an index, the collection).

Why SQLite: it is the durable part we used to hand-build (record framing, CRCs, torn-tail cuts, repair), done by the
most tested storage engine there is, in the standard library. Every database here is opened the same way:

* WAL journal mode, ``synchronous=FULL``: a commit returns only once its WAL frames are fsynced, so an acknowledged
  write survives kill -9 and power loss (NORMAL would fsync only at checkpoints: a window of acknowledged writes);
  readers never block the writer nor see a half-written transaction;
* one transaction per acknowledged write (:func:`transaction`, ``BEGIN IMMEDIATE``): all of it or none of it;
* ``mode=rw`` unless creating: a missing database file is an error naming it, never a silent new empty one;
* SQLite's errors become ours (:func:`translate`): a full or failing disk is an ``OSError`` (the service's 503,
  nothing of the write kept), a damaged file an :class:`IndexStoreError` naming the file and the command that
  recovers it.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from index.errors import IndexStoreError
from index.fsio import fsync_dir, fsync_file

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000  # another process's transaction (a CLI add beside the server) is waited for, not refused
DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
SALVAGE_STEP = 50_000  # rowids read at a time when salvaging a damaged database
DAMAGED_SUFFIX = ".damaged"  # what a repair keeps of a damaged database, beside it
SIDE_FILES = ("", "-wal", "-shm")  # a database in WAL mode is its file and these two beside it


class StoreDamagedError(IndexStoreError):
    """A database file SQLite finds damaged; the message names the file and the recovery command."""


def connect(path: str | os.PathLike, *, create: bool = False, read_only: bool = False,
            recovery: str = "") -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (transactions are explicit) with WAL and ``synchronous=FULL``."""
    path = Path(path)
    mode = "ro" if read_only else "rwc" if create else "rw"
    if not create and not path.is_file():
        raise IndexStoreError(f"{path} is missing: nothing can be read without it; {recovery}".rstrip("; "))
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None,
                               check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise translate(exc, path, recovery) from None
    try:
        if not read_only:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()  # reads the header: a wrong file fails here
    except sqlite3.Error as exc:
        conn.close()
        raise translate(exc, path, recovery) from None
    return conn


def translate(exc: sqlite3.Error, path: str | os.PathLike, recovery: str = "") -> Exception:
    """SQLite's error as the one a caller acts on: ``OSError`` for a full/failing disk, damaged → recovery."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return OSError(errno.ENOSPC, f"{text} ({path})")
    if name.startswith("SQLITE_IOERR") or "disk I/O error" in text:
        return OSError(errno.EIO, f"{text} ({path})")
    if name.startswith(DAMAGED) or "malformed" in text or "not a database" in text:
        return StoreDamagedError(f"{path} is damaged ({text}); it was not opened, so nothing is silently dropped. "
                                 + (recovery or "restore it from a backup"))
    return IndexStoreError(f"{path}: {text}")


@contextmanager
def transaction(conn: sqlite3.Connection, path: str | os.PathLike, recovery: str = "") -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (fsynced); any error rolls back and is raised translated."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise translate(exc, path, recovery) from None
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as exc:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # a failed COMMIT may have rolled back already
        if isinstance(exc, sqlite3.Error):
            raise translate(exc, path, recovery) from None
        raise


def query(conn: sqlite3.Connection, path: str | os.PathLike, sql: str, params=(), recovery: str = "") -> list:
    """All rows of one read (errors translated)."""
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise translate(exc, path, recovery) from None


def chunks(values: list, size: int = 900) -> Iterator[list]:
    """``values`` in pieces small enough for one ``IN (?, …)`` (SQLite's default limit is 32,766 variables)."""
    for lo in range(0, len(values), size):
        yield values[lo:lo + size]


def marks(n: int) -> str:
    return ",".join("?" * n)


def checkpoint(conn: sqlite3.Connection) -> None:
    """Fold the WAL back into the database file (a closed store is one file; the WAL restarts small)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def salvage(src: str | os.PathLike, dst: str | os.PathLike, schema: str, tables: list[str]) -> dict[str, int]:
    """Copy every row of ``tables`` that SQLite can still read from a damaged ``src`` into a new ``dst`` with
    ``schema``; returns rows kept per table. Rows are read by rowid ranges; a range that fails is halved until the
    bad rows are isolated and skipped (a damaged interior page loses the rows only it leads to)."""
    src_conn = sqlite3.connect(f"{Path(src).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    out = sqlite3.connect(dst, isolation_level=None)
    kept: dict[str, int] = {}
    try:
        out.executescript(schema)
        for table in tables:
            try:
                cols = [r[1] for r in src_conn.execute(f"PRAGMA table_info({table})")]
                lo, hi = src_conn.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchone()
            except sqlite3.DatabaseError:
                cols, lo, hi = [], None, None
            kept[table] = 0
            for start in range(int(lo or 0), int(hi or -1) + 1, SALVAGE_STEP):  # a step at a time: memory flat
                kept[table] += _copy_range(src_conn, out, table, cols, start, min(start + SALVAGE_STEP - 1, int(hi)))
        out.execute("PRAGMA journal_mode=WAL")
        checkpoint(out)
    finally:
        src_conn.close()
        out.close()
    return kept


def _copy_range(src: sqlite3.Connection, out: sqlite3.Connection, table: str, cols: list[str], lo: int,
                hi: int) -> int:
    names = ", ".join(cols)
    try:
        rows = src.execute(f"SELECT {names} FROM {table} WHERE rowid BETWEEN ? AND ?", (lo, hi)).fetchall()
    except sqlite3.DatabaseError:
        if lo == hi:
            return 0
        mid = (lo + hi) // 2
        return _copy_range(src, out, table, cols, lo, mid) + _copy_range(src, out, table, cols, mid + 1, hi)
    out.execute("BEGIN")
    out.executemany(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks(len(cols))})", rows)
    out.execute("COMMIT")
    return len(rows)


def remove_database(path: str | os.PathLike) -> None:
    """A database and its WAL side files gone (a temporary one a crash left)."""
    for suffix in SIDE_FILES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def repair_file(path: Path, schema: str, tables: list[str], problems: Callable[[], list[str]],
                agree: Callable[[Path], dict] | None = None, error: type[Exception] = IndexStoreError) -> dict:
    """The repair of one database, by whoever owns it (an index's item store, the collection): when
    ``problems()`` finds any, the file (and its WAL) is set aside as ``<name>.damaged``, every readable row of
    ``tables`` salvaged into a temporary database, ``agree(tmp)`` run on it (what else must match it), and the
    result renamed into place — the commit point; a repair interrupted before it is resumed from the damaged copy."""
    damaged = path.with_name(path.name + DAMAGED_SUFFIX)
    if path.is_file():
        found = problems()
        if not found:
            return {"path": str(path), "problems": [], "repaired": False}
        for suffix in SIDE_FILES:
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{damaged}{suffix}")
    elif not damaged.is_file():
        raise error(f"no database at {path} (nor {damaged.name}) to repair")
    else:
        found = [f"{path.name} missing (a repair was interrupted)"]
    tmp = path.with_name(".repair.db")
    remove_database(tmp)
    kept = salvage(damaged, tmp, schema, tables)
    extra = agree(tmp) if agree is not None else {}
    fsync_file(tmp)
    os.rename(tmp, path)
    fsync_dir(path.parent)
    log.warning("%s repaired: %s", path, {**kept, **extra})
    return {"path": str(path), "problems": found, "repaired": True, "kept": kept, **extra,
            "damaged_copy": str(damaged)}
