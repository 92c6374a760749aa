"""The support-set page (`GET /`) driven in Debian's headless Chromium through Selenium.

A mask is painted with mouse events on the page's canvas, read back as the PNG the page
offers, registered, and a query is sent through the page's file input: the mask the page shows
must be, pixel for pixel, the mask `Segmenter` computes for the same support image, painted mask
and query. Undo/redo, the keyboard shortcuts, an error for a bad upload and the absence of
console errors are checked too. Screenshots go to $LFM_TEST_ARTIFACTS (or the test's tmp dir).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.serving.codec import mask_png
from tests.serving import free_port  # noqa: E402

pytestmark = pytest.mark.slow

CHROMEDRIVER = "/usr/bin/chromedriver"
STATIC = Path(__file__).resolve().parents[2] / "lfm_deploy" / "serving" / "static"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "page.png"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


# ------------------------------------------------------------------ the service

TOKEN = "page-test-token"
SHOTS = 2


@pytest.fixture(scope="module")
def page_url(ray_cluster, exported):
    """A real lfm-serve (Ray Serve, one replica) without a default set and with a token: the
    page must ask for the token and register its own set. A 2-shot export: the page shows one
    slot per support pair (K = the export's shots)."""
    from lfm_deploy.serving.ray_serve import build_app, start_service, stop_service

    app = build_app(exported(shots=SHOTS).out_dir, [], [], replicas=1, max_batch=4, threads=2, token=TOKEN)
    url = start_service(app, host="127.0.0.1", port=free_port(), ready_timeout_s=240)
    try:
        yield url.rstrip("/") + "/"
    finally:
        stop_service()


# ------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    if chromium is None or not os.path.exists(CHROMEDRIVER):
        pytest.skip("Chromium is not installed: apt-get install -y chromium chromium-driver (needed for the page tests)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100", "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The system driver, never a downloaded one (Selenium Manager is not asked when the path is given).
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = os.environ.get("LFM_TEST_ARTIFACTS")
    path = Path(root) / "page" if root else tmp_path_factory.mktemp("page-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The support image and query images as files the browser uploads, and a text file."""
    from tests.runtime import synthetic_queries, synthetic_support

    root = tmp_path_factory.mktemp("page-files")
    images, masks = synthetic_support(2, 160)
    images[0].save(root / "support.jpg", quality=95)
    images[1].save(root / "support2.jpg", quality=95)  # the second pair: its mask is loaded from a file
    masks[1].save(root / "support2_mask.png")
    queries = synthetic_queries(2, 140)
    queries[0].save(root / "query-a.jpg", quality=90)
    queries[1].resize((180, 120)).save(root / "query-b.png")
    (root / "notes.txt").write_text("this is not an image\n")
    return root


def _wait(driver, condition, timeout=60, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import TimeoutException

    try:
        return WebDriverWait(driver, timeout).until(lambda d: condition(d))
    except TimeoutException:
        shown = driver.execute_script('return document.querySelector("[data-testid=error]").textContent')
        raise AssertionError(f"timed out waiting for {what}; the page's error: {shown!r}") from None


def _by(testid):
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR, f'[data-testid="{testid}"]'


def _painted(driver) -> np.ndarray:
    """The support mask as the PNG the page downloads and registers, as a {0, 1} array."""
    png = base64.b64decode(driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.lfm.maskPngBase64().then(done, (e) => done('ERR ' + e));"))
    img = Image.open(io.BytesIO(png))
    assert img.mode == "L"  # 8-bit grayscale, 0/255: reusable with lfm-predict --support-mask
    arr = np.asarray(img)
    assert set(np.unique(arr)) <= {0, 255}
    return (arr == 255).astype(np.uint8)


def _canvas_mask(driver) -> np.ndarray:
    """What the canvas shows: painted pixels are opaque."""
    url = driver.execute_script('return document.querySelector("[data-testid=mask-canvas]").toDataURL("image/png")')
    rgba = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))
    return (rgba[..., 3] > 0).astype(np.uint8)


def _canvas_geometry(driver):
    return driver.execute_script(
        "const c = document.querySelector('[data-testid=mask-canvas]'); const r = c.getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, c.width, c.height];")


def _stroke(driver, points_css):
    """A mouse drag through points given in CSS pixels from the canvas's top-left corner; returns
    them as sent (whole viewport pixels), in the same frame."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    left, top, _, _, _, _ = _canvas_geometry(driver)
    points = [(round(left + x), round(top + y)) for x, y in points_css]
    actions = ActionBuilder(driver, duration=40)
    actions.pointer_action.move_to_location(*points[0]).pointer_down()
    for x, y in points[1:]:
        actions.pointer_action.move_to_location(x, y)
    actions.pointer_action.pointer_up()
    actions.perform()
    return [(x - left, y - top) for x, y in points]


def _capsule(shape, a, b, r):
    """Distance of each pixel centre to the segment a-b (image pixels), compared with r by the caller."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
    return np.hypot(xs - (a[0] + t * d[0]), ys - (a[1] + t * d[1]))


def _expected_stroke(driver, offsets, radius):
    """The pixels a stroke through `offsets` must paint (dist <= r - tol) and may paint (<= r + tol)."""
    _, _, width, height, w, h = _canvas_geometry(driver)
    sx, sy = w / width, h / height
    pts = [(x * sx, y * sy) for x, y in offsets]
    dist = np.min([_capsule((h, w), p, q, 0) for p, q in zip(pts, pts[1:])], axis=0)
    tol = 0.5 * max(sx, sy) + 0.25  # rounding of the pointer position to CSS pixels, in image pixels
    return dist <= radius - tol, dist <= radius + tol


def _shot(driver, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _severe(driver, allowed=()):
    logs = driver.get_log("browser")
    return [e for e in logs if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def _open(driver, url):
    """Open the page; the first time in this browser, answer its question for the token."""
    driver.get(url)
    _wait(driver, lambda d: "domain" in d.find_element(*_by("model")).text
          or d.find_element(*_by("token-form")).is_displayed(), what="the model's metadata or the token form")
    if driver.find_element(*_by("token-form")).is_displayed():
        assert "token" in driver.find_element(*_by("error")).text  # the 401, in words
        field = driver.find_element(*_by("token"))
        field.send_keys(TOKEN + "\n")
        _wait(driver, lambda d: "domain" in d.find_element(*_by("model")).text, what="the model's metadata")
        assert not driver.find_element(*_by("token-form")).is_displayed()


# ------------------------------------------------------------------ tests


def test_paint_register_segment_matches_segmenter(browser, page_url, files, exported, artifacts):
    from lfm_deploy.runtime import Segmenter

    d = browser
    _open(d, page_url)  # asks for the token (a 401 logged by the browser), then loads the model
    d.get_log("browser")  # start clean
    untrained = d.find_element(*_by("untrained"))
    assert untrained.is_displayed() and "UNTRAINED" in untrained.text
    assert "deepglobe" in d.find_element(*_by("model")).text

    d.find_element(*_by("support-image")).send_keys(str(files / "support.jpg"))
    _wait(d, lambda d: d.find_element(*_by("mask-canvas")).is_displayed(), what="the support image")
    _, _, width, height, w, h = _canvas_geometry(d)
    assert (w, h) == (160, 160)  # the mask is at the image's resolution ...
    assert width > w * 1.5  # ... whatever the zoom (a small tile is shown enlarged)
    _shot(d, artifacts, "01-support-loaded")

    size = d.find_element(*_by("brush-size"))
    size.clear()
    size.send_keys("20")
    radius = 10.0
    a = _stroke(d, [(0.25 * width, 0.3 * height), (0.7 * width, 0.45 * height)])
    must, may = _expected_stroke(d, a, radius)
    first = _painted(d)
    assert first[must].all() and not first[~may].any(), "the stroke painted the wrong pixels"
    np.testing.assert_array_equal(_canvas_mask(d), first)  # the canvas shows what is downloaded

    _stroke(d, [(0.4 * width, 0.6 * height), (0.45 * width, 0.85 * height), (0.6 * width, 0.8 * height)])
    both = _painted(d)
    assert both.sum() > first.sum() and (both >= first).all()

    # Undo / redo per stroke: buttons and keys.
    d.find_element(*_by("undo")).click()
    np.testing.assert_array_equal(_painted(d), first)
    d.find_element(*_by("redo")).click()
    np.testing.assert_array_equal(_painted(d), both)
    canvas = d.find_element(*_by("mask-canvas"))
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    canvas.send_keys(Keys.CONTROL, "z")
    np.testing.assert_array_equal(_painted(d), first)
    ActionChains(d).key_down(Keys.CONTROL).key_down(Keys.SHIFT).send_keys("z").key_up(Keys.SHIFT) \
        .key_up(Keys.CONTROL).perform()
    np.testing.assert_array_equal(_painted(d), both)

    # Eraser: a stroke across the first one removes pixels; undo brings them back.
    d.find_element(*_by("eraser")).click()
    _stroke(d, [(0.45 * width, 0.2 * height), (0.45 * width, 0.5 * height)])
    erased = _painted(d)
    assert erased.sum() < both.sum() and (erased <= both).all()
    canvas.send_keys(Keys.CONTROL, "z")
    np.testing.assert_array_equal(_painted(d), both)
    d.find_element(*_by("brush")).click()

    # [ and ] change the brush size.
    canvas.send_keys("]")
    assert float(size.get_attribute("value")) > 20
    canvas.send_keys("[", "[")
    assert float(size.get_attribute("value")) < 20
    _shot(d, artifacts, "02-mask-painted")

    # The second support pair: its image, and its mask loaded from a file instead of painted.
    slots = d.find_elements(*_by("slot"))
    assert len(slots) == SHOTS and "(empty)" in slots[1].text
    slots[1].click()
    assert not d.find_element(*_by("mask-canvas")).is_displayed()
    d.find_element(*_by("support-image")).send_keys(str(files / "support2.jpg"))
    _wait(d, lambda d: d.find_element(*_by("mask-canvas")).is_displayed(), what="the second support image")
    d.find_element(*_by("support-mask")).send_keys(str(files / "support2_mask.png"))
    mask2 = (np.asarray(Image.open(files / "support2_mask.png").convert("L")) >= 128).astype(np.uint8)
    _wait(d, lambda d: np.array_equal(_painted(d), mask2), what="the second mask, loaded")
    d.find_elements(*_by("slot"))[0].click()  # back to the first: its strokes are still there
    np.testing.assert_array_equal(_painted(d), both)

    # Register, then two queries through the file input.
    painted_png = mask_png(both)
    d.find_element(*_by("register")).click()
    _wait(d, lambda d: d.find_element(*_by("set-info")).get_attribute("data-set-id"), what="the registered set")
    assert "Registered set" in d.find_element(*_by("set-info")).text and "2 shots" in d.find_element(*_by("set-info")).text
    d.find_element(*_by("query-input")).send_keys(str(files / "query-a.jpg") + "\n" + str(files / "query-b.png"))
    _wait(d, lambda d: len(d.find_elements(*_by("result"))) == 2 and all(
        r.get_attribute("data-status") == "done" for r in d.find_elements(*_by("result"))), what="two results")
    assert not d.find_element(*_by("error")).is_displayed()
    shot = _shot(d, artifacts, "03-results")
    if os.environ.get("LFM_UPDATE_SCREENSHOT"):  # the README's picture, refreshed on request only
        _docs_screenshot(shot)

    seg = Segmenter.from_artifacts(exported(shots=SHOTS).out_dir, threads=2)
    seg.set_support([(files / "support.jpg").read_bytes(), (files / "support2.jpg").read_bytes()],
                    [painted_png, mask_png(mask2)])
    results = {r.find_element("css selector", ".name").text: r for r in d.find_elements(*_by("result"))}
    for name in ("query-a.jpg", "query-b.png"):
        card = results[name]
        want = seg.predict((files / name).read_bytes())
        shown = base64.b64decode(d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then((r) => r.arrayBuffer()).then((b) => {"
            " const u = new Uint8Array(b); let s = ''; for (const x of u) s += String.fromCharCode(x); done(btoa(s)); });",
            card.find_element(*_by("result-mask")).get_attribute("src")))
        got = _decode(shown)
        assert got.shape == want.shape  # at the query's size
        np.testing.assert_array_equal(got, want.astype(np.uint8) * 255)
        assert float(card.get_attribute("data-foreground")) == pytest.approx(float(want.mean()), abs=1e-5)
        assert "% foreground" in card.text and " ms" in card.text
        # An empty mask is marked as such on the photo; a non-empty one is not.
        assert bool(card.find_elements(*_by("no-foreground"))) == (not want.any())

    assert _severe(d) == [], "console errors on the page"


def test_keyboard_painting(browser, page_url, files):
    from selenium.webdriver.common.keys import Keys

    d = browser
    _open(d, page_url)
    d.find_element(*_by("support-image")).send_keys(str(files / "support.jpg"))
    _wait(d, lambda d: d.find_element(*_by("mask-canvas")).is_displayed(), what="the support image")
    canvas = d.find_element(*_by("mask-canvas"))
    canvas.send_keys(Keys.SPACE, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_DOWN, Keys.SPACE)
    painted = _painted(d)
    assert painted.sum() > 0 and painted[80, 80] == 1  # the stroke starts at the centre
    canvas.send_keys(Keys.CONTROL, "z")
    assert _painted(d).sum() == 0
    assert _severe(d) == []


def test_errors_are_shown_in_words(browser, page_url, files, artifacts, tmp_path):
    d = browser
    _open(d, page_url)
    error = d.find_element(*_by("error"))

    # A text file as the support image: refused in the page.
    d.find_element(*_by("support-image")).send_keys(str(files / "notes.txt"))
    _wait(d, lambda d: error.is_displayed(), what="the error")
    assert "not an image" in error.text
    _shot(d, artifacts, "04-error-bad-support")

    # A mask of the wrong size.
    d.find_element(*_by("support-image")).send_keys(str(files / "support.jpg"))
    _wait(d, lambda d: not error.is_displayed(), what="the error to clear")
    Image.new("L", (50, 40), 255).save(tmp_path / "small_mask.png")
    d.find_element(*_by("support-mask")).send_keys(str(tmp_path / "small_mask.png"))
    _wait(d, lambda d: error.is_displayed(), what="the mask size error")
    assert "50×40" in error.text and "160×160" in error.text

    # A missing pair and an empty mask are refused before anything is sent.
    d.find_element(*_by("register")).click()
    assert "Support 2 has no image" in error.text
    d.find_elements(*_by("slot"))[1].click()
    d.find_element(*_by("support-image")).send_keys(str(files / "support2.jpg"))
    d.find_element(*_by("support-mask")).send_keys(str(files / "support2_mask.png"))
    _wait(d, lambda d: _painted(d).sum() > 0, what="the second mask")
    d.find_element(*_by("register")).click()
    assert "mask of support 1 is empty" in error.text
    d.find_elements(*_by("slot"))[0].click()

    # A mask file that fits: loaded, registered; then a text file as a query: the service's 400 in words.
    mask = Image.new("L", (160, 160), 0)
    mask.paste(255, (40, 50, 110, 120))
    mask.save(tmp_path / "support_mask.png")
    d.find_element(*_by("support-mask")).send_keys(str(tmp_path / "support_mask.png"))
    _wait(d, lambda d: _painted(d).sum() == 70 * 70, what="the loaded mask")
    d.find_element(*_by("register")).click()
    _wait(d, lambda d: d.find_element(*_by("set-info")).get_attribute("data-set-id"), what="the registered set")
    before = len(d.find_elements(*_by("result")))
    d.find_element(*_by("query-input")).send_keys(str(files / "notes.txt"))
    _wait(d, lambda d: len(d.find_elements(*_by("result"))) == before + 1
          and d.find_elements(*_by("result"))[0].get_attribute("data-status") == "error", what="the failed query")
    assert error.is_displayed() and "notes.txt" in error.text and "HTTP 400" in error.text
    assert d.find_element("tag name", "main").is_displayed()  # never a blank page
    _shot(d, artifacts, "05-error-bad-query")
    # The only console error is the failed request itself.
    assert _severe(d, allowed=("the server responded with a status of 4",)) == []


def _docs_screenshot(shot: Path) -> None:
    """The README's screenshot: the page with results, as a small palette PNG (< 300 KB)."""
    DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(shot).convert("RGB")
    img = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(DOCS_SCREENSHOT, optimize=True)
    assert DOCS_SCREENSHOT.stat().st_size < 300_000
