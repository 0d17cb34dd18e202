"""OpenCV's 8-bit RGB <-> HSV conversions, vectorised in numpy (no OpenCV, no matplotlib).

mmseg's ``PhotoMetricDistortion`` changes saturation and hue through ``mmcv.bgr2hsv`` /
``mmcv.hsv2bgr``, which are ``cv2.cvtColor`` with ``COLOR_BGR2HSV`` / ``COLOR_HSV2BGR`` on uint8
images. These functions compute the same numbers, following OpenCV's ``RGB2HSV_b`` and
``HSV2RGB_b`` (``modules/imgproc/src/color_hsv.simd.hpp``):

- RGB -> HSV is integer arithmetic with OpenCV's 12-bit fixed-point division tables:
  ``V = max``, ``S = round(255 * (V - min) / V)``, ``H = round(30 * (...) / (V - min))``
  in 0..179 (the 8-bit ``hrange`` of 180), ties and priorities (``V == R`` first, then
  ``V == G``) as OpenCV's;
- HSV -> RGB converts to float32 (``H * 6/180``, ``S / 255``, ``V / 255``), picks the sector's
  ``V``, ``V(1-S)``, ``V(1-S f)``, ``V(1-S(1-f))`` and truncates ``x * 255``, as OpenCV's SIMD
  path (``HSV2RGB_simd`` + ``v_trunc``) does for all but a row's last few pixels; ``1 - S f`` and
  ``1 - S(1-f)`` are rounded once, as the fused multiply-add the compiler makes of them.

Checked against the opencv-python-headless wheels 4.8.1 and 5.0.0 (x86-64) over every input: all
16.7M RGB colours and all 11.8M HSV triples (H < 180) give identical bytes. OpenCV builds differ
among themselves by one grey level at most (the scalar tail rounds instead of truncating; a build
without FMA rounds twice).

Images are ``(H, W, 3)`` uint8 in RGB order (mmseg's BGR images give the same HSV); the
``*_planes`` forms take and give the three channels as separate arrays (channel-first data).
"""

from __future__ import annotations

from functools import cache

import numpy as np

__all__ = ["hsv_to_rgb", "hsv_to_rgb_planes", "rgb_to_hsv", "rgb_to_hsv_planes"]

_SHIFT = 12
_HALF = 1 << (_SHIFT - 1)
#: (sector, channel r/g/b) -> which of (V, P = V(1-S), M = the sector's middle value) it takes; from OpenCV's
#: ``sector_data`` {b, g, r} = {{1,3,0}, {1,0,2}, {3,0,1}, {0,2,1}, {0,1,3}, {2,1,0}} over (V, P, Q, T)
_ROLE_RGB = np.array([[0, 2, 1], [2, 0, 1], [1, 0, 2], [1, 2, 0], [2, 1, 0], [0, 1, 2]], dtype=np.uint8)
_NUM_OFFSET = 255  # the hue numerator runs over -diff .. 5 diff, i.e. -255 .. 1275
_NUM_SPAN = 6 * 255 + 1


