"""Reference stills from video: sample at scene changes as well as at an interval, drop near-duplicates.

An episode is ~30k frames, most of them held drawings, slow pans or repeats of the same shot. What
the index needs is one still per distinct picture, so `sample_video`:

- looks at the decoded frames at up to `detect_fps` per second through a tiny thumbnail (swscale
  reduces the frame to 32x18 RGB, ~0.1% of the pixels, so detection costs little next to decoding);
- takes a still at the first frame, at every scene cut (mean absolute thumbnail difference to the
  previous examined frame > `cut_threshold`), and whenever `every` seconds have passed since the
  last still taken;
- drops a still that is near-identical (thumbnail difference < `dup_threshold`) to the last still
  kept, extending that still's time range instead, so a 10-second hold is one still covering
  [t, t + 10].

Only kept stills are converted to full RGB images. Each is a `VideoStill(start, end, image)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

THUMB_W, THUMB_H = 32, 18
DEFAULT_DETECT_FPS = 6.0
#: Mean absolute difference (0..1) of consecutive 32x18 thumbnails that counts as a cut.
DEFAULT_CUT = 0.12
#: Below this difference (0..1) a still is a near-duplicate of the last one kept (compression noise
#: and small mouth/eye movements in a held drawing are ~0.005-0.015).
DEFAULT_DUP = 0.02


@dataclass
class VideoStill:
    start: float  # seconds: when this picture first appears
    end: float  # seconds: last sampled time it was still showing (>= start)
    image: object  # PIL.Image RGB


def _thumb(frame) -> np.ndarray:
    small = frame.reformat(width=THUMB_W, height=THUMB_H, format="rgb24")
    return small.to_ndarray().astype(np.float32) / 255.0


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, 0 (identical) .. 1."""
    return float(np.abs(a - b).mean())


def sample_video(
    path: str | os.PathLike,
    every: float = 1.0,
    *,
    scenes: bool = True,
    dedupe: bool = True,
    detect_fps: float = DEFAULT_DETECT_FPS,
    cut_threshold: float = DEFAULT_CUT,
    dup_threshold: float = DEFAULT_DUP,
    max_pixels: int | None = None,
) -> Iterator[VideoStill]:
    """Distinct stills of a video in time order; see the module docstring.

    Raises `matcher.decode.sources.InputError` for unreadable videos (the caller reports it per file).
    """
    import av

    from matcher.decode.sources import MAX_PIXELS, InputError

    if every <= 0:
        raise ValueError("every must be > 0")
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise InputError(path, f"not a readable video ({type(exc).__name__}: {exc})") from None
    step = 1.0 / detect_fps if (scenes or dedupe) and detect_fps > 0 else every
    with container:
        if not container.streams.video:
            raise InputError(path, "container has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        w, h = stream.codec_context.width or 0, stream.codec_context.height or 0
        if w * h > max_pixels:
            raise InputError(path, f"refused: {w}x{h} video frames exceed the {max_pixels} pixel limit")
        pending: VideoStill | None = None  # last kept still, yielded once its range is final
        kept_thumb = prev_thumb = None
        next_look = next_take = 0.0
        try:
            for frame in container.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                t = round(float(frame.pts * frame.time_base), 3)
                if t + 1e-6 < next_look:
                    continue
                # the codec context's size is only the header's claim: each frame can differ
                if frame.width * frame.height > max_pixels:
                    raise InputError(
                        path,
                        f"refused: video frame at {t:.3f} s is {frame.width}x{frame.height}, over the "
                        f"{max_pixels} pixel limit (the header said {w}x{h})",
                    )
                next_look = t + step
                thumb = _thumb(frame) if (scenes or dedupe) else None
                cut = scenes and prev_thumb is not None and difference(thumb, prev_thumb) > cut_threshold
                prev_thumb = thumb
                if not (cut or t + 1e-6 >= next_take):
                    if pending is not None and dedupe and difference(thumb, kept_thumb) < dup_threshold:
                        pending.end = t
                    continue
                next_take = t + every
                if pending is not None and dedupe and difference(thumb, kept_thumb) < dup_threshold:
                    pending.end = t  # same picture still showing: extend, do not add
                    continue
                if pending is not None:
                    yield pending
                pending = VideoStill(t, t, frame.to_image().convert("RGB"))
                kept_thumb = thumb
        except av.error.FFmpegError as exc:
            raise InputError(path, f"video decoding failed ({exc})") from None
        if pending is not None:
            yield pending
