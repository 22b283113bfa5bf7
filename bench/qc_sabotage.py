"""The failure classes of the stain-QC issue, applied to one marker of a clean stack.

Every function returns a new stack (the input is never changed) and, for regional
failures, the box it touched. The amounts are the issue's: a region blank (background
level) or dimmed 4-fold, a marker missing (background only), a marker that is only noise
(its own values in random order: same histogram, no spatial structure), a round shifted
by 4 to 20 pixels.
"""

from __future__ import annotations

import numpy as np

CLASSES = ["blank_region", "dim_region", "missing", "noise", "misregistered"]
DIM_FACTOR = 0.25


def _box(shape, rng, size):
    h, w = shape
    size = min(size, h // 2, w // 2)
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return (y, x, y + size, x + size)


def sabotage(stack, names, marker, kind, seed=0, box_size=None):
    """``(new stack, box or None)``: ``kind`` (one of CLASSES) applied to ``marker``."""
    rng = np.random.default_rng(seed)
    out = np.array(stack, copy=True)
    c = list(names).index(marker)
    channel = out[c].astype(np.float64)
    background = float(np.percentile(channel, 1))
    box = None
    if kind in ("blank_region", "dim_region"):
        box = _box(channel.shape[-2:], rng, box_size or max(channel.shape[-2:]) * 3 // 8)
        y0, x0, y1, x1 = box
        part = channel[y0:y1, x0:x1]
        if kind == "blank_region":
            part[:] = background
        elif np.issubdtype(out.dtype, np.integer) and background == 0:
            part[:] = rng.binomial(part.astype(np.int64), DIM_FACTOR)  # counts: each kept with p = 1/4
        else:
            part[:] = background + (part - background) * DIM_FACTOR
    elif kind == "missing":
        low = channel[channel <= np.median(channel)]
        channel[:] = rng.choice(low, size=channel.shape)
    elif kind == "noise":
        channel[:] = rng.permutation(channel.ravel()).reshape(channel.shape)
    elif kind == "misregistered":
        dy, dx = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(4, 21, size=2))
        channel[:] = np.roll(channel, (dy, dx), axis=(0, 1))
        box = None
    else:
        raise ValueError(kind)
    out[c] = np.clip(np.round(channel), 0, np.iinfo(out.dtype).max if out.dtype.kind in "ui" else None).astype(out.dtype) \
        if out.dtype.kind in "ui" else channel.astype(out.dtype)
    return out, box
