"""The /ui page in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against a real server.

Every check compares what the page drew with what the HTTP API answers for the same question, so a grid that does
not render, shows other ids or scores, or never loads its thumbnails fails. A screenshot is saved in the test's
tmp dir (and at ``$BYOL_UI_SCREENSHOT`` when set, e.g. for the README). Skips only when no Chromium or no Playwright
can be found (``apt-get install chromium``; ``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.serving import server as srv
from tests.serving.gallery import AUTH, bare_version, gallery

pytestmark = pytest.mark.slow
N = 150
K = 12  # the page's default number of neighbours
CELLS = "els => els.map(e => ({id: Number(e.dataset.id), score: Number(e.dataset.score), text: e.innerText}))"
THUMBS_LOADED = ("() => { const imgs = [...document.querySelectorAll('#grid img')]; return imgs.length > 0 && "
                 "imgs.every(i => i.complete && i.naturalWidth > 0); }")


def chromium() -> str | None:
    for name in (os.environ.get("BYOL_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set BYOL_CHROMIUM to its path)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]'); it drives the system Chromium")
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses to run as root with its sandbox
        b = p.chromium.launch(executable_path=exe, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def api(browser, registered_bundle, fmnist_root, tmp_path_factory):
    with gallery(registered_bundle, tmp_path_factory.mktemp("ui-home"), fmnist_root, n=N) as state:
        yield state


@pytest.fixture
def page(browser, api):
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(30_000)
    yield pg
    pg.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def grid(page) -> list[dict]:
    page.wait_for_selector("#grid[data-state=ready]")
    page.wait_for_function(THUMBS_LOADED)
    return page.eval_on_selector_all("#grid a", CELLS)


def by_id(api, item_id: int) -> dict:
    r = api["http"].post("/search_by_id", json={"id": item_id, "k": K})
    assert r.status_code == 200, r.text
    return r.json()


def assert_same(cells: list[dict], results: list[dict]) -> None:
    assert [c["id"] for c in cells] == [h["id"] for h in results]
    for c, h in zip(cells, results, strict=True):
        assert c["score"] == pytest.approx(h["score"], abs=1e-6)
        assert f"{h['score']:.3f}" in c["text"] and h["metadata"]["label"] in c["text"]


def save_screenshot(page, tmp_path: Path) -> Path:
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("BYOL_UI_SCREENSHOT"):
        shutil.copy(shot, os.environ["BYOL_UI_SCREENSHOT"])
    return shot


def test_ui_shows_the_neighbours_of_the_item_in_the_url(api, page, tmp_path):
    page.goto(f"{api['server'].url}/ui?id=12")
    cells = grid(page)
    expected = by_id(api, 12)
    assert len(cells) == K and 12 not in [c["id"] for c in cells]
    assert_same(cells, expected["results"])
    srcs = page.eval_on_selector_all("#grid img", "els => els.map(e => e.getAttribute('src'))")
    assert srcs == [f"items/{c['id']}/thumbnail" for c in cells]
    assert expected["metadata"]["label"] in page.inner_text("#query-caption")
    assert api["version"] in page.inner_text("#served") and f"index: {N} items" in page.inner_text("#served")
    shot = save_screenshot(page, tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clicking_a_result_shows_its_neighbours_and_history_goes_back(api, page):
    page.goto(f"{api['server'].url}/ui?id=30")
    first = grid(page)
    target = first[2]["id"]
    page.click(f"#grid a[data-id='{target}']")
    page.wait_for_url(f"**/ui?id={target}")
    page.wait_for_function(f"() => document.querySelector('#query-caption').textContent.startsWith('item {target} ')")
    assert_same(grid(page), by_id(api, target)["results"])
    page.go_back()
    page.wait_for_url("**/ui?id=30")
    page.wait_for_function("() => document.querySelector('#query-caption').textContent.startsWith('item 30 ')")
    assert_same(grid(page), by_id(api, 30)["results"])


def test_k_in_the_url_sets_the_number_of_neighbours_and_clicks_keep_it(api, page):
    page.goto(f"{api['server'].url}/ui?id=5&k=4")
    cells = grid(page)
    r = api["http"].post("/search_by_id", json={"id": 5, "k": 4})
    assert_same(cells, r.json()["results"])
    page.click(f"#grid a[data-id='{cells[0]['id']}']")
    page.wait_for_url(f"**/ui?id={cells[0]['id']}&k=4")


def test_an_uploaded_image_shows_what_search_answers(api, page, fmnist_test, tmp_path):
    query = tmp_path / "query.png"
    query.write_bytes(srv.png(fmnist_test.images[N + 7]))  # not in the index
    page.goto(f"{api['server'].url}/ui")
    page.set_input_files("#file", str(query))
    cells = grid(page)
    r = api["http"].post("/search", files={"image": ("query.png", query.read_bytes())}, data={"k": str(K)})
    assert r.status_code == 200, r.text
    assert_same(cells, r.json()["results"])
    assert page.inner_text("#query-caption") == "query.png"


@pytest.mark.parametrize("where,needle", [
    ("upload", "400"), ("?id=987654", "404"), ("?id=abc", "id must be a non-negative integer"),
])
def test_errors_are_shown_as_text(api, page, tmp_path, where, needle):
    if where == "upload":
        text = tmp_path / "notes.png"
        text.write_text("I am not an image")
        page.goto(f"{api['server'].url}/ui")
        page.set_input_files("#file", str(text))
        expected = ("400", "not an image")
    else:
        page.goto(f"{api['server'].url}/ui{where}")
        expected = (needle, "no item 987654") if where == "?id=987654" else (needle,)
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error")
    assert all(part in message for part in expected), message
    assert page.get_attribute("#grid", "data-state") == "error"


def test_a_version_without_index_shows_the_409(api, page, registered_bundle, tmp_path):
    bare = bare_version(registered_bundle, tmp_path, "20000104-000000-bare0000")
    r = api["http"].post("/admin/reload", headers=AUTH, json={"version": bare})
    assert r.status_code == 200, r.text
    try:
        page.goto(f"{api['server'].url}/ui?id=1")
        page.wait_for_selector("#error:not([hidden])")
        assert "409" in page.inner_text("#error") and f"no index for version {bare}" in page.inner_text("#error")
        page.wait_for_function("() => document.querySelector('#served').textContent.includes('no index')")
        assert bare in page.inner_text("#served")
    finally:
        r = api["http"].post("/admin/reload", headers=AUTH, json={"version": api["version"]})
    assert r.status_code == 200
