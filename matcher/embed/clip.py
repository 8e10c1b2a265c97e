"""`clip:ARCH`: open_clip image towers as embedders.

Weights come from ``pretrained``: either an open_clip tag (fetched once into the models dir, then read
from there) or a local checkpoint file, which is how air-gapped machines use real weights. Both paths
end in the same place: a checkpoint file on disk, loaded by open_clip and fingerprinted by its sha256.

Architectures are data, as in open_clip: any ``*.json`` model config dropped into the models dir is
registered with open_clip, so a custom or distilled architecture needs no code change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from matcher.embed import EmbedderError

DEFAULT_ARCH = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


def resolve_models_dir(override: str | os.PathLike | None = None) -> Path:
    """Where weights live: the argument, else $MATCHER_MODELS, else ./models."""
    return Path(override or os.environ.get("MATCHER_MODELS") or "models").expanduser()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(path: Path) -> str:
    """sha256 of a checkpoint, cached beside it by (size, mtime) so that opening an index stays fast."""
    st = path.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}"
    sidecar = path.with_name(path.name + ".sha256.json")
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("key") == key:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = file_sha256(path)
    try:
        sidecar.write_text(json.dumps({"key": key, "sha256": digest}))
    except OSError:
        pass  # read-only weights directory: fingerprint is recomputed next time, still correct
    return digest


def _hub_file(cfg: dict) -> tuple[str, str] | None:
    """(repo_id, filename) of a tag's checkpoint on the Hugging Face hub, or None when it has none."""
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return None
    parts = repo.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:]) or "open_clip_model.safetensors"


def local_name(arch: str, pretrained: str, filename: str) -> str:
    """The file name under the models dir where a hand-copied checkpoint of a tag is looked for."""
    return f"{arch}-{pretrained}{Path(filename).suffix or '.bin'}"


def _how_to_provide(arch: str, pretrained: str, where: Path, cfg: dict | None = None) -> str:
    hub = _hub_file(cfg or {})
    if hub is not None:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        url = f"{endpoint}/{hub[0]}/resolve/main/{hub[1]}"
        target = where.expanduser().absolute() / local_name(arch, pretrained, hub[1])
        return (
            f"cannot download weights {pretrained!r} for clip:{arch} (no network). On a connected "
            f"machine fetch {url} and save it here as {target} (or pass the file with --pretrained FILE)"
        )
    return (
        f"cannot obtain weights {pretrained!r} for clip:{arch}: pass a local checkpoint file with "
        f"--pretrained FILE (.bin/.pt/.safetensors), or copy the open_clip cache into {where} "
        "(env MATCHER_MODELS)"
    )


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the weights' host accepts a connection within ``timeout`` s (DNS included): without
    network, open_clip's download retries for about a minute before it fails."""
    import concurrent.futures
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)

    def connect() -> bool:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to connect means: not reachable now
        return False
    finally:
        pool.shutdown(wait=False)


def _register_model_configs(where: Path) -> None:
    import open_clip

    if where.is_dir() and any(where.glob("*.json")):
        open_clip.add_model_config(where)


