"""`matcher serve`: the HTTP API through an ASGI test client (httpx), on a real tiny index."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import _hostile  # noqa: E402

from matcher.api import Matcher  # noqa: E402
from matcher.decode.decoder import Limits, Task  # noqa: E402
from matcher.run import dump, pool  # noqa: E402
from matcher.serve import engine  # noqa: E402
from matcher.serve.app import ServeConfig, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
A, B, C = _hostile.TITLES
BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A private copy of the hostile world's references and index (some tests change a source file),
    and a small dump report made from it."""
    base = tmp_path_factory.mktemp("serve")
    refs = _hostile.make_references(base / "refs")
    index = base / "index"
    m = Matcher.create(index, model="classic")
    for title, paths in refs.items():
        m.add(paths, title=title)
    d = base / "dump"
    d.mkdir()
    (d / "a.png").write_bytes(_hostile.save_bytes(_hostile.cel(0, 1), "PNG"))
    (d / "b.jpg").write_bytes(_hostile.save_bytes(_hostile.cel(1, 2), "JPEG", quality=90))
    (d / "<b>x<i>.png").write_bytes(_hostile.save_bytes(_hostile.cel(2, 0), "PNG"))
    (d / "note.txt").write_bytes(b"not an image\n")
    report = base / "report.jsonl"
    dump.run_dump(d, m, out=report, workers=1, quiet=True)
    m.close()
    return {"base": base, "refs": refs, "index": index, "dump": d, "report": report}


def config(world, tmp_path, **kw) -> ServeConfig:
    kw.setdefault("review_log", str(tmp_path / "reviews.jsonl"))
    kw.setdefault("workers", 1)
    return ServeConfig(index=str(world["index"]), **kw)


@pytest.fixture
def client(world, tmp_path):
    with TestClient(create_app(config(world, tmp_path, reports=[str(world["report"])])), base_url=BASE) as c:
        yield c


def png(title_idx=0, variant=1, **kw) -> bytes:
    return _hostile.save_bytes(_hostile.cel(title_idx, variant), "PNG", **kw)


def post(client, *files, **params):
    return client.post("/match", files=[("file", f) for f in files], params=params)


# -------------------------------------------------------------------------------------------- match
def test_match_returns_the_match_json_objects(client, world, tmp_path):
    data = png(1, 2)
    (tmp_path / "leak.png").write_bytes(data)
    with Matcher.open(world["index"]) as m:
        expected = m.match(tmp_path / "leak.png").to_dict()
    r = post(client, ("leak.png", data, "image/png"))
    assert r.status_code == 200
    [got] = r.json()
    assert got["title"] == B == expected["title"]
    for ev in got["evidence"]:
        assert isinstance(ev.pop("reference_id"), int)  # the one field serve adds
    assert got == {**expected, "path": "leak.png"}


def test_several_files_and_a_video_in_one_request(client, tmp_path):
    video = tmp_path / "clip.mp4"
    _hostile.write_video(video, [_hostile.cel(2, 1), _hostile.cel(2, 2), _hostile.cel(2, 3)])
    r = post(
        client,
        ("a.png", png(0, 1), "image/png"),
        ("clip.mp4", video.read_bytes(), "video/mp4"),
        ("junk.png", b"not an image at all", "image/png"),
    )
    assert r.status_code == 200
    objs = r.json()
    assert objs[0]["path"] == "a.png" and objs[0]["title"] == A
    stills = [o for o in objs if o["path"] == "clip.mp4"]
    assert [o["timestamp"] for o in stills] == [0.0, 1.0, 2.0]
    assert {o["title"] for o in stills} == {C}
    assert objs[-1]["path"] == "junk.png" and objs[-1]["title"] is None and objs[-1]["error"]


def test_titles_index_health_and_openapi(client, world):
    with Matcher.open(world["index"]) as m:
        info = m.info()
    assert client.get("/index").json() == json.loads(json.dumps(info))
    assert client.get("/titles").json() == {
        "titles": [{"title": t, "stills": n} for t, n in info["titles"].items()]
    }
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["generation"] == info["generation"]
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/match", "/titles", "/index", "/health", "/references/{reference_id}/thumbnail", "/reviews"):
        assert p in paths
    docs = client.get("/docs")
    assert docs.status_code == 200 and "POST /match" in docs.text and "cdn" not in docs.text.lower()


