"""The chat page in a real headless browser: Debian's chromium driven by selenium through
chromium-driver uploads the demo image with the file picker, asks the demo question and reads
the answer streamed into the page from the server (the bundled demo model answers "circle");
then drops the second demo image on the page and asks a follow-up, whose answer must equal
the API's answer to the same two-turn conversation.

The screenshot is saved in the test's tmp dir, and also into $PADDLEMIX_SCREENSHOT_DIR when that
is set (the README's benchmarks/results/chat_page.png comes from there).
"""

import base64
import os
import shutil

import pytest
import requests

from helpers.serving import start_server, stop_server
from paddlemix_qwen25vl.demo import DEMO_IMAGE, DEMO_IMAGE_2, DEMO_QUESTION
from paddlemix_qwen25vl.serve import build_parser, create_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)
# Headless as root in a sandbox without a GPU, no network besides loopback, a fresh profile.
API_KEY = "page-key"
FOLLOW_UP = "What colour is the shape?"
# A drop of a file on the composer, as a person dragging it from a file manager would make it.
DROP_FILE = """
const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], "demo_image2.png", {type: "image/png"}));
document.getElementById("composer").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
"""
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=900,1000")


@pytest.fixture(scope="module")
def demo_server(demo_env, monkeypatch_module):
    """Base URL of the server on the bundled demo model (built into the test's cache)."""
    monkeypatch_module.setenv("PADDLEMIX_DEMO_DIR", demo_env["PADDLEMIX_DEMO_DIR"])
    server = create_server(build_parser().parse_args(["--port", "0", "--dtype", "float32", "--log_level", "warning"]))
    yield start_server(server)
    stop_server(server)


@pytest.fixture(scope="module")
def keyed_server(demo_env, monkeypatch_module):
    """Base URL of the demo server started with --api_key."""
    monkeypatch_module.setenv("PADDLEMIX_DEMO_DIR", demo_env["PADDLEMIX_DEMO_DIR"])
    args = ["--port", "0", "--dtype", "float32", "--log_level", "warning", "--api_key", API_KEY]
    server = create_server(build_parser().parse_args(args))
    yield start_server(server)
    stop_server(server)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium's manager must not look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={tmp_path / 'profile'}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _api_answer(url, image_2):
    """The API's greedy answer to the page's two-turn conversation."""
    def turn(path, question):
        data = base64.b64encode(open(path, "rb").read()).decode() if path == DEMO_IMAGE else image_2
        return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}},
                                            {"type": "text", "text": question}]}
    messages = [turn(DEMO_IMAGE, DEMO_QUESTION), {"role": "assistant", "content": "circle"}, turn(DEMO_IMAGE_2, FOLLOW_UP)]
    body = {"model": "paddlemix-qwen25vl-demo", "messages": messages, "temperature": 0}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]["content"]


def _ask_the_demo_question(browser, wait, page_url):
    """Open the page, attach the demo image with the file picker, ask the demo question, check the answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser.get(page_url)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "model: paddlemix-qwen25vl-demo"))
    browser.find_element(By.ID, "file").send_keys(DEMO_IMAGE)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#thumbs img")))
    browser.find_element(By.ID, "question").send_keys(DEMO_QUESTION)
    browser.find_element(By.ID, "send").click()
    answer = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#log .msg[data-done='true']")))
    assert "assistant" in answer.get_attribute("class"), answer.text  # not an error bubble
    assert answer.text == "circle"


def test_chat_page_streams_the_demo_answer(demo_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    _ask_the_demo_question(browser, wait, demo_server + "/")
    assert browser.find_elements(By.CSS_SELECTOR, "#log .user img"), "the question's image is shown"

    image_2 = base64.b64encode(open(DEMO_IMAGE_2, "rb").read()).decode()
    browser.execute_script(DROP_FILE, image_2)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#thumbs img")))
    browser.find_element(By.ID, "question").send_keys(FOLLOW_UP)
    browser.find_element(By.ID, "send").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#log .msg[data-done='true']")) == 2)
    follow_up = browser.find_elements(By.CSS_SELECTOR, "#log .msg[data-done='true']")[1]
    assert "assistant" in follow_up.get_attribute("class"), follow_up.text
    assert follow_up.text == _api_answer(demo_server, image_2)
    shot = tmp_path / "chat_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    if os.environ.get("PADDLEMIX_SCREENSHOT_DIR"):
        shutil.copy(shot, os.path.join(os.environ["PADDLEMIX_SCREENSHOT_DIR"], "chat_page.png"))


def test_chat_page_with_an_api_key(keyed_server, browser):
    """With --api_key the browser must give the key to open the page (HTTP Basic, here in the URL as
    a person would type it into the browser's prompt); the page's own API calls then carry it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(keyed_server + "/")  # headless, the browser's key prompt stays unanswered: no page
    assert not browser.find_elements(By.ID, "composer")
    _ask_the_demo_question(browser, WebDriverWait(browser, 60), keyed_server.replace("http://", f"http://user:{API_KEY}@") + "/")