@cache
def _tables() -> dict[str, np.ndarray]:
    """Lookup tables (about 0.6 MB) that give OpenCV's numbers with a few gathers per pixel.

    ``s``: S by ``(V << 8) | diff``; ``h``: H by ``diff * 1531 + num + 255``, from OpenCV's
    ``sdiv_table`` / ``hdiv_table180`` (``round((255 << 12) / i)``, ``round((180 << 12) / (6 i))``)
    and its fixed-point formulas. ``sector``, ``vf``: the float sector of H and V / 255;
    ``vp``: V | ``trunc(255 V(1-S))`` << 8 (OpenCV's P) by ``(S << 8) | V``; ``m``: ``1 - S g`` by ``(S << 8) | H`` with
    ``g`` = f (odd sectors, OpenCV's Q) or ``1 - f`` (even sectors, T), rounded once (an FMA).
    """
    i = np.arange(256, dtype=np.float64)
    with np.errstate(divide="ignore"):
        sdiv = np.where(i > 0, np.rint((255 << _SHIFT) / np.maximum(i, 1)), 0).astype(np.int64)
        hdiv = np.where(i > 0, np.rint((180 << _SHIFT) / (6.0 * np.maximum(i, 1))), 0).astype(np.int64)
    v, diff = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    s_tab = ((diff * sdiv[v] + _HALF) >> _SHIFT).clip(0, 255).astype(np.uint8).reshape(-1)
    d, num = np.meshgrid(np.arange(256), np.arange(_NUM_SPAN) - _NUM_OFFSET, indexing="ij")
    h = (num * hdiv[d] + _HALF) >> _SHIFT
    h_tab = np.where(h < 0, h + 180, h).clip(0, 255).astype(np.uint8).reshape(-1)

    hue = np.arange(256, dtype=np.float32) * (np.float32(6.0) / np.float32(180.0))
    pre = np.trunc(hue)
    f = hue - pre
    sector = (pre - np.trunc(pre * np.float32(1.0 / 6.0)) * np.float32(6.0)).astype(np.uint8)
    g = np.where(sector % 2 == 1, f, np.float32(1.0) - f).astype(np.float32)
    inv255 = np.float32(1.0) / np.float32(255.0)
    unit = np.arange(256, dtype=np.float32) * inv255  # S / 255 and V / 255
    sf, vf = np.meshgrid(unit, unit, indexing="ij")
    p_tab = (vf * (np.float32(1.0) - sf) * np.float32(255.0)).astype(np.uint8)
    # V in byte 0 and P in byte 1 of one word, by (S << 8) | V
    vp_tab = (np.arange(256, dtype=np.uint32)[None, :] | (p_tab.astype(np.uint32) << 8)).reshape(-1)
    sg, gg = np.meshgrid(unit.astype(np.float64), g.astype(np.float64), indexing="ij")
    m_tab = (1.0 - sg * gg).astype(np.float32).reshape(-1)  # s * g is exact in float64: one rounding
    shift = (8 * _ROLE_RGB[sector].T).astype(np.uint32)  # (channel, H): the byte (V, P, M) of that channel
    return {"s": s_tab, "h": h_tab, "vf": unit, "vp": vp_tab, "m": m_tab, "shift": shift}


def rgb_to_hsv_planes(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 R, G, B planes (any equal shapes) -> uint8 H (0..179), S, V planes (``cv2.COLOR_RGB2HSV``)."""
    t = _tables()
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = np.take(t["s"], (v.astype(np.int32) << 8) | diff)
    r16, g16, b16, d16 = (a.astype(np.int16) for a in (r, g, b, diff))  # the numerator spans -255 .. 1275
    # OpenCV: V == R first, then V == G, else B
    num = np.where(v == r, g16 - b16, np.where(v == g, b16 - r16 + 2 * d16, r16 - g16 + 4 * d16))
    h = np.take(t["h"], diff.astype(np.int32) * _NUM_SPAN + num + _NUM_OFFSET)
    return h, s, v


def hsv_to_rgb_planes(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 H (0..179), S, V planes -> uint8 R, G, B planes (``cv2.COLOR_HSV2RGB``)."""
    t = _tables()
    s_hi = s.astype(np.int32) << 8
    # the sector's middle value: trunc(255 * V * (1 - S g)), in OpenCV's float32 order
    mid = (np.take(t["vf"], v) * np.take(t["m"], s_hi | h) * np.float32(255.0)).astype(np.uint32)
    # (V, P, M) packed in the bytes of one word; each channel shifts out the byte its sector picks
    packed = np.take(t["vp"], s_hi | v) | (mid << 16)
    r, g, b = ((packed >> np.take(t["shift"][c], h)).astype(np.uint8) for c in range(3))  # the low byte
    return r, g, b


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> uint8 HSV with H in 0..179, S and V in 0..255 (``cv2.COLOR_RGB2HSV``)."""
    return np.stack(rgb_to_hsv_planes(rgb[..., 0], rgb[..., 1], rgb[..., 2]), axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 HSV (H in 0..179) -> uint8 RGB (``cv2.COLOR_HSV2RGB``)."""
    return np.stack(hsv_to_rgb_planes(hsv[..., 0], hsv[..., 1], hsv[..., 2]), axis=-1)
