"""The command line: a thin layer over matcher.api.

    matcher index add --index DIR --model SPEC --title "Title" PATH...
    matcher index info | remove --title T
    matcher match PATH... [--json]          (also installed as the short command `match PATH...`)

Run-level problems print one line on stderr and exit 2; per-file problems are reported per file
(an `error` field / row) and the run goes on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from matcher.api import Matcher, MatcherError, default_index_dir

app = typer.Typer(
    help="Tell which animated production a frame belongs to.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(help="Build and inspect the reference index.", no_args_is_help=True)
app.add_typer(index_app, name="index")

IndexOpt = typer.Option(None, "--index", help="Index directory (default: $MATCHER_INDEX, else ./index).")
PretrainedOpt = typer.Option(
    None, "--pretrained", help="open_clip weights: a pretrained tag or a local checkpoint file."
)
ModelsOpt = typer.Option(
    None, "--models-dir", help="Weights cache (default: $MATCHER_MODELS, else ./models)."
)


def _die(message: str, code: int = 2) -> None:
    typer.echo(f"matcher: error: {message}", err=True)
    raise typer.Exit(code)


@index_app.command("add")
def index_add(
    paths: list[Path] = typer.Argument(..., help="Images, directories (recursive) or videos."),
    title: str = typer.Option(..., "--title", help="Production these stills belong to."),
    index: Path | None = IndexOpt,
    model: str | None = typer.Option(
        None,
        "--model",
        help="classic | clip | clip:ARCH (new index; default classic). Must match an existing one.",
    ),
    pretrained: str | None = PretrainedOpt,
    models_dir: Path | None = ModelsOpt,
    episode: str | None = typer.Option(None, "--episode", help="Episode label recorded with each still."),
    every: float = typer.Option(1.0, "--every", min=0.01, help="Seconds between stills sampled from videos."),
    device: str | None = typer.Option(None, "--device", help="cuda | mps | cpu (default: best available)."),
) -> None:
    """Add reference stills of one title (creates the index if absent; appends otherwise)."""
    problems = []

    def report(exc):
        problems.append(exc)
        typer.echo(f"matcher: skipped {exc}", err=True)

    try:
        m = Matcher.open_or_create(
            index, model=model, pretrained=pretrained, models_dir=models_dir, device=device
        )
        n = m.add(paths, title=title, episode=episode, every=every, on_error=report)
    except MatcherError as exc:
        _die(str(exc))
    info = m.info()
    typer.echo(
        f"added {n} stills of {title!r} to {info['index']} "
        f"({info['references']} references, {len(info['titles'])} titles, model {info['model']})"
    )
    if problems:
        typer.echo(f"{len(problems)} input(s) skipped, see above", err=True)
    if n == 0:
        _die("no stills were added")


@index_app.command("info")
def index_info(index: Path | None = IndexOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Titles, still counts, model and size on disk."""
    from matcher.store import ReferenceStore, StoreError

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
    typer.echo(f"size       {info['size_bytes'] / 1e6:.1f} MB, {info['references']} reference stills")
    for title, count in info["titles"].items():
        typer.echo(f"  {count:>8}  {title}")


def _kind_thresholds(info: dict) -> str:
    """'  grey queries 0.673  line-art queries 0.683' for the thresholds the index could fit."""
    kinds = (("grey queries", info.get("grey_threshold")), ("line-art queries", info.get("sketch_threshold")))
    return "".join(f"  {name} {thr:.3f}" for name, thr in kinds if thr is not None)


@index_app.command("calibrate")
def index_calibrate(
    unknown_share: float = typer.Option(
        ...,
        "--unknown-share",
        min=0.01,
        max=0.99,
        help="Expected share of inputs from productions NOT in the index (default at creation: 0.5).",
    ),
    index: Path | None = IndexOpt,
    pretrained: str | None = PretrainedOpt,
    models_dir: Path | None = ModelsOpt,
) -> None:
    """Refit the confidence for the share of unknown material you expect in a dump."""
    try:
        m = Matcher.open(index, pretrained=pretrained, models_dir=models_dir)
        cal = m.recalibrate(unknown_share=unknown_share)
    except MatcherError as exc:
        _die(str(exc))
    kinds = _kind_thresholds(m.info())
    typer.echo(
        f"recalibrated for {unknown_share:.0%} unknown inputs; unknown threshold {cal.threshold:.3f}{kinds}"
    )


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


def _format_row(r) -> str:
    if r.error:
        return f"{r.path}\tERROR\t{r.error}"
    where = f"@{r.timestamp:.1f}s" if r.timestamp is not None else ""
    title = r.title if r.title is not None else "unknown"
    best = r.candidates[0] if r.candidates else None
    runner = r.candidates[1] if len(r.candidates) > 1 else None
    ev = next((e for e in r.evidence if r.candidates and e.title == r.candidates[0].title), None)
    parts = [f"{r.path}{where}", title, f"{r.confidence:.2f}"]
    if r.title is None and best is not None:
        parts.append(f"nearest: {best.title}")
    if runner is not None:
        parts.append(f"next: {runner.title} {runner.score:.2f}")
    if ev is not None:
        at = f" @{ev.timestamp:.1f}s" if ev.timestamp is not None else ""
        parts.append(f"evidence: {ev.reference}{at} sim {ev.similarity:.3f}")
    return "\t".join(parts)


@app.command("match")
def match_cmd(
    paths: list[Path] = typer.Argument(..., help="Images, videos or directories (recursive)."),
    index: Path | None = IndexOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input line."),
    min_confidence: float | None = typer.Option(
        None, "--min-confidence", min=0.0, max=1.0, help="Override the index's unknown threshold."
    ),
    every: float = typer.Option(1.0, "--every", min=0.01, help="Seconds between stills sampled from videos."),
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
) -> None:
    """Match frames against the index: best title, confidence and evidence for each input.

    With --out/--csv/--html, PATH is a dump directory matched file by file (see matcher.dump)."""
    try:
        m = Matcher.open(index, pretrained=pretrained, models_dir=models_dir, device=device)
    except MatcherError as exc:
        _die(str(exc))
    if out or csv_out or html_out:
        from matcher import dump

        code = dump.cli_main(
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
        )
        raise typer.Exit(code)
    if not as_json:
        typer.echo("path\ttitle\tconfidence\tdetails")
    for result in m.match_many(paths, min_confidence=min_confidence, every=every):
        line = json.dumps(result.to_dict(), ensure_ascii=False) if as_json else _format_row(result)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


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
    workers: int = typer.Option(2, "--workers", min=1, help="Decode processes."),
    max_upload_mb: int = typer.Option(64, "--max-upload-mb", min=1, help="Largest file accepted."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=1, help="Largest image, in pixels."),
) -> None:
    """A local web page and HTTP API over the index (see docs/SERVE.md)."""
    from matcher.dump import DEFAULT_MAX_PIXELS  # the web stack is imported by `serve` only
    from matcher.serve.app import ServeConfig
    from matcher.serve.server import main

    config = ServeConfig(
        index=str(default_index_dir(index)),
        host=host,
        port=port,
        reports=[str(p) for p in report],
        review_log=str(review_log),
        token=token or None,
        workers=workers,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
    )
    raise typer.Exit(main(config))


def match_entry() -> None:
    """`match cel.png`: the short form of `matcher match`."""
    typer.main.get_command(app).main(args=["match", *sys.argv[1:]], prog_name="match")


if __name__ == "__main__":
    app()
