"""``byol sample-folder DIR``: a generated folder of photo-like labelled images to try ``byol train --data`` on.

    byol sample-folder ~/try --kind objects --size 64 --n 6000     # items on varied backgrounds
    byol sample-folder ~/try-tex --kind textures --size 128           # procedural textures; also: scenes

Nested sub-folders, PNG and JPEG, three broken files; the labels go to DIR/labels.csv (path,label), never into the
folder names, so training sees unlabeled images and the labels serve only to score (``byol probe fit --data DIR
--labels DIR/labels.csv``, ``bench/folder_quality.py``). Same arguments, same files.
"""

from __future__ import annotations

import argparse


def parser() -> argparse.ArgumentParser:
    from clients.workflows.synthetic import KINDS

    p = argparse.ArgumentParser(prog="byol sample-folder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder to write (created; existing files of the same names are replaced)")
    p.add_argument("--kind", choices=KINDS, default="objects", help="what the images show (default objects)")
    p.add_argument("--size", type=int, default=64, help="side in px (default 64; 128 and 224 measured too)")
    p.add_argument("--n", type=int, default=6000, help="how many images (default 6000)")
    p.add_argument("--seed", type=int, default=0, help="another seed, other images (default 0)")
    p.add_argument("--no-broken", dest="broken", action="store_false", help="leave out the three broken files")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from clients.workflows.synthetic import make_folder

    f = make_folder(args.folder, args.kind, args.size, args.n, args.seed, args.broken)
    print(f"{f.root}: {len(f.paths)} {f.kind} images of {f.size} px in {len(f.classes)} classes "
          f"({', '.join(f.classes)}), {len(f.broken)} broken files; labels in {f.labels_csv}")
    return 0
