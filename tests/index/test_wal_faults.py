"""Disk faults and kills against the durable index and the collection (harness: ``tests.index.faults``).

Invariants: an acknowledged write is there after a reopen, a failed one is not (it is cut back out of the log), a
failure never shadows later writes, a failed automatic compaction never fails the write that triggered it, and a log
damaged in the middle is refused with the offset (then repaired), never truncated silently.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from index import durable
from index.collection import Collection, Item
from index.durable import WAL_FILE, DurableIndex
from index.errors import IndexStoreError
from tests.conftest import REPO
from tests.index.faults import KILL_RUNNER, POINTS, Faults

V, D = "enc-v1", 8
OPS = [("add", ["a", "b"]), ("add", ["c"]), ("remove", ["a"]), ("add", ["d", "e"]), ("compact", []),
       ("add", ["f"]), ("remove", ["c", "d"]), ("add", ["g"])]


def vec(uris: list[str]) -> np.ndarray:
    rng = np.random.default_rng(sum(map(ord, "".join(uris))))
    return rng.normal(size=(len(uris), D)).astype(np.float32)


def run_ops(path) -> tuple[dict[str, bool], set[str]]:
    """Run OPS, tolerating failures → (acknowledged state per uri, uris whose last operation failed)."""
    state: dict[str, bool] = {}
    failed: set[str] = set()
    try:
        ix = DurableIndex.open(path, dim=D, encoder_version=V, factory="Flat", create=True)
    except OSError:
        return state, failed
    ix.compact_bytes = 700  # a few adds pass it: automatic compactions happen in the middle of the run
    with ix:
        for op, uris in OPS:
            try:
                if op == "add":
                    ix.add(vec(uris), [{"uri": u} for u in uris], V)
                elif op == "remove":
                    ix.remove(ids_of(ix, uris))
                else:
                    ix.compact()
            except OSError:
                failed.update(uris)
                continue
            failed.difference_update(uris)
            state.update(dict.fromkeys(uris, op == "add"))
    return state, failed


def ids_of(ix: DurableIndex, uris: list[str]) -> list[int]:
    return [i for i, m in ix.items() if m["uri"] in uris]


def live_uris(path) -> set[str]:
    if not DurableIndex.exists(path):
        return set()
    with DurableIndex.open(path) as ix:
        return {m["uri"] for _, m in ix.items()}


def count_points(tmp_path) -> dict[str, int]:
    target = tmp_path / "count"
    with Faults(target) as f:
        run_ops(target)
    counts = {name: sum(1 for n, _ in f.calls if n == name) for name in POINTS}
    assert counts["write"] >= 6 and counts["fsync"] >= 6 and counts["replace"] >= 2 and counts["rename"] >= 2
    return counts


def test_an_os_error_at_any_write_point_loses_no_acknowledged_write_and_applies_no_failed_one(tmp_path):
    """Every OS write call the scenario makes (adds, removes, automatic and explicit compactions), failed in turn."""
    checked = 0
    for name, n in count_points(tmp_path).items():
        for k in range(1, n + 1):
            target = tmp_path / f"{name}-{k}"
            with Faults(target, fail=(name, k)) as f:
                state, failed = run_ops(target)
            assert f.failed, (name, k)
            live = live_uris(target)
            for uri, present in state.items():
                assert (uri in live) == present or uri in failed, (name, k, uri, present, sorted(live))
            assert not (live - set(state)), (name, k, "a failed add is in the index", sorted(live))
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("point", ["write", "fsync"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_append_is_cut_back_so_the_next_write_is_not_shadowed(tmp_path, point, code):
    path = tmp_path / "ix"
    with DurableIndex.open(path, dim=D, encoder_version=V, factory="Flat", create=True) as ix:
        ix.add(vec(["a"]), [{"uri": "a"}], V)
        with Faults(path / WAL_FILE, fail=(point, 1), errno=code), pytest.raises(OSError) as err:
            ix.add(vec(["lost"]), [{"uri": "lost"}], V)
        assert err.value.errno == code
        ix.add(vec(["b"]), [{"uri": "b"}], V)
        assert sorted(m["uri"] for _, m in ix.items()) == ["a", "b"]
    assert live_uris(path) == {"a", "b"}


def test_a_failed_automatic_compaction_never_fails_the_acknowledged_write(tmp_path):
    path = tmp_path / "ix"
    with DurableIndex.open(path, dim=D, encoder_version=V, factory="Flat", create=True) as ix:
        ix.compact_bytes = 1  # every write tries to compact
        for point in ("rename", "replace", "fsync"):
            with Faults(path, fail=(point, 1 if point != "fsync" else 2)) as f:
                ids = ix.add(vec([point]), [{"uri": point}], V)  # the append's own fsync is call 1
            assert len(ids) == 1 and f.failed, point
        ix.add(vec(["after"]), [{"uri": "after"}], V)
        assert (path / WAL_FILE).stat().st_size == 0  # the disk is back: compaction succeeds again
    assert live_uris(path) == {"rename", "replace", "fsync", "after"}


def test_a_log_damaged_in_the_middle_is_refused_with_its_offset_then_repaired(tmp_path):
    path = tmp_path / "ix"
    with DurableIndex.open(path, dim=D, encoder_version=V, factory="Flat", create=True) as ix:
        ix.add(vec(["a"]), [{"uri": "a"}], V)
        first_end = (path / WAL_FILE).stat().st_size
        ix.add(vec(["b"]), [{"uri": "b"}], V)
        ix.add(vec(["c"]), [{"uri": "c"}], V)
    data = bytearray((path / WAL_FILE).read_bytes())
    data[first_end + 20] ^= 0xFF  # one flipped byte inside the second record
    (path / WAL_FILE).write_bytes(bytes(data))
    with pytest.raises(IndexStoreError, match=rf"corrupt log record at byte {first_end} .*repair\(") as err:
        DurableIndex.open(path)
    assert "intact records follow" in str(err.value)
    report = durable.repair(path)
    assert report["kept"] == 2 and report["dropped_bytes"] > 0
    assert live_uris(path) == {"a", "c"}


KILL_SCRIPT = """
import sys, numpy as np
from index.durable import DurableIndex
ix = DurableIndex.open(sys.argv[1], dim=8, encoder_version="enc-v1", factory="Flat", create=True)
ix.compact_bytes = 700
for n in range(10):
    if n % 3 == 2:
        ix.remove([i for i, m in ix.items() if m["uri"] == f"u{n - 2}"])
        print("removed", f"u{n - 2}", flush=True)
    else:
        ix.add(np.random.default_rng(n).normal(size=(1, 8)).astype(np.float32), [{"uri": f"u{n}"}], "enc-v1")
        print("added", f"u{n}", flush=True)
