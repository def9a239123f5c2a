"""``byol sample-image OUT.png``: a sample image to try the API with (a Fashion-MNIST test image, or a drawn one).

    byol sample-image shirt.png                     # the first Shirt of the Fashion-MNIST test split
    byol sample-image boot.png --label "ankle boot" --index 3
"""

from __future__ import annotations

import argparse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol sample-image", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="PNG file to write")
    p.add_argument("--label", default="Shirt", help="Fashion-MNIST class name or number (default: Shirt)")
    p.add_argument("--index", type=int, default=0, help="which image of that class in the test split (default 0)")
    p.add_argument("--data-root", default=None, help="where the Fashion-MNIST files live")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from clients.workflows.sample import write_sample

    r = write_sample(args.out, args.label, args.index, args.data_root)
    print(f"{r['path']}: {r['label']} ({r['source']}), 28×28 PNG")
    return 0
