"""The command line: a thin layer over matcher.api.

    matcher index add --index DIR --model SPEC --title "Title" PATH...
    matcher index info | remove --title T
    matcher match PATH... [--json]          (also installed as the short command `match PATH...`)

Run-level problems print one line on stderr and exit 2; per-file problems are reported per file
(an `error` field / row) and the run goes on.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import typer

from matcher import config
from matcher.api import DuplicateInput, Matcher, MatcherError, default_index_dir
from matcher.records import json_line, one_line, safe_text
from matcher.search import ann

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="Tell which animated production a frame belongs to.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings=HELP,
)
index_app = typer.Typer(
    help="Build and inspect the reference index.", no_args_is_help=True, context_settings=HELP
)
app.add_typer(index_app, name="index")


def _version(value: bool) -> None:
    if value:
        from matcher import __version__

        typer.echo(f"matcher {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Tell which animated production a frame belongs to."""
    _check_environment()


@contextmanager
def _progress(total: int, what: str):
    """A rich progress bar on stderr, only when stderr is a terminal and there is more than one item;
    yields advance(n=1)."""
    if total < 2 or not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n=1: bar.advance(task, n)


def _count_files(paths) -> int:
    """Files under the inputs (no decoding); missing inputs count as one (they get an error line)."""
    from matcher.decode.sources import InputError, walk

    n = 0
    for p in paths:
        try:
            n += sum(1 for _ in walk([p]))
        except InputError:
            n += 1
    return n


IndexOpt = typer.Option(None, "--index", help="Index directory (default: $MATCHER_INDEX, else ./index).")
PretrainedOpt = typer.Option(
    None, "--pretrained", help="open_clip weights: a pretrained tag or a local checkpoint file."
)
ModelsOpt = typer.Option(
    None, "--models-dir", help="Weights cache (default: $MATCHER_MODELS, else ./models)."
)


class Engine(str, enum.Enum):
    local = "local"
    ray = "ray"


EngineOpt = typer.Option(
    Engine.local,
    "--engine",
    help="local: this machine's worker pool; ray: Ray Data (pip install 'matcher[ray]'), same results.",
)
AddressOpt = typer.Option(None, "--address", help="--engine ray: the cluster (default: a local Ray).")


def _or_die(results):
    """The results, or one line and exit 2 on a MatcherError raised while producing them (an
    unreachable Ray cluster), after the lines already written."""
    try:
        yield from results
    except MatcherError as exc:
        _die(str(exc))


def _die(message: str, code: int = 2) -> None:
    typer.echo(f"matcher: error: {safe_text(message)}", err=True)
    raise typer.Exit(code)


def _check_environment() -> None:
    """Settings from the environment are checked before any command runs."""
    from matcher.decode.sources import MAX_PIXELS_PROBLEM

    for stream in (sys.stdout, sys.stderr):  # a name the terminal cannot encode is escaped, not fatal
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    if MAX_PIXELS_PROBLEM:
        _die(MAX_PIXELS_PROBLEM)


