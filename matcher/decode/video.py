"""Reference stills from video (`--distinct`, used by `index add`): what makes two frames one picture.

An episode is ~30k frames, most of them held drawings, slow pans or repeats of the same shot. What
the index needs is one still per distinct picture, so the decoder (matcher.decode.decoder, with
`Limits(distinct=True)`):

- looks at the decoded frames at DEFAULT_DETECT_FPS per second through a tiny thumbnail (swscale
  reduces the frame to 32x18 RGB, ~0.1% of the pixels, so detection costs little next to decoding);
- takes a still at the first frame, at every scene cut (mean absolute thumbnail difference to the
  previous examined frame > DEFAULT_CUT), and whenever `every` seconds have passed since the
  last still taken;
- drops a still that is near-identical (thumbnail difference < DEFAULT_DUP) to the last still
  kept, extending that still's time range instead, so a 10-second hold is one still covering
  [t, t + 10].

Only kept stills are converted to RGB images; each carries `timestamp` and `timestamp_end`.
"""

from __future__ import annotations

import numpy as np

THUMB_W, THUMB_H = 32, 18
DEFAULT_DETECT_FPS = 6.0
#: Mean absolute difference (0..1) of consecutive 32x18 thumbnails that counts as a cut.
DEFAULT_CUT = 0.12
#: Below this difference (0..1) a still is a near-duplicate of the last one kept (compression noise
#: and small mouth/eye movements in a held drawing are ~0.005-0.015).
DEFAULT_DUP = 0.02


def thumbnail(frame) -> np.ndarray:
    small = frame.reformat(width=THUMB_W, height=THUMB_H, format="rgb24")
    return small.to_ndarray().astype(np.float32) / 255.0


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, 0 (identical) .. 1."""
    return float(np.abs(a - b).mean())
