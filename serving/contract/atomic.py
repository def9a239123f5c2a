"""Crash-safe writes for everything outside ``index/``: the project's one recipe lives in :mod:`index.fsio`.

Temp file in the same directory, fsync, rename, fsync the directory: a kill -9 at any point leaves either the
previous good file or the new one, never a torn one.
"""

from index.fsio import atomic_publish_dir, atomic_write, atomic_write_bytes, atomic_write_json, fsync_dir, now_iso

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_publish_dir", "fsync_dir", "now_iso"]
