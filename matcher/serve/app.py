"""The FastAPI application of `matcher serve`: HTTP API, web pages, and their safety rails.

Safety (the uploads, and the dump reports' file names, come from an adversary):
- binds to 127.0.0.1 by default; a bearer token (header, or a cookie set by /login for the pages)
  is required when binding anywhere else; requests whose Host is not one the server answers to
  (DNS rebinding) are refused, and so are state-changing requests from another origin (CSRF);
- request bodies over the upload limit get 413 before they are read; decoded images are checked
  against the pixel limit from their header, before any pixel is decoded;
- uploads are written to a private directory (mode 0700) under names the server chooses; the
  client's file name is only a label, shown escaped. No request parameter is ever joined to a
  path: references are addressed by their integer id, reports by their number;
- every page carries a strict Content-Security-Policy: scripts and styles from this server only,
  no inline code, nothing from another host.
"""

from __future__ import annotations

import base64
import copy
import hmac
import ipaddress
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from matcher import config
from matcher.decode.decoder import MAX_PIXELS, Task
from matcher.records import one_line
from matcher.serve.engine import IndexHolder, Upload, UploadMatcher
from matcher.serve.reviews import DECISIONS, Report, ReviewError, ReviewLog, export

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
COOKIE = "matcher_token"
DEFAULT_MAX_UPLOAD_MB = config.SERVE_MAX_UPLOAD_MB
DEFAULT_MAX_FILES = config.SERVE_MAX_FILES
MAX_LABEL = 255


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServeConfig(BaseModel):
    index: str
    host: str = "127.0.0.1"
    port: int = 8000
    reports: list[str] = []
    review_log: str = "matcher-reviews.jsonl"
    token: str | None = None
    workers: int = config.SERVE_WORKERS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    max_files: int = DEFAULT_MAX_FILES
    max_pixels: int = MAX_PIXELS
    every: float = config.EVERY
    max_stills: int = 64
    decode_timeout: float = 60.0
    allowed_hosts: list[str] = []


class ReviewIn(BaseModel):
    """A reviewer's decision about one verdict (of an upload, or of a line of a loaded report)."""

    reviewer: str = Field(..., description="Who decides (free text, recorded as given).")
    decision: str = Field(..., description="confirm | reject | relabel")
    title: str | None = Field(None, description="relabel: the title the reviewer gives instead")
    reason: str = Field(..., description="Why (free text, required).")
    sha256: str = Field(..., description="sha256 of the file the verdict is about")
    path: str | None = Field(None, description="the verdict's path as shown (report lines: required)")
    report: int | None = Field(None, description="number of a loaded report (GET /reports); none: upload")
    timestamp: float | None = Field(None, description="upload: the video still's time, if any")
    frame: int | None = Field(None, description="upload: the frame of a multi-page image, if any")


# ------------------------------------------------------------------------------------ middleware
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the {limit / 1048576:.0f} MB upload limit")


class Guard:
    """Pure ASGI middleware: Host check, body limit, bearer token, origin check, security headers."""

    def __init__(self, app, config: ServeConfig, hosts: set[str]):
        self.app = app
        self.config = config
        self.hosts = hosts
        # the request may hold every file at the limit, plus the multipart framing
        self.body_limit = config.max_upload_bytes * config.max_files + 1024 * 1024

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def secure_send(message):
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        host = headers.get("host", "")
        if "*" not in self.hosts and _hostname(host) not in self.hosts:
            return await _plain(secure_send, 400, f"unknown Host header {host[:100]!r}")
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            if urlsplit(origin).netloc != host:  # "null" too: a sandboxed frame or a file:// page
                return await _plain(secure_send, 403, "cross-origin request refused")
        if self.config.token and not _public(scope["path"]):
            given = headers.get("authorization", "")
            given = given[7:] if given.lower().startswith("bearer ") else _cookie(headers, COOKIE)
            if not given or not hmac.compare_digest(given.encode(), self.config.token.encode()):
                if scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
                    return await _redirect(secure_send, "/login")
                return await _plain(secure_send, 401, "a bearer token is required", bearer=True)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.body_limit):
            return await _plain(secure_send, 413, BodyTooLarge(self.body_limit).detail)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.body_limit:  # chunked bodies carry no length: counted as they come
                    raise BodyTooLarge(self.body_limit)
            return message

        await self.app(scope, limited_receive, secure_send)


