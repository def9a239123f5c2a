"""``byol search --grid``'s picture: the query and each neighbour in its own cell, captioned, at known places."""

import io

import numpy as np
import pytest
from PIL import Image

from clients.workflows.grid import MISSING, Layout, Tile, grid_png


def _solid(value: int, size: int = 28) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def _draw(n: int, columns: int, missing: frozenset[int] = frozenset()):
    query = Tile(_solid(7), "query", "q.png")
    tiles = [Tile(None if i in missing else _solid(20 + 20 * i), f"#{i + 1}  score 0.9{i}", f"Shirt · id {i}")
             for i in range(n)]
    img = Image.open(io.BytesIO(grid_png(query, tiles, "title", columns)))
    return np.asarray(img.convert("RGB")), Layout(n, columns)


def _cell(pixels: np.ndarray, box) -> np.ndarray:
    left, top, right, bottom = box
    return pixels[top:bottom, left:right]


@pytest.mark.parametrize(("n", "columns", "rows"), [(10, 5, 2), (4, 5, 1), (7, 3, 3)])
def test_grid_has_one_cell_per_neighbour_in_rows_of_columns(n, columns, rows):
    pixels, lay = _draw(n, columns)
    assert lay.rows == rows and pixels.shape[:2] == (lay.size[1], lay.size[0])
    assert (_cell(pixels, lay.query_box()) == 7).all()
    for i in range(n):  # each neighbour's pixels fill exactly its cell, best first, row by row
        assert (_cell(pixels, lay.cell_box(i)) == 20 + 20 * i).all(), f"cell {i}"
    assert lay.cell_box(columns - 1)[1] == lay.cell_box(0)[1]  # a full first row
    if n > columns:
        assert lay.cell_box(columns)[0] == lay.cell_box(0)[0] and lay.cell_box(columns)[1] > lay.cell_box(0)[3]


def test_every_cell_is_captioned_and_a_missing_picture_is_grey():
    pixels, lay = _draw(6, 3, missing=frozenset({4}))
    assert (_cell(pixels, lay.cell_box(4)) == MISSING).all()
    for box in [lay.query_box()] + [lay.cell_box(i) for i in range(6)]:
        left, _, right, bottom = box
        caption = pixels[bottom + 2: bottom + lay.caption_h, left:right]
        assert (caption.min(axis=-1) < 128).sum() > 20, f"no caption text under {box}"


def test_long_labels_stay_inside_their_cell():
    query = Tile(_solid(7), "query")
    tiles = [Tile(_solid(50), "#1  score 0.999", "a very long label that would run into the next cell " * 3),
             Tile(_solid(90), "#2  score 0.5", "")]
    pixels = np.asarray(Image.open(io.BytesIO(grid_png(query, tiles, columns=5))).convert("RGB"))
    lay = Layout(2, 5)
    gap_left, _, _, bottom = lay.cell_box(1)
    between = pixels[bottom + 2: bottom + lay.caption_h, gap_left - lay.gap + 2: gap_left - 1]
    assert (between == 255).all()
