"""The HTML evidence report as an investigator (or a lawyer) sees it: rendered by headless Chromium.

Needs Debian's `chromium` (apt-get install -y chromium); skipped with that reason when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import _hostile  # noqa: E402

from matcher.api import Matcher  # noqa: E402
from matcher.run import dump  # noqa: E402
from matcher.write.report import latest_file_records, read_records  # noqa: E402

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None
)
# CI installs Chromium (.ci/run), so there a missing browser is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="headless Chromium not installed (apt-get install -y chromium)",
)


@pytest.fixture(scope="module")
def rendered(hostile_world, tmp_path_factory):
    world = hostile_world
    base = tmp_path_factory.mktemp("html")
    out = base / "r.jsonl"
    html = base / "report.html"
    m = Matcher.open(world["index"])
    dump.run_dump(world["dump"], m, out=out, html=html, every=1.0, all_frames=True, workers=2, quiet=True)
    m.close()
    return world, out, html


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


class DomScan(HTMLParser):
    """What the rendered DOM shows: items (with their hidden state), images, text by section."""

    def __init__(self):
        super().__init__()
        self.title = ""
        self._in_title = False
        self.items: list[dict] = []
        self.imgs: list[str] = []
        self.section: list[str] = []
        self.text_by_section: dict[str, list[str]] = {}
        self.attrs_seen: list[tuple[str, dict]] = []
        self._depth_item = None
        self._stack: list[str] = []
        self._ids: list[str | None] = []
        self.text_by_id: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs_seen.append((tag, a))
        self._stack.append(tag)
        if tag == "title":
            self._in_title = True
        if tag == "section":
            self.section.append(a.get("id"))
        self._ids.append(a.get("id"))
        if tag == "article" and "item" in (a.get("class") or ""):
            self.items.append(
                {
                    "conf": float(a["data-conf"]),
                    "hidden": "hidden" in a,
                    "text": [],
                    "imgs": 0,
                    "section": self.section[0] if self.section else None,
                }
            )
            self._depth_item = len(self._stack)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
            if self._depth_item is not None:
                self.items[-1]["imgs"] += 1

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag == "article" and self._depth_item is not None:
            self._depth_item = None
        if tag == "section" and self.section:
            self.section.pop()
        while self._stack:
            t = self._stack.pop()
            self._ids.pop()
            if t == tag:
                break

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._depth_item is not None:
            self.items[-1]["text"].append(data)
        key = self.section[0] if self.section else "header"
        self.text_by_section.setdefault(key, []).append(data)
        for i in self._ids:
            if i:
                self.text_by_id[i] = self.text_by_id.get(i, "") + data


def dom(html: Path, fragment: str = "") -> tuple[DomScan, str]:
    p = chromium("--dump-dom", html.as_uri() + fragment)
    assert p.returncode == 0, p.stderr[-2000:]
    scan = DomScan()
    scan.feed(p.stdout)
    return scan, p.stderr


def test_report_renders_grouped_escaped_and_self_contained(rendered):
    world, out, html = rendered
    scan, log = dom(html)
    files = latest_file_records(read_records(out))
    # no script from a file name ran; no CSP violation (the one inline script is allowed by hash)
    assert scan.title == "matcher evidence report"
    assert "Refused to" not in log, [x for x in log.splitlines() if "Refused" in x]
    assert not [a for t, a in scan.attrs_seen if any(k.startswith("on") for k in a)]
    assert all(src.startswith("data:image/") for src in scan.imgs) and len(scan.imgs) >= 20
    # alt texts say what the picture is (never "not available" on a picture that is there), and
    # every thumbnail can be enlarged
    imgs = [a for t, a in scan.attrs_seen if t == "img"]
    assert all(a["alt"].startswith(("the input ", "reference still of ")) for a in imgs), imgs[:3]
    assert all("zoomable" in a.get("class", "") for a in imgs)
    text = "".join(t for ts in scan.text_by_section.values() for t in ts)
    assert "<script>document.title='pwned'</script>.png" in text  # shown as text, escaped
    assert '"><img src=x onerror=alert(1)>.png' in text
    # chain of custody: versions, fingerprints and the sha256 of every input
    header = "".join(scan.text_by_section["header"])
    for needle in ("matcher version", "model fingerprint", "index fingerprint", "report generated utc"):
        assert needle in header  # human field names, not JSON keys
    assert "tool_version" not in header
    for needle in ("unknown threshold (colour queries)", "command line", "host", "index (absolute path)"):
        assert needle in header
    for r in files:
        if r.get("sha256"):
            assert r["sha256"] in header
    # matched files grouped by title, each with its thumbnail and reference stills
    matched = [i for i in scan.items if i["section"] == "matched"]
    assert len(matched) == sum(1 for r in files if r["status"] == "matched")
    assert all(i["imgs"] >= 2 for i in matched), [("".join(i["text"])[:80], i["imgs"]) for i in matched]
    groups = re.findall(
        r"(Alpha Squadron|Beta <Bros>|Gamma & Co) \((\d+) files\)", "".join(scan.text_by_section["matched"])
    )
    assert {g for g, _ in groups} == set(_hostile.TITLES)
    video = next(i for i in matched if "video/clip.mp4" in "".join(i["text"]))
    assert "3 stills/frames" in "".join(video["text"]) and "0:01.0" in "".join(video["text"])
    assert "leak still @ 0:0" in "".join(video["text"])  # which still of the leak each reference matched
    # unknowns and errors/skipped in their own sections
    unknown = [i for i in scan.items if i["section"] == "unknown"]
    assert ["good/grey.png" in "".join(i["text"]) for i in unknown] == [True]
    other = "".join(scan.text_by_section["other"])
    assert "bad/bomb.png" in other and "decompression bomb" in other and "links/outside.png" in other
    # nothing hidden without a filter, and the counter was filled in by the script
    assert not any(i["hidden"] for i in scan.items)
    assert f"{len(scan.items)} items shown" in header + "".join(
        scan.text_by_section.get("summary", [])
    ) or str(len(scan.items)) in "".join(scan.text_by_section["header"])


def test_confidence_filter_hides_low_confidence_items(rendered):
    _, _, html = rendered
    scan, _ = dom(html, "#min=0.5")
    assert scan.items
    for i in scan.items:
        assert i["hidden"] == (i["conf"] < 0.5), i
    assert any(i["hidden"] for i in scan.items) and not all(i["hidden"] for i in scan.items)
    assert scan.text_by_id["shown"] == str(sum(not i["hidden"] for i in scan.items))
    assert scan.text_by_id["minconf-val"] == "0.50"


def test_screenshot_is_not_blank(rendered, tmp_path):
    _, _, html = rendered
    shot = tmp_path / "shot.png"
    p = chromium(f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars", html.as_uri())
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert px.std() > 10  # text, tables and thumbnails, not a blank page
