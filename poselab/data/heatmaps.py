"""Keypoint heatmaps: Gaussian targets, sub-pixel decoding, pixel conversions, class imbalance.

Frames and units
----------------
* **Image pixels** follow the project convention: pixel ``(0, 0)`` is the *centre* of the
  top-left pixel, so an image of width ``W`` spans ``u`` in ``[-0.5, W - 0.5]``. Keypoints
  are ``(..., 2)`` with ``(u, v)`` = (column, row).
* **Heatmap pixels** use the same convention on the heatmap grid. A network with output
  stride ``s`` (image size / heatmap size) maps image pixel ``u`` to heatmap pixel
  ``(u + 0.5) / s - 0.5``: the heatmap pixel ``i`` covers image pixels ``[i s - 0.5, (i + 1) s - 0.5]``
  and its centre is image pixel ``(i + 0.5) s - 0.5`` (:func:`to_heatmap_pixels`,
  :func:`to_image_pixels`). Both grids therefore span the same extent, with no half-pixel
  drift between them.
* Heatmap values are unitless, in ``[0, 1]`` for targets (peak 1 at the keypoint).

Everything is batched over images and keypoints (no Python loops over samples, keypoints or
pixels); results follow the input's device and dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from poselab.checks import check_choice, check_float_tensor, check_positive, check_size_pair

__all__ = [
    "DECODE_METHODS",
    "gaussian_heatmaps",
    "decode_heatmaps",
    "to_heatmap_pixels",
    "to_image_pixels",
    "foreground_ratio",
    "value_histogram",
]

DECODE_METHODS = ("argmax", "quarter", "taylor")
"""Sub-pixel decoders accepted by :func:`decode_heatmaps`."""

_LOG_FLOOR = 1e-10  # DARK's floor before taking the log of a heatmap


# ----------------------------------------------------------------------------- checks


def _check_points(arg: str, x) -> torch.Tensor:
    """``x`` must be a floating tensor ``(..., 2)``."""
    check_float_tensor(arg, x)
    if x.ndim < 1 or x.shape[-1] != 2:
        raise ValueError(f"{arg}: expected pixel coordinates of shape (..., 2) (last dim = u, v), got {tuple(x.shape)}")
    return x


def _check_heatmaps(arg: str, x) -> torch.Tensor:
    check_float_tensor(arg, x)
    if x.ndim != 4 or x.numel() == 0:
        raise ValueError(f"{arg}: expected a non-empty tensor of shape (B, K, h, w), got {tuple(x.shape)}")
    return x


def _check_stride(stride) -> float:
    check_positive("stride", stride)
    return float(stride)


# ----------------------------------------------------------------------------- pixel conventions


def to_heatmap_pixels(keypoints: torch.Tensor, stride: float) -> torch.Tensor:
    """Image pixels -> heatmap pixels for a network of output stride ``stride``.

    ``(u + 0.5) / stride - 0.5`` on both coordinates (pixel-centre convention, see the module
    docstring): e.g. for stride 4 the image pixels 0..3 form heatmap pixel 0, whose centre is
    image pixel 1.5.

    Args:
        keypoints: ``(..., 2)`` image pixels ``(u, v)``, floating point.
        stride: output stride > 0 (image size / heatmap size), e.g. 2 or 4.

    Returns:
        ``(..., 2)`` heatmap pixels, same dtype and device.
    """
    _check_points("keypoints", keypoints)
    s = _check_stride(stride)
    return (keypoints + 0.5) / s - 0.5


def to_image_pixels(coords: torch.Tensor, stride: float) -> torch.Tensor:
    """Heatmap pixels -> image pixels, the inverse of :func:`to_heatmap_pixels`.

    ``(c + 0.5) * stride - 0.5``.

    Args:
        coords: ``(..., 2)`` heatmap pixels, floating point.
        stride: output stride > 0.

    Returns:
        ``(..., 2)`` image pixels, same dtype and device.
    """
    _check_points("coords", coords)
    s = _check_stride(stride)
    return (coords + 0.5) * s - 0.5


# ----------------------------------------------------------------------------- targets


def gaussian_heatmaps(
    keypoints: torch.Tensor,
    size: tuple[int, int],
    sigma: float,
    visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unnormalised Gaussian target heatmaps, one per keypoint.

    ``H[b, k, y, x] = exp(-((x - u)^2 + (y - v)^2) / (2 sigma^2))`` with ``(u, v)`` the
    keypoint in heatmap pixels (sub-pixel positions are rendered as they are, not rounded),
    so the value is exactly 1 at a keypoint lying on a pixel centre and below 1 elsewhere.
    Unlike SimpleBaseline the Gaussian is not truncated at 3 sigma (values there are
    ``exp(-4.5) = 0.011``); a keypoint outside the map gives the tail of its Gaussian
    (mark such keypoints invisible if they should have no target). Invisible keypoints get
    all-zero maps; their coordinates are not used and may be NaN. Differentiable with respect
    to ``keypoints``.

    Args:
        keypoints: ``(B, K, 2)`` keypoints ``(u, v)`` in heatmap pixels (see
            :func:`to_heatmap_pixels`), floating point; finite where visible.
        size: ``(h, w)`` heatmap size.
        sigma: standard deviation in heatmap pixels, > 0 (SimpleBaseline: 2 at 64x48).
        visible: optional ``(B, K)`` bool mask; default all visible.

    Returns:
        ``(B, K, h, w)`` heatmaps in ``[0, 1]``, dtype and device of ``keypoints``.
    """
    check_float_tensor("keypoints", keypoints)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints: expected shape (B, K, 2) in heatmap pixels, got {tuple(keypoints.shape)}")
    h, w = check_size_pair("size", size)
    check_positive("sigma", sigma)
    if visible is None:
        vis = torch.ones(keypoints.shape[:2], dtype=torch.bool, device=keypoints.device)
    else:
        if not isinstance(visible, torch.Tensor) or visible.dtype != torch.bool:
            got = visible.dtype if isinstance(visible, torch.Tensor) else type(visible).__name__
            raise TypeError(f"visible: expected a bool tensor of shape {tuple(keypoints.shape[:2])}, got {got}")
        if tuple(visible.shape) != tuple(keypoints.shape[:2]):
            raise ValueError(f"visible: expected shape {tuple(keypoints.shape[:2])} (B, K), got {tuple(visible.shape)}")
        vis = visible.to(keypoints.device)
    if not bool(torch.isfinite(keypoints[vis]).all()):
        raise ValueError("keypoints: visible keypoints must be finite (NaN/inf is allowed only where visible is False)")
    kp = torch.where(vis.unsqueeze(-1), keypoints, torch.zeros((), dtype=keypoints.dtype, device=keypoints.device))
    xs = torch.arange(w, dtype=keypoints.dtype, device=keypoints.device)
    ys = torch.arange(h, dtype=keypoints.dtype, device=keypoints.device)
    inv = 1.0 / (2.0 * float(sigma) ** 2)
    # Separable: the 2D Gaussian is the outer product of two 1D Gaussians.
    gx = torch.exp(-((xs - kp[..., 0:1]) ** 2) * inv)  # (B, K, w)
    gy = torch.exp(-((ys - kp[..., 1:2]) ** 2) * inv)  # (B, K, h)
    maps = gy.unsqueeze(-1) * gx.unsqueeze(-2)  # (B, K, h, w)
    return maps * vis.to(maps.dtype)[..., None, None]


