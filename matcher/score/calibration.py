"""The index calibrates itself: pseudo-queries made from its own references fit the TitleScorer.

A probe is a reference still, altered the way leaked copies are (crop, re-encode, grey, mirror, shrink,
blur). Probes are embedded once at `add` time and kept in the index, so later appends and removals can
refit without the original images. Two searches per probe give the training data:
- known:   the probe's own still is excluded; is the top title still the probe's title?
- unknown: the probe's whole title is excluded; whatever wins is wrong (a production not in the index).
From these: per-title background statistics (imbalance correction), the logistic confidence model,
and the "unknown" threshold.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from matcher.score.scoring import (
    GREY_COVERAGE,
    SKETCH_COVERAGE,
    Calibration,
    TitleScorer,
    coverage_of,
    evidence_scale,
    is_sketch,
    rescale,
)

PROBES_PER_TITLE = 48  # altered probes kept per title (at least); stable mean/spread, cheap to refit
# ... and at most this many, until the index holds PROBE_POOL altered probes in all. The unknown threshold is
# a 2% tail of the unknown probes: with 5 titles x 48 it rested on ~2 grey probes and moved by +-0.09 from
# one probe draw to the next (grey false attribution 2.9-10.3%); 5 x 128 holds it to +-0.03 (BENCHMARKS).
MAX_PROBES_PER_TITLE = 128
PROBE_POOL = 640
# line-art probes per title, for embedders that report coverage (8, 16, 24, 48 measured alike)
SKETCH_PROBES_PER_TITLE = 16
MAX_FALSE_ATTRIBUTION = 0.02  # the default threshold keeps unknown probes below this rate
MIN_THRESHOLD_PROBES = 10  # unknown probes of a kind (colour / grey) needed for a threshold of its own


def _crop(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    f = rng.uniform(0.6, 0.85)
    cw, ch = max(1, int(w * f)), max(1, int(h * f))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x, y, x + cw, y + ch))


def _jpeg(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(20, 60)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _shrink(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    f = rng.uniform(0.25, 0.5)
    return im.resize((max(8, int(im.width * f)), max(8, int(im.height * f))), Image.Resampling.BILINEAR)


AUGMENTATIONS: list[Callable[[Image.Image, np.random.Generator], Image.Image]] = [
    _crop,
    _jpeg,
    lambda im, rng: ImageOps.grayscale(im).convert("RGB"),
    lambda im, rng: ImageOps.mirror(im),
    _shrink,
    lambda im, rng: im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5))),
]


def probes_per_title(n_titles: int) -> int:
    """Altered probes a title gets in an index of ``n_titles`` titles: many while the index is small, so
    that the unknown threshold rests on enough probes; PROBES_PER_TITLE once there are enough titles."""
    return int(min(MAX_PROBES_PER_TITLE, max(PROBES_PER_TITLE, -(-PROBE_POOL // max(n_titles, 1)))))


def make_sketch(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A line-art probe: the still's lines inked dark on white paper (difference of Gaussians), the way
    an in-between drawing or a pencil test of the frame looks. No colour, no shading."""
    grey = ImageOps.grayscale(image)
    r = max(1.0, min(image.size) / 200)
    fine = np.asarray(grey.filter(ImageFilter.GaussianBlur(r)), np.float32)
    coarse = np.asarray(grey.filter(ImageFilter.GaussianBlur(1.6 * r)), np.float32)
    response = np.abs(coarse - fine)
    ink = response > max(2.0, float(np.percentile(response, rng.uniform(80, 92))))
    paper = np.where(ink, int(rng.integers(0, 90)), 255).astype(np.uint8)
    return Image.fromarray(paper, "L").convert("RGB")


