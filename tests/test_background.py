"""The shipped background set keeps its rules: only the '0'/'1' sha256 share of each source package
(the rest is the learned embedder's training data), no benchmark or reserved package, every source
package in the NOTICE with its version, .deb sha256 and licence, small thumbnails, a few MB."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

from PIL import Image

from matcher.score import background

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import extract_styles  # noqa: E402


def test_background_set_follows_the_split_and_the_notice_lists_every_source():
    assert background.ARCHIVE.stat().st_size < 4_000_000
    with zipfile.ZipFile(background.ARCHIVE) as z:
        entries = json.loads(z.read("manifest.json"))
        packages = json.loads(z.read("packages.json"))
        assert 500 <= len(entries) <= 2000 and len(entries) == background.size()
        for e in entries[::50]:
            with Image.open(io.BytesIO(z.read(e["file"]))) as im:
                assert max(im.size) <= 160
    assert all(e["sha256"][0] in "01" for e in entries)
    used = {e["package"] for e in entries}
    assert not used & extract_styles.FORBIDDEN
    notice = (background.ARCHIVE.parent / "BACKGROUND-NOTICE.md").read_text()
    listed = {p["package"]: p for p in packages}
    assert set(listed) == used
    for name, p in listed.items():
        assert p["licence"] and len(p["deb_sha256"]) == 64
        assert f"| {name} | {p['version']} | `{p['deb_sha256']}` |" in notice
