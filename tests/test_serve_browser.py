"""effnet-serve's web page in a real headless browser (Debian's chromium + chromium-driver,
driven by Selenium): a photo chosen through the page, and live camera frames from Chromium's
fake capture device playing a video made here from real photos."""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest

from tests_helpers import require_module, unavailable

require_module("uvicorn", "effnet-serve needs the 'serve' extra")
require_module("selenium", "the browser tests drive Chromium with Selenium (test extra)")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    unavailable("no chromium/chromedriver (apt-get install chromium chromium-driver)", module_level=True)

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from conftest import DEV_DIR  # noqa: E402
from serve_helpers import Server  # noqa: E402
from tests_helpers import run_module  # noqa: E402

FRAME = (640, 480)
FPS = 10


@pytest.fixture(scope="module")
def server(lite0_files):
    with Server(lite0_files["int8.tflite"], "--workers", "2") as s:
        yield s
    assert s.code == 0


def browser(video: str | None = None):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run", "--window-size=1000,900"):
        options.add_argument(flag)
    if video:
        options.add_argument("--use-fake-device-for-media-stream")
        options.add_argument("--use-fake-ui-for-media-stream")       # grant the camera without a prompt
        options.add_argument(f"--use-file-for-fake-video-capture={video}")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def test_upload_through_the_page(server, lite0_files):
    photo = sorted(DEV_DIR.glob("*.JPEG"))[3] if DEV_DIR.is_dir() else lite0_files["photos"] / "chelsea.jpg"
    code, out, err = run_module("effnet_lite.apps.infer", photo, "--model", lite0_files["int8.tflite"], "--json")
    assert code == 0, err
    expected = json.loads(out)["categories"]
    driver = browser()
    try:
        driver.get(server.url)
        WebDriverWait(driver, 30).until(lambda d: "lite0 int8" in text(d, "model"))
        driver.find_element("id", "file").send_keys(str(photo))
        WebDriverWait(driver, 30).until(lambda d: text(d, "top-label"))
        assert text(driver, "top-label") == expected[0]["label"]
        items = driver.find_elements("css selector", "#results li")
        assert [int(li.get_attribute("data-index")) for li in items] == [c["index"] for c in expected]
        assert "inference" in text(driver, "timings") and "round trip" in text(driver, "timings")
        assert driver.find_element("id", "preview").is_displayed()
        assert not driver.find_element("id", "error").is_displayed()
        # Everything the page loaded came from the server itself (a Pi may be offline).
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(server.url) for url in loaded), loaded
        # Dropped and pasted photos take the same path (a File from the page's own events).
        for event in ("drop", "paste"):
            other = sorted(DEV_DIR.glob("*.JPEG"))[60 if event == "drop" else 90] if DEV_DIR.is_dir() \
                else lite0_files["photos"] / ("coffee.jpg" if event == "drop" else "astronaut.jpg")
            code, out, err = run_module("effnet_lite.apps.infer", other, "--model", lite0_files["int8.tflite"], "--json")
            label = json.loads(out)["categories"][0]["label"]
            driver.execute_script(DISPATCH, event, base64.b64encode(other.read_bytes()).decode(), other.name)
            WebDriverWait(driver, 30).until(lambda d: text(d, "top-label") == label)
            assert text(driver, "caption") == other.name
    finally:
        driver.quit()


DISPATCH = """
const [kind, b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, {type: "image/jpeg"}));
const event = kind === "drop" ? new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true})
                              : new ClipboardEvent("paste", {clipboardData: data, bubbles: true});
(kind === "drop" ? document.getElementById("drop") : document).dispatchEvent(event);
"""


def y4m_frame(photo) -> tuple[bytes, bytes]:
    """(4:2:0 planes for the video, the same frame back as PNG): what the camera will show."""
    with Image.open(photo) as im:
        rgb = im.convert("RGB").resize(FRAME, Image.BICUBIC)
    y, cb, cr = rgb.convert("YCbCr").split()
    half = (FRAME[0] // 2, FRAME[1] // 2)
    cb, cr = cb.resize(half, Image.BILINEAR), cr.resize(half, Image.BILINEAR)
    planes = b"".join(np.asarray(p).tobytes() for p in (y, cb, cr))
    seen = Image.merge("YCbCr", (y, cb.resize(FRAME, Image.BILINEAR), cr.resize(FRAME, Image.BILINEAR)))
    png = io.BytesIO()
    seen.convert("RGB").save(png, "PNG")
    return planes, png.getvalue()


def confident_pair(server, candidates) -> list[tuple[bytes, str]]:
    """Two photos the model names confidently, with different names, as (planes, label)."""
    scored = []
    for photo in candidates:
        planes, png = y4m_frame(photo)
        status, _, body = server.classify(png, content_type="image/png")
        assert status == 200, body
        top, second = body["categories"][:2]
        scored.append((top["score"] - second["score"], planes, top["label"]))
    scored.sort(key=lambda s: -s[0])
    first = scored[0]
    second = next(s for s in scored[1:] if s[2] != first[2])
    assert second[0] > 0.3, "no two photos are named confidently enough for a camera test"
    return [(first[1], first[2]), (second[1], second[2])]


def test_live_camera_frames(server, lite0_files, tmp_path):
    candidates = sorted(DEV_DIR.glob("*.JPEG"))[::10] if DEV_DIR.is_dir() else \
        sorted(lite0_files["photos"].glob("*.jpg"))
    pair = confident_pair(server, candidates)
    video = tmp_path / "camera.y4m"      # one second of each photo; Chromium loops it
    with open(video, "wb") as f:
        f.write(f"YUV4MPEG2 W{FRAME[0]} H{FRAME[1]} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for planes, _ in pair:
            for _ in range(FPS):
                f.write(b"FRAME\n" + planes)
    expected = {label for _, label in pair}
    driver = browser(str(video))
    try:
        driver.get(server.url)
        driver.find_element("id", "camera-start").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "live").is_enabled())
        assert driver.find_element("id", "video").is_displayed()
        driver.find_element("id", "live").click()
        seen = set()

        def both_photos_named(d) -> bool:     # sampled every 50 ms until it holds (or 90 s)
            label = text(d, "top-label")
            if label:
                seen.add(label)
            return seen >= expected and int(d.find_element("id", "fps").get_attribute("data-frames") or 0) >= 10
        try:
            WebDriverWait(driver, 90, poll_frequency=0.05).until(both_photos_named)
        except TimeoutException:
            pytest.fail(f"within 90 s of live frames the page named {sorted(seen)}, not both of "
                        f"{sorted(expected)}", pytrace=False)
        fps = driver.find_element("id", "fps")
        frames, rate = int(fps.get_attribute("data-frames")), float(fps.get_attribute("data-fps") or 0)
        driver.find_element("id", "live").click()       # stop
    finally:
        driver.quit()
    print(f"\nlive camera: {frames} frames classified, {rate:.1f} frames/s, labels seen {sorted(seen)}")
    assert frames >= 10 and rate > 1
    assert seen == expected, (seen, expected)


