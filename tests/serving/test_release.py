"""The release pointer (``release.json``): promote, rollback, history, and clear errors when it is broken."""

from __future__ import annotations

import json

import pytest

from serving import paths, release
from serving.contract.bundle import BundleError


@pytest.fixture()
def home(tmp_path, monkeypatch, registered_bundle):
    """A private BYOL_HOME for the pointer; the bundles stay in the session's model store."""
    monkeypatch.setenv("BYOL_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def two_versions(registered_bundle, tmp_path_factory):
    from serving.store import register_bundle
    from tests.conftest import make_bundle

    other = register_bundle(make_bundle(tmp_path_factory.mktemp("rel") / "b", seed=11))
    return registered_bundle.split(":")[-1], other.split(":")[-1]


def test_nothing_promoted_serves_the_newest(home):
    assert release.current_version() is None and release.served_tag() == "latest"


def test_promote_makes_current_and_keeps_the_previous_first_in_history(home, two_versions):
    a, b = two_versions
    release.promote(a)
    rel = release.promote(b, reason="test")
    assert (rel["current"], rel["history"][0], rel["reason"]) == (b, a, "test")
    assert json.loads(paths.release_file().read_text())["current"] == b == release.served_tag()


def test_promoting_the_current_version_again_changes_nothing(home, two_versions):
    a, _ = two_versions
    release.promote(a)
    before = paths.release_file().read_text()
    release.promote(a)
    assert paths.release_file().read_text() == before


def test_rollback_returns_to_the_previous_version(home, two_versions):
    a, b = two_versions
    release.promote(a)
    release.promote(b)
    rel = release.rollback()
    assert rel["current"] == a and b not in rel["history"]


def test_rollback_without_history_is_a_clear_error(home, two_versions):
    release.promote(two_versions[0])
    with pytest.raises(release.ReleaseError, match="nothing to roll back to"):
        release.rollback()


def test_a_version_not_in_the_store_cannot_be_promoted(home):
    with pytest.raises(BundleError, match="no bundle"):
        release.promote("20000101-000000-deadbeef")
    assert not paths.release_file().exists()


@pytest.mark.parametrize("text,match", [("{not json", "corrupt"), ('["a list"]', "not a JSON object")])
def test_a_broken_pointer_is_one_clear_error(home, text, match):
    paths.release_file().write_text(text)
    with pytest.raises(release.ReleaseError, match=match):
        release.served_tag()
