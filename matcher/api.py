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

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from matcher import calibration
from matcher.embedders import Embedder, EmbedderError, create_embedder
from matcher.pipeline import embed_stills
from matcher.results import MatchResult
from matcher.scoring import Calibration, TitleScorer, coverage_of, evidence_scale, rescale
from matcher.sources import Still
from matcher.store import Reference, ReferenceStore, StoreError

DEFAULT_INDEX = "index"
BATCH = 32


class MatcherError(Exception):
    """A run-level problem (no index, wrong model, unreadable weights): str() is one line for the user."""


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
        except StoreError as exc:
            raise MatcherError(str(exc)) from None
        return cls(store, embedder)

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike | None = None,
        pretrained: str | None = None,
        models_dir: str | os.PathLike | None = None,
        device: str | None = None,
        read_only: bool = False,
    ) -> Matcher:
        """Open an existing index; queries always use the index's own embedder.

        ``pretrained`` overrides where the weights are (e.g. the checkpoint file moved to another
        machine); their fingerprint must still match the one the index was built with.
        ``read_only`` opens it for matching only, touching nothing on disk (`matcher serve`)."""
        index_dir = default_index_dir(index_dir)
        try:
            store = ReferenceStore.open(index_dir, read_only=read_only)
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
                    f"{embedder.fingerprint}, dim {embedder.dim}); rebuild it: matcher index add --index "
                    f"{index_dir} ..."
                )
            raise MatcherError(
                f"{index_dir}: model mismatch: the index was built with {info['spec']} "
                f"(weights {info['fingerprint']}, dim {info['dim']}) but the available model is "
                f"{embedder.spec} (weights {embedder.fingerprint}, dim {embedder.dim}); "
                f"pass the original weights with --pretrained or rebuild the index"
            )
        return cls(store, embedder)

    @classmethod
    def open_or_create(cls, index_dir, model: str | None = None, **options) -> Matcher:
        """Open ``index_dir`` if it holds an index (checking ``model`` agrees), else create it."""
        index_dir = default_index_dir(index_dir)
        if (index_dir / "manifest.json").exists():
            m = cls.open(index_dir, **options)
            if model is not None and not _same_model(model, m.embedder.spec):
                raise MatcherError(
                    f"{index_dir}: model mismatch: the index uses {m.embedder.spec}, not {model}; "
                    f"use a new --index directory for another model"
                )
            return m
        return cls.create(index_dir, model=model or "classic", **options)

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
        every: float = 1.0,
        names: Sequence[str] | None = None,
        on_error=None,
        seed: int = 0,
    ) -> int:
        """Add reference stills of one title: image files, directories (recursive), videos (a still
        every ``every`` seconds) or PIL images (``names`` labels them as evidence). Appends to the
        index, recalibrates, and saves atomically. Returns the number of stills added.

        Unreadable inputs are reported to ``on_error(InputError)`` and skipped; without a callback the
        first one raises."""
        if not title or not title.strip():
            raise MatcherError("a title is required")
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

        # Decoded in worker processes while the previous batch is embedded (matcher.pipeline);
        # videos are sampled at scene changes too, near-identical consecutive stills dropped.
        for e in embed_stills(
            items, self.embedder, every=every, distinct=True, names=names, keep_images=True
        ):
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
        self._probes()
        cal = calibration.fit(
            self.store,
            k=self.k,
            coverage=getattr(self.embedder, "coverage", None),
            unknown_share=unknown_share,
        )
        self.store.save(calibration=cal.to_dict(), threshold=cal.threshold)
        self._scorer = None
        return cal

    def remove(self, title: str) -> int:
        """Remove every still of a title; recalibrates and saves. Returns how many were removed."""
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
        every: float = 1.0,
    ) -> Iterator[MatchResult]:
        """Stream results: one per image, one per sampled still of a video, one error result per
        unreadable input. Directories are walked recursively. Embedding is batched."""
        batch: list = []  # matcher.pipeline.Embedded: decoded in workers, embedded in batches

        def scored():
            out = self._score(np.stack([e.vector for e in batch]), [e.still for e in batch], min_confidence)
            batch.clear()
            return out

        for e in embed_stills(items, self.embedder, every=every, batch_size=BATCH):
            if e.error is not None:
                yield from scored() if batch else ()
                yield MatchResult.failed(e.error.path, e.error.reason)
                continue
            batch.append(e)
            if len(batch) >= BATCH:
                yield from scored()
        yield from scored() if batch else ()

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
            out.append(
                MatchResult(
                    path=still.path if still else None,
                    sha256=still.sha256 if still else None,
                    title=title,
                    confidence=conf,
                    candidates=cands,
                    evidence=TitleScorer.evidence(ranking, sims[row], ids[row], refs),
                    timestamp=still.timestamp if still else None,
                )
            )
        return out

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


def _same_model(requested: str, recorded: str) -> bool:
    if requested == recorded:
        return True
    return requested == "clip" and recorded == "clip:ViT-B-32"


def _source(path: str) -> str:
    """How a reference's origin is recorded: absolute for files (evidence must be traceable from any
    working directory), as given for in-memory images."""
    return path if path.startswith("<") or not os.path.exists(path) else os.path.abspath(path)
