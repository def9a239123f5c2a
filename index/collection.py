"""The stored collection: every indexed item's URI and label, kept so a new encoder's index can be rebuilt.

Why it exists: an index belongs to one encoder version; when a retrained encoder is promoted its index must be
rebuilt from the *images*, not from old vectors. So the collection records items (append-only ``items.jsonl``,
one fsynced line per item, a torn last line ignored), and keeps the bytes of images uploaded over HTTP
content-addressed under ``blobs/`` (files on disk and dataset items are referenced by URI only).

URIs (an item's stable key across versions, and what ``/search`` returns as ``metadata.uri``):

* ``sha256:<hex>`` — an uploaded image whose bytes are stored here;
* ``folder:<root>/<relative path>`` — a file under a registered *folder root*: ``<root>`` is a short name (the
  folder's own name, ``-2``, ``-3``… when two folders share one) mapped to the folder's absolute path in
  ``roots.json`` beside ``items.jsonl``. Answers therefore never show where files live on the server, and a moved
  folder is one line of ``roots.json`` (or :meth:`Collection.register_root` with ``name``), not a re-index;
* dataset items such as ``fashion-mnist:<split>/<i>`` (resolved to pixels by ``serving.contract.sources``);
* ``file:///abs/path`` or a plain absolute path — what installs before folder roots recorded; still read.

Only :mod:`index.writes` writes items to a collection, always together with the index; roots are registered by
whoever turns a folder's files into URIs (:meth:`Collection.folder_uris`) before the items are written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from index.fsio import atomic_write_bytes, now_iso, write_all_durably

log = logging.getLogger(__name__)

ITEMS_FILE = "items.jsonl"
BLOBS_DIR = "blobs"
BLOB_PREFIX = "sha256:"
DIGEST = re.compile(r"[0-9a-f]{64}")
FOLDER_PREFIX = "folder:"
ROOTS_FILE = "roots.json"


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
        self._roots_cache: tuple[tuple, dict[str, Path]] | None = None

    # ------------------------------------------------------------------------------------------ items
    def add(self, items: Iterable[Item], removed: bool = False) -> int:
        """Append items (fsynced before returning); returns how many. Safe across threads and processes (flock).

        Crash and disk-full safe: a torn last line (a crash mid-append) is cut off before appending, so it never
        swallows the next record; an append that fails (ENOSPC, EIO) is cut back out and its error re-raised.
        """
        stamp = now_iso()
        lines = []
        for it in items:
            if not it.uri:
                raise CollectionError("collection item without a uri")
            row = {"uri": it.uri, "label": None if it.label is None else str(it.label),
                   "added_at": it.added_at or stamp}
            lines.append(json.dumps({**row, "removed": True} if removed else row) + "\n")
        if not lines:
            return 0
        path = self.root / ITEMS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _append_lines(fd, path, "".join(lines).encode())
        finally:
            os.close(fd)  # releases the flock
        return len(lines)

    def remove(self, uris: Iterable[str]) -> int:
        """Record removals (fsynced): a rebuilt index must not bring back what a user removed. Adding the same URI
        again later brings it back."""
        return self.add((Item(u) for u in uris), removed=True)

    def items(self) -> Iterator[Item]:
        """Items in first-added order, one per URI (a later record of the same URI updates its label; a removal
        record drops it)."""
        path = self.root / ITEMS_FILE
        if not path.is_file():
            return
        latest: dict[str, Item] = {}
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d: skipping an unreadable line (torn write?)", path, n)
                    continue
                if row.get("removed"):
                    latest.pop(row["uri"], None)
                    continue
                item = Item(row["uri"], row.get("label"), row.get("added_at", ""))
                if item.uri in latest:
                    item.added_at = latest[item.uri].added_at
                latest[item.uri] = item
        yield from latest.values()

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
                                      f"{ROOTS_FILE} of the collection)")
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
        """Registered folder roots, name → absolute folder (``roots.json``; re-read only when it changed)."""
        path = self.root / ROOTS_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._roots_cache is None or self._roots_cache[0] != key:
            try:
                rows = json.loads(path.read_text())["roots"]
                roots = {str(k): Path(v) for k, v in rows.items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CollectionError(f"{path} is unreadable ({exc}); it maps root names to folders: "
                                      '{"roots": {"name": "/abs/folder"}}') from None
            self._roots_cache = (key, roots)
        return dict(self._roots_cache[1])

    def register_root(self, folder: str | os.PathLike, name: str | None = None) -> str:
        """The root name of ``folder``, registered now if new (unique: ``photos``, ``photos-2``…). With ``name``,
        that name is (re)pointed at ``folder``: how a moved folder keeps its items. Safe across processes (flock)."""
        folder = Path(folder).expanduser().resolve()
        if name is not None and (not name or "/" in name or name in (".", "..")):
            raise CollectionError(f"a folder root name must be a non-empty name without '/', got {name!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".roots.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            roots = self.roots()
            if name is None:
                known = next((n for n, p in roots.items() if p == folder), None)
                if known is not None:
                    return known
                base = folder.name or "root"
                name = next(c for c in (base if i == 1 else f"{base}-{i}" for i in range(1, len(roots) + 2))
                            if c not in roots)
            elif roots.get(name) == folder:
                return name
            roots[name] = folder
            body = {"roots": {n: str(p) for n, p in sorted(roots.items())}}
            atomic_write_bytes(self.root / ROOTS_FILE, (json.dumps(body, indent=2) + "\n").encode())
            log.info("folder root %r → %s registered in %s", name, folder, self.root / ROOTS_FILE)
            return name
        finally:
            os.close(fd)  # releases the flock

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


def _append_lines(fd: int, path: Path, data: bytes) -> None:
    """Under the caller's flock: cut a torn last line, append ``data``, fsync; on failure cut back and re-raise."""
    start = os.fstat(fd).st_size
    if start:
        tail = os.pread(fd, min(start, 1 << 16), max(0, start - (1 << 16)))
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = start - len(tail) + cut + 1 if cut >= 0 else (0 if len(tail) == start else None)
            if keep is None:  # a torn line longer than 64 KiB: end it instead of searching further back
                os.write(fd, b"\n")
            else:
                log.warning("%s: cutting a torn last line of %d bytes (a crash during an append)", path,
                            start - keep)
                os.ftruncate(fd, keep)
            start = os.fstat(fd).st_size
    try:
        write_all_durably(fd, data)
    except OSError:
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as exc:
            log.error("%s: cutting back a failed append failed too (%s); the next append cuts the torn line", path,
                      exc)
        raise