def _cached_checkpoint(cfg: dict, where: Path) -> Path | None:
    """A tag's checkpoint already in the models dir, found without touching the network."""
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo or not where.is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    parts = repo.split("/")  # "org/name" or "org/name/filename"
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=str(where))
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def resolve_weights(arch: str, pretrained: str, where: Path) -> tuple[Path, dict]:
    """Turn a tag or a file into a local checkpoint path (+ the tag's preprocessing config)."""
    import open_clip

    candidate = Path(pretrained).expanduser()
    if candidate.is_file():
        return candidate, {}
    if os.sep in pretrained or candidate.suffix in {".pt", ".bin", ".pth", ".safetensors"}:
        raise EmbedderError(f"{pretrained}: checkpoint file not found")
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise EmbedderError(f"unknown pretrained tag {pretrained!r} for clip:{arch} (known tags: {tags})")
    cached = _cached_checkpoint(cfg, where)
    if cached is not None:
        return cached, cfg
    hub = _hub_file(cfg)
    if hub is not None and (where / local_name(arch, pretrained, hub[1])).is_file():
        return where / local_name(arch, pretrained, hub[1]), cfg
    offline = os.environ.get("MATCHER_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if offline or not _reachable(endpoint):
        raise EmbedderError(_how_to_provide(arch, pretrained, where, cfg))
    created = not where.exists()
    where.mkdir(parents=True, exist_ok=True)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # one clear error, not retry noise
    local, error = None, None
    try:
        local = open_clip.download_pretrained(cfg, cache_dir=str(where))
    except Exception as exc:  # network errors come in many types (requests, hf_hub, urllib)
        error = exc
    if not local or not Path(local).is_file():
        if created:  # leave no empty models/ behind
            import shutil

            shutil.rmtree(where, ignore_errors=True)
        raise EmbedderError(_how_to_provide(arch, pretrained, where, cfg)) from error
    return Path(local), cfg


def pick_device(requested: str | None = None) -> str:
    import torch

    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class ClipEmbedder:
    """An open_clip image tower; embeddings are the L2-normalised image features."""

    def __init__(self, arch: str, pretrained: str | None, models_dir=None, device: str | None = None):
        import open_clip
        import torch

        where = resolve_models_dir(models_dir)
        _register_model_configs(where)
        if arch not in open_clip.list_models():
            raise EmbedderError(
                f"unknown open_clip architecture {arch!r}; add its JSON config to {where} or pick one of "
                f"open_clip.list_models()"
            )
        if not pretrained:
            raise EmbedderError(_how_to_provide(arch, "(none given)", where))
        checkpoint, cfg = resolve_weights(arch, pretrained, where)
        self.device = pick_device(device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch,
                pretrained=str(checkpoint),
                device=self.device,
                image_mean=cfg.get("mean"),  # a tag's own normalisation; a bare file uses the default
                image_std=cfg.get("std"),
            )
        except Exception as exc:  # corrupt file, wrong architecture, truncated download
            raise EmbedderError(f"{checkpoint}: cannot load as clip:{arch} weights ({exc})") from exc
        model.eval()
        if self.device == "cpu":
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        elif self.device == "cuda":
            # Half precision on GPU: bf16 where supported (no overflow), else fp16.
            self._dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._channels_last = not arch.startswith("ViT")  # helps conv towers (RN, ConvNeXt) only
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._pil_side, self._mean, self._std = _split_preprocess(preprocess)
        # prepare (Embedder protocol): the PIL half of the model's preprocess (resize, crop) as an
        # HxWx3 uint8 array, run in decode workers without torch; it pickles small for Ray, unlike a
        # method bound to the model. A preprocess of unknown layout runs whole (a CHW float tensor).
        self.prepare = self._pil_side if self._pil_side is not None else self._preprocess_whole
        self._torch = torch
        self.model = model
        self.preprocess = preprocess
        self.arch = arch
        self.models_dir = str(where)  # the ray engine rebuilds this embedder in its actors
        self.spec = f"clip:{arch}"
        self.pretrained = pretrained if not Path(pretrained).expanduser().is_file() else str(checkpoint)
        self.fingerprint = weights_fingerprint(checkpoint)[:16]
        self.dim = int(model.visual.output_dim)

    uses_torch = True
    coverage = None  # unit vectors: every still is full evidence

    def _preprocess_whole(self, image):
        return self.preprocess(image.convert("RGB"))

    def embed(self, images: Sequence) -> np.ndarray:
        return self.embed_prepared([self.prepare(im) for im in images])

    def embed_prepared(self, batch: Sequence) -> np.ndarray:
        """Embed outputs of `prepare`: one batch conversion + normalisation, then the forward pass
        (autocast on GPU)."""
        torch = self._torch
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if isinstance(batch[0], torch.Tensor):  # preprocess of unknown layout: already normalised
            x = torch.stack(list(batch)).to(self.device)
        else:
            x = torch.from_numpy(np.stack(batch)).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self._mean.to(x.device)) / self._std.to(x.device)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = getattr(self, "_dtype", None)
        with torch.inference_mode(), torch.autocast(self.device, dtype=dtype, enabled=dtype is not None):
            feats = self.model.encode_image(x)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)


class _PilSide:
    """The PIL half of an open_clip preprocess (resize, crop, mode), returning HxWx3 uint8: runs in
    decode workers without touching torch, and pickles small (spawn start method)."""

    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, image) -> np.ndarray:
        for t in self.transforms:
            image = t(image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _split_preprocess(preprocess):
    """(PIL-side callable, mean, std as (1,3,1,1) tensors) from an open_clip Compose."""
    import torch

    steps = list(getattr(preprocess, "transforms", []))
    cut = next((i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__), None)
    norm = next((t for t in steps if type(t).__name__ == "Normalize"), None)
    if cut is None or norm is None or any(type(t).__name__ not in ("Normalize",) for t in steps[cut + 1 :]):
        return None, None, None  # unknown layout: the pipeline falls back to prepare()/embed()
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1)
    return _PilSide(steps[:cut]), mean, std