# ---------------------------------------------------------------------------------------- thumbnails
def test_reference_thumbnail_only_while_the_source_is_unchanged(client, world):
    r = post(client, ("a.png", png(2, 1), "image/png"))
    ev = r.json()[0]["evidence"][0]
    url = f"/references/{ev['reference_id']}/thumbnail"
    t = client.get(url)
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(t.content))
    assert im.format == "JPEG" and max(im.size) <= 160
    source = Path(ev["reference"])
    original = source.read_bytes()
    try:
        _hostile.cel(0, 0).save(source, format="PNG")  # the file at the recorded source changed
        bad = client.get(url)
        assert bad.status_code == 409 and "changed since it was indexed" in bad.json()["detail"]
        source.unlink()
        assert client.get(url).status_code == 404
    finally:
        source.write_bytes(original)
    assert client.get(url).status_code == 200
    assert client.get("/references/999999/thumbnail").status_code == 404
    assert client.get("/references/..%2f..%2fetc%2fpasswd/thumbnail").status_code in (404, 422)


# ---------------------------------------------------------------------------------- limits, hostility
def test_limits_give_clear_4xx(world, tmp_path):
    cfg = config(world, tmp_path, max_upload_bytes=200_000, max_files=3, max_pixels=2_000_000)
    with TestClient(create_app(cfg), base_url=BASE) as c:
        big = png(0, 1, compress_level=0) + b"\0" * 300_000
        r = post(c, ("big.png", big, "image/png"))
        assert r.status_code == 413 and "upload limit" in r.json()["detail"]
        r = post(c, ("wide.png", _hostile.save_bytes(Image.new("RGB", (2000, 1500)), "PNG"), "image/png"))
        assert r.status_code == 413 and "wide.png" in r.json()["detail"] and "Mpx" in r.json()["detail"]
        r = post(c, ("bomb.png", _hostile.bomb_png(), "image/png"))
        assert r.status_code == 413 and "bomb" in r.json()["detail"]
        truncated = _hostile.save_bytes(_hostile.cel(1, 0), "JPEG")[:900]
        r = post(c, ("cut.jpg", truncated, "image/jpeg"))
        assert r.status_code == 422 and r.json()["detail"].startswith("cut.jpg: ")
        assert r.json()["results"][0]["error"]
        r = post(c, *[(f"{i}.png", png(), "image/png") for i in range(4)])
        assert r.status_code == 400 and "files" in r.json()["detail"].lower()
        assert c.post("/match", json={"x": 1}).status_code == 415
        assert c.post("/match", data={"x": "1"}).status_code in (415, 422)
        r = c.post(
            "/match",
            content=iter([b"x" * 100_000] * 20),  # chunked: no Content-Length to check up front
            headers={"content-type": "multipart/form-data; boundary=zz"},
        )
        assert r.status_code in (400, 413)
        assert post(c, ("ok.png", png(), "image/png")).status_code == 200  # and it still serves


_REAL_DECODE = pool.decode_file


def _crashy_process(task, lim, transform=None):
    if task.rel == "crash.png":
        os._exit(11)  # a decoder segfault kills the worker process
    if task.rel == "hang.png":
        time.sleep(3600)
    return _REAL_DECODE(task, lim, transform)


def test_a_crashing_or_hanging_decoder_fails_one_request_not_the_server(world, tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "decode_file", _crashy_process)  # forked workers see it
    with TestClient(create_app(config(world, tmp_path, decode_timeout=3.0)), base_url=BASE) as c:
        r = post(c, ("crash.png", png(), "image/png"))
        assert r.status_code == 422 and "crashed" in r.json()["detail"]
        r = post(c, ("hang.png", png(), "image/png"))
        assert r.status_code == 422 and "longer than" in r.json()["detail"]
        r = post(c, ("fine.png", png(1, 1), "image/png"))
        assert r.status_code == 200 and r.json()[0]["title"] == B
        assert c.get("/health").json()["decoder_crashes"] == 2


