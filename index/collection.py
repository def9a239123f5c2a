"""The stored collection: every indexed item's URI and label, kept so a new encoder's index can be rebuilt.

Why it exists: an index belongs to one encoder version; when a retrained encoder is promoted its index must be
rebuilt from the *images*, not from old vectors. So the collection records items in ``collection.db`` (SQLite,
``index.db``: one committed transaction per write, safe across threads and processes), and keeps the bytes of
images uploaded over HTTP content-addressed under ``blobs/`` (files on disk and dataset items are referenced by URI
only). A collection in the layout before it (``items.jsonl`` + ``roots.json``) is converted on first use
(``index.legacy``).

URIs (an item's stable key across versions, and what ``/search`` returns as ``metadata.uri``):

* ``sha256:<hex>`` — an uploaded image whose bytes are stored here;
* ``folder:<root>/<relative path>`` — a file under a registered *folder root*: ``<root>`` is a short name (the
  folder's own name, ``-2``, ``-3``… when two folders share one) mapped to the folder's absolute path in
  the collection's ``roots`` table. Answers therefore never show where files live on the server, and a moved
  folder is one row (:meth:`Collection.register_root` with ``name``), not a re-index;
* dataset items such as ``fashion-mnist:<split>/<i>`` (resolved to pixels by ``serving.contract.sources``);
* ``file:///abs/path`` or a plain absolute path — what installs before folder roots recorded; still read.

Only :mod:`index.writes` writes items to a collection, always together with the index; roots are registered by
whoever turns a folder's files into URIs (:meth:`Collection.folder_uris`) before the items are written.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from index import db, legacy
from index.errors import IndexStoreError
from index.fsio import atomic_write_bytes, fsync_dir, fsync_file, now_iso

log = logging.getLogger(__name__)

DB_FILE = "collection.db"
BLOBS_DIR = "blobs"
BLOB_PREFIX = "sha256:"
DIGEST = re.compile(r"[0-9a-f]{64}")
FOLDER_PREFIX = "folder:"
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (n INTEGER PRIMARY KEY AUTOINCREMENT, uri TEXT NOT NULL UNIQUE, label TEXT,
                                  added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots (name TEXT PRIMARY KEY, folder TEXT NOT NULL);
"""
REPAIR = ("stop the server, then recover it with: byol index repair --collection (keeps every readable row), or "
          "restore it from a backup")
_UPSERT = ("INSERT INTO items (uri, label, added_at) VALUES (?, ?, ?) "
           "ON CONFLICT (uri) DO UPDATE SET label = excluded.label")


class CollectionError(ValueError):
    """An item or URI the collection cannot record or resolve; the message names it."""


@dataclass
class Item:
    uri: str
    label: str | None = None
    added_at: str = ""


