"""The embedder registry: one entry point turns a model spec string into an embedder.

Every embedder has the same small interface, declared by `Embedder`: what the pipeline calls is
`prepare(image)` in the decode workers and `embed_prepared(batch) -> float32 (n, dim)` in the main
process (or on a Ray actor); rows have norm <= 1: unit norm, or (an embedder with a `coverage`
function, like classic) the squared norm is the share of the descriptor a still provides. Specs:

- ``classic``        weights-free pixel descriptor (numpy + Pillow only; never imports torch)
- ``clip``           ``clip:ViT-B-32`` with the ``laion2b_s34b_b79k`` weights
- ``clip:ARCH``      any open_clip architecture; weights from ``pretrained`` (an open_clip tag, fetched
                     once into the models dir, or a local checkpoint file for air-gapped machines)
- ``anim``           matcher's own learned embedder (weights shipped in the package, run by numpy)
- ``anim+classic``   anim fused with classic (``anim+classic:W`` sets anim's weight W in 0..1)

New families plug in with `register_embedder` (the benchmark registers its peer descriptors this way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from matcher.errors import MatcherError


class EmbedderError(MatcherError):
    """A model spec cannot be turned into an embedder (unknown spec, weights missing or unreadable)."""


@runtime_checkable
class Embedder(Protocol):
    """Everything the pipeline, the scorer and the Ray executor use of an embedder."""

    spec: str  # canonical spec string, recorded in the index manifest
    dim: int
    fingerprint: str  # identifies the exact weights/algorithm version; recorded and checked on open
    pretrained: str | None  # weights the embedder was built with (None for weights-free ones)
    device: str  # where embed_prepared runs: "cpu" or "cuda"
    #: True when embed_prepared runs torch: on CPU it needs the cores, so fewer decode workers start
    uses_torch: bool
    #: evidence share (0..1) of each vector, e.g. classic's ~0.6 for a grey still; None: every vector
    #: is full evidence (the scorer then has no grey or sketch thresholds)
    coverage: Callable[[np.ndarray], np.ndarray] | None

    def prepare(self, image) -> Any:
        """Decode-side work on one RGB still (resize, crop, trim): runs in the decode workers, so it
        needs only Pillow/numpy, and its result must pickle small."""
        ...

    def embed_prepared(self, batch: Sequence) -> np.ndarray:
        """Outputs of `prepare` -> float32 (len(batch), dim), rows of norm <= 1."""
        ...

    def embed(self, images: Sequence) -> np.ndarray:
        """PIL images -> float32 (len(images), dim): `prepare` then `embed_prepared`."""
        ...


#: What every embedder has (create_embedder checks it).
PROTOCOL = ("spec", "dim", "fingerprint", "pretrained", "device", "uses_torch", "coverage", "prepare",
            "embed_prepared", "embed")  # fmt: skip

Factory = Callable[..., Embedder]
_FACTORIES: dict[str, Factory] = {}


def register_embedder(family: str, factory: Factory) -> None:
    """Make ``family`` and ``family:VARIANT`` specs resolve to ``factory(variant, **options)``."""
    _FACTORIES[family] = factory


def _classic(variant: str | None, **_options) -> Embedder:
    from matcher.embed.classic import ClassicEmbedder

    if variant:
        raise EmbedderError(f"unknown classic variant {variant!r}: use 'classic'")
    return ClassicEmbedder()


def _clip(variant: str | None, pretrained: str | None = None, models_dir=None, device=None, **_o) -> Embedder:
    from matcher.embed.clip import DEFAULT_ARCH, DEFAULT_PRETRAINED, ClipEmbedder

    arch = variant or DEFAULT_ARCH
    if pretrained is None and arch == DEFAULT_ARCH:
        pretrained = DEFAULT_PRETRAINED
    return ClipEmbedder(arch, pretrained=pretrained, models_dir=models_dir, device=device)


def _anim(variant: str | None, pretrained: str | None = None, **_options) -> Embedder:
    from matcher.embed.anim import AnimEmbedder

    if variant:
        raise EmbedderError(f"unknown anim variant {variant!r}: use 'anim' or 'anim+classic'")
    return AnimEmbedder(pretrained)


def _anim_classic(variant: str | None, pretrained: str | None = None, **_options) -> Embedder:
    from matcher.embed.anim import FUSION_WEIGHT, AnimEmbedder, FusedEmbedder

    weight = FUSION_WEIGHT
    if variant:
        try:
            weight = float(variant)
        except ValueError:
            weight = -1.0
        if not 0.0 < weight < 1.0:
            raise EmbedderError(f"anim+classic:{variant}: the anim weight must be a number between 0 and 1")
    return FusedEmbedder(AnimEmbedder(pretrained), weight, explicit=bool(variant))


register_embedder("classic", _classic)
register_embedder("clip", _clip)
register_embedder("anim", _anim)
register_embedder("anim+classic", _anim_classic)


def create_embedder(spec: str, **options) -> Embedder:
    """Turn a model spec (``classic``, ``clip``, ``clip:ViT-L-14`` ...) into a ready embedder.

    Options are passed to the family's factory: for clip, ``pretrained`` (tag or checkpoint file),
    ``models_dir`` (weights cache) and ``device``.
    """
    family, _, variant = spec.strip().partition(":")
    factory = _FACTORIES.get(family)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES))
        raise EmbedderError(f"unknown model spec {spec!r} (known families: {known})")
    embedder = factory(variant or None, **options)
    missing = [name for name in PROTOCOL if not hasattr(embedder, name)]
    if missing:  # caught here, not as an AttributeError deep in a worker pool
        raise EmbedderError(
            f"{spec}: {type(embedder).__name__} lacks {', '.join(missing)} (see matcher.embed.Embedder)"
        )
    return embedder


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; all-zero rows stay zero instead of turning into NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


__all__ = ["Embedder", "EmbedderError", "create_embedder", "register_embedder", "l2_normalise"]
