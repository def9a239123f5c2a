"""A store written by the file layout before the SQLite item store (``fixtures/layout_v1``, made by that code) is
converted on first open, atomically, and keeps every item, label, removal, folder root and uploaded image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index.collection import Collection
from index.durable import DurableIndex
from index.item_store import STORE_FILE
from tests.conftest import REPO
from tests.index.faults import KILL_RUNNER

FIXTURE = Path(__file__).parent / "fixtures" / "layout_v1"


@pytest.fixture()
def old_store(tmp_path) -> tuple[Path, dict]:
    shutil.copytree(FIXTURE, tmp_path / "store")
    expected = json.loads((FIXTURE / "expected.json").read_text())
    return tmp_path / "store", expected


def check_index(directory: Path, expected: dict) -> None:
    with DurableIndex.open(directory, encoder_version=expected["version"], read_only=True) as ix:
        got = {str(i): {"uri": m["uri"], "label": m.get("label")} for i, m in ix.items()}
        assert got == expected["items"]
        assert len(ix) == len(expected["items"]) == 36
        for removed in expected["removed_ids"]:
            assert ix.metadata(removed) is None
        ids = sorted(int(i) for i in expected["vectors"])
        queries = np.array([expected["vectors"][str(i)] for i in ids], dtype=np.float32)
        hits = ix.search(queries, 1, expected["version"])
        assert [row[0].id for row in hits] == ids  # every vector is found as its own item, with its metadata
        assert all(row[0].metadata["uri"] == expected["items"][str(i)]["uri"] for i, row in zip(ids, hits, strict=True))


def check_collection(root: Path, expected: dict) -> None:
    coll = Collection(root)
    assert [{"uri": it.uri, "label": it.label} for it in coll.items()] == expected["collection"]
    assert {n: str(p) for n, p in coll.roots().items()} == expected["roots"]
    for uri in (it["uri"] for it in expected["collection"] if it["uri"].startswith("sha256:")):
        assert coll.read_bytes(uri) in (b"first upload bytes", b"second upload bytes")


def test_an_old_store_is_converted_on_first_open_and_keeps_everything(old_store):
    root, expected = old_store
    directory = root / "indexes" / expected["version"]
    assert (directory / "wal.log").stat().st_size > 0 and not (directory / STORE_FILE).exists()
    check_index(directory, expected)
    check_collection(root / "collection", expected)
    left = {p.name for p in directory.iterdir()} - {f"{STORE_FILE}-wal", f"{STORE_FILE}-shm"}
    assert len([n for n in left if n.startswith("snap-")]) == 1 and left - {n for n in left if n.startswith("snap-")} \
        == {"LOCK", STORE_FILE}
    assert not (root / "collection" / "items.jsonl").exists() and (root / "collection" / "collection.db").is_file()
    check_index(directory, expected)  # a second open reads the converted store
    with DurableIndex.open(directory) as ix:  # and it takes writes, ids continuing after the old ones
        new = ix.add(np.ones((1, expected["dim"]), np.float32), [{"uri": "after-upgrade"}], expected["version"])
        assert int(new[0]) == 40


@pytest.mark.parametrize("call,match,nth", [
    ("rename", r"/snap-", 1),  # the new FAISS snapshot in place, the database not yet
    ("fsync", r"\.converting/store\.db$", 1),  # the new database written, not renamed in
    ("rename", r"/store\.db$", 1),  # the commit point passed, old files not yet removed
])
def test_a_conversion_killed_at_any_step_leaves_one_whole_store(old_store, call, match, nth):
    root, expected = old_store
    directory = root / "indexes" / expected["version"]
    code = f"from index.durable import DurableIndex; DurableIndex.open({str(directory)!r})"
    proc = subprocess.run([sys.executable, "-c", KILL_RUNNER, call, match, str(nth), "-c", code], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    check_index(directory, expected)


def test_a_collection_conversion_killed_before_its_rename_leaves_the_old_files(old_store):
    root, expected = old_store
    code = f"from index.collection import Collection; list(Collection({str(root / 'collection')!r}).items())"
    proc = subprocess.run([sys.executable, "-c", KILL_RUNNER, "fsync", r"\.collection\.db\.tmp$", "1", "-c", code],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (root / "collection" / "items.jsonl").is_file() and not (root / "collection" / "collection.db").exists()
    check_collection(root / "collection", expected)
