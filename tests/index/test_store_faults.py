"""Disk faults, kills and damage against the SQLite item store, the durable index on it, and the collection.

Faults are injected where SQLite meets the kernel — by ``strace`` (``-e inject=SYSCALL:error=E:when=N``), since
SQLite's own writes never pass through Python's ``os`` — plus a real full disk (a small tmpfs), a real ``kill -9``,
and real damage to the database file. Invariants: an acknowledged write is there after a reopen; a failed one is
reported, and it never shadows later writes; a failed automatic compaction never fails the write that triggered it;
a damaged file is an error naming the file and the recovery command, never a silently smaller or empty index.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from index.collection import Collection, Item
from index.db import StoreDamagedError
from index.durable import DurableIndex
from index.errors import IndexStoreError
from index.item_store import STORE_FILE
from tests.conftest import REPO

V, D = "enc-v1", 8
PAGE = 4096
OPS = [("add", ["a", "b"]), ("add", ["c"]), ("remove", ["a"]), ("add", ["d", "e"]), ("compact", []),
       ("add", ["f"]), ("remove", ["c", "d"]), ("add", ["g"])]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}

# Runs OPS against the index at argv[1], tolerating OSErrors; prints one JSON line at the very end (its write is the
# process's last): {"state": {uri: present}, "failed": [uris whose last operation failed]}.
SCENARIO = """
import json, sys, zlib
import numpy as np
from index.durable import DurableIndex
OPS = OPS_HERE
def vec(uris):  # one vector per URI, the same whoever asks (the check finds each item by its own)
    return np.stack([np.random.default_rng(zlib.crc32(u.encode())).normal(size=8) for u in uris]).astype(np.float32)
state, failed = {}, set()
try:
    ix = DurableIndex.open(sys.argv[1], dim=8, encoder_version="enc-v1", factory="Flat", create=True)
except OSError:
    ix = None
if ix is not None:
    ix.compact_bytes = 200  # a few adds pass it: automatic compactions happen in the middle of the run
    for op, uris in OPS:
        try:
            if op == "add":
                ix.add(vec(uris), [{"uri": u} for u in uris], "enc-v1")
            elif op == "remove":
                ix.remove(ix.ids_of(uris))
            else:
                ix.compact()
        except OSError:
            failed.update(uris)
            continue
        failed.difference_update(uris)
        state.update(dict.fromkeys(uris, op == "add"))