def test_decode_workers_outlive_the_request_thread_that_started_them(world, tmp_path):
    """Workers die with the thread that forked them (PR_SET_PDEATHSIG, run.pool.init_worker), and the
    server's request threads come and go: the pool must be forked from a thread that stays."""
    import threading

    from matcher.serve.engine import SharedDecoder

    (tmp_path / "a.png").write_bytes(png())
    with Matcher.open(world["index"]) as m:
        decoder = SharedDecoder(m, 1, Limits(), timeout=30.0)
    task = Task(idx=0, rel="a.png", abspath=os.fsencode(tmp_path / "a.png"))
    results = []
    try:
        t = threading.Thread(target=lambda: results.append(decoder.decode(task)))
        t.start()
        t.join()  # the request thread is gone
        time.sleep(0.5)
        results.append(decoder.decode(task))
    finally:
        decoder.close()
    assert [r["status"] for r in results] == [None, None] and decoder.crashes == 0


def test_uploads_are_stored_under_server_names_and_removed(client, tmp_path):
    r = post(client, ("../../../../tmp/evil <i>.png", png(), "image/png"))
    assert r.status_code == 200
    assert r.json()[0]["path"] == "evil <i>.png"  # a label: no directories
    workdir = client.app.app.state.matcher.workdir
    assert oct(workdir.stat().st_mode & 0o777) == "0o700"
    assert list(workdir.iterdir()) == []  # nothing left behind
    assert not Path("/tmp/evil <i>.png").exists()


