"""The demo in a real browser: `escnet demo` started as a user would, on 127.0.0.1, driven by
Debian's headless Chromium through Selenium (no browser download). Saves a screenshot of the
page with a result to $ESCNET_TEST_ARTIFACTS/demo.png (default: the test's temporary folder)."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image

from escnet.demo import example_rows
from escnet.inference.segmenter import ModelNotFoundError, resolve_model_path
from escnet.lifecycle import save_pretrained
from escnet.models.factory import create_model

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent (Debian package chromium; .ci/run installs it)"),
    # chromium without its driver (Debian package chromium-driver) is a machine that cannot run these: skip, not error
    pytest.mark.skipif(not Path(CHROMEDRIVER).exists(),
                       reason=f"{CHROMEDRIVER} is absent (Debian package chromium-driver; .ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene(tmp_path: Path) -> tuple[Path, str, Path]:
    """(image, vocabulary, model): the bundled model and example when this installation has
    them, else a random tiny model and a drawn scene."""
    rows = example_rows()
    try:
        model = resolve_model_path(None)
    except ModelNotFoundError:
        model = None
    if model is not None and rows:
        return Path(rows[0][0]), rows[0][1], model
    model = tmp_path / "model"
    torch.manual_seed(0)
    save_pretrained(create_model("escnet", "tiny"), model)
    picture = np.zeros((120, 160, 3), np.uint8)
    picture[:50] = (90, 160, 235)
    picture[50:] = (60, 150, 50)
    picture[90:, 40:120] = (110, 110, 110)
    image = tmp_path / "scene.png"
    Image.fromarray(picture).save(image)
    return image, "sky, grass, road", model


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    pytest.importorskip("gradio")
    folder = tmp_path_factory.mktemp("browser")
    image, vocabulary, model = scene(folder)
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen(
        [sys.executable, "-m", "escnet", "demo", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu", "--protocol", "sliding"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"escnet demo did not start:\n{process.communicate()[0]}")
            time.sleep(0.25)
        yield {"url": f"http://127.0.0.1:{port}/", "image": image, "vocabulary": vocabulary}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Without the networking flags Chromium stalls on this closed network (machine notes).
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1100",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def artifact_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ESCNET_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_upload_type_submit_see_overlay_and_legend(demo_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(demo_url["url"])
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#segment-button"))

    def type_classes(text):
        box = browser.find_element(By.CSS_SELECTOR, "#vocabulary textarea")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)

    def legend_names():
        # One script call reads the whole legend, so a re-render cannot leave a stale element.
        return browser.execute_script(
            "return [...document.querySelectorAll('#legend .escnet-legend-name')].map(e => e.textContent);")

    browser.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(demo_url["image"]))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input img"))
    classes = [name.strip() for name in demo_url["vocabulary"].replace(";", ",").split(",")]
    type_classes(demo_url["vocabulary"])
    browser.find_element(By.XPATH, "//*[@id='protocol']//label[contains(., 'single view')]").click()
    browser.find_element(By.CSS_SELECTOR, "#segment-button").click()

    wait.until(lambda d: d.execute_script(
        "const img = document.querySelector('#overlay img'); return img && img.complete && img.naturalWidth > 0;"))
    wait.until(lambda d: legend_names())
    names = legend_names()
    assert names and set(names) <= set(classes)
    legend_text = browser.find_element(By.CSS_SELECTOR, "#legend").text
    for name in classes:
        assert name in legend_text  # present with its share, or under "Not found"
    shares = [float(s.rstrip("%")) for s in legend_text.split() if s.endswith("%")]
    assert abs(sum(shares) - 100) < 0.5 + 0.1 * len(shares)
    links = {Path(urlparse(a.get_attribute("href")).path).name for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
    stem = demo_url["image"].stem
    assert {f"{stem}_labels.png", f"{stem}.json"} <= links
    browser.save_screenshot(str(artifact_dir(tmp_path) / "demo.png"))

    # A bad vocabulary: a readable message in the page, and the next request still works.
    type_classes("cat, , dog")
    browser.find_element(By.CSS_SELECTOR, "#segment-button").click()
    message = "empty class name at class 2 of the class string"
    wait.until(lambda d: message in d.find_element(By.TAG_NAME, "body").text)
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    type_classes("lake, field")
    browser.find_element(By.CSS_SELECTOR, "#segment-button").click()
    wait.until(lambda d: set(legend_names()) and set(legend_names()) <= {"lake", "field"})

    # Offline: everything the page asked for came from the demo itself.
    hosts = set()
    for entry in browser.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            url = urlparse(event["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(url.hostname)
    assert hosts == {"127.0.0.1"}


def test_page_says_what_the_model_is_for_and_prefills_the_example_vocabulary(demo_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from escnet.inference.segmenter import model_description

    browser.get(demo_url["url"])
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#vocabulary textarea"))
    rows = example_rows()
    assert browser.find_element(By.CSS_SELECTOR, "#vocabulary textarea").get_attribute("value") == rows[0][1]
    description = model_description(resolve_model_path(None))
    if demo_url["vocabulary"] == rows[0][1] and description:  # the bundled model serves the page
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "What this model is for:" in body
        assert " ".join(description.split()[:8]) in " ".join(body.split())
        assert "knows nothing about real photos" in body


def test_clicking_an_example_segments_it(demo_url, browser):
    """The bundled examples reach the handler as Gradio's cached copies: the upload gate lets them in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not example_rows():
        pytest.skip("no bundled example images in this installation")
    wait = WebDriverWait(browser, 60)
    browser.get(demo_url["url"])
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#segment-button"))
    browser.find_element(By.CSS_SELECTOR, '[data-testid="dataset-cell-0-0"]').click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input img"))
    browser.find_element(By.XPATH, "//*[@id='protocol']//label[contains(., 'single view')]").click()
    browser.find_element(By.CSS_SELECTOR, "#segment-button").click()
    wait.until(lambda d: d.execute_script(
        "const img = document.querySelector('#overlay img'); return img && img.complete && img.naturalWidth > 0;")
        or "uploaded through this page" in d.find_element(By.TAG_NAME, "body").text)
    assert "uploaded through this page" not in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_elements(By.CSS_SELECTOR, "#legend .escnet-legend-name")
