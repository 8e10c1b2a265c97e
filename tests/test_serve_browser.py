"""The `matcher serve` page in a real headless browser (Debian's chromium through Selenium and
Debian's chromedriver): upload a demo frame, see the right title and the evidence thumbnails, record
a decision, reload, and find it in the review log.

Skipped with that reason when chromium / chromedriver are missing, except in CI (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and Path(p).exists()), None)
DRIVER = next(
    (p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver")) if p and Path(p).exists()), None
)
pytestmark = pytest.mark.skipif(
    (CHROMIUM is None or DRIVER is None) and not os.environ.get("CI"),
    reason="headless Chromium / chromedriver not installed (apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    """The demo index of scripts/demo.sh, built from demo/references."""
    from matcher.api import Matcher

    index = tmp_path_factory.mktemp("demo") / "index"
    m = Matcher.create(index, model="classic")
    for line in (ROOT / "demo" / "titles.tsv").read_text().splitlines():
        folder, title = line.split("\t")
        m.add([ROOT / "demo" / "references" / folder], title=title)
    m.close()
    return index


@pytest.fixture(scope="module")
def server(demo_index, tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("reviews") / "reviews.jsonl"
    cmd = [sys.executable, "-m", "matcher.cli", "serve", "--index", str(demo_index), "--port", str(port)]
    proc = subprocess.Popen(
        cmd + ["--review-log", str(log), "--workers", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                assert json.load(r)["status"] == "ok"
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"server did not start: {proc.communicate()[1][-2000:]}")
            time.sleep(0.2)
    yield base, log
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=opts, service=Service(executable_path=DRIVER or "/usr/bin/chromedriver")
    )
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_upload_see_evidence_decide_and_find_it_in_the_log(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, log = server
    wait = WebDriverWait(browser, 60)
    browser.get(base + "/")
    browser.find_element(By.ID, "pick").send_keys(str(ROOT / "demo" / "queries" / "cel-lineart.png"))
    title = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".result .title").text or None)
    assert title == "Big Buck Bunny"  # the README's demo answer for the line-art sketch
    result = browser.find_element(By.CSS_SELECTOR, ".result")
    assert "confidence" in result.find_element(By.CSS_SELECTOR, ".confidence").text
    assert result.find_element(By.CSS_SELECTOR, ".path").text == "cel-lineart.png"
    loaded = """return Array.from(arguments[0].querySelectorAll(arguments[1]))
                  .map(i => i.complete && i.naturalWidth > 0);"""
    evidence = wait.until(
        lambda d: (lambda v: v if v and all(v) else None)(d.execute_script(loaded, result, ".evidence img"))
    )
    assert len(evidence) >= 3  # the nearest reference stills, decoded from their recorded sources
    assert browser.execute_script(loaded, result, ".query-img") == [True]  # the frame beside them
    captions = [f.text for f in result.find_elements(By.CSS_SELECTOR, ".evidence figcaption")]
    assert captions[0].startswith("Big Buck Bunny · similarity 0.")

    form = result.find_element(By.CSS_SELECTOR, "form.decision")
    form.find_element(By.NAME, "reviewer").send_keys("Investigator Ines")
    Select(form.find_element(By.NAME, "decision")).select_by_visible_text("confirm")
    form.find_element(By.NAME, "reason").send_keys("same bunny ears as the 2 s still")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    recorded = wait.until(
        lambda d: (lambda t: t if t.startswith("recorded") else None)(
            form.find_element(By.CSS_SELECTOR, ".recorded").text
        )
    )
    assert recorded.startswith("recorded confirm (Big Buck Bunny)")

    browser.get(base + "/ui/reviews")
    browser.refresh()
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#reviews tr.review")]
    assert len(rows) == 1 and "Investigator Ines" in rows[0] and "same bunny ears as the 2 s still" in rows[0]
    assert "cel-lineart.png" in rows[0] and "matched Big Buck Bunny" in rows[0]
    on_disk = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(r["decision"], r["reviewer"]) for r in on_disk] == [("confirm", "Investigator Ines")]

    problems = [e["message"] for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems  # no CSP violation, no failed load, no script error


def test_drop_and_paste_upload_a_frame(server, browser):
    """The other two ways in: a file dropped on the page, and an image pasted from the clipboard
    (events built in the page from a reference thumbnail the server itself serves)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = server
    wait = WebDriverWait(browser, 60)
    send = """
        const [how, name, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
        fetch("/references/1/thumbnail").then(r => r.blob()).then(blob => {
          const dt = new DataTransfer();
          dt.items.add(new File([blob], name, {type: "image/jpeg"}));
          if (how === "drop") {
            document.getElementById("drop").dispatchEvent(
              new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
          } else {
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true}));
          }
          done(true);
        });
    """
    for how in ("drop", "paste"):
        browser.get(base + "/")
        assert browser.execute_async_script(send, how, f"{how}.jpg")
        path = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".result .path").text or None)
        assert path == f"{how}.jpg"
        # reference 1 is the demo's first still, Big Buck Bunny at 0 s: its own thumbnail finds it
        assert browser.find_element(By.CSS_SELECTOR, ".result .title").text == "Big Buck Bunny"
