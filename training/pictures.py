"""Pictures of a run, as plain uint8 arrays: the views BYOL trains on and the kNN monitor's nearest neighbours.

Scalars say *how much* a run learns; these say *what*: whether the views are plausible (a crop that keeps nothing
recognisable, a colour jitter that blanks the image) and which references the encoder thinks look alike. They are
small (a few dozen thumbnails), drawn only at the start of a run and at kNN evaluations, and go to TensorBoard
(``add_image(..., dataformats="HWC")``) and into the run's report.
"""

from __future__ import annotations

import numpy as np
import torch

MATCH, MISMATCH, QUERY = (40, 170, 60), (210, 40, 40), (90, 90, 90)  # border colours: same label, other, query
MIN_TILE = 64  # small images (28 px) are enlarged to at least this many pixels, nearest-neighbour, to be seen


def tile(rows: list[list[np.ndarray]], borders: list[list[tuple[int, int, int]]] | None = None, pad: int = 2,
         gap: int = 4) -> np.ndarray:
    """Images (uint8 ``[H, W, 3]``, all one size) laid out in rows → one uint8 ``[H', W', 3]`` on white, each
    image enlarged to ≥ ``MIN_TILE`` px and framed by ``pad`` px of its border colour (white when none)."""
    h, w = rows[0][0].shape[:2]
    scale = max(1, -(-MIN_TILE // max(h, w)))
    th, tw = h * scale + 2 * pad, w * scale + 2 * pad
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (th + gap) + gap, n_cols * (tw + gap) + gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = gap + i * (th + gap), gap + j * (tw + gap)
            out[y:y + th, x:x + tw] = borders[i][j] if borders else (255, 255, 255)
            big = np.repeat(np.repeat(_rgb(img), scale, axis=0), scale, axis=1)
            out[y + pad:y + pad + h * scale, x + pad:x + pad + w * scale] = big
    return out


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]


@torch.no_grad()
def view_pairs(augment: torch.nn.Module, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Three rows: the images, their view from T, their view from T′ (``augment`` is the run's
    :class:`training.augment.BYOLAugment`). ``images``: uint8 ``[n, H, W, 3]``, or ``[n, 2, S, S, 3]`` crops cut
    from files (streamed folders; the first row then shows the first crop). Drawn on the CPU from a generator of its
    own, inside a forked RNG: picturing the views never changes the views training sees (resume stays exact)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    with torch.random.fork_rng(devices=[]):
        v1, v2 = augment(x, generator=torch.Generator().manual_seed(seed))
    first = images[:, 0] if images.ndim == 5 else images
    size = v1.shape[-1]
    originals = [_resize(img, size) for img in first]
    as_hwc = [[_rgb(v.permute(1, 2, 0).numpy()) for v in views] for views in (v1, v2)]
    return tile([originals, *as_hwc])


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))


def neighbour_grid(queries: np.ndarray, query_labels: np.ndarray, query_vecs: np.ndarray, refs: np.ndarray,
                   ref_labels: np.ndarray, ref_vecs: np.ndarray, k: int = 6) -> np.ndarray:
    """One row per query: the query (grey frame) then its ``k`` nearest references by cosine similarity (vectors
    are L2-normalised), framed green when their label is the query's, red otherwise."""
    k = min(k, len(refs))
    sims = query_vecs @ ref_vecs.T
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    rows, borders = [], []
    for q, idx in enumerate(nearest):
        rows.append([queries[q], *refs[idx]])
        borders.append([QUERY, *(MATCH if ref_labels[i] == query_labels[q] else MISMATCH for i in idx)])
    return tile(rows, borders)