sys.stdout.write(json.dumps({"state": state, "failed": sorted(failed)}) + "\\n")
""".replace("OPS_HERE", repr(OPS))


def strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-qq", "-e", "trace=none", "true"], capture_output=True)
    return probe.returncode == 0


needs_strace = pytest.mark.skipif(not strace_works(), reason="strace (with ptrace allowed) is not available")


def run_scenario(path: Path, *strace_args: str) -> dict:
    """The scenario in a subprocess, under ``strace strace_args`` when given (to count calls or inject a fault)."""
    cmd = [*(["strace", "-f", "-qq", *strace_args] if strace_args else []), sys.executable, "-c", SCENARIO, str(path)]
    out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def traced_calls(trace: Path) -> list[str]:
    """System call names of a ``strace -o`` file, in order (``-f`` lines start with a pid)."""
    return [line.split("(")[0].split()[-1] for line in trace.read_text().splitlines()
            if "(" in line and "resumed>" not in line and not line.startswith("+++") and "---" not in line]


def live_uris(path: Path, own_vectors: bool = True) -> set[str]:
    """The URIs a reopened index holds, checking that items and vectors agree (and, for the scenarios that add
    each URI's own vector, that each item is found by it)."""
    if not DurableIndex.exists(path):
        return set()
    with DurableIndex.open(path) as ix:
        uris = {m["uri"] for _, m in ix.items()}
        assert len(ix) == len(uris)  # items and vectors agree
        if own_vectors:
            for u in uris:
                own = np.random.default_rng(zlib.crc32(u.encode())).normal(size=(1, D)).astype(np.float32)
                [row] = ix.search(own, 1, V)
                assert row and row[0].metadata["uri"] == u
        return uris


SYSCALLS = ("pwrite64", "fdatasync", "fsync", "write", "rename", "ftruncate")


@needs_strace
def test_an_os_error_at_any_write_call_loses_no_acknowledged_write_and_keeps_no_failed_one(tmp_path):
    """Each write-side system call the scenario makes (SQLite's commits, snapshots, automatic and explicit
    compactions), failed in turn with ENOSPC or EIO."""
    run_scenario(tmp_path / "count", "-e", f"trace={','.join(SYSCALLS)}", "-o", str(tmp_path / "count.trace"))
    calls = traced_calls(tmp_path / "count.trace")
    counts = {name: calls.count(name) for name in SYSCALLS}
    counts["write"] -= 1  # the last write is the scenario's own answer on stdout
    assert counts["pwrite64"] >= 6 and counts["fdatasync"] >= 6 and counts["rename"] >= 2, counts
    checked = 0
    for name, n in counts.items():
        for k in sorted({round(1 + j * (n - 1) / 5) for j in range(6)} if n else ()):  # six spread over each call
            code = "ENOSPC" if k % 2 else "EIO"
            target = tmp_path / f"{name}-{k}"
            result = run_scenario(target, "-o", "/dev/null", "-e", f"trace={name}", "-e",
                                  f"inject={name}:error={code}:when={k}")
            live = live_uris(target)
            state, failed = result["state"], set(result["failed"])
            for uri, present in state.items():
                assert (uri in live) == present or uri in failed, (name, k, uri, present, sorted(live))
            # a failed add may be in the store after the reopen (its commit reached the disk before the error was
            # reported: an unknown outcome, as with any database), but only one whose operation failed
            assert not (live - set(state) - failed), (name, k, "an add nobody made is in the index", sorted(live))
            checked += 1
    assert checked >= 25


@needs_strace
@pytest.mark.parametrize("code", ["ENOSPC", "EIO"])
def test_a_failed_commit_is_reported_and_the_next_write_is_not_shadowed(tmp_path, code):
    script = """
import sys, numpy as np
from index.durable import DurableIndex
ix = DurableIndex.open(sys.argv[1], dim=8, encoder_version="enc-v1", factory="Flat", create=True)
x = lambda s: np.random.default_rng(s).normal(size=(1, 8)).astype(np.float32)
ix.add(x(0), [{"uri": "a"}], "enc-v1")
sys.stdout.write("ready\\n"); sys.stdout.flush()
try:
    ix.add(x(1), [{"uri": "lost"}], "enc-v1")
    print("no error")
except OSError as exc:
    print("failed", exc.errno)
ix.add(x(2), [{"uri": "b"}], "enc-v1")
print(sorted(m["uri"] for _, m in ix.items()))
"""
    path = tmp_path / "ix"

    def run(*strace_args: str, where: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["strace", "-f", "-qq", *strace_args, sys.executable, "-c", script, str(where)],
                              cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)

    run("-e", "trace=fdatasync,write", "-o", str(tmp_path / "trace"), where=tmp_path / "count")
    lines = (tmp_path / "trace").read_text().splitlines()
    ready = next(n for n, line in enumerate(lines) if 'write(1, "ready' in line)
    first_after_ready = sum("fdatasync(" in line for line in lines[:ready]) + 1  # the commit of "lost"
    out = run("-o", "/dev/null", "-e", "trace=fdatasync", "-e",
              f"inject=fdatasync:error={code}:when={first_after_ready}", where=path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[1] in (f"failed {errno.ENOSPC}", f"failed {errno.EIO}"), lines
    assert lines[2] == "['a', 'b']", lines
    assert {"a", "b"} <= live_uris(path, own_vectors=False) <= {"a", "b", "lost"}


def test_a_failed_automatic_compaction_never_fails_the_acknowledged_write(tmp_path, monkeypatch):
    from index import snapshot

    path = tmp_path / "ix"
    real = snapshot.os.rename
    with DurableIndex.open(path, dim=D, encoder_version=V, factory="Flat", create=True) as ix:
        ix.compact_bytes = 1  # every write tries to compact
        monkeypatch.setattr(snapshot.os, "rename", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        ids = ix.add(np.ones((1, D), np.float32), [{"uri": "kept"}], V)
        assert len(ids) == 1
        monkeypatch.setattr(snapshot.os, "rename", real)
        ix.add(np.eye(D, dtype=np.float32)[:1], [{"uri": "after"}], V)  # the disk is back: compaction succeeds
        with sqlite3.connect(path / STORE_FILE) as conn:
            assert conn.execute("SELECT count(*) FROM log").fetchone()[0] == 0
    assert {m["uri"] for _, m in DurableIndex.open(path, read_only=True).items()} == {"kept", "after"}


# ---------------------------------------------------------------------------------------------- a real full disk
def small_disk(tmp_path: Path, size: str = "3M") -> Path:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {out.stderr.decode().strip()}")
    return mnt


def test_a_full_disk_refuses_the_write_that_does_not_fit_and_keeps_every_acknowledged_one(tmp_path):
    mnt = small_disk(tmp_path)
    try:
        path = mnt / "ix"
        acked: list[str] = []
        rng = np.random.default_rng(0)
        with DurableIndex.open(path, dim=64, encoder_version=V, factory="Flat", create=True) as ix:
            ix.compact_bytes = 0  # no compaction: the log grows until the disk is full
            with pytest.raises(OSError) as err:
                for n in range(100_000):
                    ix.add(rng.normal(size=(8, 64)).astype(np.float32), [{"uri": f"u{n}-{j}"} for j in range(8)], V)
                    acked += [f"u{n}-{j}" for j in range(8)]
            assert err.value.errno == errno.ENOSPC and "store.db" in str(err.value)
            assert len(acked) > 100
            (mnt / "room").write_bytes(b"")  # nothing frees yet: the next write fails too, cleanly
            with pytest.raises(OSError):
                ix.add(rng.normal(size=(8, 64)).astype(np.float32), [{"uri": f"again-{j}"} for j in range(8)], V)
        with DurableIndex.open(path, read_only=True) as back:
            uris = {m["uri"] for _, m in back.items()}
            assert uris == set(acked) and len(back) == len(acked)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---------------------------------------------------------------------------------------------- kill -9
KILLED = """
import sys, zlib, numpy as np
from index.durable import DurableIndex
ix = DurableIndex.open(sys.argv[1], dim=8, encoder_version="enc-v1", factory="Flat", create=True)
ix.compact_bytes = 400
for n in range(10_000):
    if n % 3 == 2:
        ix.remove(ix.ids_of([f"u{n - 2}"]))
        print("removed", f"u{n - 2}", flush=True)
    else:
        own = np.random.default_rng(zlib.crc32(f"u{n}".encode())).normal(size=(1, 8)).astype(np.float32)
        ix.add(own, [{"uri": f"u{n}"}], "enc-v1")
        print("added", f"u{n}", flush=True)
"""


def check_after_kill(path: Path, stdout: str) -> None:
    acked = [line.split() for line in stdout.splitlines() if line.strip()]
    n = len(acked)  # the operation in flight when the kill came may or may not have happened
    in_flight = f"u{n - 2}" if n % 3 == 2 else f"u{n}"
    live = live_uris(path)
    assert not live - {uri for _, uri in acked} - {in_flight}, sorted(live)
    for op, uri in acked:
        if uri != in_flight:
            assert (uri in live) == (op == "added" and ["removed", uri] not in acked), (op, uri, sorted(live))


@needs_strace
@pytest.mark.parametrize("call,nth", [("fdatasync", 5), ("fdatasync", 12), ("pwrite64", 9), ("rename", 2),
                                      ("fsync", 7)])
def test_kill_9_at_a_write_call_loses_no_acknowledged_write(tmp_path, call, nth):
    """SIGKILL delivered as the ``nth`` such system call starts: mid-commit, mid-snapshot, between the two."""
    path = tmp_path / "ix"
    out = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={call}", "-e",
                          f"inject={call}:signal=KILL:when={nth}", sys.executable, "-c", KILLED, str(path)],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    check_after_kill(path, out.stdout)


@pytest.mark.parametrize("after_s", [0.6, 1.1, 1.7])
def test_kill_9_at_any_moment_loses_no_acknowledged_write(tmp_path, after_s):
    path = tmp_path / "ix"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout))
    reader.start()
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline:  # imports done, writes under way
        time.sleep(0.05)
    time.sleep(after_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    reader.join(10)
    assert len(lines) > 3
    check_after_kill(path, "".join(lines))


# ---------------------------------------------------------------------------------------------- damage
def damage_a_page_holding(db_file: Path, needle: bytes, marker: bytes = b"added_at") -> int:
    """Zero the first page of ``db_file`` that holds ``needle`` and ``marker`` — something only a table row holds
    (an item's JSON), not an index — as a torn or lost page a failing disk leaves; returns its number. The database
    is checkpointed first: its pages live in the file."""
    with sqlite3.connect(db_file) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db_file.read_bytes())
    for page in range(1, len(data) // PAGE):
        body = data[page * PAGE:(page + 1) * PAGE]
        if needle in body and marker in body:
            data[page * PAGE:(page + 1) * PAGE] = bytes(PAGE)
            db_file.write_bytes(bytes(data))
            return page
    raise AssertionError(f"no page of {db_file} holds {needle!r}")


def test_a_damaged_store_is_an_error_naming_the_file_and_the_repair_never_an_empty_index(tmp_path):
    path = tmp_path / "ix"
    x = np.random.default_rng(0).normal(size=(300, D)).astype(np.float32)
    with DurableIndex.open(path, dim=D, encoder_version=V, factory="Flat", create=True) as ix:
        ix.add(x, [{"uri": f"u{i}", "note": "y" * 60} for i in range(300)], V)
        ix.compact()
    damage_a_page_holding(path / STORE_FILE, b"u150")
    with pytest.raises(StoreDamagedError) as err:
        with DurableIndex.open(path) as ix:
            ix.search(x, 1, V)
    assert str(path / STORE_FILE) in str(err.value) and "byol index repair --model" in str(err.value)


@pytest.mark.parametrize("harm", ["missing", "garbage", "truncated", "header"])
def test_a_lost_or_foreign_store_file_is_refused_with_its_name(tmp_path, harm):
    path = tmp_path / "ix"
    with DurableIndex.open(path, dim=D, encoder_version=V, factory="Flat", create=True) as ix:
        ix.add(np.random.default_rng(0).normal(size=(200, D)).astype(np.float32),
               [{"uri": f"u{i}"} for i in range(200)], V)
        ix.compact()
    store = path / STORE_FILE
    data = store.read_bytes()
    if harm == "missing":
        store.unlink()
    elif harm == "garbage":
        store.write_bytes(os.urandom(len(data)))
    elif harm == "truncated":
        store.write_bytes(data[:PAGE * 2])
    else:
        store.write_bytes(bytes(100) + data[100:])
    with pytest.raises(IndexStoreError) as err:
        with DurableIndex.open(path) as ix:
            len(ix.items())
    assert str(store) in str(err.value) and "byol index" in str(err.value), str(err.value)


def test_a_damaged_collection_names_its_repair_which_keeps_every_readable_row(tmp_path):
    from index.collection import repair

    store = Collection(tmp_path)
    store.add([Item(f"folder:photos/{i:04d}-{'z' * 40}.png", "label") for i in range(600)])
    store.register_root(tmp_path, "photos")
    store.close()
    damage_a_page_holding(tmp_path / "collection.db", b"0300-", marker=b"label")
    with pytest.raises(StoreDamagedError, match="byol index repair --collection"):
        list(Collection(tmp_path).items())
    report = repair(tmp_path)
    assert report["repaired"] and 500 < report["kept"]["items"] < 600 and report["kept"]["roots"] == 1
    back = Collection(tmp_path)
    assert 500 < len(list(back.items())) < 600 and back.roots() == {"photos": tmp_path.resolve()}
    assert not repair(tmp_path)["repaired"]


# ---------------------------------------------------------------------------------------------- readers and writers
READER_WRITER = """
import sys, numpy as np
from index.durable import DurableIndex
ix = DurableIndex.open(sys.argv[1], dim=8, encoder_version="enc-v1", factory="Flat", create=True)
ix.compact_bytes = 2000  # compactions (a snapshot switch) every few adds
print("ready", flush=True)
for n in range(400):
    ix.add(np.random.default_rng(n).normal(size=(4, 8)).astype(np.float32), [{"uri": f"u{n}-{j}"} for j in range(4)],
           "enc-v1")  # vectors not derived from URIs: the final check reads counts, not each vector
print("done", flush=True)
"""


def test_read_only_opens_during_writes_and_compactions_see_whole_adds(tmp_path):
    """Another process writes and compacts; every read-only open meanwhile sees items and vectors that agree, in
    whole adds of four."""
    path = tmp_path / "ix"
    proc = subprocess.Popen([sys.executable, "-c", READER_WRITER, str(path)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        seen = []
        while proc.poll() is None:
            with DurableIndex.open(path, read_only=True) as ro:
                n = len(ro)
                uris = [m["uri"] for _, m in ro.items()]
            assert n % 4 == 0 and len(uris) >= n, (n, len(uris))
            seen.append(n)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert len(seen) >= 3 and seen == sorted(seen)
    with DurableIndex.open(path, read_only=True) as ro:
        assert len(ro) == 1600
