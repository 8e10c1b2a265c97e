"""Quick held-out check on the dev split of the training productions (never the benchmark).

Two numbers per edit, for any embedder given as a function ``embed(list of PIL) -> (n, d) float32``:

- copy: dev frames are the references (200 of them, plus 400 training frames as distractors); each dev
  frame, edited, must find its own clean frame first (copy-detection top-1);
- production: 80 training frames per production are the references; dev frames (scenes never trained on)
  must rank their production first, each production scored by its best frame (as matcher's scorer does).

Edits are the query transforms of scripts/bench_transforms.py (the definitions of the leaks' edits, applied
here to dev frames, not to benchmark data). Frames are prepared as the embedders prepare a query
(matcher.embed.classic: borders trimmed, 128 x 128).

    python train/devcheck.py --run ~/.cache/matcher/anim-run     # a checkpoint
    python train/devcheck.py --classic                           # the weights-free baseline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "scripts"))

from bench_transforms import TRANSFORMS  # noqa: E402

COPY_EDITS = ["lineart", "cel", "crop60", "gray", "notes", "jpeg25"]
PROD_EDITS = ["clean", "gray", "lineart", "cel"]


def _sample(labels: np.ndarray, per: int, rng: np.random.Generator) -> np.ndarray:
    out = []
    for lab in np.unique(labels):
        if lab < 0:
            continue
        idx = np.flatnonzero(labels == lab)
        out.append(rng.choice(idx, size=min(per, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


def build_queries(data_dir: Path, seed: int = 0) -> dict:
    """The dev check's images, prepared (128 x 128 PIL), with what each query must find."""
    from train_anim import Frames

    from matcher.embed.classic import ClassicEmbedder

    prep = ClassicEmbedder().prepare
    rng = np.random.default_rng(seed)
    dev, train = Frames(data_dir / "dev.npz"), Frames(data_dir / "train.npz")
    copy_refs = np.sort(rng.choice(len(dev), size=min(200, len(dev)), replace=False))
    distract = np.sort(rng.choice(len(train), size=400, replace=False))
    prod_refs = _sample(train.production, 80, rng)
    prod_q = _sample(dev.production, 25, rng)
    q = {
        "copy_refs": [prep(dev.image(int(i))) for i in copy_refs]
        + [prep(train.image(int(i))) for i in distract],
        "copy_queries": {},
        "prod_refs": [prep(train.image(int(i))) for i in prod_refs],
        "prod_ref_labels": train.production[prod_refs],
        "prod_queries": {},
        "prod_labels": dev.production[prod_q],
    }
    for n, t in enumerate(COPY_EDITS):
        q["copy_queries"][t] = [
            prep(TRANSFORMS[t](dev.image(int(i)), seed + 31 * n + k)) for k, i in enumerate(copy_refs)
        ]
    for n, t in enumerate(PROD_EDITS):
        q["prod_queries"][t] = [
            prep(TRANSFORMS[t](dev.image(int(i)), seed + 77 * n + k)) for k, i in enumerate(prod_q)
        ]
    return q


def embed_all(embed, q: dict) -> dict:
    """Embeddings of every image set of the check."""
    return {
        "copy_refs": embed(q["copy_refs"]),
        "prod_refs": embed(q["prod_refs"]),
        "copy": {t: embed(v) for t, v in q["copy_queries"].items()},
        "prod": {t: embed(v) for t, v in q["prod_queries"].items()},
    }


def sims_from(e: dict) -> dict:
    return {
        "copy": {t: v @ e["copy_refs"].T for t, v in e["copy"].items()},
        "prod": {t: v @ e["prod_refs"].T for t, v in e["prod"].items()},
    }


def sims_of(embed, q: dict) -> dict:
    """Similarity matrices of the check (so that several embedders can be mixed afterwards)."""
    return sims_from(embed_all(embed, q))


def fused_sims(a: dict, c: dict, w: float) -> dict:
    """What `anim+classic` (matcher.embed.anim.FusedEmbedder) and the scorer's coverage division
    give, from the two halves' embeddings: w * cov_r * anim + (1 - w) * classic / cov_q."""

    def cov(v):
        return np.clip(np.einsum("ij,ij->i", v, v), 0.0, 1.0)

    out = {}
    for part, refs in (("copy", "copy_refs"), ("prod", "prod_refs")):
        cr = cov(c[refs])
        out[part] = {}
        for t in a[part]:
            raw = cov(c[part][t])
            cq = np.maximum(raw, 0.2)
            sim_a = a[part][t] @ a[refs].T * cr[None, :] * raw[:, None]
            sim_c = c[part][t] @ c[refs].T
            out[part][t] = (w * sim_a + (1 - w) * sim_c) / cq[:, None]
    return out


def score(s: dict, q: dict) -> dict:
    res = {}
    for t, m in s["copy"].items():
        res[f"copy/{t}"] = float(np.mean(m.argmax(axis=1) == np.arange(m.shape[0])))
    labels = q["prod_ref_labels"]
    prods = np.unique(labels)
    for t, m in s["prod"].items():
        best = np.stack([m[:, labels == p].max(axis=1) for p in prods], axis=1)
        res[f"prod/{t}"] = float(np.mean(prods[best.argmax(axis=1)] == q["prod_labels"]))
    res["copy/mean"] = float(np.mean([v for k, v in res.items() if k.startswith("copy/")]))
    res["prod/mean"] = float(
        np.mean([v for k, v in res.items() if k.startswith("prod/") and k != "prod/mean"])
    )
    return res


def torch_embed(net, device="cpu", batch: int = 128):
    import torch

    def embed(images):
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch):
                x = np.stack([np.asarray(im, np.float32) / 255.0 for im in images[i : i + batch]])
                out.append(net(torch.from_numpy(x).permute(0, 3, 1, 2).to(device)).cpu().numpy())
        return np.concatenate(out)

    return embed


_CACHE: dict = {}


def queries(data_dir: Path) -> dict:
    """build_queries, cached on disk beside the data (pickled 128 px images: a few MB)."""
    import pickle

    key = str(data_dir)
    if key not in _CACHE:
        path = data_dir / "devcheck.pkl"
        if path.exists() and path.stat().st_mtime > (data_dir / "dev.npz").stat().st_mtime:
            _CACHE[key] = pickle.loads(path.read_bytes())
        else:
            _CACHE[key] = build_queries(data_dir)
            path.write_bytes(pickle.dumps(_CACHE[key]))
    return _CACHE[key]


def run(net, data_dir: Path, device: str = "cpu") -> dict:
    q = queries(data_dir)
    return score(sims_of(torch_embed(net, device), q), q)


def main(argv: list[str] | None = None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("MATCHER_CACHE", Path.home() / ".cache/matcher")) / "animset",
    )
    ap.add_argument("--run", type=Path, help="a training run folder (its last.pt)")
    ap.add_argument("--classic", action="store_true")
    args = ap.parse_args(argv)
    q = queries(args.data)
    if args.classic:
        from matcher.embed.classic import ClassicEmbedder

        res = score(sims_of(ClassicEmbedder().embed, q), q)
    else:
        import torch
        from train_anim import Net

        st = torch.load(args.run / "last.pt", map_location="cpu")
        net = Net(st["arch"], st["dim"], None)
        net.load_state_dict(st["model"])
        res = score(sims_of(torch_embed(net.eval()), q), q)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