# ----------------------------------------------------------------------------- decoding


def _blur_radius(sigma: float) -> int:
    return max(1, math.ceil(3.0 * sigma))


def _gaussian_blur(heatmaps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, K, h, w)``, kernel radius ``ceil(3 sigma)``, zero padding
    (as DARK: the map is taken to be 0 outside its borders)."""
    radius = _blur_radius(sigma)
    t = torch.arange(-radius, radius + 1, dtype=heatmaps.dtype, device=heatmaps.device)
    kernel = torch.exp(-(t**2) / (2.0 * sigma**2))
    kernel = kernel / kernel.sum()
    b, k, h, w = heatmaps.shape
    x = heatmaps.reshape(b * k, 1, h, w)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, radius))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return x.reshape(b, k, h, w)


def decode_heatmaps(
    heatmaps: torch.Tensor, method: str = "quarter", blur_sigma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoint coordinates and confidences from heatmaps.

    Every method starts from the arg-max pixel of each map (the first one on ties); the
    score is the map's maximum value (so an all-zero map gives score 0 at pixel (0, 0)).

    ``"argmax"``
        The integer arg-max pixel (error up to 0.5 px per axis).
    ``"quarter"``
        SimpleBaseline (Xiao et al. 2018): the arg-max moved by 0.25 px towards the higher
        of its two neighbours, independently on each axis (no move on ties, or on an axis
        where the peak lies on the border and one neighbour is missing).
    ``"taylor"``
        DARK (Zhang et al. 2020): second-order Taylor expansion of the log-heatmap at the
        arg-max, ``offset = -Hessian^-1 gradient``, with central finite differences on the
        3x3 neighbourhood. The map is first blurred with a Gaussian of ``blur_sigma``
        (DARK's "distribution modulation", which smooths network outputs; a Gaussian stays a
        Gaussian) and floored at 1e-10 before the log. The blur is applied only where its
        window (radius ``ceil(3 blur_sigma)``) around the peak's 3x3 neighbourhood lies inside
        the map; nearer a border the raw map is used, because the zero padding of DARK's blur
        would drag the estimate inwards there. Exact for a Gaussian peak that is not on the
        border pixel itself. Where the peak lies on a border row (column) only the other axis
        is refined (1D Taylor step); no refinement (arg-max kept) in a corner or where the
        log-map is not concave (Hessian not negative definite). Offsets are clamped to
        +-0.5 px per axis (the arg-max pixel is the nearest pixel to the peak of a
        Gaussian, so a larger offset can only come from noise or a border).

    Args:
        heatmaps: ``(B, K, h, w)`` floating point.
        method: one of ``DECODE_METHODS``.
        blur_sigma: blur for ``"taylor"`` in heatmap pixels (>= 0; 0 = no blur). DARK blurs
            with the training sigma; the default 1.0 is a lighter modulation.

    Returns:
        ``coords (B, K, 2)`` ``(u, v)`` in heatmap pixels and ``scores (B, K)`` (the maxima),
        dtype and device of ``heatmaps``. Not meant for back-propagation (arg-max).
    """
    _check_heatmaps("heatmaps", heatmaps)
    check_choice("method", method, DECODE_METHODS)
    check_positive("blur_sigma", blur_sigma, allow_zero=True)
    if not bool(torch.isfinite(heatmaps).all()):
        raise ValueError("heatmaps: contains NaN or infinite values")
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, h * w)
    scores, idx = flat.max(dim=-1)
    x, y = idx % w, idx // w
    coords = torch.stack([x, y], dim=-1).to(heatmaps.dtype)
    if method == "argmax":
        return coords, scores

    inner_x = (x > 0) & (x < w - 1)
    inner_y = (y > 0) & (y < h - 1)

    def at(values, dy, dx):
        """values[b, k, y + dy, x + dx] with indices clamped into the map (masked later)."""
        yy = (y + dy).clamp(0, h - 1)
        xx = (x + dx).clamp(0, w - 1)
        return values.gather(-1, (yy * w + xx).unsqueeze(-1)).squeeze(-1)

    if method == "quarter":
        sx = torch.sign(at(flat, 0, 1) - at(flat, 0, -1)) * inner_x
        sy = torch.sign(at(flat, 1, 0) - at(flat, -1, 0)) * inner_y
        return coords + 0.25 * torch.stack([sx, sy], dim=-1), scores

    logs = heatmaps.clamp_min(_LOG_FLOOR).log().reshape(b, k, h * w)
    if blur_sigma > 0:
        # Modulate only where the blur window around the 3x3 neighbourhood lies inside the map:
        # nearer a border the zero padding would drag the peak inwards, so the raw map is used.
        r = _blur_radius(blur_sigma)
        fits = (x >= r + 1) & (x <= w - 2 - r) & (y >= r + 1) & (y <= h - 2 - r)
        blurred = _gaussian_blur(heatmaps, blur_sigma).clamp_min(_LOG_FLOOR).log().reshape(b, k, h * w)
        logs = torch.where(fits.unsqueeze(-1), blurred, logs)
    c = at(logs, 0, 0)
    left, right, up, down = at(logs, 0, -1), at(logs, 0, 1), at(logs, -1, 0), at(logs, 1, 0)
    dx = 0.5 * (right - left)
    dy = 0.5 * (down - up)
    dxx = right - 2.0 * c + left
    dyy = down - 2.0 * c + up
    dxy = 0.25 * (at(logs, 1, 1) - at(logs, 1, -1) - at(logs, -1, 1) + at(logs, -1, -1))
    det = dxx * dyy - dxy**2
    both = inner_x & inner_y & (det > 0) & (dxx < 0)  # 2D step: Hessian negative definite
    only_x = inner_x & ~inner_y & (dxx < 0)  # peak on a top/bottom border row: 1D step along x
    only_y = inner_y & ~inner_x & (dyy < 0)
    one = torch.ones_like(det)
    det_, dxx_, dyy_ = torch.where(both, det, one), torch.where(only_x, dxx, one), torch.where(only_y, dyy, one)
    ox = torch.where(both, -(dyy * dx - dxy * dy) / det_, torch.where(only_x, -dx / dxx_, 0.0 * one))
    oy = torch.where(both, -(dxx * dy - dxy * dx) / det_, torch.where(only_y, -dy / dyy_, 0.0 * one))
    offset = torch.stack([ox, oy], dim=-1).clamp(-0.5, 0.5)
    return coords + offset, scores


