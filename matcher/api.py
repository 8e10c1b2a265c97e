"""Matcher: the Python API (the CLI is a thin layer over it).

    from matcher import Matcher
    m = Matcher.create("index", model="classic")
    m.add(["refs/show-a/"], title="Show A")
    result = m.match("leak/cel.png")          # MatchResult
    for r in m.match_many(paths): ...         # streams, one result per input (video: per still)

Where a frame goes: sources.py decodes it -> embedders/ embed it -> store.py searches it ->
scoring.py turns neighbours into titles and confidence.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from matcher import config
from matcher.decode.sources import InputError, Still
from matcher.embed import Embedder, EmbedderError, create_embedder
from matcher.records import MatchResult, TitleScore
from matcher.run.pipeline import embed_stills
from matcher.score import background, calibration
from matcher.score.scoring import Calibration, TitleScorer, coverage_of, evidence_scale, rescale
from matcher.search.store import (
    IndexExists,
    Reference,
    ReferenceStore,
    StoreError,
    db_text,
    recorded_sources,
    take_writer_lock,
)

DEFAULT_INDEX = "index"
BATCH = 32


from matcher.errors import MatcherError  # noqa: E402 (re-exported: the base of every matcher error)


class DuplicateInput(InputError):
    """An input `Matcher.add` skipped because a file with the same sha256 is already indexed (or came
    earlier in the same call). ``other_title``: the title it is indexed under, when not this one (the
    same content under two titles is refused)."""

    def __init__(self, path, reason: str, other_title: str | None = None):
        super().__init__(path, reason, "skipped")
        self.other_title = other_title


def default_index_dir(index: str | os.PathLike | None = None) -> Path:
    """--index, else $MATCHER_INDEX, else ./index."""
    return Path(index or os.environ.get("MATCHER_INDEX") or DEFAULT_INDEX)


class Matcher:
    """A reference index plus the embedder it was built with."""

    def __init__(self, store: ReferenceStore, embedder: Embedder, k: int = 64):
        self.store = store
        self.embedder = embedder
        self.k = k
        self._scorer: TitleScorer | None = None
        self._video_every: dict[str, float] = {}  # video source -> --every, for `index rebuild`

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        index_dir: str | os.PathLike,
        model: str | Embedder = "classic",
        pretrained: str | None = None,
        models_dir: str | os.PathLike | None = None,
        device: str | None = None,
    ) -> Matcher:
        """Create a new, empty index at ``index_dir`` for the given model spec (or embedder)."""
        embedder = cls._embedder(model, pretrained=pretrained, models_dir=models_dir, device=device)
        info = {
            "spec": embedder.spec,
            "pretrained": embedder.pretrained,
            "fingerprint": embedder.fingerprint,
            "dim": embedder.dim,
        }
        try:
            store = ReferenceStore.create(index_dir, info)
        except IndexExists as exc:
            raise _Exists(str(exc)) from None
        except StoreError as exc:
            raise MatcherError(str(exc)) from None
        except (OSError, sqlite3.Error) as exc:
            raise MatcherError(f"{index_dir}: cannot create the index ({exc})") from None
        m = cls(store, embedder)
        try:
            with m._writing():
                m._embed_background()
                store.save()
        except BaseException:
            m.close()
            raise
        return m

    def _embed_background(self) -> None:
        """Embed the shipped background set with this index's model, unless the index holds it already
        (same set, same model). Called when an index is created and before every refit."""
        info = {
            "sha256": background.set_sha256(),
            "images": background.size(),
            "fingerprint": self.embedder.fingerprint,
            "spec": self.embedder.spec,
        }
        if self.store.manifest.get("background_set") == info and self.store.manifest.get("background"):
            return
        bg = background.embed(self.embedder)
        self.store.set_background(bg["vectors"], bg["kinds"], info)

    @contextlib.contextmanager
    def _writing(self):
        """The index's writer lock for one whole change; store problems become one-line errors."""
        try:
            with self.store.writing():
                self._scorer = None  # taking the lock may have loaded a newer generation
                yield
        except StoreError as exc:
            raise MatcherError(str(exc)) from None
        except sqlite3.Error as exc:
            raise MatcherError(f"{self.store.root}: cannot write the index ({exc})") from None
        except OSError as exc:
            where = exc.filename or self.store.root
            raise MatcherError(f"{where}: cannot write the index ({exc.strerror or exc})") from None

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike | None = None,
        pretrained: str | None = None,
        models_dir: str | os.PathLike | None = None,
        device: str | None = None,
    ) -> Matcher:
        """Open an existing index; queries always use the index's own embedder.

        ``pretrained`` overrides where the weights are (e.g. the checkpoint file moved to another
        machine); their fingerprint must still match the one the index was built with. The index
        is opened read-only (nothing on disk is touched; see ReferenceStore.open)."""
        index_dir = default_index_dir(index_dir)
        try:
            store = ReferenceStore.open(index_dir)
        except StoreError as exc:
            raise MatcherError(str(exc)) from None
        info = store.manifest["embedder"]
        embedder = cls._embedder(
            info["spec"],
            pretrained=pretrained or info.get("pretrained"),
            models_dir=models_dir,
            device=device,
        )
        if embedder.fingerprint != info["fingerprint"] or embedder.dim != info["dim"]:
            if embedder.pretrained is None:  # weights-free (classic): the algorithm itself has changed
                raise MatcherError(
                    f"{index_dir}: model mismatch: the index was built with another version of "
                    f"{info['spec']} ({info['fingerprint']}, dim {info['dim']}; this matcher has "
                    f"{embedder.fingerprint}, dim {embedder.dim}); rebuild it from its recorded sources: "
                    f"matcher index rebuild --index {index_dir}"
                )
            raise MatcherError(
                f"{index_dir}: model mismatch: the index was built with {info['spec']} "
                f"(weights {info['fingerprint']}, dim {info['dim']}) but the available model is "
                f"{embedder.spec} (weights {embedder.fingerprint}, dim {embedder.dim}); "
                f"pass the original weights with --pretrained, or re-embed it with these: "
                f"matcher index rebuild --index {index_dir}"
            )
        m = cls(store, embedder)
        try:  # a damaged calibration is refused here, not as a traceback in the middle of a run
            m._check_calibration()
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as exc:
            store.close()
            raise MatcherError(
                f"{index_dir / 'manifest.json'}: damaged manifest: unusable 'calibration' "
                f"({type(exc).__name__}: {exc})"
            ) from None
        return m

    @classmethod
    def rebuild(
        cls,
        index_dir: str | os.PathLike | None = None,
        pretrained: str | None = None,
        models_dir: str | os.PathLike | None = None,
        device: str | None = None,
        on_error=None,
    ) -> Matcher:
        """Re-embed an index from the sources it recorded, with this version's model of the same spec
        (after a descriptor change, or to re-embed with other weights of the same architecture).

        Every source must still be where it was indexed, with the same sha256: otherwise nothing is
        changed and a MatcherError lists the first few that moved or changed. The new index is built
        beside the old one and put in its place when complete; the old one is kept as
        ``<index>.before-rebuild`` until then, and removed after. The index's writer lock is held
        throughout."""
        index_dir = default_index_dir(index_dir)
        try:
            lock = take_writer_lock(index_dir)  # no other writer while the index is read and replaced
        except StoreError as exc:
            raise MatcherError(str(exc)) from None
        try:
            return cls._rebuild(index_dir, pretrained, models_dir, device, on_error)
        finally:
            lock.release(force=True)

    @classmethod
    def _rebuild(cls, index_dir: Path, pretrained, models_dir, device, on_error) -> Matcher:
        import shutil

        from matcher.decode.sources import file_sha256

        try:
            manifest, rows = recorded_sources(index_dir)
        except StoreError as exc:
            raise MatcherError(str(exc)) from None
        info = manifest.get("embedder") or {}
        video_every = manifest.get("video_every") or {}
        share = (manifest.get("calibration") or {}).get("unknown_share", 0.5)
        problems = []
        for _title, _episode, source, sha in rows:
            if source.startswith("<") or not os.path.isfile(source):
                problems.append(f"{source}: no longer there")
            elif sha and file_sha256(source) != sha:
                problems.append(f"{source}: changed since it was indexed (sha256 differs)")
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise MatcherError(
                f"{index_dir}: cannot rebuild, {len(problems)} recorded source(s) moved or changed: "
                + "; ".join(problems[:3])
                + more
                + "; put them back, or build a new index with 'matcher index add'"
            )
        tmp = index_dir.with_name(index_dir.name + ".rebuilding")
        if tmp.exists():
            shutil.rmtree(tmp)
        m = cls.create(
            tmp,
            model=info["spec"],
            pretrained=pretrained or info.get("pretrained"),
            models_dir=models_dir,
            device=device,
        )
        groups: dict[tuple, list[str]] = {}
        for title, episode, source, _sha in rows:
            groups.setdefault((title, episode, video_every.get(source, config.EVERY)), []).append(source)
        for (title, episode, every), sources in groups.items():
            m.add(sources, title=title, episode=episode, every=every, on_error=on_error)
        if share != 0.5:
            m.recalibrate(unknown_share=share)
        m.close()
        backup = index_dir.with_name(index_dir.name + ".before-rebuild")
        os.replace(index_dir, backup)
        os.replace(tmp, index_dir)
        shutil.rmtree(backup, ignore_errors=True)
        return cls.open(index_dir, pretrained=pretrained, models_dir=models_dir, device=device)

    @classmethod
    def open_or_create(cls, index_dir, model: str | None = None, **options) -> Matcher:
        """Open ``index_dir`` if it holds an index (checking ``model`` agrees), else create it."""
        index_dir = default_index_dir(index_dir)
        if not (index_dir / "manifest.json").exists():
            try:
                return cls.create(index_dir, model=model or "classic", **options)
            except _Exists:
                pass  # another writer created it first: append to it
        m = cls.open(index_dir, **options)
        if model is not None and not _same_model(model, m.embedder.spec):
            raise MatcherError(
                f"{index_dir}: model mismatch: the index uses {m.embedder.spec}, not {model}; "
                f"use a new --index directory for another model"
            )
        return m

    @staticmethod
    def _embedder(model, **options) -> Embedder:
        if not isinstance(model, str):
            return model
        try:
            return create_embedder(model, **options)
        except EmbedderError as exc:
            raise MatcherError(str(exc)) from None

    # ------------------------------------------------------------------ indexing
    def add(
        self,
        items: Iterable[str | os.PathLike | Image.Image],
        title: str,
        episode: str | None = None,
        every: float = config.EVERY,
        names: Sequence[str] | None = None,
        on_error=None,
        seed: int = 0,
        on_still=None,
        engine: str = "local",
        address: str | None = None,
        memory_budget: int | None = None,
    ) -> int:
        """Add reference stills of one title: image files, directories (recursive), videos (a still
        every ``every`` seconds) or PIL images (``names`` labels them as evidence). Appends to the
        index, recalibrates, and saves atomically. Returns the number of stills added.

        Unreadable inputs are reported to ``on_error(InputError)`` and skipped; without a callback the
        first one raises. ``on_still(still)`` is called for every still decoded (progress bars).
        Files already in the index (same sha256) are skipped and reported the same
        way (``DuplicateInput``): under this title they would be counted twice, under another one the
        same picture would belong to two productions and tie with itself. ``engine="ray"`` decodes
        and embeds on Ray (``address``: the cluster; default a local one) with the same result."""
        if not title or not title.strip():
            raise MatcherError("a title is required")
        title = db_text(title)  # as the metadata stores it (bytes that are not UTF-8 as \\xNN)
        with self._writing():
            if memory_budget is not None:  # bytes the search index may hold (IVF-PQ above: ann.py)
                self.store.set_memory_budget(int(memory_budget))
            return self._add(items, title, episode, every, names, on_error, seed, on_still, engine, address)

    def add_cluster(self, report: str | os.PathLike, cluster: int, title: str, **options) -> int:
        """Index exactly the files of one cluster of unknown files of a dump report under ``title``
        (`matcher index add --from-report R --cluster N`); each file must still have the sha256
        the report recorded. Returns the number of stills added."""
        from matcher.insight.postpass import cluster_sources

        return self.add(cluster_sources(report, cluster), title=title, **options)

    def _add(self, items, title, episode, every, names, on_error, seed, on_still, engine, address) -> int:
        self._probes()  # a damaged probe file stops the add before any still is decoded
        rng = np.random.default_rng(seed + self.store.count)
        n_probes = calibration.probes_per_title(len(set(self.store.titles()) | {title}))
        added = 0
        probe_images: list[tuple[Image.Image, int]] = []
        # Reservoir-sample probe stills so that a long video does not need to be held in memory.
        seen_for_probes = 0
        batch: list[Still] = []

        def flush():
            nonlocal added, seen_for_probes
            if not batch:
                return
            vecs = np.stack([e.vector for e in batch])
            batch[:] = [e.still for e in batch]  # still.image: a copy <= 512 px, for probes
            refs = [
                Reference(
                    title, _source(s.path), s.sha256, s.timestamp, episode, timestamp_end=s.timestamp_end
                )
                for s in batch
            ]
            ids = self.store.add(vecs, refs)
            for r in refs:  # `index rebuild` samples each video again as it was sampled
                if r.timestamp is not None and not r.source.startswith("<"):
                    self._video_every[r.source] = every
            for s, rid in zip(batch, ids):
                seen_for_probes += 1
                if len(probe_images) < n_probes:
                    probe_images.append((s.image, int(rid)))
                else:
                    j = int(rng.integers(0, seen_for_probes))
                    if j < n_probes:
                        probe_images[j] = (s.image, int(rid))
            added += len(batch)
            batch.clear()

        # Decoded in worker processes while the previous batch is embedded (matcher.run.pipeline);
        # videos are sampled at scene changes too, near-identical consecutive stills dropped.
        first_path: dict[str, str] = {}  # sha256 -> the file of this call that brought it
        refused: set[str] = set()

        def duplicate(still) -> DuplicateInput | None:
            sha = still.sha256
            if not sha:
                return None  # in-memory images: no file identity
            if sha in refused:
                return DuplicateInput(still.path, "")  # a further still of a refused video: no new line
            if sha in first_path:
                if first_path[sha] == still.path:
                    return None  # the next still of a video of this call
                refused.add(sha)
                return DuplicateInput(still.path, f"same content (sha256) as {first_path[sha]}: skipped")
            known = self.store.sources_of_sha256(sha)
            if not known:
                first_path[sha] = still.path
                return None
            refused.add(sha)
            same = [src for t, src in known if t == title]
            if same:
                return DuplicateInput(still.path, f"already in the index (sha256, as {same[0]}): skipped")
            other, src = known[0]
            return DuplicateInput(
                still.path,
                f"same content (sha256) already indexed as {other!r} ({src}): not added under {title!r}",
                other_title=other,
            )

        for e in embed_stills(
            items,
            self.embedder,
            every=every,
            distinct=True,
            names=names,
            keep_images=True,
            engine=engine,
            address=address,
        ):
            if on_still is not None and e.still is not None:
                on_still(e.still)
            if e.error is None:
                dup = duplicate(e.still)
                if dup is not None and not dup.reason:
                    continue
                e.error = dup
            if e.error is not None:
                if on_error is None:
                    raise e.error
                on_error(e.error)
                continue
            batch.append(e)
            if len(batch) >= BATCH:
                flush()
        flush()
        if added:
            self._add_probes(title, probe_images, added, rng, n_probes)
            self.recalibrate()
        return added

    def _probes(self) -> dict:
        """The index's calibration probes (read on first use); a damaged file is a MatcherError."""
        try:
            self.store.background  # noqa: B018 (read now: a damaged file stops the change early)
            return self.store.probes
        except StoreError as exc:
            raise MatcherError(str(exc)) from None

    def _add_probes(self, title: str, probe_images, added: int, rng, n_probes: int) -> None:
        """Keep a fixed number of probes per title and kind: altered copies (``n_probes``, from
        calibration.probes_per_title) and, for embedders that report coverage, line-art sketches
        (SKETCH_PROBES_PER_TITLE). A title with few stills gets several probes of each (stable
        statistics for small titles); an append replaces old probes in proportion to the stills it adds."""
        kinds = [("altered", n_probes, calibration.make_probe)]
        if getattr(self.embedder, "coverage", None) is not None:
            kinds.append(("sketch", calibration.SKETCH_PROBES_PER_TITLE, calibration.make_sketch))
        p = self._probes()
        total = self.store.titles().get(title, added)
        keep = p["titles"] != title  # other titles' probes stay as they are
        new_vecs, new_ids, new_kinds = [], [], []
        for kind, quota, make in kinds:
            mine = np.flatnonzero((p["titles"] == title) & (p["kinds"] == kind))
            n_new = quota if not len(mine) else max(1, round(quota * added / max(total, 1)))
            keep[rng.permutation(mine)[: max(0, quota - n_new)]] = True
            sources = [probe_images[j % len(probe_images)] for j in range(n_new)]
            new_vecs.append(self.embedder.embed([make(im, rng) for im, _ in sources]))
            new_ids += [rid for _, rid in sources]
            new_kinds += [kind] * n_new
        self.store.set_probes(
            np.concatenate([p["vectors"][keep], *new_vecs]),
            np.concatenate([p["ref_ids"][keep], new_ids]).astype(np.int64),
            np.concatenate([p["titles"][keep].astype(str), np.array([title] * len(new_ids))]),
            np.concatenate([p["kinds"][keep].astype(str), np.array(new_kinds)]),
        )

    def recalibrate(self, unknown_share: float | None = None) -> Calibration:
        """Refit the scorer on the index's probes and save the index (atomic).

        ``unknown_share`` is the expected share of inputs from productions that are not in the index
        (default: the index's current setting, initially 0.5); the confidence is a calibrated
        probability under that prior. It is kept for later recalibrations."""
        if unknown_share is None:
            unknown_share = (self.store.manifest.get("calibration") or {}).get("unknown_share", 0.5)
        if not 0.0 < unknown_share < 1.0:
            raise MatcherError(f"unknown share must be between 0 and 1 (exclusive), not {unknown_share}")
        with self._writing():
            self._probes()
            self._embed_background()
            cal = calibration.fit(
                self.store,
                k=self.k,
                coverage=getattr(self.embedder, "coverage", None),
                unknown_share=unknown_share,
            )
            updates = {"calibration": cal.to_dict(), "threshold": cal.threshold}
            if self._video_every:
                recorded = self.store.manifest.get("video_every") or {}
                updates["video_every"] = {**recorded, **self._video_every}
                self._video_every = {}
            self.store.save(**updates)
        self._scorer = None
        return cal

    def remove(self, title: str) -> int:
        """Remove every still of a title; recalibrates and saves. Returns how many were removed."""
        with self._writing():
            self._probes()
            n = self.store.remove_title(title)
            if n:
                self.recalibrate()
        return n

    # ------------------------------------------------------------------ matching
    @property
    def scorer(self) -> TitleScorer:
        if self._scorer is None:
            cal = Calibration.from_dict(self.store.manifest.get("calibration"))
            self._scorer = TitleScorer(cal, list(self.store.titles()))
        return self._scorer

    def _check_calibration(self) -> None:
        """Score a made-up neighbour list at full, grey and line-art coverage: every calibration
        field the scorer reads is read once. (No search: a FAISS search here would start OpenMP
        threads whose spinning costs `match cel.png` ~50 ms on 2 cores.)"""
        titles = list(self.store.titles())[:2]
        if not titles:  # an empty index: nothing is scored (`match` says the index is empty)
            return
        sims = np.linspace(0.9, 0.5, len(titles)).astype(np.float32)
        ids = np.arange(1, len(titles) + 1)
        for coverage in (1.0, 0.5, 0.05):
            ranking = self.scorer.rank(sims, np.array(titles, dtype=object), ids, coverage=coverage)
            self.scorer.score(ranking)

    def match(
        self, item: str | os.PathLike | Image.Image, min_confidence: float | None = None
    ) -> MatchResult:
        """Match one image file or PIL image. (For a video file, the first still; use match_many
        to get every sampled still.) Bad input gives a MatchResult with ``error`` set."""
        for result in self.match_many([item], min_confidence=min_confidence):
            return result
        return MatchResult.failed(str(item), "no stills could be read")

    def match_many(
        self,
        items: Iterable[str | os.PathLike | Image.Image],
        min_confidence: float | None = None,
        every: float = config.EVERY,
        engine: str = "local",
        address: str | None = None,
    ) -> Iterator[MatchResult]:
        """Stream results: one per image, one per sampled still of a video, one error result per
        unreadable input. Directories are walked recursively. Embedding is batched. ``engine="ray"``
        decodes and embeds on Ray (``address``: the cluster) with the same results."""
        batch: list = []  # matcher.run.pipeline.Embedded: decoded in workers, embedded in batches

        def scored():
            out = self._score(np.stack([e.vector for e in batch]), [e.still for e in batch], min_confidence)
            batch.clear()
            return out

        embedded = embed_stills(
            items, self.embedder, every=every, batch_size=BATCH, engine=engine, address=address
        )
        for e in embedded:
            if e.error is not None:
                yield from scored() if batch else ()
                yield MatchResult.failed(e.error.path, e.error.reason, status=e.error.status)
                continue
            batch.append(e)
            if len(batch) >= BATCH:
                yield from scored()
        yield from scored() if batch else ()

    def match_dump(
        self,
        root: str | os.PathLike,
        out: str | os.PathLike | None = None,
        csv: str | os.PathLike | None = None,
        html: str | os.PathLike | None = None,
        **options,
    ):
        """Dump mode from Python (what `matcher match DUMP --out/--csv/--html` runs): every entry of
        ``root`` gets one verdict in the JSONL ``out`` (resumable), with optional CSV and HTML
        reports. ``options``: every, all_frames, workers, min_confidence, on_record, progress,
        engine ("local" or "ray"), address (see
        matcher.run.dump.DumpRun). Returns DumpStats (counts, per-title summary)."""
        from matcher.run import dump

        if not Path(root).is_dir():
            raise MatcherError(f"{root}: not a directory (dump mode matches one dump directory)")
        return dump.run_dump(root, self, out=out, csv=csv, html=html, **options)

    def match_vectors(self, vectors: np.ndarray, min_confidence: float | None = None) -> list[MatchResult]:
        """Score already-embedded queries (for pipelines that embed elsewhere)."""
        return self._score(vectors, [None] * len(vectors), min_confidence)

    def _score(self, vecs: np.ndarray, stills, min_confidence) -> list[MatchResult]:
        sims, ids = self.store.search(vecs, self.k)
        coverage = getattr(self.embedder, "coverage", None)
        evidence = coverage_of(coverage, vecs)
        scaled = rescale(sims, ids, evidence_scale(coverage, vecs))
        refs = self.store.references(np.unique(ids[ids >= 0]))
        out = []
        for row, still in enumerate(stills):
            titles = np.array([refs[i].title if i in refs else "" for i in ids[row]], dtype=object)
            ranking = self.scorer.rank(scaled[row], titles, ids[row], coverage=float(evidence[row]))
            title, conf, cands = self.scorer.score(ranking, threshold=min_confidence)
            default_threshold = ranking.calibration.threshold_for(ranking.coverage)
            override_changed = False
            if min_confidence is not None:  # what the index's own threshold says, to mark a changed verdict
                override_changed = self.scorer.score(ranking)[0] != title
            result = MatchResult(
                path=still.path if still else None,
                sha256=still.sha256 if still else None,
                title=title,
                confidence=conf,
                candidates=cands,
                evidence=TitleScorer.evidence(ranking, sims[row], ids[row], refs),
                timestamp=still.timestamp if still else None,
                frame=still.frame if still else None,
                calibration_warning=ranking.calibration.warning(),
                threshold=default_threshold if min_confidence is None else min_confidence,
                override_changed=override_changed,
                tie=TitleScorer.tied(ranking) if len(TitleScorer.tied(ranking)) > 1 else [],
            )
            if still is not None and still.sha256 and still.timestamp is None and still.frame is None:
                self.mark_identical(result)
            out.append(result)
        return out

    def mark_identical(self, result: MatchResult) -> None:
        """A file that is byte for byte a reference file is that reference: say so (sha256), with
        certainty, instead of a similarity. Same content under two titles: a tie, no title."""
        same = self.store.references_by_sha256(result.sha256)
        if not same:
            return
        titles = sorted({r.title for r in same})
        first = same[0]
        result.identical = {"reference": first.source, "sha256": first.sha256, "title": first.title}
        if len(titles) > 1:
            result.title, result.tie = None, titles
            return
        result.title, result.confidence, result.tie = first.title, 1.0, []
        rest = [c for c in result.candidates if c.title != first.title]
        result.candidates = [TitleScore(first.title, 1.0), *(TitleScore(c.title, 0.0) for c in rest)]

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        """What `matcher index info` shows (see ReferenceStore.info)."""
        return self.store.info()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Matcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Exists(MatcherError):
    """Matcher.create lost a race: another writer created the index first."""


def _same_model(requested: str, recorded: str) -> bool:
    if requested == recorded:
        return True
    return requested == "clip" and recorded == "clip:ViT-B-32"


def _source(path: str) -> str:
    """How a reference's origin is recorded: absolute for files (evidence must be traceable from any
    working directory), as given for in-memory images."""
    return path if path.startswith("<") or not os.path.exists(path) else os.path.abspath(path)