# ---------------------------------------------------------------------------------------- access
def test_token_required_off_loopback_and_checked(world, tmp_path):
    with pytest.raises(ValueError, match="needs a token"):
        create_app(config(world, tmp_path, host="0.0.0.0"))
    token = "s3cret-token-0123456789"
    cfg = config(world, tmp_path, host="0.0.0.0", token=token)
    with TestClient(create_app(cfg), base_url="http://matcher.lan:8000") as c:
        assert c.get("/health").status_code == 200  # liveness stays public
        r = c.get("/titles")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/titles", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/titles", headers={"authorization": f"Bearer {token}"}).status_code == 200
        page = c.get("/", headers={"accept": "text/html"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert c.post("/login", data={"token": "nope"}).status_code == 200
        assert "matcher_token" not in c.cookies
        c.post("/login", data={"token": token}, follow_redirects=False)
        assert c.get("/titles").status_code == 200  # the page's cookie


def test_foreign_host_and_cross_origin_writes_are_refused(client):
    r = client.get("/titles", headers={"host": "attacker.example"})  # DNS rebinding
    assert r.status_code == 400
    body = {"reviewer": "x", "decision": "reject", "reason": "y", "sha256": "0" * 64}
    r = client.post("/reviews", json=body, headers={"origin": "http://attacker.example"})
    assert r.status_code == 403
    r = client.post("/reviews", json=body, headers={"origin": "null"})  # e.g. a saved HTML page
    assert r.status_code == 403
    # what a cross-site form can send without a preflight: not JSON, so not accepted
    r = client.post("/reviews", content=json.dumps(body), headers={"content-type": "text/plain"})
    assert r.status_code == 422
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in page.text and " style=" not in page.text  # no inline code at all
    assert "http" not in page.text.split("<main>")[0]  # nothing loaded from elsewhere


# ---------------------------------------------------------------------------------------- reviews
def test_decision_on_an_upload_is_appended_and_fsynced(client, tmp_path):
    obj = post(client, ("leak.png", png(2, 2), "image/png")).json()[0]
    assert obj["title"] == C
    body = {"reviewer": "Ann Example", "decision": "relabel", "title": "Delta", "reason": "credits say so"}
    r = client.post("/reviews", json={**body, "sha256": obj["sha256"]})
    assert r.status_code == 201
    lines = (tmp_path / "reviews.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    assert rec["record"] == "review" and rec["reviewer"] == "Ann Example" and rec["decision"] == "relabel"
    assert rec["title"] == "Delta" and rec["reason"] == "credits say so" and rec["time_utc"].endswith("Z")
    assert rec["overrides"] == {"title": C, "confidence": obj["confidence"], "status": "matched"}
    assert rec["subject"] == {"kind": "upload", "path": "leak.png", "sha256": obj["sha256"]}
    assert client.get("/reviews").json()["reviews"][-1] == rec
    assert "credits say so" in client.get("/ui/reviews").text
    for bad, why in (
        ({**body, "title": None}, "relabel needs"),
        ({**body, "decision": "maybe"}, "decision must be"),
        ({**body, "reason": "  "}, "reason is required"),
        ({**body, "reviewer": ""}, "reviewer name"),
    ):
        r = client.post("/reviews", json={**bad, "sha256": obj["sha256"]})
        assert r.status_code == 422 and why in r.json()["detail"]
    r = client.post("/reviews", json={**body, "sha256": "f" * 64})
    assert r.status_code == 404
    assert len((tmp_path / "reviews.jsonl").read_text().splitlines()) == len(lines)  # none written


def test_report_browser_filters_and_export_carries_decisions(client, world):
    reports = client.get("/reports").json()["reports"]
    assert reports[0]["files"] == 4 and reports[0]["statuses"] == {"matched": 3, "skipped": 1}
    recs = client.get("/reports/0/records", params={"title": B}).json()["records"]
    assert [r["path"] for r in recs] == ["b.jpg"]
    assert [r["path"] for r in client.get("/reports/0/records?status=skipped").json()["records"]] == [
        "note.txt"
    ]
    assert client.get("/reports/0/records?min_confidence=1.5").status_code == 422
    page = client.get("/ui/reports/0", params={"status": "matched"})
    assert page.status_code == 200 and "note.txt" not in page.text
    assert "&lt;b&gt;x&lt;i&gt;.png" in page.text and "<b>x<i>" not in page.text
    assert "Beta &lt;Bros&gt;" in page.text
    assert "/references/" in page.text  # evidence thumbnails by id
    sha = recs[0]["sha256"]
    review = {"reviewer": "Bo", "decision": "reject", "reason": "watermark differs", "sha256": sha}
    assert client.post("/reviews", json={**review, "report": 0, "path": "a.png"}).status_code == 404
    r = client.post("/reviews", json={**review, "report": 0, "path": "b.jpg"})
    assert r.status_code == 201 and r.json()["overrides"]["title"] == B
    exported = client.get("/reports/0/export")
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in exported.text.splitlines()]
    original = [json.loads(x) for x in world["report"].read_text().splitlines()]
    assert len(lines) == len(original) + 1
    b = next(x for x in lines if x.get("record") == "file" and x["path"] == "b.jpg")
    assert b["review"]["decision"] == "reject" and b["review"]["reviewer"] == "Bo"
    assert {k: v for k, v in b.items() if k != "review"} in original  # nothing else changed
    assert lines[-1]["record"] == "review" and lines[-1]["subject"]["path"] == "b.jpg"
    assert client.get("/reports/7/records").status_code == 404


def test_report_thumbnails_only_from_the_dump_and_only_unchanged(client, world):
    recs = {r["path"]: r for r in client.get("/reports/0/records").json()["records"]}
    a = recs["a.png"]
    url = "/reports/0/thumbnail"
    r = client.get(url, params={"path": "a.png", "sha256": a["sha256"]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 160
    page = client.get("/ui/reports/0").text
    assert "/reports/0/thumbnail?path=a.png&amp;sha256=" + a["sha256"] in page
    # only lines of the report, and never outside its dump directory
    assert client.get(url, params={"path": "../refs/t0/0.png", "sha256": a["sha256"]}).status_code == 404
    assert client.get(url, params={"path": "a.png", "sha256": "0" * 64}).status_code == 404
    source = world["dump"] / "a.png"
    original = source.read_bytes()
    try:
        source.write_bytes(png(1, 1))
        r = client.get(url, params={"path": "a.png", "sha256": a["sha256"]})
        assert r.status_code == 409 and "changed since the report was written" in r.json()["detail"]
    finally:
        source.write_bytes(original)


def test_a_doctored_report_cannot_reach_outside_its_dump(world, tmp_path):
    import hashlib

    secret = world["refs"][A][0]  # a real image outside the dump directory
    rel = os.path.relpath(secret, world["dump"])
    sha = hashlib.sha256(secret.read_bytes()).hexdigest()
    doctored = tmp_path / "doctored.jsonl"
    lines = [
        {"record": "run", "dump_root": str(world["dump"])},
        {"record": "file", "path": rel, "sha256": sha, "status": "matched", "title": A, "confidence": 0.9},
    ]
    doctored.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with TestClient(create_app(config(world, tmp_path, reports=[str(doctored)])), base_url=BASE) as c:
        r = c.get("/reports/0/thumbnail", params={"path": rel, "sha256": sha})
        assert r.status_code == 404 and "outside its dump directory" in r.json()["detail"]


def test_review_log_is_locked_to_one_server(world, tmp_path):
    with TestClient(create_app(config(world, tmp_path)), base_url=BASE):
        with pytest.raises(Exception, match="in use"):
            create_app(config(world, tmp_path))


# ---------------------------------------------------------------------------------------- the index
def test_new_generation_from_index_add_is_picked_up(world, tmp_path, monkeypatch):
    index = tmp_path / "index"
    shutil.copytree(world["index"], index)
    (index / "vectors-0.faiss.tmp").write_bytes(b"left by a crashed writer")  # a writer's open purges it
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    monkeypatch.setattr(engine, "RELOAD_CHECK_S", 0.0)
    cfg = ServeConfig(index=str(index), review_log=str(tmp_path / "r.jsonl"), workers=1)
    with TestClient(create_app(cfg), base_url=BASE) as c:
        assert "Echo" not in {t["title"] for t in c.get("/titles").json()["titles"]}
        assert {p.name: p.read_bytes() for p in index.iterdir()} == before  # serving wrote nothing
        echo = []  # new stills: the same files under a second title would be refused as duplicates
        for v in (50, 51):
            echo.append(tmp_path / f"echo{v}.png")
            _hostile.cel(0, v).save(echo[-1])
        p = subprocess.run(
            [sys.executable, "-m", "matcher.cli", "index", "add", "--index", str(index), "--title", "Echo"]
            + [str(x) for x in echo],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert p.returncode == 0, p.stderr
        assert "Echo" in {t["title"] for t in c.get("/titles").json()["titles"]}
        r = post(c, ("a.png", png(1, 1), "image/png"))
        assert r.status_code == 200 and r.json()[0]["title"] == B


# ---------------------------------------------------------------------------------------- the CLI
def test_cli_refuses_unsafe_or_broken_setups_in_one_line(world, tmp_path):
    def serve(*args):
        cmd = [sys.executable, "-m", "matcher.cli", "serve", "--review-log", str(tmp_path / "r.jsonl")]
        return subprocess.run(cmd + list(args), cwd=ROOT, capture_output=True, text=True, timeout=60)

    p = serve("--index", str(world["index"]), "--host", "0.0.0.0")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--token" in p.stderr
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        p = serve("--index", str(world["index"]), "--port", str(busy.getsockname()[1]))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "cannot listen on 127.0.0.1:" in p.stderr
    p = serve("--index", str(tmp_path / "nothing"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no index here" in p.stderr
    p = serve("--index", str(world["index"]), "--report", str(tmp_path / "missing.jsonl"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "missing.jsonl" in p.stderr
    (tmp_path / "notes.jsonl").write_text('{"a": 1}\n')
    p = serve("--index", str(world["index"]), "--report", str(tmp_path / "notes.jsonl"))
    assert p.returncode == 2 and "not a matcher dump report" in p.stderr
    assert "Traceback" not in p.stderr


def test_match_does_not_import_the_web_stack():
    code = "import sys, matcher.cli; print([m for m in ('fastapi', 'uvicorn') if m in sys.modules])"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "[]", p.stderr
