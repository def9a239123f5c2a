"""DurableIndex: acknowledged writes survive kill -9, the log replays once, threads see consistent results."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from index.durable import DurableIndex
from index.item_store import STORE_FILE
from index.snapshot import snapshot_index
from index.vector_index import IndexStoreError, VectorIndex, VersionMismatchError

V = "enc-v1"
D = 16


def vecs(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def open_new(path: Path, **kw) -> DurableIndex:
    return DurableIndex.open(path, dim=D, encoder_version=V, create=True, **kw)


def log_rows(path: Path) -> int:
    """Writes logged since the FAISS snapshot, read straight from the item store."""
    with sqlite3.connect(path / STORE_FILE) as conn:
        return conn.execute("SELECT count(*) FROM log").fetchone()[0]


def test_adds_and_removes_survive_a_reopen_without_compaction(tmp_path):
    with open_new(tmp_path / "ix") as ix:
        ids = ix.add(vecs(5), [{"uri": f"u{i}"} for i in range(5)], V)
        ix.remove(ids[:2])
    with DurableIndex.open(tmp_path / "ix") as back:
        assert len(back) == 3 and back.metadata(4)["uri"] == "u4" and back.metadata(0) is None


def test_ids_continue_after_a_reopen(tmp_path):
    with open_new(tmp_path / "ix") as ix:
        ix.add(vecs(3), [{}] * 3, V)
    with DurableIndex.open(tmp_path / "ix") as back:
        assert back.add(vecs(2, 1), [{}] * 2, V).tolist() == [3, 4]


def test_compact_empties_the_log_and_keeps_everything(tmp_path):
    with open_new(tmp_path / "ix") as ix:
        ix.add(vecs(7), [{}] * 7, V)
        assert log_rows(tmp_path / "ix") == 1
        ix.compact()
        assert log_rows(tmp_path / "ix") == 0
    with DurableIndex.open(tmp_path / "ix") as back:
        assert len(back) == 7 and len(list((tmp_path / "ix").glob("snap-*"))) == 1


def test_a_snapshot_the_store_never_named_is_ignored_and_removed(tmp_path):
    """A crash after writing a snapshot but before the commit that names it: the old snapshot + log stay current."""
    with open_new(tmp_path / "ix") as ix:
        ix.add(vecs(4), [{}] * 4, V)
        stray = snapshot_index(ix._index, tmp_path / "ix")
        ix.add(vecs(2, 1), [{}] * 2, V)
    assert (tmp_path / "ix" / stray).is_dir()
    with DurableIndex.open(tmp_path / "ix") as back:
        assert len(back) == 6 and not (tmp_path / "ix" / stray).exists()


def test_a_compaction_writes_the_vectors_not_the_items(tmp_path):
    """The snapshot holds the FAISS file and a small meta.json, whatever the items' metadata weighs."""
    with open_new(tmp_path / "ix") as ix:
        ix.add(vecs(50), [{"uri": f"u{i}", "note": "x" * 2000} for i in range(50)], V)
        ix.compact()
    [snap] = (tmp_path / "ix").glob("snap-*")
    assert sorted(f.name for f in snap.iterdir()) == ["index.faiss", "meta.json"]
    assert sum(f.stat().st_size for f in snap.iterdir()) < 50 * D * 4 + 50 * 8 + 4096


