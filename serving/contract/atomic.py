"""Crash-safe writes: temp file in the same directory, fsync, rename, fsync the directory.

A kill -9 at any point leaves either the previous good file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# One recipe for the whole project: index/ imports nothing of ours, so it owns it and serving reuses it.
from index.fsio import atomic_write, atomic_write_bytes, fsync_dir

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_publish_dir", "fsync_dir"]


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_publish_dir(build: Callable[[Path], None], dest: str | os.PathLike) -> Path:
    """Build a directory under a temp name beside ``dest`` and rename it into place.

    ``dest`` must not exist yet (published directories are immutable: a new version gets a new name).
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        build(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    return dest
