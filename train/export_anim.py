"""Export a trained `anim` run into the shipped weights: fp16 safetensors that numpy runs (no torch).

    python train/export_anim.py --run ~/.cache/matcher/runs15/full [--install]

1. Batch norms are folded into the convolutions; the network becomes a flat op list (conv / depthwise /
   save / add / GeM / head) stored in the safetensors metadata (matcher/embed/anim.py runs it).
2. PCA-whitening is learned on training frames (clean and edited views, 4000 by default) on the
   projection's output before the L2 normalisation, so it folds into the last affine map; its shrinkage
   (eigenvalue floor, a share of the mean eigenvalue) is chosen on the dev check, and "none" competes.
3. The fusion weight of `anim+classic` is chosen on the dev check (train/devcheck.py), through the very
   embedders matcher ships (numpy network, classic, FusedEmbedder), never on the benchmark.
4. The numpy network is checked against torch (cosine >= 0.999 on dev frames) and the file's sha256,
   the fusion weight and the dev results are written to <run>/export.json; --install copies the file
   into matcher/embed/weights/ and sets WEIGHTS_SHA256 and FUSION_WEIGHT in matcher/embed/anim.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import devcheck  # noqa: E402
from edits import Editor  # noqa: E402
from train_anim import CACHE, Frames, Net  # noqa: E402

from matcher.embed import anim as anim_mod  # noqa: E402

# whitening shrinkage candidates (eigenvalue floor / mean eigenvalue); a first export measured none 0.50 /
# 0.36, 0.1 0.69 / 0.43, 1.0 0.63 / 0.42 (copy / production top-1 on the dev check)
SHRINKS = (0.03, 0.1, 0.3)


def fold(conv: torch.nn.Conv2d, bn) -> tuple[np.ndarray, np.ndarray]:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    b = bn.bias.detach() - bn.running_mean * scale
    return w.numpy(), b.numpy()


def _act(bn) -> str:
    act = getattr(bn, "act", None)
    name = type(act).__name__ if act is not None else "Identity"
    return {"ReLU6": "relu6", "ReLU": "relu", "Identity": "none"}[name]


def to_ops(net: Net, head_w: np.ndarray, head_b: np.ndarray) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The network as an op list + tensors (timm EfficientNet family: DS and IR blocks, no SE)."""
    bb = net.backbone
    ops: list[dict] = []
    t: dict[str, np.ndarray] = {}

    def conv(c, bn, dw=False):
        name = f"l{len(t) // 2:03d}"
        w, b = fold(c, bn)
        t[name + ".w"], t[name + ".b"] = w, b
        ops.append(
            {
                "op": "dw" if dw else "conv",
                "name": name,
                "k": c.kernel_size[0],
                "s": c.stride[0],
                "act": _act(bn),
            }
        )
        if c.padding[0] != c.kernel_size[0] // 2:
            raise SystemExit(f"unsupported padding {c.padding} for kernel {c.kernel_size}")

    conv(bb.conv_stem, bb.bn1)
    for stage in bb.blocks:
        for blk in stage:
            kind = type(blk).__name__
            if getattr(blk, "se", None) is not None and type(blk.se).__name__ != "Identity":
                raise SystemExit("squeeze-excitation blocks are not supported by the numpy runner")
            if blk.has_skip:
                ops.append({"op": "save"})
            if kind == "DepthwiseSeparableConv":
                conv(blk.conv_dw, blk.bn1, dw=True)
                conv(blk.conv_pw, blk.bn2)
            elif kind == "InvertedResidual":
                conv(blk.conv_pw, blk.bn1)
                conv(blk.conv_dw, blk.bn2, dw=True)
                conv(blk.conv_pwl, blk.bn3)
            else:
                raise SystemExit(f"unsupported block {kind}")
            if blk.has_skip:
                ops.append({"op": "add"})
    conv(bb.conv_head, bb.bn2)
    ops.append({"op": "gem", "p": float(net.pool.p.detach().clamp(1.0, 8.0))})
    t["head.w"], t["head.b"] = head_w.astype(np.float32), head_b.astype(np.float32)
    ops.append({"op": "head", "name": "head", "dim": int(head_w.shape[0])})
    return ops, t


