"""serving.memory.configure_allocator: applied on glibc at the service's start, the operator's own setting kept.
(What it is for — a soaked worker's RSS within 10 % of a fresh one on the same data — is bench/soak.py's check.)"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

CALL = "from serving import memory; print(memory.configure_allocator())"
glibc = pytest.mark.skipif(not (ctypes.util.find_library("c") or "").startswith("libc.so"), reason="not glibc")


def run(env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", CALL], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@glibc
def test_the_threshold_is_set_on_glibc():
    assert run({"MALLOC_MMAP_THRESHOLD_": ""}) == "True"


def test_an_operator_setting_is_left_alone():
    assert run({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"