@index_app.command("add")
def index_add(
    paths: list[Path] | None = typer.Argument(None, help="Images, directories (recursive) or videos."),
    title: str = typer.Option(..., "--title", help="Production these stills belong to."),
    from_report: Path | None = typer.Option(
        None, "--from-report", help="A dump report (JSONL): add the files of one of its clusters."
    ),
    cluster: int | None = typer.Option(None, "--cluster", help="With --from-report: the cluster to add."),
    index: Path | None = IndexOpt,
    model: str | None = typer.Option(
        None,
        "--model",
        help="classic | clip | clip:ARCH (new index; default classic). Must match an existing one.",
    ),
    pretrained: str | None = PretrainedOpt,
    models_dir: Path | None = ModelsOpt,
    episode: str | None = typer.Option(None, "--episode", help="Episode label recorded with each still."),
    every: float = typer.Option(
        config.EVERY, "--every", min=0.01, help="Seconds between stills sampled from videos."
    ),
    device: str | None = typer.Option(None, "--device", help="cuda | mps | cpu (default: best available)."),
    engine: Engine = EngineOpt,
    address: str | None = AddressOpt,
    memory_budget: str | None = typer.Option(
        None,
        "--memory-budget",
        help="Memory the search index may hold, e.g. 4G: above it the index is IVF-PQ (compressed, "
        "recall@10 measured and recorded). Kept for later writes.",
    ),
) -> None:
    """Add reference stills of one title (creates the index if absent; appends otherwise)."""
    problems, duplicates = [], []
    try:
        budget = ann.parse_bytes(memory_budget)
    except ValueError as exc:
        _die(f"--memory-budget: {exc}")
    if (from_report is None) != (cluster is None):
        _die("--from-report and --cluster go together")
    if from_report is not None:
        if paths:
            _die("give either files or --from-report/--cluster, not both")
        from matcher.insight.postpass import cluster_sources

        try:
            paths = cluster_sources(from_report, cluster)
        except MatcherError as exc:
            _die(str(exc))
    if not paths:
        _die("nothing to add: give images, directories or videos, or --from-report and --cluster")

    def report(exc):
        same_title = isinstance(exc, DuplicateInput) and exc.other_title is None
        (duplicates if same_title else problems).append(exc)
        typer.echo(f"matcher: skipped {exc}", err=True)

    missing = [p for p in paths if not p.exists()]
    if missing:
        _die(
            f"{missing[0]}: no such file or directory"
            + (f" (and {len(missing) - 1} more)" if missing[1:] else "")
        )
    total = _count_files(paths)
    if total == 0:
        _die(f"no files in {', '.join(map(str, paths))}: nothing to add")
    try:
        m = Matcher.open_or_create(
            index, model=model, pretrained=pretrained, models_dir=models_dir, device=device
        )
        with _progress(total, f"indexing {title}") as advance:
            seen: set = set()

            def on_still(still):
                if still.path not in seen:
                    seen.add(still.path)
                    advance()

            n = m.add(
                paths,
                title=title,
                episode=episode,
                every=every,
                on_error=report,
                on_still=on_still,
                engine=engine.value,
                address=address,
                memory_budget=budget,
            )
    except MatcherError as exc:
        _die(str(exc))
    info = m.info()
    if n == 0:
        if duplicates and not problems:
            typer.echo(f"nothing added: every input is already in {info['index']} (same sha256)")
            return
        _die(f"no stills were added to {info['index']}: every input was skipped (see above)")
    typer.echo(
        f"added {n} stills of {safe_text(repr(title))} to {safe_text(info['index'])} "
        f"({info['references']} references, {len(info['titles'])} titles, model {info['model']})"
    )
    if duplicates:
        typer.echo(
            f"{len(duplicates)} input(s) already in the index (same sha256), not added again", err=True
        )
    if problems:
        typer.echo(f"{len(problems)} input(s) skipped, see above", err=True)


@index_app.command("rebuild")
def index_rebuild(
    index: Path | None = IndexOpt,
    pretrained: str | None = PretrainedOpt,
    models_dir: Path | None = ModelsOpt,
    device: str | None = typer.Option(None, "--device", help="cuda | mps | cpu (default: best available)."),
) -> None:
    """Re-embed the index from the sources it recorded, with this version's model (after a model or
    descriptor change). Every source must still be where it was indexed, unchanged."""
    problems = []

    def report(exc):
        problems.append(exc)
        typer.echo(f"matcher: skipped {safe_text(exc)}", err=True)

    try:
        m = Matcher.rebuild(
            index, pretrained=pretrained, models_dir=models_dir, device=device, on_error=report
        )
    except MatcherError as exc:
        _die(str(exc))
    info = m.info()
    typer.echo(
        f"rebuilt {safe_text(info['index'])}: {info['references']} references, {len(info['titles'])} titles, "
        f"model {info['model']} ({info['fingerprint']})"
    )
    if problems:
        typer.echo(f"{len(problems)} input(s) skipped, see above", err=True)


