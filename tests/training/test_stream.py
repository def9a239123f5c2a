"""Streaming a folder: views cut from the full-resolution files in worker processes, deterministic, resumable,
unreadable files skipped once, and RAM that does not grow with the folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.augment import ViewConfig
from training.checkpoint import load_checkpoint
from training.config import apply_overrides, preset
from training.stream import FileSet, FolderViews, StreamBatcher, build_cache
from training.train import train

CPU = torch.device("cpu")
VIEWS = (ViewConfig(crop_scale=(0.2, 1.0)), ViewConfig(crop_scale=(0.2, 1.0)))
TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "encoder.input_size=32", "train.batch_size=16", "train.steps=6", "train.max_minutes=none",
        "train.knn_every=0", "train.checkpoint_every=0", "train.progress=false", "train.device=cpu",
        "optim.warmup_fraction=0.3", "data.stream=true", "data.workers=2",
        "train.precision=fp32", "train.channels_last=false"]  # bit-exact comparisons: one fixed precision


def make_folder(root, n: int = 60, broken: int = 3, side: int = 48):
    """Nested PNG/JPEG images of varied sizes with a few broken files among them."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"part{i % 3}" / ("deep" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        w, h = side + int(rng.integers(0, side)), side + int(rng.integers(0, side // 2))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img.save(folder / f"img{i:04d}.{'png' if i % 2 else 'jpg'}")
    for i in range(broken):
        (root / f"part{i}" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_views_are_the_same_whichever_worker_decodes_them(tmp_path):
    files = FileSet.scan(make_folder(tmp_path))
    a = StreamBatcher(files, 32, VIEWS, 16, seed=3, device=CPU, workers=0)
    b = StreamBatcher(files, 32, VIEWS, 16, seed=3, device=CPU, workers=2)
    for _ in range(4):
        va, vb = a.next(), b.next()
        assert va.shape == (16, 2, 32, 32, 3) and va.dtype == torch.uint8 and torch.equal(va, vb)


def test_a_resumed_stream_continues_with_the_same_batches(tmp_path):
    files = FileSet.scan(make_folder(tmp_path))
    straight = StreamBatcher(files, 32, VIEWS, 16, seed=1, device=CPU, workers=2)
    expected = [straight.next() for _ in range(5)]  # crosses an epoch boundary (63 files → 3 batches an epoch)
    first = StreamBatcher(files, 32, VIEWS, 16, seed=1, device=CPU, workers=2)
    got = [first.next() for _ in range(2)]
    second = StreamBatcher(files, 32, VIEWS, 16, seed=1, device=CPU, workers=2)
    second.load_state_dict(first.state_dict())
    got += [second.next() for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(expected, got, strict=True))


def test_unreadable_files_are_skipped_and_counted_once(tmp_path):
    files = FileSet.scan(make_folder(tmp_path, n=29, broken=3))
    batcher = StreamBatcher(files, 32, VIEWS, 16, seed=0, device=CPU, workers=0)
    for _ in range(6):  # three epochs of two batches: every broken file is met three times
        assert batcher.next().shape == (16, 2, 32, 32, 3)
    assert {files.files[i].name for i in batcher.unreadable} <= {"broken0.png", "broken1.png", "broken2.png"}
    assert len(batcher.unreadable) >= 2


def test_crops_come_from_the_whole_full_resolution_image(tmp_path):
    """A crop box covering the whole 400×100 image: the view is that image squeezed to 32×32, its left edge red
    and right edge blue — a centre crop of the file (the in-memory path) would have lost both edges."""
    pixels = np.zeros((100, 400, 3), np.uint8)
    pixels[:, :50] = (255, 0, 0)
    pixels[:, -50:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    whole = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(4.0, 4.0))
    views, _, ok = FolderViews(FileSet.scan(tmp_path), 32, (whole, whole), seed=0)[(0, 0)]
    assert ok and views[0, 16, 0].tolist() == [255, 0, 0] and views[0, 16, -1].tolist() == [0, 0, 255]


def test_the_cache_is_built_once_and_resumed(tmp_path):
    files = FileSet.scan(make_folder(tmp_path / "data", n=20, broken=1))
    cache, bad = build_cache(files, 32, tmp_path / "cache")
    assert cache.shape == (21, 40, 40, 3) and {files.files[i].name for i in bad} == {"broken0.png"}
    again, _ = build_cache(files, 32, tmp_path / "cache")
    assert np.array_equal(np.asarray(cache), np.asarray(again))


def test_a_streamed_run_trains_and_resumes_bit_identically(tmp_path):
    folder = make_folder(tmp_path / "data")
    cfg = apply_overrides(preset("fmnist-demo"), [*TINY, f"data.source={folder}"])
    straight = train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "split", stop_after=3)
    resumed = train(cfg, tmp_path / "split", resume=True)
    assert straight.steps == resumed.steps == 6
    a, b = load_checkpoint(straight.checkpoint_path), load_checkpoint(resumed.checkpoint_path)
    assert all(torch.equal(v, b["online"][k]) for k, v in a["online"].items())