def _public(path: str) -> bool:
    return path in ("/health", "/login") or path.startswith("/static/")


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(headers: dict, name: str) -> str:
    for part in headers.get("cookie", "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return ""


async def _plain(send, status: int, detail: str, bearer: bool = False) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if bearer:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send, location: str) -> None:
    await send({"type": "http.response.start", "status": 303, "headers": [(b"location", location.encode())]})
    await send({"type": "http.response.body", "body": b""})


# ------------------------------------------------------------------------------------ the app
class State:
    """What the server holds: the index, the decode pool, the reports, the review log."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.holder = IndexHolder(config.index)
        self.engine = UploadMatcher(
            self.holder,
            workers=config.workers,
            max_pixels=config.max_pixels,
            every=config.every,
            max_stills=config.max_stills,
            decode_timeout=config.decode_timeout,
        )
        self.reports = [Report(n, p) for n, p in enumerate(config.reports)]
        self.reviews = ReviewLog(config.review_log)
        self.workdir = Path(tempfile.mkdtemp(prefix="matcher-serve-"))  # mode 0700
        self.thumbs: OrderedDict[tuple, bytes] = OrderedDict()
        self.thumb_lock = threading.Lock()
        self.counter = 0
        self.counter_lock = threading.Lock()

    def next_id(self) -> int:
        with self.counter_lock:
            self.counter += 1
            return self.counter

    def close(self) -> None:
        self.engine.close()
        self.holder.close()
        self.reviews.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def create_app(config: ServeConfig, state: State | None = None) -> FastAPI:
    """The ASGI app. ``state`` may be built beforehand (the CLI does, to fork the decode workers
    before the server starts its threads)."""
    if config.token is None and not is_loopback(config.host):
        raise ValueError(f"binding to {config.host} needs a token (--token or $MATCHER_SERVE_TOKEN)")
    st = state or State(config)

    @asynccontextmanager
    async def lifespan(app):
        st.engine.decoder.start()
        yield
        st.close()

    app = FastAPI(
        title="matcher",
        description="Which animated production does a frame belong to: the matcher HTTP API.",
        version=_version(),
        docs_url=None,  # the stock page loads its script from a CDN; /docs is rendered here instead
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.matcher = st
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    hosts = {"127.0.0.1", "localhost", "[::1]", *config.allowed_hosts}
    if is_loopback(config.host):
        hosts.add(config.host if ":" not in config.host else f"[{config.host}]")
    else:
        hosts.add("*")  # reachable under names the server cannot know; the token guards it

    def index_info() -> dict:
        matcher = st.holder.get()
        with st.engine.match_lock:  # one SQLite connection, shared by the request threads
            return matcher.info()

    def page(request: Request, name: str, **context) -> HTMLResponse:
        context.setdefault("reports", [r.summary() for r in st.reports])
        context.setdefault("decisions", DECISIONS)
        return templates.TemplateResponse(request, name, context)

    def report_of(n: int) -> Report:
        if not 0 <= n < len(st.reports):
            raise HTTPException(404, f"no report {n}: {len(st.reports)} loaded (GET /reports)")
        return st.reports[n]

    def with_ids(objects: list[dict]) -> list[dict]:
        """Add ``reference_id`` to each evidence item (for /references/{id}/thumbnail)."""
        matcher = st.holder.get()
        with st.engine.match_lock:
            for obj in objects:
                for ev in obj.get("evidence") or []:
                    ev["reference_id"] = _reference_id(matcher.store, ev)
        return objects

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request):
        return page(request, "match.html", info=index_info())

    @app.get("/ui/reports/{number}", response_class=HTMLResponse, include_in_schema=False)
    def report_page(
        request: Request,
        number: int,
        title: str | None = None,
        status: str | None = None,
        min_confidence: float | None = Query(None, ge=0, le=1),
        max_confidence: float | None = Query(None, ge=0, le=1),
    ):
        rep = report_of(number)
        found = rep.filtered(title, status, min_confidence, max_confidence)
        rows = with_ids([copy.deepcopy(r) for r in found])  # the report's own records stay as read
        groups: dict[str, list] = {}
        for r in rows[:2000]:
            key = r.get("title") or ("unknown" if r.get("status") == "unknown" else r.get("status") or "?")
            groups.setdefault(key, []).append(r)
        return page(
            request,
            "report.html",
            report=rep.summary(),
            groups=sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])),
            shown=min(len(rows), 2000),
            total=len(rows),
            filters={"title": title, "status": status, "min": min_confidence, "max": max_confidence},
            run=rep.run,
        )

    @app.get("/ui/reviews", response_class=HTMLResponse, include_in_schema=False)
    def reviews_page(request: Request):
        entries = list(reversed(st.reviews.entries()))
        return page(request, "reviews.html", entries=entries, log=st.reviews.path)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs(request: Request):
        return page(request, "docs.html", api=app.openapi())

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request):
        return page(request, "login.html", error=None, reports=[])

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = await request.form(max_files=0, max_fields=2)
        given = str(form.get("token") or "")
        if not config.token or not hmac.compare_digest(given.encode(), config.token.encode()):
            return page(request, "login.html", error="wrong token", reports=[])
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, config.token, httponly=True, samesite="strict")
        return resp

    # ------------------------------------------------------------------ API
    @app.get("/health", tags=["service"], summary="Liveness, and the index generation being served")
    def health() -> dict:
        info = st.holder.matcher.store.manifest
        return {
            "status": "ok",
            "generation": info.get("generation"),
            "references": info.get("count"),
            "decoder_crashes": st.engine.decoder.crashes,
            "reload_error": st.holder.reload_error,
        }

    @app.get("/index", tags=["index"], summary="What `matcher index info --json` shows")
    def index_facts() -> dict:
        return index_info()

    @app.get("/titles", tags=["index"], summary="The titles in the index and their still counts")
    def titles() -> dict:
        return {"titles": [{"title": t, "stills": n} for t, n in index_info()["titles"].items()]}

    @app.post(
        "/match",
        tags=["match"],
        summary="Match uploaded images or videos",
        description=(
            "multipart/form-data with one or more file fields (any field name). Returns a JSON array "
            "of `match --json` objects: one per image, one per sampled still of a video (with "
            "`timestamp`); each evidence item also carries `reference_id` for "
            "/references/{id}/thumbnail. A file that cannot be decoded gives an object with `error` "
            "set; when no file could be matched the answer is 413 (over the pixel limit) or 422, "
            "with the objects under `results`."
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                            },
                        }
                    }
                },
            }
        },
    )
    async def match(request: Request, min_confidence: float | None = Query(None, ge=0, le=1)):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send the files as multipart/form-data")
        form = await request.form(max_files=config.max_files, max_fields=config.max_files + 8)
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise HTTPException(422, "no file in the request: send one or more file fields")
            for f in files:
                if f.size is not None and f.size > config.max_upload_bytes:
                    raise HTTPException(
                        413,
                        f"{_label(f.filename)}: {f.size / 1048576:.1f} MB is over the "
                        f"{config.max_upload_bytes / 1048576:.0f} MB upload limit",
                    )
            results = await run_in_threadpool(_match_files, st, files, min_confidence)
        finally:
            await form.close()
        results = await run_in_threadpool(with_ids, results)
        failed = [r for r in results if r.get("error")]
        if failed and len(failed) == len(results):
            bomb = any("Mpx" in r["error"] or "bomb" in r["error"] for r in failed)
            first = failed[0]
            return JSONResponse(
                {"detail": f"{first['path']}: {first['error']}", "results": results},
                status_code=413 if bomb else 422,
            )
        return results

    @app.get(
        "/references/{reference_id}/thumbnail",
        tags=["index"],
        summary="A reference still, re-encoded as a JPEG of at most 160 px",
        description=(
            "Read from the source the index recorded, and only while that file's sha256 still "
            "matches the one recorded when it was indexed (409 otherwise)."
        ),
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def reference_thumbnail(reference_id: int):
        matcher = st.holder.get()
        with st.engine.match_lock:
            ref = matcher.store.references([reference_id]).get(reference_id)
            visible = matcher.store.db.execute(
                f"SELECT 1 FROM refs WHERE id = ? AND {matcher.store._visible()}", (reference_id,)
            ).fetchone()
        if not visible:
            raise HTTPException(404, f"no reference {reference_id} in the index")
        source = ref.source
        if not source or source.startswith("<") or not os.path.isabs(source):
            raise HTTPException(404, f"reference {reference_id} was indexed from memory, not from a file")
        if not ref.sha256:
            raise HTTPException(409, f"reference {reference_id}: no sha256 recorded, cannot verify the file")
        spec = {"timestamp": ref.timestamp} if ref.timestamp is not None else {}
        return thumbnail(f"reference {reference_id}", source, spec, ref.sha256, "it was indexed")

    @app.get(
        "/reports/{number}/thumbnail",
        tags=["reports"],
        summary="The leaked frame of a report line, re-encoded as a JPEG of at most 160 px",
        description=(
            "`path` and `sha256` name a file line of the report; the file is read from the dump "
            "directory the report's run recorded, never outside it, and only while its sha256 "
            "still matches the report's (409 otherwise)."
        ),
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def report_thumbnail(number: int, path: str, sha256: str):
        rep = report_of(number)
        rec = next((r for r in rep.files if r.get("path") == path and r.get("sha256") == sha256), None)
        root = rep.run.get("dump_root")
        if rec is None or not root or not os.path.isabs(root):
            raise HTTPException(404, "no such file line in the report")
        real_root = os.path.realpath(root)
        target = os.path.realpath(os.path.join(real_root, path))
        if not target.startswith(real_root + os.sep):  # a doctored report cannot point elsewhere
            raise HTTPException(404, "the report's path leads outside its dump directory")
        ev = (rec.get("evidence") or [{}])[0]
        spec = {}
        if ev.get("query_timestamp") is not None:
            spec = {"timestamp": ev["query_timestamp"]}
        elif ev.get("query_frame") is not None:
            spec = {"frame": ev["query_frame"]}
        return thumbnail(path, target, spec, sha256, "the report was written")

    def thumbnail(what: str, source: str, spec: dict, sha256: str, since: str) -> Response:
        """A bounded JPEG of one file, decoded in the crash-contained pool, only if its sha256 matches.
        Cached by the file's identity (inode, size, mtime, ctime): a changed file is hashed again."""
        try:
            fst = os.lstat(source)
        except OSError:
            raise HTTPException(404, f"{what}: its source file is gone") from None
        key = (source, tuple(sorted(spec.items())), fst.st_ino, fst.st_size, fst.st_mtime_ns, fst.st_ctime_ns)
        with st.thumb_lock:
            jpeg = st.thumbs.get(key)
        if jpeg is None:
            task = Task(idx=0, rel=source, abspath=os.fsencode(source), thumb=spec)
            res = st.engine.decoder.decode(task)
            if res.get("sha256") is not None and res.get("sha256") != sha256:
                raise HTTPException(409, f"{what}: the file at its source changed since {since}")
            if res.get("status") in ("error", "skipped") or not res.get("thumb"):
                raise HTTPException(422, f"{what}: {res.get('reason') or 'not decodable'}")
            jpeg = base64.b64decode(res["thumb"].split(",", 1)[1])
            with st.thumb_lock:
                st.thumbs[key] = jpeg
                while len(st.thumbs) > 2000:
                    st.thumbs.popitem(last=False)
        return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "private, max-age=300"})

    @app.get("/reports", tags=["reports"], summary="The dump reports loaded with --report")
    def reports() -> dict:
        return {"reports": [r.summary() for r in st.reports]}

    @app.get("/reports/{number}/records", tags=["reports"], summary="A report's file verdicts, filtered")
    def report_records(
        number: int,
        title: str | None = None,
        status: str | None = None,
        min_confidence: float | None = Query(None, ge=0, le=1),
        max_confidence: float | None = Query(None, ge=0, le=1),
    ) -> dict:
        rep = report_of(number)
        return {"records": rep.filtered(title, status, min_confidence, max_confidence)}

    @app.get(
        "/reports/{number}/export",
        tags=["reports"],
        summary="The report with its review decisions (JSONL)",
        description="Every line of the report as loaded; file lines with a decision get a `review` "
        "field (the latest); then every decision about this report as `review` lines.",
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    def report_export(number: int):
        rep = report_of(number)
        name = Path(rep.name).stem + ".reviewed.jsonl"
        return StreamingResponse(
            export(rep, st.reviews.entries()),
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{_ascii(name)}"'},
        )

    @app.get("/reviews", tags=["reviews"], summary="The review log, oldest first")
    def reviews() -> dict:
        return {"log": str(st.reviews.path), "reviews": st.reviews.entries()}

    @app.post(
        "/reviews",
        tags=["reviews"],
        status_code=201,
        summary="Record a decision (confirm, reject or relabel) about a verdict",
        description="Appended to the review log and fsync-ed before the answer. The verdict it "
        "overrides is looked up by the server (a loaded report's line, or a recent upload).",
    )
    def add_review(review: ReviewIn) -> dict:
        matcher = st.holder.get()
        if review.report is not None:
            rep = report_of(review.report)
            overrides = rep.verdict(review.path or "", review.sha256)
            subject: dict[str, Any] = {
                "kind": "report",
                "report": str(rep.path),
                "report_sha256": rep.sha256,
                "path": review.path,
                "sha256": review.sha256,
            }
        else:
            overrides = st.engine.verdict(review.sha256, review.timestamp, review.frame)
            subject = {"kind": "upload", "path": (overrides or {}).get("path"), "sha256": review.sha256}
            if review.timestamp is not None:
                subject["timestamp"] = review.timestamp
            if review.frame is not None:
                subject["frame"] = review.frame
        if overrides is None:
            raise HTTPException(404, "no such verdict (upload it again, or check the report and path)")
        overrides = {k: overrides[k] for k in ("title", "confidence", "status")}
        info = matcher.store.manifest
        try:
            return st.reviews.record(
                reviewer=review.reviewer,
                decision=review.decision,
                title=review.title,
                reason=review.reason,
                subject=subject,
                overrides=overrides,
                index={"path": str(matcher.store.root), "generation": info.get("generation")},
            )
        except ReviewError as exc:
            raise HTTPException(422, str(exc)) from None

    return Guard(app, config, hosts)


def _match_files(st: State, files: list[UploadFile], min_confidence) -> list[dict]:
    """Copy each upload into a fresh private directory under a name the server picks, match, clean up."""
    req_dir = st.workdir / f"request-{st.next_id()}"
    req_dir.mkdir(mode=0o700)
    try:
        uploads = []
        for n, f in enumerate(files):
            target = req_dir / f"upload-{n}"
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                f.file.seek(0)
                shutil.copyfileobj(f.file, out, 1 << 20)
            uploads.append(Upload(target, _label(f.filename) or f"upload-{n}"))
        return st.engine.match(uploads, min_confidence=min_confidence)
    finally:
        shutil.rmtree(req_dir, ignore_errors=True)


def _reference_id(store, ev: dict) -> int | None:
    """The id of an evidence item's reference still, from (title, source, timestamp)."""
    ts = ev.get("timestamp")
    row = store.db.execute(
        f"SELECT id FROM refs WHERE title = ? AND source = ? AND timestamp IS ? AND {store._visible()}"
        " LIMIT 1",
        (ev.get("title"), ev.get("reference"), ts),
    ).fetchone()
    return int(row[0]) if row else None


def _label(name: str | None) -> str:
    """The client's file name as a one-line label (never used as a path)."""
    return one_line(os.path.basename(str(name or "").replace("\\", "/")), MAX_LABEL)


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("matcher")
    except Exception:  # noqa: BLE001
        return "0"