@index_app.command("info")
def index_info(index: Path | None = IndexOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Titles, still counts, model and size on disk."""
    from matcher.search.store import ReferenceStore, StoreError

    try:  # no model load: info must work even where the weights are not available
        store = ReferenceStore.open(default_index_dir(index))
    except StoreError as exc:
        _die(str(exc))
    info = store.info()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"index      {info['index']}  (format {info['format_version']})")
    typer.echo(f"model      {info['model']}  weights {info['fingerprint']}  dim {info['dim']}")
    if info["pretrained"]:
        typer.echo(f"pretrained {info['pretrained']}")
    search = info["search"]
    typer.echo(
        f"search     {search.get('kind', 'exact')}"
        + "".join(f"  {k}={v}" for k, v in search.items() if k != "kind")
    )
    thr = info["threshold"]
    share = info["unknown_share"]
    typer.echo(
        f"threshold  {thr:.3f}  (unknown share {share:.0%}){_kind_thresholds(info)}"
        if thr is not None
        else "threshold  (not calibrated)"
    )
    probes = info["calibration_probes"]
    typer.echo(f"probes     {probes['known']} of indexed titles, {probes['unknown']} of other productions")
    if info["calibration_warning"]:
        typer.echo(f"warning    {info['calibration_warning']}")
    typer.echo(f"size       {info['size_bytes'] / 1e6:.1f} MB, {info['references']} reference stills")
    typer.echo(
        f"verified   {len(info['files'])} files against the sha256 in the manifest "
        f"({info['index_fingerprint']})"
    )
    for title, count in info["titles"].items():
        typer.echo(f"  {count:>8}  {title}")


def _kind_thresholds(info: dict) -> str:
    """'  grey queries 0.673  line-art queries 0.683' for the thresholds the index could fit."""
    kinds = (("grey queries", info.get("grey_threshold")), ("line-art queries", info.get("sketch_threshold")))
    return "".join(f"  {name} {thr:.3f}" for name, thr in kinds if thr is not None)


@index_app.command("calibrate")
def index_calibrate(
    unknown_share: float | None = typer.Option(
        None,
        "--unknown-share",
        min=0.01,
        max=0.99,
        help="Expected share of inputs from productions NOT in the index (default: keep the index's, "
        "0.5 at creation).",
    ),
    index: Path | None = IndexOpt,
    pretrained: str | None = PretrainedOpt,
    models_dir: Path | None = ModelsOpt,
) -> None:
    """Refit the confidence (for the share of unknown material you expect in a dump); an index written
    before the background set existed embeds it here."""
    try:
        m = Matcher.open(index, pretrained=pretrained, models_dir=models_dir)
        cal = m.recalibrate(unknown_share=unknown_share)
    except MatcherError as exc:
        _die(str(exc))
    kinds = _kind_thresholds(m.info())
    share, threshold = cal.unknown_share, cal.threshold
    typer.echo(f"recalibrated for {share:.0%} unknown inputs; unknown threshold {threshold:.3f}{kinds}")


@index_app.command("remove")
def index_remove(
    title: str = typer.Option(..., "--title"),
    index: Path | None = IndexOpt,
    pretrained: str | None = PretrainedOpt,
    models_dir: Path | None = ModelsOpt,
) -> None:
    """Remove every still of a title."""
    try:
        m = Matcher.open(index, pretrained=pretrained, models_dir=models_dir)
        n = m.remove(title)
    except MatcherError as exc:
        _die(str(exc))
    if n == 0:
        _die(f"no title {title!r} in {m.store.root}")
    typer.echo(f"removed {n} stills of {title!r}")


#: Columns of plain `match` output (tab-separated, one header line; `pandas.read_csv(sep="\t")` reads it)
TSV_COLUMNS = [
    "path",
    "timestamp",
    "status",
    "title",
    "confidence",
    "threshold",
    "best_title",
    "next_title",
    "next_score",
    "evidence_reference",
    "evidence_timestamp",
    "evidence_episode",
    "evidence_similarity",
    "evidence_sha256",
    "identical_sha256",
    "tie",
    "override_changed",
    "calibration_warning",
    "error",
]


def _tsv_row(r) -> list:
    best = r.candidates[0] if r.candidates else None
    runner = r.candidates[1] if len(r.candidates) > 1 else None
    ev = next((e for e in r.evidence if best and e.title == best.title), None)

    def num(x, digits=4):
        return "" if x is None else f"{x:.{digits}f}"

    return [
        r.path,
        num(r.timestamp, 3),
        r.status,
        r.title or "",
        num(r.confidence),
        num(r.threshold),
        best.title if best else "",
        runner.title if runner else "",
        num(runner.score if runner else None),
        ev.reference if ev else "",
        num(ev.timestamp if ev else None, 3),
        (ev.episode or "") if ev else "",
        num(ev.similarity if ev else None),
        (ev.sha256 or "") if ev else "",
        (r.identical or {}).get("sha256", ""),
        " | ".join(r.tie),
        "yes" if r.override_changed else "",
        r.calibration_warning or "",
        r.error or "",
    ]


@app.command("match")
def match_cmd(
    paths: list[Path] = typer.Argument(..., help="Images, videos or directories (recursive)."),
    index: Path | None = IndexOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input line."),
    min_confidence: float | None = typer.Option(
        None, "--min-confidence", min=0.0, max=1.0, help="Override the index's unknown threshold."
    ),
    every: float = typer.Option(
        config.EVERY, "--every", min=0.01, help="Seconds between stills sampled from videos."
    ),
    pretrained: str | None = PretrainedOpt,
    models_dir: Path | None = ModelsOpt,
    device: str | None = typer.Option(None, "--device"),
    out: Path | None = typer.Option(
        None, "--out", help="Dump mode: append one JSON line per file to this report; re-run to resume."
    ),
    csv_out: Path | None = typer.Option(None, "--csv", help="Dump mode: CSV mirror of the report."),
    html_out: Path | None = typer.Option(
        None, "--html", help="Dump mode: self-contained HTML evidence report."
    ),
    all_frames: bool = typer.Option(
        False, "--all-frames", help="Dump mode: match every frame of animations."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Dump mode: no progress bar."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Dump mode: decode processes."),
    new_section: bool = typer.Option(
        False,
        "--new-section",
        help="Dump mode: start a new section of an existing report (another index or options) instead "
        "of resuming it; every file is matched again.",
    ),
    engine: Engine = EngineOpt,
    address: str | None = AddressOpt,
) -> None:
    """Match frames against the index: best title, confidence and evidence for each input.

    With --out/--csv/--html, PATH is a dump directory matched file by file (see matcher.run.dump)."""
    try:
        m = Matcher.open(index, pretrained=pretrained, models_dir=models_dir, device=device)
    except MatcherError as exc:
        _die(str(exc))
    if out or csv_out or html_out:
        code = dump_mode(
            paths,
            m,
            out=out,
            csv=csv_out,
            html=html_out,
            every=every,
            all_frames=all_frames,
            quiet=quiet,
            workers=workers,
            min_confidence=min_confidence,
            as_json=as_json,
            new_section=new_section,
            engine=engine.value,
            address=address,
        )
        raise typer.Exit(code)
    missing = [p for p in paths if not p.exists()]
    if m.store.count == 0:
        _die(f"{m.store.root}: the index is empty; add reference stills with 'matcher index add'")
    total = _count_files(paths)
    if total == 0:
        _die(f"no files in {', '.join(map(str, paths))}: nothing to match", code=1)
    writer = None
    if not as_json:
        writer = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
        writer.writerow(TSV_COLUMNS)
    results = failed = 0
    with _progress(total, "matching") as advance:
        last_path = None
        matched = m.match_many(
            paths, min_confidence=min_confidence, every=every, engine=engine.value, address=address
        )
        for result in _or_die(matched):
            results += 1
            failed += result.error is not None
            if writer is None:
                sys.stdout.write(json_line(result.to_dict()) + "\n")
            else:
                writer.writerow(_clean(v) for v in _tsv_row(result))
            sys.stdout.flush()
            if result.path != last_path:
                last_path = result.path
                advance()
    if missing:
        typer.echo(f"matcher: error: {safe_text(missing[0])}: no such file or directory", err=True)
        raise typer.Exit(1)
    if results and failed == results:
        typer.echo(f"matcher: error: none of the {results} input(s) could be matched", err=True)
        raise typer.Exit(1)


#: Seconds an interrupted dump run has to close its workers and files before it exits regardless.
TERM_GRACE = config.TERM_GRACE


def dump_mode(
    paths: list,
    matcher,
    out=None,
    csv=None,
    html=None,
    every: float = config.EVERY,
    all_frames: bool = False,
    quiet: bool = False,
    workers: int | None = None,
    min_confidence: float | None = None,
    as_json: bool = False,
    new_section: bool = False,
    engine: str = "local",
    address: str | None = None,
) -> int:
    """`matcher match DUMP_DIR --out ...`: run, print the summary, return the exit code.

    0 when the run processed everything (per-file errors are in the report); 2 when it could not run
    (bad dump path, report locked/unwritable); 130 when interrupted (the report keeps what was done).
    """

    def err(msg: str) -> None:
        print(f"matcher: error: {one_line(msg)}", file=sys.stderr)

    if len(paths) != 1 or not Path(paths[0]).is_dir():
        what = paths[0] if len(paths) == 1 else f"{len(paths)} paths"
        err(f"{what}: --out/--csv/--html take exactly one dump directory")
        return 2
    outputs = [os.path.realpath(p) for p in (out, csv, html) if p]
    if len(set(outputs)) < len(outputs):
        err("--out, --csv and --html must name three different files")
        return 2
    on_record = None
    if as_json:
        from matcher.records import json_line

        def on_record(rec: dict) -> None:
            sys.stdout.write(json_line(rec) + "\n")
            sys.stdout.flush()

    from matcher.run.dump import DumpRun

    bar = _DumpProgress()
    run = DumpRun(
        paths[0],
        matcher,
        out=out,
        csv=csv,
        html=html,
        every=every,
        all_frames=all_frames,
        quiet=quiet,
        progress=bar.update,
        workers=workers,
        min_confidence=min_confidence,
        on_record=on_record,
        new_section=new_section,
        engine=engine,
        address=address,
    )
    import signal

    stopping = []

    def _terminate(signum, frame):
        """SIGTERM / SIGHUP / Ctrl-C: stop like Ctrl-C; the report is consistent at every moment
        (one write + fsync per line), so what the clean-up cannot finish in TERM_GRACE seconds is
        cut short: a signal that lands inside the process pool's own locks could otherwise leave the
        process waiting forever while it holds the report lock. A second signal exits at once."""
        if stopping:
            os._exit(130)
        stopping.append(signum)
        import threading

        def _deadline():
            time.sleep(TERM_GRACE)
            with contextlib.suppress(Exception):
                sys.stderr.write("matcher: error: interrupted; clean-up took too long, exiting\n")
                sys.stderr.flush()
            os._exit(130)

        threading.Thread(target=_deadline, name="matcher-exit-deadline", daemon=True).start()
        raise KeyboardInterrupt

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                previous[sig] = signal.signal(sig, _terminate)
    try:
        try:
            try:
                stats = run.run()
            finally:
                bar.stop()
        except MatcherError as e:  # the report (locked, not ours), Ray unavailable: one line
            err(str(e))
            return 2
        except KeyboardInterrupt:
            err(f"interrupted after {run.stats.written} files; re-run with the same --out to finish")
            return 130
        except OSError as e:
            err(f"{getattr(e, 'filename', None) or paths[0]}: {e.strerror or e}")
            return 2
        stopping.append("finished")  # the report is complete: a signal from here on exits at once
        _print_summary(stats, out, html, as_json)
        return 0
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)


class _DumpProgress:
    """A rich progress bar on stderr (files, files/s, ETA), only when stderr is a terminal."""

    def __init__(self):
        self.bar = None
        self.t0 = time.monotonic()

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            if not sys.stderr.isatty():
                return
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("matching"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} files/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("match", total=total, rate="-")
        elapsed = time.monotonic() - self.t0
        rate = f"{done / elapsed:.1f}" if elapsed > 0 and done else "-"
        self.bar.update(self.task, completed=done, total=total, rate=rate)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _print_summary(stats, out, html, as_json: bool) -> None:
    from matcher.write.report import format_summary

    text = format_summary(stats.summary)
    text += f"\n{stats.files} entries in {stats.seconds:.1f} s"
    if stats.resumed:
        text += f" ({stats.resumed} already in the report)"
    if out:
        text += f"; report: {out}"
    if html:
        text += f"; HTML: {html}"
    print(text, file=sys.stderr if as_json else sys.stdout)


def _clean(value) -> str:
    """One TSV cell: controls (line breaks, tabs) and bidi overrides escaped, so that a hostile file
    name can neither add a row or a column nor spoof the display."""
    return "" if value is None else safe_text(value)


@app.command("serve")
def serve_cmd(
    index: Path | None = IndexOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (other than loopback: --token)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    report: list[Path] = typer.Option([], "--report", help="Dump report (JSONL) to browse and review."),
    review_log: Path = typer.Option(
        Path("matcher-reviews.jsonl"), "--review-log", help="Append-only log of reviewer decisions."
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="MATCHER_SERVE_TOKEN", help="Bearer token required by every request."
    ),
    workers: int = typer.Option(config.SERVE_WORKERS, "--workers", min=1, help="Decode processes."),
    max_upload_mb: int = typer.Option(
        config.SERVE_MAX_UPLOAD_MB, "--max-upload-mb", min=1, help="Largest file accepted."
    ),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=1, help="Largest image, in pixels."),
) -> None:
    """A local web page and HTTP API over the index (see docs/SERVE.md)."""
    from matcher.decode.sources import MAX_PIXELS  # the web stack is imported by `serve` only
    from matcher.serve.app import ServeConfig
    from matcher.serve.server import main

    serve_config = ServeConfig(
        index=str(default_index_dir(index)),
        host=host,
        port=port,
        reports=[str(p) for p in report],
        review_log=str(review_log),
        token=token or None,
        workers=workers,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        max_pixels=max_pixels or MAX_PIXELS,
    )
    raise typer.Exit(main(serve_config))


def match_entry() -> None:
    """`match cel.png`: the short form of `matcher match`."""
    typer.main.get_command(app).main(args=["match", *sys.argv[1:]], prog_name="match")


if __name__ == "__main__":
    app()