@pytest.mark.parametrize("stream", ["true", "false"])
def test_small_folders_load_in_memory_unless_told(tmp_path, stream):
    from training.state import streams

    cfg = apply_overrides(preset("fmnist-demo"), [f"data.source={make_folder(tmp_path, n=6)}",
                                                  f"data.stream={stream}"])
    assert streams(cfg) is (stream == "true")
    auto = apply_overrides(cfg, ["data.stream=none", "data.memory_budget_mb=0"])
    assert streams(auto) and not streams(apply_overrides(cfg, ["data.stream=none"]))


RSS_SCRIPT = """
import os, sys, threading, time
from pathlib import Path
from training.config import apply_overrides, preset
from training.train import train


def tree_pss():
    # proportional set size of this process and its workers: shared pages (torch's libraries, forked memory)
    # counted once in all, not once per process as summing RSS would
    pids = [os.getpid()]
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                total += sum(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
        except OSError:
            pass
    return total


peak, done = [0], threading.Event()


def sample():
    while not done.is_set():
        peak[0] = max(peak[0], tree_pss())
        time.sleep(0.05)


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
cfg = apply_overrides(preset("fmnist-demo"), sys.argv[3:] + ["data.source=" + sys.argv[1]])
train(cfg, sys.argv[2])
done.set()
sampler.join()
print("PSS", peak[0])
"""


@pytest.mark.slow
def test_streaming_ram_does_not_grow_with_the_folder_and_stays_below_its_pixels(tmp_path):
    """Peak memory of the training process and its decoding workers (proportional set size, sampled every 50 ms from
    the kernel's accounting) over the same 40 streamed steps on a folder of 600 and of 2,400 large JPEGs: about the
    same, and below what the larger folder's pixels take decoded."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    rng = np.random.default_rng(0)
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    grad = np.linspace(0, 255, 640, dtype=np.float32)
    for i in range(600):
        base = (grad[None, :, None] * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 8, (480, 640, 3))).clip(0, 255)
        Image.fromarray(base.astype(np.uint8)).save(small / f"{i:04d}.jpg", quality=85)
        for copy in range(4):
            os.link(small / f"{i:04d}.jpg", large / f"{i:04d}-{copy}.jpg")
    decoded_large = 2400 * 480 * 640 * 3
    args = [*TINY, "train.steps=40", "train.batch_size=32", "data.workers=2"]
    peaks = {}
    for name, folder in (("small", small), ("large", large)):
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(folder), str(tmp_path / f"run-{name}"), *args],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[name] = int(out.stdout.split("PSS")[-1])
    assert peaks["large"] < decoded_large, peaks
    assert peaks["large"] <= 1.1 * peaks["small"] + 50 * 2**20, peaks