def test_page_with_a_two_class_model(lite0_files, tmp_path):
    """A model of 2 classes (the pretrained backbone with two of ImageNet's rows as its head,
    as effnet-train's files have few classes): the page offers top-k up to 2, asks for 2,
    and names the photo."""
    from safetensors.torch import save_file
    from effnet_lite.model_export.export import Exporter
    from effnet_lite.model_export.weights import load_model
    state = load_model("lite0").state_dict()
    rows = [967, 281]                     # espresso, tabby cat
    state["classifier.weight"], state["classifier.bias"] = state["classifier.weight"][rows], state["classifier.bias"][rows]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "two.safetensors"))
    exporter = Exporter("lite0", weights=tmp_path / "two.safetensors", labels=["espresso", "tabby cat"], log=lambda m: None)
    exporter.calibrate(lite0_files["photos"], 8)
    model = tmp_path / "two_int8.tflite"
    exporter.export(model, "int8", "tflite", verify=False)
    with Server(model, "--workers", "1") as s:
        driver = browser()
        try:
            driver.get(s.url)
            WebDriverWait(driver, 30).until(lambda d: "2 classes" in text(d, "model"))
            select = driver.find_element("id", "top-k")
            options = [o.get_attribute("value") for o in select.find_elements("css selector", "option")]
            assert options == ["1", "2"] and select.get_attribute("value") == "2", options
            driver.find_element("id", "file").send_keys(str(lite0_files["photos"] / "coffee.jpg"))
            WebDriverWait(driver, 30).until(lambda d: text(d, "top-label"))
            assert text(driver, "top-label") == "espresso"
            assert len(driver.find_elements("css selector", "#results li")) == 2
            assert not driver.find_element("id", "error").is_displayed()
        finally:
            driver.quit()
    assert s.code == 0 and '"POST /v1/classify?top_k=2' in s.stderr


def test_page_asks_for_the_token_once(lite0_files, tmp_path):
    """With a token (given by $EFFNET_SERVE_TOKEN_FILE, as a service unit would), the page asks
    for it, says so when it is wrong, classifies the refused photo once it is right, and keeps
    it for the tab: a reload does not ask again."""
    import os
    from effnet_lite.apps.serve.guard import TOKEN_ENV
    token = "page-token-0123456789abcdef"
    (tmp_path / "token").write_text(token)
    (tmp_path / "token").chmod(0o600)
    photo = lite0_files["photos"] / "coffee.jpg"
    code, out, err = run_module("effnet_lite.apps.infer", photo, "--model", lite0_files["int8.tflite"], "--json")
    label = json.loads(out)["categories"][0]["label"]
    env = {**os.environ, TOKEN_ENV: str(tmp_path / "token")}
    with Server(lite0_files["int8.tflite"], "--workers", "1", env=env) as s:
        assert s.request("GET", "/v1/model")[0] == 401
        driver = browser()
        try:
            driver.get(s.url)
            form = driver.find_element("id", "token-form")
            WebDriverWait(driver, 30).until(lambda d: form.is_displayed())
            assert "needs the token" in text(driver, "model")

            def give(value):
                field = driver.find_element("id", "token")
                field.clear()
                field.send_keys(value)
                driver.find_element("id", "token-use").click()
            give("wrong-" + token)
            WebDriverWait(driver, 30).until(lambda d: form.is_displayed() and "not right" in text(d, "token-message"))
            driver.find_element("id", "file").send_keys(str(photo))      # refused: the form stays
            give(token)
            WebDriverWait(driver, 30).until(lambda d: text(d, "top-label") == label)
            assert not form.is_displayed() and "lite0 int8" in text(driver, "model")
            driver.refresh()
            WebDriverWait(driver, 30).until(lambda d: "lite0 int8" in text(d, "model"))
            assert not driver.find_element("id", "token-form").is_displayed()
        finally:
            driver.quit()
    assert s.code == 0 and s.stderr.count('"POST /v1/classify') >= 1 and " 401 " in s.stderr