def test_acknowledged_add_survives_kill_9(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        from index.durable import DurableIndex
        ix = DurableIndex.open(sys.argv[1], dim={D}, encoder_version="{V}", create=True)
        x = np.ones((1, {D}), np.float32)
        ids = ix.add(x, [{{"uri": "survivor"}}], "{V}")
        print(int(ids[0]), flush=True)
        time.sleep(60)
    """)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "ix")], stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        item_id = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with DurableIndex.open(tmp_path / "ix") as back:
        hits = back.search(np.ones((1, D), np.float32), 1, V)
        assert back.metadata(item_id)["uri"] == "survivor" and hits[0][0].id == item_id


def test_concurrent_searches_during_adds_are_consistent(tmp_path):
    """Each search sees whole adds only: a batch added together is found together or not at all."""
    ix = open_new(tmp_path / "ix")
    base = vecs(1)
    errors: list[BaseException] = []
    seen_sizes: list[int] = []
    stop = threading.Event()

    def writer():
        try:
            for b in range(30):  # each batch: 4 copies of the query direction, a group that moves together
                ix.add(np.repeat(base, 4, axis=0), [{"batch": b}] * 4, V)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    def reader():
        try:
            while not stop.is_set():
                hits = ix.search(base, 200, V)[0]
                seen_sizes.append(len(hits))
                per_batch: dict[int, int] = {}
                for h in hits:
                    per_batch[h.metadata["batch"]] = per_batch.get(h.metadata["batch"], 0) + 1
                assert all(c == 4 for c in per_batch.values()), per_batch
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ix.close()
    assert not errors, errors[0]
    assert len(seen_sizes) > 0 and all(s % 4 == 0 for s in seen_sizes)


def test_a_second_writer_process_is_refused(tmp_path):
    with open_new(tmp_path / "ix"):
        script = "import sys; from index.durable import DurableIndex; DurableIndex.open(sys.argv[1])"
        repo = Path(__file__).resolve().parents[2]
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ix")], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(repo)})
        assert out.returncode != 0 and "open for writing by another process" in out.stderr


def test_read_only_open_sees_logged_adds_and_refuses_writes(tmp_path):
    with open_new(tmp_path / "ix") as ix:
        ix.add(vecs(3), [{}] * 3, V)
        ro = DurableIndex.open(tmp_path / "ix", read_only=True)
        assert len(ro) == 3
        with pytest.raises(IndexStoreError, match="read-only"):
            ro.add(vecs(1), [{}], V)


def test_opening_with_another_encoder_version_is_refused(tmp_path):
    open_new(tmp_path / "ix").close()
    with pytest.raises(VersionMismatchError, match="belongs to encoder 'enc-v1'"):
        DurableIndex.open(tmp_path / "ix", encoder_version="enc-v2")


def test_opening_a_missing_index_without_create_raises(tmp_path):
    with pytest.raises(IndexStoreError, match="no index"):
        DurableIndex.open(tmp_path / "nothing")


def test_replace_swaps_in_a_rebuilt_index_durably(tmp_path):
    with open_new(tmp_path / "ix") as ix:
        ix.add(vecs(3), [{}] * 3, V)
        ix.replace(VectorIndex.build(vecs(10, 5), [{"uri": "new"}] * 10, V))
    with DurableIndex.open(tmp_path / "ix") as back:
        assert len(back) == 10 and back.metadata(0)["uri"] == "new"


def test_compaction_drops_hnsw_tombstones_for_good(tmp_path):
    with DurableIndex.open(tmp_path / "ix", dim=D, encoder_version=V, factory="HNSW16", create=True) as ix:
        ix.add(vecs(100), [{"n": i} for i in range(100)], V)
        ix.remove(list(range(50)))
        ix.compact()
    back = VectorIndex.load(tmp_path / "ix")
    hits = back.search(vecs(100)[:50], 1, V)
    assert back.ntotal == 50 and not back.tombstones and all(h[0].id >= 50 for h in hits)


def test_a_log_past_compact_bytes_is_snapshotted(tmp_path):
    with open_new(tmp_path / "ix") as ix:
        ix.compact_bytes = 1
        ix.add(vecs(3), [{}] * 3, V)
        assert log_rows(tmp_path / "ix") == 0
    assert len(VectorIndex.load(tmp_path / "ix")) == 3


def test_a_forced_rebuild_never_pulls_an_index_from_under_its_writer(tmp_path):
    """--force rebuilds a lost or damaged store from scratch, but a directory another process writes is refused."""
    from index.durable import IndexLockedError

    with open_new(tmp_path / "ix") as ix:
        ix.add(vecs(3), [{"uri": f"u{i}"} for i in range(3)], V)
        script = ("import sys, numpy as np; from index.durable import DurableIndex; from index.vector_index import "
                  "VectorIndex; DurableIndex.publish(VectorIndex.build(np.eye(16, dtype=np.float32), [{}] * 16, "
                  "'enc-v1'), sys.argv[1], force=True)")
        repo = Path(__file__).resolve().parents[2]
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ix")], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(repo)})
        assert out.returncode != 0 and IndexLockedError.__name__ in out.stderr
        assert len(ix) == 3 and (tmp_path / "ix" / STORE_FILE).is_file()
    (tmp_path / "ix" / STORE_FILE).unlink()  # a lost store: --force rebuilds it whole
    DurableIndex.publish(VectorIndex.build(vecs(5, 3), [{"uri": "new"}] * 5, V), tmp_path / "ix", force=True)
    with DurableIndex.open(tmp_path / "ix") as back:
        assert len(back) == 5 and back.metadata(0)["uri"] == "new"
