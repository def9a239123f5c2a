"""Who may call (serving.access): the admin token from a file or the environment, never shorter than 16
characters, and only requests whose Host names the server (DNS rebinding). Real servers over HTTP."""

from __future__ import annotations

import httpx
import pytest

from serving.access import AccessError, admin_token, trusted_hosts
from tests.serving import server as srv

GOOD = "a-token-of-twenty-chars"


def test_the_token_comes_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "token"
    path.write_text(GOOD + "\n")
    assert admin_token({"BYOL_ADMIN_TOKEN_FILE": str(path)}) == GOOD
    assert admin_token({"BYOL_ADMIN_TOKEN": GOOD}) == GOOD
    assert admin_token({}) is None


@pytest.mark.parametrize(("env", "problem"), [
    ({"BYOL_ADMIN_TOKEN": "short"}, "has 5 characters; use at least 16"),
    ({"BYOL_ADMIN_TOKEN": "has a space in it!!"}, "spaces or control characters"),
    ({"BYOL_ADMIN_TOKEN": GOOD, "BYOL_ADMIN_TOKEN_FILE": "/x"}, "set one"),
    ({"BYOL_ADMIN_TOKEN_FILE": "/nonexistent/token"}, "cannot read the token file"),
])
def test_unusable_tokens_are_refused_naming_the_variable_never_the_token(env, problem):
    with pytest.raises(AccessError, match=problem) as err:
        admin_token(env)
    assert "BYOL_ADMIN_TOKEN" in str(err.value)  # names the variable (…_FILE included)
    if "BYOL_ADMIN_TOKEN" in env:
        assert env["BYOL_ADMIN_TOKEN"] not in str(err.value)


def test_trusted_hosts_default_to_the_bound_host_else_loopback():
    assert "localhost" in trusted_hosts({}) and "127.0.0.1" in trusted_hosts({})
    assert trusted_hosts({"BENTOML_HOST": "10.1.2.3"})[0] == "10.1.2.3"
    assert "0.0.0.0" not in trusted_hosts({"BENTOML_HOST": "0.0.0.0"})  # every interface: name the hosts
    assert trusted_hosts({"BYOL_TRUSTED_HOSTS": "api.example.com, *.corp.example"}) == ["api.example.com",
                                                                                       "*.corp.example"]


@pytest.fixture(scope="module")
def guarded(registered_bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(GOOD)
    path.chmod(0o600)
    server = srv.start({"BYOL_MODEL_TAG": registered_bundle, "BYOL_ADMIN_TOKEN_FILE": str(path),
                        "BYOL_ADMIN_TOKEN": ""})
    try:
        yield server.url
    finally:
        server.stop()


def test_a_token_read_from_a_file_opens_the_admin_routes(guarded):
    ok = httpx.post(guarded + "/admin/reload", json={}, headers={"Authorization": f"Bearer {GOOD}"}, timeout=60)
    assert ok.status_code == 200, ok.text
    wrong = httpx.post(guarded + "/admin/reload", json={}, headers={"Authorization": "Bearer " + "x" * 20})
    assert wrong.status_code == 401


@pytest.mark.parametrize("host", ["evil.example", "rebind.attacker.test:3000", "127.0.0.1.nip.io"])
def test_a_request_naming_another_host_is_refused_before_anything_runs(guarded, host):
    r = httpx.get(guarded + "/info", headers={"Host": host})
    assert r.status_code == 400 and "BYOL_TRUSTED_HOSTS" in r.text, r.text
    r = httpx.post(guarded + "/index/add", headers={"Host": host, "Authorization": f"Bearer {GOOD}"},
                   files={"images": ("x.png", b"junk")})
    assert r.status_code == 400 and "BYOL_TRUSTED_HOSTS" in r.text
    assert httpx.get(guarded + "/info", headers={"Host": "localhost"}).status_code == 200


def test_a_short_token_stops_the_server_at_start_with_one_line(registered_bundle):
    with pytest.raises(RuntimeError) as err:
        srv.start({"BYOL_MODEL_TAG": registered_bundle, "BYOL_ADMIN_TOKEN": "too-short"}, timeout=60)
    line = next(ln for ln in str(err.value).splitlines() if "has 9 characters; use at least 16" in ln)
    assert "BYOL_ADMIN_TOKEN" in line and "too-short" not in line