"""


@pytest.mark.parametrize("name,match,nth", [
    ("write", "wal.log", 2),  # a record written, not yet fsynced
    ("fsync", "wal.log", 3),  # acknowledged a moment later
    ("rename", r"/snap-", 1),  # a compaction's snapshot in place, CURRENT not switched
    ("replace", "CURRENT", 1),  # switched, log not reset
    ("replace", "wal.log", 1),  # log reset
])
def test_kill_9_at_a_write_point_loses_no_acknowledged_write(tmp_path, name, match, nth):
    path = tmp_path / "ix"
    proc = subprocess.run([sys.executable, "-c", KILL_RUNNER, name, match, str(nth), "-c", KILL_SCRIPT, str(path)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    acked = [line.split() for line in proc.stdout.splitlines()]
    n = len(acked)  # the operation in flight when the kill came may or may not have happened
    in_flight = f"u{n - 2}" if n % 3 == 2 else f"u{n}"
    live = live_uris(path)
    assert not live - {uri for _, uri in acked} - {in_flight}, sorted(live)
    for op, uri in acked:
        if uri == in_flight:
            continue
        assert (uri in live) == (op == "added" and ["removed", uri] not in acked), (op, uri, sorted(live))


def test_a_torn_collection_line_never_swallows_the_next_record(tmp_path):
    store = Collection(tmp_path)
    store.add([Item("a")])
    with open(tmp_path / "items.jsonl", "a") as fh:
        fh.write('{"uri": "half')  # a crash in the middle of an append
    store.add([Item("b")])
    assert [i.uri for i in Collection(tmp_path).items()] == ["a", "b"]


@pytest.mark.parametrize("point", ["write", "fsync"])
def test_a_failed_collection_append_is_cut_back(tmp_path, point):
    store = Collection(tmp_path)
    store.add([Item("a")])
    with Faults(tmp_path / "items.jsonl", fail=(point, 1)), pytest.raises(OSError):
        store.add([Item("lost-" + "x" * 200)])
    store.add([Item("b")])
    assert [i.uri for i in Collection(tmp_path).items()] == ["a", "b"]
    assert (tmp_path / "items.jsonl").read_text().count("\n") == 2
