"""``byol config show``: a preset, or a config file resolved over it, as YAML (what ``byol train --config`` reads).

    byol config show --preset fmnist-demo > run.yaml          # start an experiment from a preset
    byol config show --config run.yaml [--set train.steps=500]  # what a file (and overrides) resolve to

Resolution order, as ``byol train`` applies it: ``--preset`` (default fmnist-demo), then ``--config``, then
``--set``. Unknown keys and wrongly typed values are errors naming the key.
"""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol config", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="show")
    show = sub.add_parser("show", help="print a resolved training config as YAML")
    show.add_argument("--preset", default=None, help="base preset (default: fmnist-demo)")
    show.add_argument("--config", default=None, metavar="FILE", help="a YAML config file applied over the preset")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="config override applied last (repeatable)")
    show.add_argument("--out", default=None, help="write the YAML to this file instead of stdout")
    return p


def resolve(preset_name: str | None, config_file: str | None, overrides: list[str]):
    """``--preset`` → ``--config`` → ``--set``: the one resolution order of ``byol train`` and ``byol config``."""
    from training.config import apply_overrides, preset
    from training.config_file import load_config

    cfg = preset(preset_name or "fmnist-demo")
    if config_file:
        cfg = load_config(config_file, base=cfg)
    return apply_overrides(cfg, overrides) if overrides else cfg


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from training.config_file import save_config, to_yaml

    cfg = resolve(args.preset, args.config, args.overrides)
    if args.out:
        save_config(cfg, args.out)
        print(f"config written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(to_yaml(cfg))
    return 0