# ----------------------------------------------------------------------------- class imbalance


def foreground_ratio(heatmaps: torch.Tensor, threshold: float = 0.8) -> float:
    """Background-to-foreground pixel ratio of heatmaps (the class imbalance of heatmap regression).

    A pixel is **foreground** when its value is strictly above ``threshold`` and
    **background** otherwise; the ratio is pooled over every pixel of every map in the batch,
    including the all-zero maps of invisible keypoints (they are all background).

    Xie et al. 2021 (the semi-supervised collapse paper, supplementary Fig. 9) split the
    value range [0, 1] of COCO ground-truth heatmaps into 5 bins and find about 1000 times
    more pixels in the lowest bin than in the highest; the default ``threshold = 0.8`` (the
    top bin) reproduces that figure: at 64x48 with sigma 2 and the keypoint on a pixel centre,
    5 pixels exceed 0.8 (``exp(-d^2/8) > 0.8`` for ``d^2 <= 1``), i.e. 3067:5 = 613 per visible
    keypoint, and about 1000 once the zero maps of unlabelled COCO keypoints are counted.

    Args:
        heatmaps: ``(B, K, h, w)`` floating point (any values; no normalisation).
        threshold: foreground threshold, a finite number.

    Returns:
        Background / foreground pixel count as a Python float; ``inf`` when no pixel is
        foreground.
    """
    _check_heatmaps("heatmaps", heatmaps)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
    foreground = int((heatmaps > threshold).sum())
    background = heatmaps.numel() - foreground
    return math.inf if foreground == 0 else background / foreground


def value_histogram(heatmaps: torch.Tensor, bins: int = 5) -> torch.Tensor:
    """Pixel counts of heatmap values in ``bins`` equal bins of [0, 1] (supplementary Fig. 9 of Xie et al.).

    Values below 0 count in the first bin and values above 1 in the last (predicted heatmaps
    overshoot slightly both ways); the upper edge of each bin belongs to the next bin, except 1,
    which is in the last.

    Args:
        heatmaps: ``(..., h, w)`` floating point.
        bins: number of bins, >= 1.

    Returns:
        ``(bins,)`` float64 counts (on the CPU), summing to ``heatmaps.numel()``.
    """
    _check_heatmaps("heatmaps", heatmaps)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: expected an int >= 1, got {bins!r}")
    index = (heatmaps.detach().clamp(0.0, 1.0) * bins).floor().clamp_max(bins - 1).long().flatten()
    return torch.bincount(index, minlength=bins).double().cpu()
