"""`tamer app` end to end in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
the page's sample has the pixels of `tamer sample` with the same settings, a corrupt upload gets a clear message,
and the server keeps serving."""

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tamer.cli import main
from test_transformer import CLASS, SEG_STAGE, make_model

if importlib.util.find_spec("gradio") is None:  # the server imports it; the test need not spend seconds on that
    pytest.skip("needs gradio (pip install 'tamer-vq[app]')", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("CI"):  # .ci/run installs them: missing there is a failure, not a skip
        raise RuntimeError("the browser test needs Debian's chromium and chromium-driver on PATH")
    pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vqgan_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "vqgan"
    torch.manual_seed(1)
    make_model(CLASS).first_stage_model.save(path)
    return path


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "seg"
    torch.manual_seed(2)
    make_model({"kind": "spatial", "key": "segmentation", "stage": SEG_STAGE}, code_shape=(4, 4)).save(path)
    return path


@pytest.fixture(scope="module")
def server(class_model, vqgan_model, seg_model, tmp_path_factory):
    """`tamer app` on 127.0.0.1 and a free port, in its own process; stopped by the test."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "tamer.cli", "app", "--model", str(class_model),
                                    "--model", str(vqgan_model), "--model", str(seg_model), "--port", str(port),
                                    "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tamer app did not start:\n{log.read_text()}") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(20)
    yield driver
    driver.quit()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def type_into(element, text: str) -> None:
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(text, Keys.TAB)


def open_tab(driver, name: str) -> None:
    [tab] = [b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == name]
    tab.click()


def wait_for_text(driver, css: str, text: str, timeout: float = 60) -> str:
    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.CSS_SELECTOR, css).text,
                                         f"{text!r} never appeared in {css}")
    return driver.find_element(By.CSS_SELECTOR, css).text


def test_page_samples_the_pixels_of_tamer_sample_and_survives_a_corrupt_upload(server, browser, class_model,
                                                                               tmp_path):
    expected = tmp_path / "cli"
    assert main(["sample", "--model", str(class_model), "--class", "2", "-n", "2", "--top-k", "5",
                 "--seed", "5", "--precision", "fp32", "--out", str(expected)]) == 0  # the app samples in fp32

    browser.get(server)
    browser.find_element(By.CSS_SELECTOR, "#m0-class input").click()
    browser.find_element(By.CSS_SELECTOR, '#m0-class li[aria-label="2: class 2"]').click()
    type_into(browser.find_element(By.CSS_SELECTOR, "#m0-seed input"), "5")
    type_into(browser.find_element(By.CSS_SELECTOR, "#m0-n input[type=number]"), "2")
    type_into(browser.find_element(By.CSS_SELECTOR, "#m0-topk input"), "5")
    browser.find_element(By.ID, "m0-sample").click()
    wait_for_text(browser, "#m0-status", "2 samples, seeds 5..6")

    shown = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#m0-gallery img")]
    assert [src.rsplit("/", 1)[-1] for src in shown] == ["sample-5.png", "sample-6.png"]
    for src, seed in zip(shown, (5, 6)):
        assert np.array_equal(pixels(fetch(src)), pixels((expected / f"sample-{seed}.png").read_bytes()))
    archive = fetch(browser.find_element(By.CSS_SELECTOR, "#m0-download a").get_attribute("href"))
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        assert {"sample-5.png", "sample-6.png", "codes.npy", "sample.json", "grid.png"} <= set(zipped.namelist())
        codes = np.load(io.BytesIO(zipped.read("codes.npy")))
    assert np.array_equal(codes, np.load(expected / "codes.npy"))

    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    browser.find_element(By.CSS_SELECTOR, "#m0-completion input[type=file]").send_keys(str(corrupt))
    WebDriverWait(browser, 30).until(lambda d: "broken" in d.find_element(By.ID, "m0-completion").text)
    browser.find_element(By.ID, "m0-complete").click()
    WebDriverWait(browser, 60).until(lambda d: "broken.png: not an image" in
                                     d.find_element(By.TAG_NAME, "body").text, "no message about the corrupt upload")

    type_into(browser.find_element(By.CSS_SELECTOR, "#m0-seed input"), "6")  # still serving: sample 6 again
    type_into(browser.find_element(By.CSS_SELECTOR, "#m0-n input[type=number]"), "1")
    browser.find_element(By.ID, "m0-sample").click()
    wait_for_text(browser, "#m0-status", "1 sample, seed 6,")
    [src] = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#m0-gallery img")]
    assert np.array_equal(pixels(fetch(src)), pixels((expected / "sample-6.png").read_bytes()))


def test_vqgan_tab_shows_the_reconstruction_psnr_and_codes_of_tamer_reconstruct(server, browser, vqgan_model,
                                                                                  tmp_path, capsys):
    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (17, 20, 3), dtype=np.uint8)).save(picture)
    capsys.readouterr()
    # the app reconstructs in fp32
    assert main(["reconstruct", "--model", str(vqgan_model), str(picture), "--precision", "fp32",
                 "--out", str(tmp_path / "cli")]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("photo.png ")]
    psnr = row.split()[-1]

    browser.get(server)
    open_tab(browser, "vqgan")
    browser.find_element(By.CSS_SELECTOR, "#m1-image input[type=file]").send_keys(str(picture))
    WebDriverWait(browser, 30).until(lambda d: "photo" in d.find_element(By.ID, "m1-image").text)
    browser.find_element(By.ID, "m1-reconstruct").click()
    status = wait_for_text(browser, "#m1-status", "PSNR")
    assert status.startswith(f"PSNR {psnr} dB; 8×10 codes of 32 (photo.png: 17×20 centre-cropped to 16×20")
    shown = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#m1-gallery img")]
    assert [src.rsplit("/", 1)[-1] for src in shown] == ["input.png", "reconstruction.png"]
    assert np.array_equal(pixels(fetch(shown[1])), pixels((tmp_path / "cli" / "photo.png").read_bytes()))
    assert main(["encode", "--model", str(vqgan_model), str(picture), "--precision", "fp32",
                 "--out", str(tmp_path / "codes.npy")]) == 0
    cells = browser.find_element(By.ID, "m1-codes").text.split("\n")[1 + 10:]  # the label, the column headers
    assert [int(cell) for cell in cells] == np.load(tmp_path / "codes.npy")[0].flatten().tolist()


def test_a_map_drawn_on_the_canvas_samples_like_tamer_sample_with_that_map(server, browser, seg_model, tmp_path):
    browser.get(server)
    open_tab(browser, "seg")
    open_tab(browser, "Draw a map")
    browser.find_element(By.CSS_SELECTOR, "#m2-draw button[aria-label=Brush]").click()
    canvas = browser.find_elements(By.CSS_SELECTOR, "#m2-draw canvas")[-1]
    ActionChains(browser).move_to_element_with_offset(canvas, -60, -60).click_and_hold().move_by_offset(100, 0) \
        .move_by_offset(0, 80).release().perform()  # an L in label 1's colour (the brush's first)
    type_into(browser.find_element(By.CSS_SELECTOR, "#m2-n input[type=number]"), "2")
    browser.find_element(By.ID, "m2-sample").click()
    wait_for_text(browser, "#m2-status", "2 samples, seeds 0..1, 8×8 pixels")

    with zipfile.ZipFile(io.BytesIO(fetch(browser.find_element(By.CSS_SELECTOR, "#m2-download a")
                                          .get_attribute("href")))) as zipped:
        zipped.extract("condition.png", tmp_path)
    labels = np.asarray(Image.open(tmp_path / "condition.png"))
    assert labels.shape == (8, 8) and set(np.unique(labels).tolist()) == {0, 1}
    assert main(["sample", "--model", str(seg_model), "--cond", str(tmp_path / "condition.png"), "-n", "2",
                 "--precision", "fp32", "--out", str(tmp_path / "cli")]) == 0  # the app samples in fp32
    shown = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#m2-gallery img")]
    assert len(shown) == 2
    for src, seed in zip(shown, (0, 1)):
        assert np.array_equal(pixels(fetch(src)), pixels((tmp_path / "cli" / f"sample-{seed}.png").read_bytes()))
