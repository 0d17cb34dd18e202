"""Blend windows: per-tile weights for the weighted average of overlapping softmax outputs.

A tile's weight is the outer product of two 1-D profiles, one per axis. Profiles are sampled
at pixel centres, so they are strictly positive inside the tile:

- ``hann``: ``sin^2(pi (i + 0.5) / n)`` over the whole tile (Pielawski & Waehlby 2020: the best
  of the common windows). When the overlap is under a quarter of the tile, a full Hann would
  give a large part of each tile's well-predicted interior a low weight for nothing, so
  ``hann`` falls back to ``taper`` there.
- ``taper``: 1 in the middle, a raised-cosine ramp over the ``overlap`` px at each side.
- ``none``: centre crop. Each tile owns the pixels closer to its centre than to its neighbours'
  (the split is at the middle of each overlap); weight 1 there, 0 elsewhere.

On a side that touches the scene border no neighbour shares the pixels, so the profile stays
flat (at its peak) from that border to the centre instead of falling to ~0.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["BlendMode", "axis_profiles", "effective_mode", "profile"]

BlendMode = Literal["hann", "taper", "none"]


def effective_mode(mode: BlendMode, tile: int, overlap: int) -> BlendMode:
    """``hann`` becomes ``taper`` when ``overlap < tile / 4``."""
    if mode == "hann" and 4 * overlap < tile:
        return "taper"
    return mode


def profile(n: int, overlap: int, mode: BlendMode, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D weights ``(n,)`` float32 of a ``hann`` or ``taper`` tile; flat on border sides."""
    i = np.arange(n, dtype=np.float64) + 0.5
    if mode == "hann":
        w = np.sin(np.pi * i / n) ** 2
    elif mode == "taper":
        w = np.ones(n, dtype=np.float64)
        if overlap > 0:
            ramp = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
            m = min(overlap, n // 2)
            w[:m] = ramp[:m]
            w[n - m :] = ramp[:m][::-1]
    else:
        raise ValueError(f"profile() does not handle blend mode {mode!r}")
    mid = n // 2
    if at_start:
        w[:mid] = w[mid]
    if at_end:
        w[mid:] = w[mid]
    return w.astype(np.float32)


def axis_profiles(starts: list[int], tile: int, overlap: int, mode: BlendMode) -> list[np.ndarray]:
    """The profile ``(tile,)`` float32 of every tile along one axis (``starts`` from :func:`axis_starts`).

    The first and last tiles touch the scene border (a lone tile, as on a small scene, both).
    """
    mode = effective_mode(mode, tile, overlap)
    out: list[np.ndarray] = []
    for k, s in enumerate(starts):
        at_start = k == 0
        at_end = k == len(starts) - 1
        if mode != "none":
            out.append(profile(tile, overlap, mode, at_start, at_end))
            continue
        # centre crop: own [lo, hi) in tile coordinates, split at the middle of each overlap
        lo = 0 if at_start else (starts[k - 1] + tile + s) // 2 - s
        hi = tile if at_end else (s + tile + starts[k + 1]) // 2 - s
        w = np.zeros(tile, dtype=np.float32)
        w[lo:hi] = 1.0
        out.append(w)
    return out
