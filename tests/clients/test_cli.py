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
