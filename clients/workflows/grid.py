"""``byol search --grid``: the query and its neighbours as one captioned PNG, legible at a glance.

The query sits in its own column on the left; the neighbours fill rows of ``columns`` cells to its right, best
first, each captioned with its rank and score and, under that, its label and id. Small images (28 px Fashion-MNIST)
are enlarged with nearest-neighbour sampling so pixels stay pixels; a neighbour whose file is gone is a grey cell that
still carries its caption. The geometry is one :class:`Layout`, so a test can find every cell in the picture.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

BACKGROUND, MISSING, INK, FAINT, ACCENT = (255, 255, 255), (170, 170, 170), (20, 20, 20), (90, 90, 90), (190, 30, 30)
FONT_PX, LINE_PX = 13, 17


@dataclass
class Tile:
    """One cell: pixels (uint8 ``[H, W, 3]``, None when unavailable) and two caption lines."""

    pixels: np.ndarray | None
    caption: str
    detail: str = ""


@dataclass(frozen=True)
class Layout:
    """Where everything goes, in pixels: a title band, the query column, then ``rows × columns`` neighbour cells."""

    n: int
    columns: int
    cell: int = 112
    margin: int = 10
    gap: int = 10
    title_h: int = 28
    caption_h: int = 2 * LINE_PX + 6
    query_gap: int = 24  # extra space between the query column and the neighbours

    @property
    def rows(self) -> int:
        return max(1, -(-self.n // self.columns))

    @property
    def size(self) -> tuple[int, int]:
        cols = min(self.columns, max(self.n, 1))
        width = 2 * self.margin + self.cell + self.query_gap + cols * (self.cell + self.gap) - self.gap
        height = 2 * self.margin + self.title_h + self.rows * (self.cell + self.caption_h + self.gap) - self.gap
        return max(width, 360), height

    def query_box(self) -> tuple[int, int, int, int]:
        x, y = self.margin, self.margin + self.title_h
        return x, y, x + self.cell, y + self.cell

    def cell_box(self, i: int) -> tuple[int, int, int, int]:
        """The image box of neighbour ``i`` (0 = best), as (left, top, right, bottom); its caption is below."""
        r, c = divmod(i, self.columns)
        x = self.margin + self.cell + self.query_gap + c * (self.cell + self.gap)
        y = self.margin + self.title_h + r * (self.cell + self.caption_h + self.gap)
        return x, y, x + self.cell, y + self.cell


def _font(size: int = FONT_PX):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow ≥ 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit_text(draw, text: str, font, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels (a long label must not run into the next cell)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _paste(canvas, box: tuple[int, int, int, int], pixels: np.ndarray | None) -> None:
    from PIL import Image

    side = box[2] - box[0]
    if pixels is None:
        tile = Image.new("RGB", (side, side), MISSING)
    else:
        tile = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB").resize(
            (side, side), Image.Resampling.NEAREST)
    canvas.paste(tile, box[:2])


def draw_grid(query: Tile, neighbours: list[Tile], title: str = "", columns: int = 5, cell: int = 112):
    """The grid as a PIL image (see the module docstring for the layout)."""
    from PIL import Image, ImageDraw

    if columns < 1:
        raise ValueError(f"grid columns must be >= 1, got {columns}")
    lay = Layout(len(neighbours), columns, cell)
    canvas = Image.new("RGB", lay.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, title_font = _font(), _font(FONT_PX + 2)
    draw.text((lay.margin, lay.margin), _fit_text(draw, title, title_font, lay.size[0] - 2 * lay.margin),
              fill=INK, font=title_font)
    cells = [(lay.query_box(), query, ACCENT)] + [(lay.cell_box(i), t, INK) for i, t in enumerate(neighbours)]
    for box, t, colour in cells:
        _paste(canvas, box, t.pixels)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2], box[3]), outline=colour if colour == ACCENT else FAINT)
        for line, (text, fill) in enumerate(((t.caption, colour), (t.detail, FAINT))):
            if text:
                draw.text((box[0], box[3] + 4 + line * LINE_PX), _fit_text(draw, text, font, cell), fill=fill,
                          font=font)
    return canvas


def grid_png(query: Tile, neighbours: list[Tile], title: str = "", columns: int = 5, cell: int = 112) -> bytes:
    """:func:`draw_grid` as PNG bytes."""
    buf = io.BytesIO()
    draw_grid(query, neighbours, title, columns, cell).save(buf, format="PNG")
    return buf.getvalue()
