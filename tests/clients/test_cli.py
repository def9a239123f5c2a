"""The ``byol`` façade: instant help (nothing heavy imported) and one-line errors."""

import subprocess
import sys

from tests.conftest import REPO


def test_help_lists_every_command_without_importing_torch_or_bentoml():
    code = ("import sys; from clients.cli import COMMANDS, main; main(['--help']); "
            "print(sorted(COMMANDS)); print('torch' in sys.modules, 'bentoml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines[-1] == "False False"
    for name in ("train", "eval", "export", "serve", "index", "search", "probe", "retrain", "rollback", "demo"):
        assert f"  {name} " in out.stdout


def test_unknown_command_is_one_error_and_exit_2(capsys):
    from clients.cli import main

    assert main(["nope"]) == 2
    assert capsys.readouterr().err.startswith("byol: error: unknown command 'nope'")


def test_version_is_the_installed_distributions_and_imports_nothing_heavy():
    from importlib.metadata import version

    code = ("import sys; from clients.cli import main; main(['--version']); "
            "print('torch' in sys.modules, 'bentoml' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines == [f"byol {version('byol-embed')}", "False False False"]


def test_sample_image_writes_a_fashion_mnist_shirt(fmnist_test, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from clients.cli import main

    assert main(["sample-image", str(tmp_path / "shirt.png")]) == 0
    pixels = np.asarray(Image.open(tmp_path / "shirt.png"))
    first_shirt = fmnist_test.images[list(fmnist_test.labels).index(fmnist_test.classes.index("Shirt"))]
    assert np.array_equal(pixels, first_shirt) and "Shirt (fashion-mnist:test/" in capsys.readouterr().out


def test_sample_image_without_the_data_set_draws_a_shirt_the_server_can_read(tmp_path):
    import numpy as np

    from clients.cli import main
    from serving.contract.image import load

    assert main(["sample-image", str(tmp_path / "s.png"), "--data-root", str(tmp_path / "none")]) == 0
    pixels = load((tmp_path / "s.png").read_bytes(), 28)
    assert pixels.shape == (28, 28, 3) and 0.2 < (pixels > 0).mean() < 0.9  # a garment on black, not a blank
    assert main(["sample-image", str(tmp_path / "b.png"), "--label", "bag", "--data-root", str(tmp_path)]) == 1
    assert np.asarray(load((tmp_path / "s.png").read_bytes(), 28)).std() > 10
