"""The write-ahead log of a durable index (``wal.log``): framed records, appends, scanning and repair.

A record is ``magic, payload length, crc32(payload)`` then the payload (a JSON header and, for adds, the float32
vectors). Three failure shapes, three answers:

* a failed append (ENOSPC, EIO at ``write`` or ``fsync``): :class:`LogWriter` cuts the file back to where the append
  started, so the next append is not written behind a torn record (which replay would stop at, losing it);
* a torn tail (a crash in the middle of an append): nothing valid follows it, so opening cuts it off;
* a bad record *followed by valid ones* (corruption in the middle): opening refuses with an
  :class:`IndexStoreError` naming the byte offset, because cutting there would silently drop acknowledged writes.
  :func:`repair` (``index.durable.repair``) then keeps every intact record.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from index.errors import IndexStoreError
from index.fsio import fsync_dir, write_all_durably

log = logging.getLogger(__name__)

MAGIC = b"BWL1"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32(payload)
_HEAD = struct.Struct("<I")  # header json length inside the payload
REPAIR_HINT = ("stop the server and repair it with: byol index repair --model {version} (or, without the CLI, "
               "python -c \"from index.durable import repair; print(repair('{dir}'))\"); it keeps every intact "
               "record, and items of a dropped one are still in the collection: the next reload reconciles them")

Record = tuple[dict, "np.ndarray | None"]


def encode_record(header: dict, vectors: np.ndarray | None = None) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    body = b"" if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32).tobytes()
    payload = _HEAD.pack(len(head)) + head + body
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _frame_at(data: bytes, pos: int) -> tuple[Record, int] | None:
    """The intact record starting at ``pos`` and where it ends, or ``None``."""
    if pos + _FRAME.size > len(data):
        return None
    magic, length, crc = _FRAME.unpack_from(data, pos)
    start, end = pos + _FRAME.size, pos + _FRAME.size + length
    if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
        return None
    payload = data[start:end]
    try:
        (hlen,) = _HEAD.unpack_from(payload, 0)
        header = json.loads(payload[_HEAD.size:_HEAD.size + hlen])
        body = payload[_HEAD.size + hlen:]
        vectors = np.frombuffer(body, dtype=np.float32).reshape(-1, header["dim"]) if body else None
    except (struct.error, ValueError, KeyError, TypeError):
        return None
    return (header, vectors), end


def _next_intact(data: bytes, start: int) -> int | None:
    """Offset of the first intact record at or after ``start`` (a candidate is any ``MAGIC``)."""
    i = data.find(MAGIC, start)
    while i != -1:
        if _frame_at(data, i) is not None:
            return i
        i = data.find(MAGIC, i + 1)
    return None


@dataclass
class Scan:
    """What a log holds: the records of its valid prefix, where that prefix ends, and any damage after it."""

    records: list[Record] = field(default_factory=list)
    valid_end: int = 0
    size: int = 0
    corrupt_at: int | None = None  # a bad record with intact ones after it (never a torn tail)
    resume_at: int | None = None  # where the next intact record starts


def scan(path: Path) -> Scan:
    """Read a log: records up to the first bad frame, and whether intact records follow it."""
    if not path.is_file():
        return Scan()
    data = path.read_bytes()
    out = Scan(size=len(data))
    pos = 0
    while (frame := _frame_at(data, pos)) is not None:
        out.records.append(frame[0])
        pos = frame[1]
    out.valid_end = pos
    if pos < len(data):
        out.resume_at = _next_intact(data, pos + 1)
        if out.resume_at is not None:
            out.corrupt_at = pos
    return out


def read_records(path: Path) -> tuple[list[Record], int]:
    """All records of the valid prefix of a log, and the byte offset where it ends."""
    s = scan(path)
    return s.records, s.valid_end


def corruption_error(path: Path, s: Scan) -> IndexStoreError:
    return IndexStoreError(
        f"{path}: corrupt log record at byte {s.corrupt_at} of {s.size} (intact records follow at byte "
        f"{s.resume_at}); the index is not opened, so no acknowledged write is dropped silently; "
        + REPAIR_HINT.format(dir=path.parent, version=path.parent.name))


def intact_frames(path: Path) -> tuple[bytes, list[tuple[int, int]]]:
    """Every intact frame of a log, concatenated, and the byte ranges dropped around them (for :func:`repair`)."""
    data = path.read_bytes() if path.is_file() else b""
    kept, dropped, pos = [], [], 0
    while pos < len(data):
        frame = _frame_at(data, pos)
        if frame is not None:
            kept.append(data[pos:frame[1]])
            pos = frame[1]
            continue
        nxt = _next_intact(data, pos + 1)
        end = len(data) if nxt is None else nxt
        dropped.append((pos, end))
        pos = end
    return b"".join(kept), dropped


class LogWriter:
    """Appends to one log file through a raw ``O_APPEND`` descriptor (no user-space buffer that could flush a half
    record later); every append is fsynced before it returns, and a failed one is cut back out of the file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._broken = ""
        self._dir_unsynced = False  # a reset's rename is not yet known durable: sync the directory first

    def size(self) -> int:
        return os.fstat(self._require()).st_size

    def _require(self) -> int:
        if self._fd is None:
            raise IndexStoreError(f"{self.path}: the log is closed (the index was closed)")
        if self._broken:
            raise IndexStoreError(f"{self.path}: writes refused until the index is reopened: {self._broken}")
        return self._fd

    def append(self, record: bytes) -> None:
        """Write and fsync one record; on any OS error the file is cut back to its previous end and the error
        re-raised (nothing of the record stays behind)."""
        fd = self._require()
        start = os.fstat(fd).st_size
        try:
            write_all_durably(fd, record)
            if self._dir_unsynced:
                fsync_dir(self.path.parent)
                self._dir_unsynced = False
        except OSError as exc:
            self._cut_back(start, exc)
            raise

    def _cut_back(self, start: int, cause: OSError) -> None:
        try:
            os.ftruncate(self._fd, start)
            os.fsync(self._fd)
            log.warning("%s: an append failed (%s); the log was cut back to byte %d", self.path, cause, start)
        except OSError as exc:  # the file's state is unknown now: no more appends behind a possible torn record
            self._broken = f"an append failed ({cause}) and cutting it back failed too ({exc})"
            log.error("%s: %s", self.path, self._broken)

    def reset(self) -> None:
        """Start an empty log (the snapshot holds everything): an empty file renamed over this one. On failure the
        current log stays in use, unchanged."""
        self._require()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        new = None
        try:
            os.fsync(fd)
            new = os.open(tmp, os.O_WRONLY | os.O_APPEND)
            os.replace(tmp, self.path)
        except BaseException:
            if new is not None:
                os.close(new)
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        old, self._fd = self._fd, new
        os.close(old)
        try:
            fsync_dir(self.path.parent)
        except OSError as exc:
            self._dir_unsynced = True
            log.warning("%s: syncing the directory after a log reset failed (%s); retried before the next append",
                        self.path, exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