def make_probe(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One altered copy of a reference still: two random alterations from AUGMENTATIONS."""
    for j in rng.choice(len(AUGMENTATIONS), size=2, replace=False):
        image = AUGMENTATIONS[int(j)](image, rng)
    return image


def _fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, iters: int = 300) -> np.ndarray:
    """Weighted logistic regression by Newton steps, weights of the features kept >= 0 (monotone)."""
    X = np.column_stack([x, np.ones(len(x))])
    beta = np.array([1.0, 1.0, 0.0])
    ridge = 1.0 * np.eye(3)  # a prior that keeps a small index's fit from turning into a step
    ridge[2, 2] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ beta, -40, 40)))
        grad = X.T @ (w * (p - y)) + ridge @ beta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + ridge + 1e-9 * np.eye(3)
        step = np.linalg.solve(hess, grad)
        big = np.abs(step).max()
        if big > 1.0:  # damped: on nearly separable probes a full Newton step overshoots and diverges
            step = step / big
        beta = beta - step
        beta[:2] = np.maximum(beta[:2], 0.0)
        if np.abs(step).max() < 1e-7:
            break
    return beta


def fit(store, k: int = 64, coverage=None, unknown_share: float = 0.5) -> Calibration:
    """Fit a Calibration from the probes stored in the index and its background set.

    ``coverage`` is the embedder's ``coverage(vectors)`` when it has one (see scoring.evidence_scale):
    probes are scored on the same scale as queries; sketch probes (scoring.is_sketch) fit the sketch
    parameters and near-blank probes none. Mixed in, a few near-blank probes scaled up 5x used to
    inflate a title's background spread (measured: seen grey top-1 85.8% -> 94.1% once left out).

    The background set (background.py; ``store.background``) stands for productions not in the index:
    its images are unknown probes and part of every title's background spread, so an index of one
    title is calibrated too (before it, one title meant no unknown probe at all)."""
    probes = store.probes
    background = store.background
    titles = sorted(store.titles())
    n = len(probes["titles"])
    if n == 0 or not titles or (len(titles) < 2 and not len(background["vectors"])):
        return Calibration(probes=n)
    qv, bv = probes["vectors"], background["vectors"]
    scale, bscale = evidence_scale(coverage, qv), evidence_scale(coverage, bv)
    cov, bcov = coverage_of(coverage, qv), coverage_of(coverage, bv)
    title_ids = {t: store.ids_of_title(t) for t in titles}  # one query per title, used by both bands
    main = (np.flatnonzero(cov >= SKETCH_COVERAGE[1]), np.flatnonzero(bcov >= SKETCH_COVERAGE[1]))
    cal = _fit_band(store, main, titles, title_ids, (scale, bscale), k, unknown_share, (cov, bcov))
    sketch = (np.flatnonzero(is_sketch(cov)), np.flatnonzero(is_sketch(bcov)))
    if len(sketch[0]):
        band = _fit_band(store, sketch, titles, title_ids, (scale, bscale), k, unknown_share)
        if band.fitted:
            band.rank_by = "similarity"  # see scoring.py: a sketch's z ranking is noise-driven
            cal.sketch = band
    cal.probes = n
    return cal


def background_share(n_titles: int) -> float:
    """The background set's share of the unknown probes' weight (and of every title's background
    spread) in an index of ``n_titles`` titles: 1/n_titles. The index's own titles stand in for
    other productions better as they grow in number; pooled by count instead, the background's ~1000
    images of game art set a 5-title index's threshold alone (benchmark: decision accuracy 51.8% ->
    46.9%), while one third of the weight let 2-title indexes give 6-7% of other productions a
    title (docs/BENCHMARKS.md, "Small libraries")."""
    return 1.0 / max(n_titles, 1)


def _fit_band(store, rows, titles, title_ids, scales, k, unknown_share, coverage=None) -> Calibration:
    """Scorer parameters fitted on the probes ``rows = (probe rows, background rows)`` (indices into
    store.probes and store.background). With ``coverage`` (per probe, per background image), probes
    below GREY_COVERAGE get their own unknown threshold (see _threshold)."""
    probes, background = store.probes, store.background
    prow, brow = rows
    qv, qids, qtitles = probes["vectors"][prow], probes["ref_ids"][prow], probes["titles"][prow]
    scale, bscale = scales[0][prow], scales[1][brow]
    bv = background["vectors"][brow]
    n = len(prow)
    cal = Calibration(probes=n, unknown_share=unknown_share, background=len(brow))
    if n == 0:
        return cal

    # 1. Background stats: each title's best similarity to probes of the other titles and to the
    #    background set.
    pooled = []
    for t in titles:
        others = qtitles != t
        queries = np.concatenate([qv[others], bv])
        if not len(queries):
            continue
        sims, ids = store.search(queries, 1, only_ids=title_ids[t])
        sims = rescale(sims, ids, np.concatenate([scale[others], bscale]))
        # as for the unknown probes below: the background set carries background_share() of the weight
        n_cross, n_bg = int(others.sum()), len(bv)
        bg_mass = background_share(len(titles)) if n_cross else 1.0
        wt = np.concatenate(
            [np.full(n_cross, (1 - bg_mass) / max(n_cross, 1)), np.full(n_bg, bg_mass / max(n_bg, 1))]
        )
        found = sims[:, 0] > -1e30
        s, wt = sims[:, 0][found], wt[found]
        if len(s) == 0:
            continue
        mu = float(np.average(s, weights=wt))
        sd = float(np.sqrt(np.average((s - mu) ** 2, weights=wt)))
        cal.mu[t], cal.sigma[t], cal.n[t] = mu, max(sd, 1e-3), int(len(s))
        pooled.append((s, wt / wt.sum()))
    if pooled:
        allv, allw = np.concatenate([p[0] for p in pooled]), np.concatenate([p[1] for p in pooled])
        gmu = float(np.average(allv, weights=allw))
        cal.global_mu = gmu
        cal.global_sigma = float(max(np.sqrt(np.average((allv - gmu) ** 2, weights=allw)), 1e-3))
    scorer = TitleScorer(cal, titles)

    # 2. Features of known and unknown pseudo-queries.
    # Batched: known = one search with k+1 neighbours, each probe's own still dropped (the same
    # top k as excluding it); unknown = one search per title with that title excluded, and the
    # background set against the whole index.
    feats, labels, kinds, grey = [], [], [], []
    is_grey = coverage[0][prow] < GREY_COVERAGE if coverage is not None else np.zeros(n, bool)
    bg_grey = coverage[1][brow] < GREY_COVERAGE if coverage is not None else np.zeros(len(brow), bool)

    def add(sims, ids, scale_rows, truth, kind, grey_rows):
        sims = rescale(sims, ids, scale_rows)
        found = store.title_array(ids)
        for j in range(len(sims)):
            r = scorer.rank(sims[j], found[j], ids[j])
            if not r.titles:
                continue
            feats.append((r.z_top, r.margin))
            labels.append(1.0 if (truth is not None and r.titles[0] == truth[j]) else 0.0)
            kinds.append(kind)
            grey.append(grey_rows[j])

    sims, ids = store.search(qv, k + 1)
    own = ids == qids[:, None]
    keep = np.argsort(own, axis=1, kind="stable")[:, :k]  # drop the own still, keep the order
    add(np.take_along_axis(sims, keep, 1), np.take_along_axis(ids, keep, 1), scale, qtitles, "known", is_grey)
    if len(titles) > 1:
        for t in titles:
            sel = np.flatnonzero(qtitles == t)
            if len(sel):
                sims, ids = store.search(qv[sel], k, exclude_ids=title_ids[t])
                add(sims, ids, scale[sel], None, "unknown", is_grey[sel])
    if len(bv):
        sims, ids = store.search(bv, k)
        add(sims, ids, bscale, None, "background", bg_grey)
    x, y, kinds, grey = np.array(feats), np.array(labels), np.array(kinds), np.array(grey, bool)
    cal.known_probes = int((kinds == "known").sum())
    cal.unknown_probes = int((kinds == "unknown").sum() + (kinds == "background").sum())
    cal.known_stills = int(len(np.unique(qids)))
    if len(np.unique(y)) < 2:
        cal.fitted = False
        return cal
    # The share of unknown material in a dump is not known in advance: by default known and unknown
    # probes weigh the same in total (0.5); an investigator who knows better sets unknown_share.
    # The unknown weight is shared between the index's own leave-title-out probes and the background
    # set (background_share); with one title the background is all there is.
    bg_mass = background_share(len(titles)) if (kinds == "unknown").any() else 1.0
    mass = {
        "known": 1 - unknown_share,
        "unknown": unknown_share * (1 - bg_mass),
        "background": unknown_share * bg_mass,
    }
    w = np.zeros(len(kinds))
    for kind, total in mass.items():
        sel = kinds == kind
        if sel.any():
            w[sel] = total / sel.sum()
    beta = _fit_logistic(x, y, w * len(w) / w.sum())
    cal.weights = (float(beta[0]), float(beta[1]), float(beta[2]))
    cal.fitted = True
    # 3. Thresholds: at least 0.5 (more likely right than wrong), raised until at most 2% of the
    #    unknown probes would be attributed to a title; separately for colour and grey probes when
    #    there are enough of each, so that the 2% holds for each kind of query, not only on average.
    unknown = kinds != "known"
    if min((unknown & grey).sum(), (unknown & ~grey).sum()) >= MIN_THRESHOLD_PROBES:
        cal.threshold = _threshold(cal, x[unknown & ~grey], w[unknown & ~grey])
        cal.grey_threshold = _threshold(cal, x[unknown & grey], w[unknown & grey])
    else:  # too few of one kind (or no coverage: no grey probes): one threshold for all
        cal.threshold = _threshold(cal, x[unknown], w[unknown])
    return cal


def _threshold(cal: Calibration, x_unknown: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The lowest confidence >= 0.5 that at most MAX_FALSE_ATTRIBUTION of these unknown probes reach
    (by weight, when ``weights`` are given)."""
    if not len(x_unknown):
        return 0.5
    p = cal.probability(x_unknown[:, 0], x_unknown[:, 1])
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(p)
    cum = np.cumsum(w[order]) / w.sum()
    # the smallest p with at most MAX_FALSE_ATTRIBUTION of the weight above it
    q = float(p[order][np.searchsorted(cum, 1 - MAX_FALSE_ATTRIBUTION, side="left").clip(0, len(p) - 1)])
    return float(min(max(0.5, q + 1e-6), 0.99))