class Collection:
    """The item record and uploaded bytes under one directory (``$BYOL_HOME/collection``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.path = self.root / DB_FILE
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, many threads: one statement or transaction at a time

    # ------------------------------------------------------------------------------------------ the database
    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            if write:
                with db.transaction(self._conn, self.path, REPAIR) as conn:
                    yield conn
            else:
                try:
                    yield self._conn
                except sqlite3.Error as exc:
                    raise db.translate(exc, self.path, REPAIR) from None

    def _connect(self) -> sqlite3.Connection:
        """Open (creating it, or converting the layout before it, on first use) the collection's database."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.path.is_file():
            fd = os.open(self.root / ".convert.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # one process creates or converts; the others wait, then open it
                if not self.path.is_file():
                    self._create()
            finally:
                os.close(fd)
        legacy.tidy_collection(self.root)
        return db.connect(self.path, recovery=REPAIR)

    def _create(self) -> None:
        """Write the database complete under a temporary name (with what an old layout holds), then rename it."""
        items, roots = legacy.old_collection(self.root) if legacy.is_old_collection(self.root, DB_FILE) else ([], {})
        tmp = self.root / f".{DB_FILE}.tmp"
        db.remove_database(tmp)
        conn = db.connect(tmp, create=True)
        try:
            conn.executescript(SCHEMA)
            with db.transaction(conn, tmp) as c:
                c.executemany("INSERT INTO items (uri, label, added_at) VALUES (?, ?, ?)", items)
                c.executemany("INSERT INTO roots (name, folder) VALUES (?, ?)", sorted(roots.items()))
            db.checkpoint(conn)
        except sqlite3.Error as exc:
            raise db.translate(exc, tmp, REPAIR) from None
        finally:
            conn.close()
        fsync_file(tmp)
        os.rename(tmp, self.path)  # the commit point: from here on the database is the collection
        fsync_dir(self.root)
        if items or roots:
            log.info("converted the collection %s to %s: %d items, %d folder roots", self.root, DB_FILE, len(items),
                     len(roots))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------------------------------ items
    def add(self, items: Iterable[Item], removed: bool = False) -> int:
        """Record items (one committed transaction); returns how many. A URI already recorded takes the new label
        and keeps its place and first ``added_at``."""
        if removed:
            return self.remove(it.uri for it in items)
        stamp = now_iso()
        rows = []
        for it in items:
            if not it.uri:
                raise CollectionError("collection item without a uri")
            rows.append((it.uri, None if it.label is None else str(it.label), it.added_at or stamp))
        if not rows:
            return 0
        with self._db(write=True) as c:
            c.executemany(_UPSERT, rows)
        return len(rows)

    def remove(self, uris: Iterable[str]) -> int:
        """Record removals (committed): a rebuilt index must not bring back what a user removed. Adding the same
        URI again later brings it back (last in order)."""
        uris = [u for u in uris if u]
        if not uris:
            return 0
        with self._db(write=True) as c:
            for part in db.chunks(uris):
                c.execute(f"DELETE FROM items WHERE uri IN ({db.marks(len(part))})", part)
        return len(uris)

    def items(self, batch: int = 10_000) -> Iterator[Item]:
        """Items in first-added order, one per URI, read ``batch`` at a time (memory stays flat)."""
        last = -1
        while True:
            with self._db() as c:
                rows = c.execute("SELECT n, uri, label, added_at FROM items WHERE n > ? ORDER BY n LIMIT ?",
                                 (last, batch)).fetchall()
            if not rows:
                return
            yield from (Item(uri, label, added_at) for _, uri, label, added_at in rows)
            last = rows[-1][0]

    def present(self, uris: Iterable[str]) -> set[str]:
        """Which of ``uris`` the collection holds."""
        uris, out = sorted(set(uris)), set()
        with self._db() as c:
            for part in db.chunks(uris):
                out.update(r[0] for r in c.execute(f"SELECT uri FROM items WHERE uri IN ({db.marks(len(part))})",
                                                   part))
        return out

    def __len__(self) -> int:
        with self._db() as c:
            return int(c.execute("SELECT count(*) FROM items").fetchone()[0])

    def check(self) -> list[str]:
        """``PRAGMA quick_check`` of the database (empty when SQLite finds nothing wrong)."""
        with self._db() as c:
            rows = [r[0] for r in c.execute("PRAGMA quick_check").fetchall()]
        return [] if rows == ["ok"] else rows

    # ------------------------------------------------------------------------------------------ bytes
    def blob_path(self, digest: str) -> Path:
        """Where the bytes of hash ``digest`` live; anything but 64 lowercase hex digits is refused before it can
        become a path (a crafted ``sha256:../..`` in an index or collection file must not read outside the store)."""
        if not DIGEST.fullmatch(digest):
            raise CollectionError(f"{BLOB_PREFIX}{digest[:80]!r}: not a sha256 URI (64 lowercase hex digits)")
        return self.root / BLOBS_DIR / digest[:2] / digest

    def store_bytes(self, data: bytes) -> str:
        """Keep an uploaded image's bytes (content-addressed, written once, atomically); returns its URI."""
        if not data:
            raise CollectionError("cannot store an empty image")
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.is_file():
            atomic_write_bytes(path, data)
        return BLOB_PREFIX + digest

    def read_bytes(self, uri: str) -> bytes:
        """The stored bytes of a ``sha256:`` URI, or the file behind a ``folder:`` / ``file://`` / absolute-path URI.

        Errors name the URI, never the server path behind it (they may reach an HTTP answer)."""
        if uri.startswith(BLOB_PREFIX):
            path = self.blob_path(uri[len(BLOB_PREFIX):])
            if not path.is_file():
                raise CollectionError(f"{uri}: no stored image with that hash in the collection")
            return path.read_bytes()
        path = self.path_of(uri)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise CollectionError(f"{uri}: cannot read the file: {exc.strerror}") from None

    # ------------------------------------------------------------------------------------------ folder roots
    def path_of(self, uri: str) -> Path:
        """The file behind a ``folder:``, ``file://`` or absolute-path URI on this machine (not read)."""
        if uri.startswith(FOLDER_PREFIX):
            name, _, rel = uri[len(FOLDER_PREFIX):].partition("/")
            roots = self.roots()
            if name not in roots:
                raise CollectionError(f"{uri}: unknown folder root {name!r} (roots are registered in "
                                      f"{DB_FILE} of the collection)")
            parts = PurePosixPath(rel).parts
            if not parts or rel.startswith("/") or ".." in parts:
                raise CollectionError(f"{uri}: not a path inside folder root {name!r}")
            path = roots[name].joinpath(*parts)
            if not path.resolve().is_relative_to(roots[name].resolve()):  # a link that leads out of the root
                raise CollectionError(f"{uri}: not a path inside folder root {name!r}")
            return path
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if not path.is_absolute():
            raise CollectionError(f"cannot resolve URI {uri!r} (expected sha256:, folder:, a dataset item, file:// "
                                  "or an absolute path)")
        return path

    def roots(self) -> dict[str, Path]:
        """Registered folder roots, name → absolute folder."""
        with self._db() as c:
            return {str(n): Path(f) for n, f in c.execute("SELECT name, folder FROM roots").fetchall()}

    def register_root(self, folder: str | os.PathLike, name: str | None = None) -> str:
        """The root name of ``folder``, registered now if new (unique: ``photos``, ``photos-2``…). With ``name``,
        that name is (re)pointed at ``folder``: how a moved folder keeps its items. Safe across processes (one
        transaction)."""
        folder = Path(folder).expanduser().resolve()
        if name is not None and (not name or "/" in name or name in (".", "..")):
            raise CollectionError(f"a folder root name must be a non-empty name without '/', got {name!r}")
        with self._db(write=True) as c:
            roots = {str(n): Path(f) for n, f in c.execute("SELECT name, folder FROM roots").fetchall()}
            if name is None:
                known = next((n for n, p in roots.items() if p == folder), None)
                if known is not None:
                    return known
                base = folder.name or "root"
                name = next(cand for cand in (base if i == 1 else f"{base}-{i}" for i in range(1, len(roots) + 2))
                            if cand not in roots)
            elif roots.get(name) == folder:
                return name
            c.execute("INSERT INTO roots (name, folder) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET folder = "
                      "excluded.folder", (name, str(folder)))
        log.info("folder root %r → %s registered in %s", name, folder, self.path)
        return name

    def folder_uris(self, files: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> list[str]:
        """``folder:`` URIs for files on this machine: relative to ``root`` (registered here), or without one to the
        registered root holding each file (a file outside every root registers its own folder)."""
        named: list[tuple[str, Path]] = []
        if root is not None:
            named.append((self.register_root(root), Path(root).expanduser().resolve()))
        else:
            named.extend(sorted(self.roots().items(), key=lambda kv: -len(kv[1].parts)))  # innermost root first
        out = []
        for f in files:
            path = Path(f).expanduser()
            hit = next(((n, rel) for n, r in named if (rel := _relative(path, r)) is not None), None)
            if hit is None:
                if root is not None:
                    raise CollectionError(f"{path} is not inside the folder {root}")
                parent = path.resolve().parent
                named.insert(0, (self.register_root(parent), parent))
                hit = (named[0][0], path.resolve().name)
            out.append(f"{FOLDER_PREFIX}{hit[0]}/{hit[1]}")
        return out


def _relative(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` as a POSIX path (symlinks resolved, else as written), None when outside."""
    for p, r in ((path.resolve(), root), (Path(os.path.abspath(path)), Path(os.path.abspath(root)))):
        try:
            rel = p.relative_to(r)
        except ValueError:
            continue
        if rel.parts:
            return rel.as_posix()
    return None


def repair(root: str | os.PathLike) -> dict:
    """Recover a damaged ``collection.db``: every row SQLite can still read is kept (``index.db.repair_file``), the
    damaged file kept beside it as ``collection.db.damaged``. Stop the server first. A lost item is re-added by the
    next ``byol index add`` / upload of it; the indexes still hold their own items."""
    root = Path(root)

    def problems() -> list[str]:
        try:
            store = Collection(root)
            found = store.check()
            store.close()
            return found
        except (IndexStoreError, CollectionError) as exc:
            return [str(exc)]

    return db.repair_file(root / DB_FILE, SCHEMA, ["items", "roots"], problems, error=CollectionError)
