"""The BentoML model store holds bundles by tag: register → find again, newest wins, clear errors when absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.contract.bundle import MANIFEST_FILE, MODEL_NAME, BundleError, new_version, now_iso, read_bundle
from serving.store import bundle_path, list_bundles, register_bundle
from tests.conftest import REPO


def test_register_then_bundle_path_round_trip(registered_bundle, tiny_bundle):
    assert read_bundle(bundle_path(registered_bundle))[1] == read_bundle(tiny_bundle)[1]


def test_tag_is_model_name_and_bundle_version(registered_bundle, tiny_bundle):
    assert registered_bundle == f"{MODEL_NAME}:{read_bundle(tiny_bundle)[1].version}"


def test_bare_version_resolves_like_the_full_tag(registered_bundle):
    assert bundle_path(registered_bundle.split(":", 1)[1]) == bundle_path(registered_bundle)


def test_registering_twice_is_a_no_op(registered_bundle, tiny_bundle):
    before = [m.version for m in list_bundles()]
    assert register_bundle(tiny_bundle) == registered_bundle and [m.version for m in list_bundles()] == before


def test_latest_resolves_to_the_newest(registered_bundle, tiny_bundle, tmp_path):
    # a re-versioned copy made now (same graph, so a test elsewhere using 'latest' sees the same vectors)
    newer = Path(shutil.copytree(tiny_bundle, tmp_path / "newer"))
    obj = json.loads((newer / MANIFEST_FILE).read_text())
    obj |= {"version": new_version(b"newer copy"), "created_at": now_iso(), "parent_version": obj["version"]}
    (newer / MANIFEST_FILE).write_text(json.dumps(obj))
    tag = register_bundle(newer)
    assert read_bundle(bundle_path("latest"))[1].version == tag.split(":", 1)[1] == list_bundles()[-1].version


def test_list_bundles_holds_registered_manifest(registered_bundle):
    assert registered_bundle.split(":", 1)[1] in [m.version for m in list_bundles()]


def test_missing_version_names_tag_and_store(registered_bundle):
    with pytest.raises(BundleError, match=r"no bundle 'byol-encoder:19990101-000000-deadbeef' in the model store "
                                          r"at .*; run 'byol export' first"):
        bundle_path("19990101-000000-deadbeef")


def test_other_model_name_is_refused():
    with pytest.raises(BundleError, match="not a byol-embed encoder tag"):
        bundle_path("resnet:latest")


def test_malformed_tag_is_refused():
    with pytest.raises(BundleError, match=r"bad bundle tag '\.\./\.\./etc'"):
        bundle_path("../../etc")


def test_corrupt_bundle_is_not_registered(tiny_bundle, tmp_path):
    bad = shutil.copytree(tiny_bundle, tmp_path / "bad")
    (bad / "encoder.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="hash"):
        register_bundle(bad)


def test_empty_store_latest_message_and_default_location(tmp_path):
    """A fresh process with only BYOL_HOME set: the store defaults under it, and 'latest' says what to do."""
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOME"} | {"BYOL_HOME": str(tmp_path)}
    code = "from serving.store import bundle_path\ntry:\n bundle_path()\nexcept Exception as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120).stdout.strip()
    assert out == (f"no bundle 'byol-encoder:latest' in the model store at {tmp_path / 'bentoml'}; "
                   "run 'byol export' first")


def test_registration_killed_half_way_is_skipped_then_healed(registered_bundle, tmp_path):
    """BentoML copies a model into its final store directory in place: a kill -9 during ``byol export`` leaves
    an entry without model.yaml. It must not break ``latest`` or listing, and registering again repairs it."""
    from serving.store import store_home
    from tests.conftest import make_bundle

    served = bundle_path("latest")
    root = store_home() / "models" / MODEL_NAME
    debris = root / "29990101-000000-deadbeef"  # sorts after every real version
    debris.mkdir(parents=True)
    (debris / "encoder.onnx").write_bytes(b"half a file")
    version = None
    try:
        assert bundle_path("latest") == served
        assert "29990101-000000-deadbeef" not in [m.version for m in list_bundles()]
        bundle = make_bundle(tmp_path / "again", seed=5)
        version = read_bundle(bundle)[1].version
        (root / version).mkdir()
        (root / version / "encoder.onnx").write_bytes(b"torn")
        assert register_bundle(bundle) == f"{MODEL_NAME}:{version}"
        assert read_bundle(bundle_path(version))[1].version == version
    finally:  # leave the session's store as it was: later modules resolve ``latest``
        shutil.rmtree(debris, ignore_errors=True)
        if version:
            shutil.rmtree(root / version, ignore_errors=True)
