"""``byol``: a table of subcommands → ``clients.commands.<name>.main(argv) -> int``, imported only when called.

``byol --help`` therefore needs neither torch nor BentoML. Every failure a user can cause ends with one line on
stderr (``byol <cmd>: error: …``) and a non-zero exit; ``BYOL_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

# name → (module:function, one-line help). Each function parses its own arguments.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("clients.commands.train:main", "pretrain an encoder with BYOL (presets: fmnist-demo, cifar10, imagenet)"),
    "eval": ("clients.commands.eval:main", "kNN / linear-probe accuracy of an encoder vs raw pixels and random init"),
    "export": ("clients.commands.export:main", "export f_θ to an ONNX bundle, check parity, register it in the store"),
    "serve": ("clients.commands.serve:main", "start the BentoML API (embed, search, classify)"),
    "embed": ("clients.commands.embed:main", "embed image files through a running server"),
    "embed-folder": ("clients.commands.embed_folder:main", "embed a folder into embeddings.npy + metadata.parquet"),
    "index": ("clients.commands.index:main", "build / extend the FAISS index of a collection (index build|add)"),
    "search": ("clients.commands.search:main", "nearest neighbours of an image in the index (+ PNG grid)"),
    "probe": ("clients.commands.probe:main", "fit a linear probe and kNN classifier on labelled images (probe fit)"),
    "retrain": ("clients.commands.retrain:main", "continue BYOL on new unlabeled images, gate, re-index, promote"),
    "promote": ("clients.commands.release:promote_main", "make a bundle version the served one"),
    "rollback": ("clients.commands.release:rollback_main", "go back to the previously served version"),
    "demo": ("clients.commands.demo:main", "the whole job on Fashion-MNIST: train, eval, export, index, probe, serve"),
    "config": ("clients.commands.config:main", "print a preset or a config file as YAML (config show)"),
    "sample-image": ("clients.commands.sample:main", "write a sample image to try the API with (a shirt)"),
    "sample-folder": ("clients.commands.sample_folder:main", "write a folder of labelled photo-like images to try"),
}

DIST_NAME = "byol-embed"


def version() -> str:
    """The installed distribution's version (``importlib.metadata``: no import of the packages themselves)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(DIST_NAME)
    except PackageNotFoundError:  # a bare checkout on PYTHONPATH, never installed
        return "unknown (not installed: pip install -e .)"


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: byol <command> [options]   |   byol --version", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "byol <command> --help for a command's options"]
    return "\n".join(lines)


# Third-party loggers that narrate their internals at INFO (ONNX graph rewrites, FAISS's CPU-feature probing).
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "faiss", "faiss.loader", "tensorboard")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"byol {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"byol: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
        code = fn(rest)
    except KeyboardInterrupt:
        print(f"byol {name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse's own errors already printed one line
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        if os.environ.get("BYOL_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"byol {name}: error: {msg}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