def raw_features(net: Net, x: torch.Tensor) -> torch.Tensor:
    """The projection's output before the L2 normalisation."""
    with torch.no_grad():
        return net.proj(net.pool(net.features(x * 2.0 - 1.0)))


def whitening(z: np.ndarray, shrink: float | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, mu), W (dim, d): PCA-whitening, eigenvalue floor shrink * mean eigenvalue; None: identity."""
    mu = z.mean(axis=0)
    if shrink is None:
        return np.eye(z.shape[1], dtype=np.float64)[:dim], np.zeros_like(mu)
    cov = np.cov((z - mu).T)
    lam, vec = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1][:dim]
    lam, vec = lam[order], vec[:, order]
    return (vec / np.sqrt(lam + shrink * lam.mean())).T, mu


def _stored_all(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Convolution kernels in fp16 (nearly all the bytes), each output channel divided by its largest
    weight (``.s``, fp32): folded batch norms leave channels of tiny weights that fp16 would flush to
    subnormals (measured: cosine to torch 0.987-0.998 without the scales). Biases and the head (the
    whitening folded in amplifies rounding) stay fp32."""
    out = {}
    for k, v in tensors.items():
        if k.startswith("head.") or k.endswith(".b"):
            out[k] = np.ascontiguousarray(v, dtype=np.float32)
            continue
        s = np.abs(v).reshape(v.shape[0], -1).max(axis=1).astype(np.float32)
        s[s == 0] = 1.0
        out[k] = np.ascontiguousarray(v / s.reshape(-1, *([1] * (v.ndim - 1)))).astype(np.float16)
        out[k[:-2] + ".s"] = s
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path)
    ap.add_argument(
        "--best-of", type=Path, metavar="RUN", help="print the checkpoint of RUN whose export scored best"
    )
    ap.add_argument("--data", type=Path, default=CACHE / "animset")
    ap.add_argument("--frames", type=int, default=4000, help="training frames for the whitening")
    ap.add_argument("--checkpoint", default="last.pt", help="which checkpoint of the run (e.g. step900.pt)")
    ap.add_argument("--install", action="store_true")
    args = ap.parse_args(argv)
    if args.best_of is not None:  # anim+classic copy + production top-1 on the dev check
        scores = {
            p.stem.removeprefix("export-") + ".pt": json.loads(p.read_text())["dev"]["anim+classic"]
            for p in args.best_of.glob("export-step*.json")
        }
        print(max(scores, key=lambda k: scores[k]["copy/mean"] + scores[k]["prod/mean"]))
        return 0
    if args.run is None:
        ap.error("--run is required")
    torch.set_num_threads(2)
    st = torch.load(args.run / args.checkpoint, map_location="cpu")
    net = Net(st["arch"], st["dim"], None)
    net.load_state_dict(st["model"])
    net.eval()

    # 1. whitening statistics: half clean, half edited training frames
    data = Frames(args.data / "train.npz")
    rng = np.random.default_rng(0)
    idx = rng.choice(len(data), size=min(args.frames, len(data)), replace=False)
    editor = Editor(seed=12345)
    feats = []
    for i in range(0, len(idx), 64):
        fr = data.batch(idx[i : i + 64])
        x = torch.nn.functional.interpolate(fr.float() / 255.0, size=128, mode="area")
        if (i // 64) % 2:
            x = editor.views(fr)
        feats.append(raw_features(net, x).numpy().astype(np.float64))
    z = np.concatenate(feats)

    # 2. shrinkage chosen on the dev check, through the numpy network as shipped (fp16)
    q = devcheck.queries(args.data)
    proj_w = net.proj.weight.detach().numpy().astype(np.float64)
    proj_b = net.proj.bias.detach().numpy().astype(np.float64)
    tag = "" if args.checkpoint == "last.pt" else "-" + Path(args.checkpoint).stem
    out_dir = args.run / f"export{tag}"
    out_dir.mkdir(exist_ok=True)
    from safetensors.numpy import save_file

    def write(shrink, path: Path) -> None:
        W, mu = whitening(z, shrink, st["dim"])
        ops, tensors = to_ops(net, W @ proj_w, W @ (proj_b - mu))
        meta = {
            "format": anim_mod.FORMAT,
            "ops": json.dumps(ops),
            "arch": st["arch"],
            "whitening_shrink": json.dumps(shrink),
            "whitening_frames": str(len(z)),
        }
        save_file(_stored_all(tensors), str(path), metadata=meta)

    results, embeddings = {}, {}
    for shrink in SHRINKS:
        path = out_dir / f"anim-shrink-{shrink}.safetensors"
        write(shrink, path)
        emb = anim_mod.AnimEmbedder(path)
        embeddings[str(shrink)] = devcheck.embed_all(emb.embed, q)
        results[str(shrink)] = devcheck.score(devcheck.sims_from(embeddings[str(shrink)]), q)
        r = results[str(shrink)]
        print(f"whitening shrink {shrink}: copy {r['copy/mean']:.3f} prod {r['prod/mean']:.3f}", flush=True)
    best = max(results, key=lambda k: results[k]["copy/mean"] + results[k]["prod/mean"])
    chosen = out_dir / f"anim-shrink-{best}.safetensors"
    final = out_dir / "anim-v1.safetensors"
    shutil.copyfile(chosen, final)
    anim = anim_mod.AnimEmbedder(final)

    # 3. the numpy network (fp16 weights) against torch, on dev frames
    ims = q["prod_refs"][:64]
    x = torch.from_numpy(np.stack([np.asarray(im, np.float32) / 255.0 for im in ims])).permute(0, 3, 1, 2)
    W, mu = whitening(z, None if best == "None" else float(best), st["dim"])
    ref = raw_features(net, x).numpy().astype(np.float64) - 0  # before whitening
    ref = (ref - mu) @ W.T
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cos = np.sum(ref * anim.embed(ims), axis=1)
    print(f"numpy fp16 vs torch fp32: cosine min {cos.min():.5f} mean {cos.mean():.5f}")
    if cos.min() < 0.999:
        raise SystemExit("the numpy network does not reproduce torch's output")

    # 4. the fusion weight, on the same check
    import pickle

    from matcher.embed.classic import ClassicEmbedder

    cached = args.data / "devcheck-classic.pkl"  # classic has no weights: its check embeddings never change
    if cached.exists() and cached.stat().st_mtime > (args.data / "devcheck.pkl").stat().st_mtime:
        classic_emb = pickle.loads(cached.read_bytes())
    else:
        classic_emb = devcheck.embed_all(ClassicEmbedder().embed, q)
        cached.write_bytes(pickle.dumps(classic_emb))
    anim_emb = embeddings[best]
    classic_res = devcheck.score(devcheck.sims_from(classic_emb), q)
    fusion = {}
    for w in (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        fusion[str(w)] = devcheck.score(devcheck.fused_sims(anim_emb, classic_emb, w), q)
        print(
            f"fusion w {w}: copy {fusion[str(w)]['copy/mean']:.3f} prod {fusion[str(w)]['prod/mean']:.3f}",
            flush=True,
        )
    w_best = float(max(fusion, key=lambda k: fusion[k]["copy/mean"] + fusion[k]["prod/mean"]))
    sha = hashlib.sha256(final.read_bytes()).hexdigest()
    report = {
        "sha256": sha,
        "bytes": final.stat().st_size,
        "whitening_shrink": best,
        "fusion_weight": w_best,
        "dev": {"anim": results[best], "classic": classic_res, "anim+classic": fusion[str(w_best)]},
        "whitening": results,
        "fusion": fusion,
        "numpy_vs_torch_cosine_min": float(cos.min()),
        "train": {
            "step": st["step"],
            "frames": st["seen"],
            "minutes": st["elapsed"] / 60,
            "arch": st["arch"],
        },
    }
    (args.run / f"export{tag}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("sha256", "bytes", "whitening_shrink", "fusion_weight")}))
    if args.install:
        anim_mod.WEIGHTS_DIR.mkdir(exist_ok=True)
        shutil.copyfile(final, anim_mod.WEIGHTS_FILE)
        src = Path(anim_mod.__file__)
        text = src.read_text()
        text = re.sub(r'WEIGHTS_SHA256 = "[0-9a-f]{64}"', f'WEIGHTS_SHA256 = "{sha}"', text)
        text = re.sub(r"FUSION_WEIGHT = [0-9.]+", f"FUSION_WEIGHT = {w_best}", text)
        src.write_text(text)
        print(f"installed {anim_mod.WEIGHTS_FILE} (sha256 {sha})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
