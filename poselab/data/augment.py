"""Batched tensor augmentations for person crops: affine warps, RandAugment-style colour ops, Joint Cutout.

Frames and units
----------------
* **Images** are float tensors ``(B, C, H, W)`` with values in [0, 1] (the photometric ops need
  ``C = 3``, RGB).
* **Pixels**: ``u`` to the right (column), ``v`` down (row); pixel ``(0, 0)`` is the *centre* of the
  top-left pixel, so an image of width ``W`` spans ``u`` in ``[-0.5, W - 0.5]``.
* **Affine maps** act on pixel coordinates: a ``(B, 2, 3)`` matrix ``A`` sends ``[u, v]`` to
  ``A @ [u, v, 1]``. :func:`warp_images` takes the map from *source* pixels to *output* pixels (the
  way a keypoint moves), so ``transform_points(keypoints, A)`` gives the keypoints of
  ``warp_images(images, A)``. Compositions read like functions: ``compose_affine(a, b)`` applies
  ``b`` first, then ``a``.
* **Angles** are in degrees; a positive rotation turns the picture *counter-clockwise* as seen on
  screen (the convention of ``torch.rot90`` and torchvision), about the crop centre
  ``((W - 1) / 2, (H - 1) / 2)``.
* **Heatmaps** at output stride ``s`` use the same pixel-centre convention:
  ``heatmap px = (image px + 0.5) / s - 0.5`` (:func:`heatmap_affine`).

Sampling uses ``F.affine_grid``/``F.grid_sample`` with ``align_corners=False``: with that setting the
normalised coordinate -1 is the *outer edge* of the first pixel, i.e. pixel coordinate -0.5, which is
exactly the pixel-centre convention above (``x_norm = (2 u + 1) / W - 1``).

No horizontal flip is offered: flipping a person crop must also swap the left and right keypoint
channels, which belongs to code that knows the skeleton, not to these image-level ops.

Easy/hard augmentation (the remedy for collapse in semi-supervised heatmap learning): :data:`EASY`
is the standard augmentation of a supervised pose model, :data:`HARD` adds large rotation/scale,
RandAugment and Joint Cutout; :data:`SAME` is the standard consistency baseline (both views from
the same, easy, distribution). For two augmentations ``A_e`` and ``A_h`` of one image,
``warp_heatmaps(H_e, relative_affine(A_e, A_h), stride)`` maps the easy view's heatmaps into the hard
view's frame.

Randomness comes only from an explicit ``torch.Generator``; numbers are drawn on the generator's
device and then moved, so a seeded CPU generator gives the same augmentation on CPU and GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from poselab.checks import (check_choice, check_float_tensor, check_generator, check_int, check_positive, check_shape, check_size_pair)

__all__ = [
    "RANDAUGMENT_OPS",
    "EXTRA_OPS",
    "MAX_MAGNITUDE",
    "make_affine",
    "random_affine",
    "compose_affine",
    "invert_affine",
    "relative_affine",
    "transform_points",
    "warp_images",
    "warp_valid_mask",
    "heatmap_affine",
    "warp_heatmaps",
    "autocontrast",
    "equalize",
    "brightness",
    "contrast",
    "colour",
    "sharpness",
    "posterize",
    "solarize",
    "gaussian_blur",
    "gaussian_noise",
    "rand_augment",
    "joint_cutout",
    "AugmentConfig",
    "NONE",
    "EASY",
    "HARD",
    "SAME",
    "AUGMENT_PAIRS",
    "augment",
]

RANDAUGMENT_OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "brightness",
    "contrast",
    "colour",
    "sharpness",
    "posterize",
    "solarize",
)
"""The photometric RandAugment ops (torchvision's list without its geometric ops: rotation,
shear and translation are done by the keypoint-aware affine warp instead)."""

EXTRA_OPS = ("blur", "noise")
"""Further photometric ops :func:`rand_augment` accepts when asked for (not in the default list)."""

MAX_MAGNITUDE = 30.0
"""RandAugment magnitudes run from 0 (no change) to this value (strongest), as in torchvision's
31 magnitude bins. At fraction ``f = magnitude / MAX_MAGNITUDE``: brightness/contrast/colour/
sharpness factor ``1 ± 0.9 f`` (random sign), posterize to ``8 - round(4 f)`` bits, solarize above
``1 - f``, blur sigma ``2 f`` pixels, noise std ``0.1 f``."""

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


# ----------------------------------------------------------------------------------------------
# argument helpers


def _random(kind: str, shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``torch.rand``/``torch.randn`` on the generator's device, then moved to ``like``'s device and dtype."""
    fn = torch.rand if kind == "rand" else torch.randn
    device = generator.device if generator is not None else like.device
    return fn(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


def _check_images(arg: str, images, channels: int | None = None) -> None:
    check_float_tensor(arg, images)
    check_shape(arg, images, ("B", channels, "H", "W"))


def _check_affine(arg: str, affine, batch: str = "B") -> None:
    check_float_tensor(arg, affine)
    check_shape(arg, affine, (batch, 2, 3))


def _check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"expected tensors on one device, got {desc}")


def _per_image(arg: str, value, images: torch.Tensor, *, minimum: float | None = None) -> torch.Tensor:
    """A float or a ``(B,)`` tensor of per-image parameters as a ``(B, 1, 1, 1)`` tensor like ``images``."""
    b = images.shape[0]
    if isinstance(value, torch.Tensor):
        check_shape(arg, value, (b,))
        v = value.to(device=images.device, dtype=images.dtype)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if minimum is not None and value < minimum:
            raise ValueError(f"{arg}: expected a number >= {minimum}, got {value!r}")
        v = torch.full((b,), float(value), device=images.device, dtype=images.dtype)
    else:
        raise TypeError(f"{arg}: expected a finite number or a ({b},) tensor, got {type(value).__name__} {value!r}")
    return v.view(b, 1, 1, 1)


# ----------------------------------------------------------------------------------------------
# affine maps on pixel coordinates


def _to3x3(a: torch.Tensor) -> torch.Tensor:
    bottom = torch.zeros(a.shape[:-2] + (1, 3), device=a.device, dtype=a.dtype)
    bottom[..., 0, 2] = 1.0
    return torch.cat([a, bottom], dim=-2)


def make_affine(
    rotation_deg: torch.Tensor,
    scale: torch.Tensor,
    translation: torch.Tensor,
    center: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Affine maps rotating and scaling about ``center`` and then translating.

    ``x' = R(angle) * scale * (x - center) + center + translation``, with a positive angle turning
    the picture counter-clockwise on screen (``y`` points down, so ``R = [[cos, sin], [-sin, cos]]``).

    Args:
        rotation_deg: ``(B,)`` degrees.
        scale: ``(B,)`` zoom factors (> 1 enlarges the person).
        translation: ``(B, 2)`` pixels ``(du, dv)``.
        center: ``(2,)`` or ``(B, 2)`` pixels ``(u, v)``, e.g. ``((W - 1) / 2, (H - 1) / 2)``.

    Returns:
        ``(B, 2, 3)`` maps from source pixels to output pixels, dtype/device of ``rotation_deg``.
    """
    for name, t in (("rotation_deg", rotation_deg), ("scale", scale), ("translation", translation)):
        check_float_tensor(name, t)
    check_shape("rotation_deg", rotation_deg, ("B",))
    check_shape("scale", scale, (rotation_deg.shape[0],))
    check_shape("translation", translation, (rotation_deg.shape[0], 2))
    _check_same_device(rotation_deg=rotation_deg, scale=scale, translation=translation)
    c = torch.as_tensor(center, device=rotation_deg.device, dtype=rotation_deg.dtype)
    if c.shape not in ((2,), (rotation_deg.shape[0], 2)):
        raise ValueError(f"center: expected shape (2,) or ({rotation_deg.shape[0]}, 2), got {tuple(c.shape)}")
    theta = torch.deg2rad(rotation_deg)
    cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
    m = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    c = c.expand(rotation_deg.shape[0], 2)
    t = c + translation - (m @ c.unsqueeze(-1)).squeeze(-1)
    return torch.cat([m, t.unsqueeze(-1)], dim=-1)


def random_affine(
    n: int,
    size: tuple[int, int],
    rotation_deg: float,
    scale_range: tuple[float, float],
    translate_frac: float,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random rotation/scale about the crop centre followed by a random shift.

    Per sample: angle ~ U(-rotation_deg, rotation_deg), scale ~ U(scale_range), shift
    ~ U(-translate_frac, translate_frac) * (W, H) pixels. Draw order is fixed (one ``(n, 4)``
    uniform draw), so a seeded generator reproduces the maps.

    Args:
        n: number of maps.
        size: crop size ``(H, W)`` pixels; the rotation centre is ``((W - 1) / 2, (H - 1) / 2)``.
        rotation_deg: largest absolute angle, degrees (>= 0).
        scale_range: ``(low, high)`` zoom factors, ``0 < low <= high``.
        translate_frac: largest shift as a fraction of the crop size (>= 0).
        generator: ``torch.Generator`` (global RNG when ``None``); draws happen on its device.
        device, dtype: of the result.

    Returns:
        ``(n, 2, 3)`` maps from source pixels to augmented pixels.
    """
    check_int("n", n)
    h, w = check_size_pair("size", size)
    check_positive("rotation_deg", rotation_deg, allow_zero=True)
    check_positive("translate_frac", translate_frac, allow_zero=True)
    if not isinstance(scale_range, (tuple, list)) or len(scale_range) != 2:
        raise ValueError(f"scale_range: expected (low, high), got {scale_range!r}")
    lo, hi = (check_positive(f"scale_range[{i}]", s) for i, s in enumerate(scale_range))
    if lo > hi:
        raise ValueError(f"scale_range: expected low <= high, got {scale_range!r}")
    check_generator(generator)
    like = torch.empty(0, device=device, dtype=dtype)
    u = _random("rand", (n, 4), like, generator)
    angle = (2 * u[:, 0] - 1) * rotation_deg
    scale = lo + (hi - lo) * u[:, 1]
    shift = (2 * u[:, 2:] - 1) * translate_frac * torch.tensor([w, h], device=like.device, dtype=dtype)
    return make_affine(angle, scale, shift, ((w - 1) / 2, (h - 1) / 2))


def compose_affine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a ∘ b``: the ``(B, 2, 3)`` map that applies ``b`` first, then ``a``."""
    _check_affine("a", a)
    _check_affine("b", b)
    check_shape("b", b, (a.shape[0], 2, 3))
    _check_same_device(a=a, b=b)
    m = a[:, :, :2] @ b[:, :, :2]
    t = (a[:, :, :2] @ b[:, :, 2:]) + a[:, :, 2:]
    return torch.cat([m, t], dim=-1)


def invert_affine(a: torch.Tensor) -> torch.Tensor:
    """Inverse of ``(B, 2, 3)`` affine maps (closed form); ``ValueError`` if any is singular."""
    _check_affine("a", a)
    p, q, r, s = a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1]
    det = p * s - q * r
    if bool((det == 0).any()) or not bool(torch.isfinite(det).all()):
        raise ValueError("a: expected invertible affine maps, got a singular (or non-finite) one")
    inv = torch.stack([torch.stack([s, -q], -1), torch.stack([-r, p], -1)], -2) / det[:, None, None]
    t = -(inv @ a[:, :, 2:])
    return torch.cat([inv, t], dim=-1)


def relative_affine(a_from: torch.Tensor, a_to: torch.Tensor) -> torch.Tensor:
    """``a_to ∘ a_from⁻¹``: maps pixels of the view made by ``a_from`` to the view made by ``a_to``.

    For two augmentations ``A_e``, ``A_h`` of one image, ``relative_affine(A_e, A_h)`` takes the easy
    view to the hard view. Shapes ``(B, 2, 3)``.
    """
    return compose_affine(a_to, invert_affine(a_from))


def transform_points(points: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Apply ``(B, 2, 3)`` affine maps to ``(B, K, 2)`` pixel coordinates; returns ``(B, K, 2)`` pixels."""
    check_float_tensor("points", points)
    check_shape("points", points, ("B", None, 2))
    _check_affine("affine", affine)
    check_shape("affine", affine, (points.shape[0], 2, 3))
    _check_same_device(points=points, affine=affine)
    a = affine.to(points.dtype)
    return points @ a[:, :, :2].transpose(1, 2) + a[:, None, :, 2]


def _pixel_to_norm(size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """``(1, 3, 3)`` map from pixel coordinates to ``align_corners=False`` normalised coordinates."""
    h, w = size
    n = torch.zeros(1, 3, 3, device=like.device, dtype=like.dtype)
    n[0, 0, 0], n[0, 0, 2] = 2.0 / w, 1.0 / w - 1.0
    n[0, 1, 1], n[0, 1, 2] = 2.0 / h, 1.0 / h - 1.0
    n[0, 2, 2] = 1.0
    return n


def _output_size(out_size, images: torch.Tensor) -> tuple[int, int]:
    return tuple(images.shape[-2:]) if out_size is None else check_size_pair("out_size", out_size)


def warp_images(
    images: torch.Tensor,
    affine: torch.Tensor,
    out_size: tuple[int, int] | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Warp images so that source pixel ``x`` lands at output pixel ``affine @ [x, 1]``.

    Each output pixel centre is pulled back through the inverse map and sampled with
    ``F.grid_sample(..., align_corners=False)`` (see the module docstring for why that matches the
    pixel-centre convention). Outside the source, ``padding_mode`` decides (zeros by default).

    Args:
        images: ``(B, C, H, W)`` float (any ``C``: images, heatmaps, masks as floats).
        affine: ``(B, 2, 3)`` source pixels -> output pixels.
        out_size: ``(h, w)`` of the output; the input size when ``None``.
        mode: ``"bilinear"`` or ``"nearest"``.
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.

    Returns:
        ``(B, C, h, w)`` like ``images``.
    """
    _check_images("images", images)
    _check_affine("affine", affine)
    check_shape("affine", affine, (images.shape[0], 2, 3))
    _check_same_device(images=images, affine=affine)
    check_choice("mode", mode, ("bilinear", "nearest"))
    check_choice("padding_mode", padding_mode, ("zeros", "border", "reflection"))
    h, w = _output_size(out_size, images)
    a = affine.to(torch.float64 if images.device.type != "mps" else torch.float32)
    n_src = _pixel_to_norm(tuple(images.shape[-2:]), a)
    n_out = _pixel_to_norm((h, w), a)
    theta = n_src @ _to3x3(invert_affine(a)) @ torch.linalg.inv(n_out)  # output norm -> source norm
    grid = F.affine_grid(theta[:, :2].to(images.dtype), [images.shape[0], images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def warp_valid_mask(affine: torch.Tensor, in_size: tuple[int, int], out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, h, w)`` bool: output pixels whose centre comes from inside the ``(H, W)`` source image.

    Useful to restrict a consistency loss to the part of one view that the other view also saw.
    ``affine`` is ``(B, 2, 3)`` source pixels -> output pixels; ``out_size`` defaults to ``in_size``.
    """
    _check_affine("affine", affine)
    hi, wi = check_size_pair("in_size", in_size)
    h, w = (hi, wi) if out_size is None else check_size_pair("out_size", out_size)
    inv = invert_affine(affine)
    v, u = torch.meshgrid(
        torch.arange(h, device=affine.device, dtype=affine.dtype),
        torch.arange(w, device=affine.device, dtype=affine.dtype),
        indexing="ij",
    )
    pts = torch.stack([u, v], -1).reshape(1, -1, 2).expand(affine.shape[0], -1, -1)
    src = transform_points(pts, inv).reshape(affine.shape[0], h, w, 2)
    inside_u = (src[..., 0] >= -0.5) & (src[..., 0] <= wi - 0.5)
    inside_v = (src[..., 1] >= -0.5) & (src[..., 1] <= hi - 0.5)
    return inside_u & inside_v


def heatmap_affine(affine: torch.Tensor, stride: float) -> torch.Tensor:
    """Express ``(B, 2, 3)`` maps on image pixels as maps on heatmap pixels at output ``stride``.

    With ``S: p -> (p + 0.5) / stride - 0.5`` (image px -> heatmap px), returns ``S ∘ affine ∘ S⁻¹``.
    """
    _check_affine("affine", affine)
    check_positive("stride", stride)
    s = float(stride)
    c = 0.5 / s - 0.5
    to_hm = torch.tensor([[[1 / s, 0.0, c], [0.0, 1 / s, c]]], device=affine.device, dtype=affine.dtype)
    from_hm = torch.tensor([[[s, 0.0, s / 2 - 0.5], [0.0, s, s / 2 - 0.5]]], device=affine.device, dtype=affine.dtype)
    b = affine.shape[0]
    return compose_affine(to_hm.expand(b, 2, 3), compose_affine(affine, from_hm.expand(b, 2, 3)))


def warp_heatmaps(
    heatmaps: torch.Tensor,
    affine: torch.Tensor,
    stride: float,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Warp ``(B, K, h, w)`` heatmaps at output ``stride`` by ``(B, 2, 3)`` maps given in IMAGE pixels.

    Typical use: ``warp_heatmaps(H_easy, relative_affine(A_easy, A_hard), stride)`` puts the easy
    view's heatmaps into the hard view's frame. Bilinear, zero outside. Returns ``(B, K, h', w')``
    (``out_size``, default the input heatmap size).
    """
    _check_images("heatmaps", heatmaps)
    return warp_images(heatmaps, heatmap_affine(affine, stride), out_size)


# ----------------------------------------------------------------------------------------------
# photometric ops, (B, 3, H, W) in [0, 1]


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * images + (1 - factor) * other).clamp(0.0, 1.0)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Stretch each image channel to span [0, 1] (constant channels are left as they are). ``(B, 3, H, W)``."""
    _check_images("images", images, 3)
    lo = images.amin(dim=(2, 3), keepdim=True)
    hi = images.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    ok = span > 0
    out = (images - lo) / torch.where(ok, span, torch.ones_like(span))
    return torch.where(ok, out, images).clamp(0.0, 1.0)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel of each image over 256 levels (PIL/torchvision rule).

    Values are quantised to 8 bits, a look-up table is built from the cumulative histogram
    (``lut = (cdf_exclusive + step // 2) // step`` with ``step = (N - count of the top level) // 255``)
    and applied; channels with a single level (``step == 0``) are left unchanged. ``(B, 3, H, W)``.
    """
    _check_images("images", images, 3)
    b, c, h, w = images.shape
    q = (images * 255).round().clamp(0, 255).long().reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=images.device, dtype=torch.float64)
    hist.scatter_add_(1, q, torch.ones_like(q, dtype=torch.float64))
    levels = torch.arange(256, device=images.device)
    top = torch.where(hist > 0, levels, -1).amax(dim=1, keepdim=True)  # highest occupied level
    step = torch.floor((h * w - hist.gather(1, top)) / 255)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    lut = torch.floor((torch.cumsum(hist, 1) - hist + torch.floor(step / 2)) / safe).clamp(0, 255)
    out = (lut.gather(1, q) / 255).to(images.dtype).reshape(b, c, h, w)
    return torch.where((step > 0).view(b, c, 1, 1), out, images)


def brightness(images: torch.Tensor, factor) -> torch.Tensor:
    """Scale intensities by ``factor`` (float or ``(B,)``; 1 = unchanged, 0 = black), clamped to [0, 1]."""
    _check_images("images", images, 3)
    f = _per_image("factor", factor, images, minimum=0.0)
    return _blend(images, torch.zeros_like(images), f)


def contrast(images: torch.Tensor, factor) -> torch.Tensor:
    """Blend with each image's mean grey level (float or ``(B,)`` factor; 1 = unchanged, 0 = flat grey)."""
    _check_images("images", images, 3)
    f = _per_image("factor", factor, images, minimum=0.0)
    mean = _grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean.expand_as(images), f)


def colour(images: torch.Tensor, factor) -> torch.Tensor:
    """Saturation: blend with the greyscale image (float or ``(B,)`` factor; 1 = unchanged, 0 = grey)."""
    _check_images("images", images, 3)
    f = _per_image("factor", factor, images, minimum=0.0)
    return _blend(images, _grayscale(images).expand_as(images), f)


def sharpness(images: torch.Tensor, factor) -> torch.Tensor:
    """Blend with a 3x3 smoothed image (PIL's SMOOTH kernel, border pixels kept); ``factor`` > 1 sharpens.

    ``factor``: float or ``(B,)``; 1 = unchanged. ``(B, 3, H, W)``.
    """
    _check_images("images", images, 3)
    f = _per_image("factor", factor, images, minimum=0.0)
    b, c, h, w = images.shape
    kernel = torch.ones(3, 3, device=images.device, dtype=images.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = F.conv2d(images, kernel, groups=c)  # (B, C, H-2, W-2)
    degenerate = images.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(images, degenerate, f)


def posterize(images: torch.Tensor, bits) -> torch.Tensor:
    """Keep the top ``bits`` bits of the 8-bit value of each pixel (``bits`` int in [0, 8] or ``(B,)``).

    Values are quantised to 8 bits (``round(255 x)``) and the low ``8 - bits`` bits are cleared;
    ``bits = 8`` leaves the image unchanged. E.g. ``200 / 255`` with 4 bits becomes ``192 / 255``.
    """
    _check_images("images", images, 3)
    if isinstance(bits, torch.Tensor):
        check_shape("bits", bits, (images.shape[0],))
        if bits.is_floating_point() or bool(((bits < 0) | (bits > 8)).any()):
            raise ValueError("bits: expected integers in [0, 8]")
        nb = bits.to(images.device).view(-1, 1, 1, 1)
    else:
        check_int("bits", bits, minimum=0)
        if bits > 8:
            raise ValueError(f"bits: expected an int in [0, 8], got {bits}")
        nb = torch.full((images.shape[0], 1, 1, 1), bits, device=images.device, dtype=torch.long)
    quantum = torch.pow(2.0, (8 - nb).to(images.dtype))
    v = torch.floor((images * 255).round() / quantum) * quantum / 255
    return torch.where(nb >= 8, images, v)


def solarize(images: torch.Tensor, threshold) -> torch.Tensor:
    """Invert pixels at or above ``threshold`` (float in [0, 1] or ``(B,)``): ``x -> 1 - x`` where ``x >= t``."""
    _check_images("images", images, 3)
    t = _per_image("threshold", threshold, images, minimum=0.0)
    return torch.where(images >= t, 1.0 - images, images)


def gaussian_blur(images: torch.Tensor, sigma, max_sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur with per-image ``sigma`` pixels (float or ``(B,)``; 0 = unchanged).

    The kernel radius is ``ceil(3 * max_sigma)``; ``max_sigma`` defaults to the largest ``sigma``
    (pass it to avoid a device synchronisation). Borders are replicated. ``(B, C, H, W)``.
    """
    _check_images("images", images)
    s = _per_image("sigma", sigma, images, minimum=0.0).view(-1)
    if max_sigma is None:
        max_sigma = float(s.max()) if s.numel() else 0.0
    check_positive("max_sigma", max_sigma, allow_zero=True)
    r = int(math.ceil(3 * max_sigma))
    if r == 0:
        return images
    b, c, h, w = images.shape
    x = torch.arange(-r, r + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-(x**2) / (2 * s.clamp_min(1e-6)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
    y = F.pad(images.reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.reshape(b, c, h, w)


def gaussian_noise(images: torch.Tensor, std, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add pixel noise ``N(0, std²)`` (``std`` float or ``(B,)``) and clamp to [0, 1]."""
    _check_images("images", images)
    check_generator(generator)
    s = _per_image("std", std, images, minimum=0.0)
    return (images + s * _random("randn", images.shape, images, generator)).clamp(0.0, 1.0)


def rand_augment(
    images: torch.Tensor,
    num_ops: int,
    magnitude: float,
    generator: torch.Generator | None = None,
    ops: Sequence[str] = RANDAUGMENT_OPS,
) -> torch.Tensor:
    """RandAugment restricted to photometric ops: ``num_ops`` ops in a row, each drawn per image.

    At every step each image draws one op uniformly from ``ops`` (with replacement across steps)
    and, for the factor ops, a random sign; the strength follows ``magnitude`` as described at
    :data:`MAX_MAGNITUDE`. Every op in ``ops`` is computed for the whole batch and each image keeps
    the one it drew (a loop over op kinds, not over images).

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        num_ops: ops per image (>= 0).
        magnitude: strength in ``[0, MAX_MAGNITUDE]``.
        generator: ``torch.Generator`` (global RNG when ``None``).
        ops: names from :data:`RANDAUGMENT_OPS` and :data:`EXTRA_OPS`.

    Returns:
        ``(B, 3, H, W)`` in [0, 1].
    """
    _check_images("images", images, 3)
    check_int("num_ops", num_ops, minimum=0)
    check_positive("magnitude", magnitude, allow_zero=True)
    if magnitude > MAX_MAGNITUDE:
        raise ValueError(f"magnitude: expected a number in [0, {MAX_MAGNITUDE}], got {magnitude!r}")
    check_generator(generator)
    ops = tuple(ops)
    if not ops:
        raise ValueError("ops: expected at least one op name, got an empty sequence")
    for name in ops:
        check_choice("ops", name, RANDAUGMENT_OPS + EXTRA_OPS)
    f = magnitude / MAX_MAGNITUDE
    b = images.shape[0]
    bits = 8 - round(4 * f)
    x = images
    for _ in range(num_ops):
        u = _random("rand", (b, 2), images, generator)
        choice = (u[:, 0] * len(ops)).long().clamp(max=len(ops) - 1)
        factor = 1.0 + torch.where(u[:, 1] < 0.5, -1.0, 1.0).to(images.dtype) * 0.9 * f
        out = x
        for i, name in enumerate(ops):
            if name == "identity":
                continue
            if name == "autocontrast":
                y = autocontrast(x)
            elif name == "equalize":
                y = equalize(x)
            elif name == "brightness":
                y = brightness(x, factor)
            elif name == "contrast":
                y = contrast(x, factor)
            elif name == "colour":
                y = colour(x, factor)
            elif name == "sharpness":
                y = sharpness(x, factor)
            elif name == "posterize":
                y = posterize(x, bits)
            elif name == "solarize":
                y = solarize(x, 1.0 - f)
            elif name == "blur":
                y = gaussian_blur(x, 2.0 * f, max_sigma=2.0 * f)
            else:  # noise
                y = gaussian_noise(x, 0.1 * f, generator)
            out = torch.where((choice == i).view(b, 1, 1, 1), y, out)
        x = out
    return x


# ----------------------------------------------------------------------------------------------
# Joint Cutout


def joint_cutout(
    images: torch.Tensor,
    keypoints: torch.Tensor,
    k: int,
    size_frac: float,
    generator: torch.Generator | None = None,
    visible: torch.Tensor | None = None,
    fill: str | float = "noise",
    return_mask: bool = False,
):
    """Cut out square patches centred on ``k`` distinct, randomly chosen, visible joints per image.

    The square side is ``size_frac * min(H, W)`` pixels; a pixel is cut when its centre lies strictly
    inside a square. Images with fewer than ``k`` visible joints get a patch on every visible joint.

    Args:
        images: ``(B, C, H, W)`` float.
        keypoints: ``(B, K, 2)`` pixels ``(u, v)`` in the frame of ``images``.
        k: joints per image, ``0 <= k <= K``.
        size_frac: square side as a fraction of the shorter image side (> 0).
        generator: ``torch.Generator`` (global RNG when ``None``).
        visible: ``(B, K)`` bool, joints allowed as centres (all when ``None``).
        fill: ``"noise"`` (uniform random pixels), ``"mean"`` (each image's mean colour) or a
            constant float in [0, 1].
        return_mask: also return the ``(B, H, W)`` bool mask of cut pixels.

    Returns:
        ``(B, C, H, W)`` images, or ``(images, mask)`` when ``return_mask``.
    """
    _check_images("images", images)
    check_float_tensor("keypoints", keypoints)
    check_shape("keypoints", keypoints, (images.shape[0], "K", 2))
    _check_same_device(images=images, keypoints=keypoints)
    b, c, h, w = images.shape
    n_joints = keypoints.shape[1]
    check_int("k", k, minimum=0)
    if k > n_joints:
        raise ValueError(f"k: expected at most the number of joints K = {n_joints}, got {k}")
    check_positive("size_frac", size_frac)
    check_generator(generator)
    if visible is None:
        visible = torch.ones(b, n_joints, dtype=torch.bool, device=images.device)
    else:
        if not isinstance(visible, torch.Tensor) or visible.dtype != torch.bool:
            raise TypeError(f"visible: expected a bool tensor of shape ({b}, {n_joints}), got {visible!r:.80}")
        check_shape("visible", visible, (b, n_joints))
        visible = visible.to(images.device)
    if isinstance(fill, str):
        check_choice("fill", fill, ("noise", "mean"))
    elif not isinstance(fill, (int, float)) or isinstance(fill, bool) or not 0.0 <= fill <= 1.0:
        raise ValueError(f"fill: expected 'noise', 'mean' or a number in [0, 1], got {fill!r}")

    scores = _random("rand", (b, n_joints), images, generator)
    if k == 0:
        mask = torch.zeros(b, h, w, dtype=torch.bool, device=images.device)
    else:
        scores = torch.where(visible, scores, torch.full_like(scores, -1.0))
        idx = scores.topk(k, dim=1).indices  # (B, k) distinct joints, visible ones first
        chosen = visible.gather(1, idx)  # (B, k)
        centres = keypoints.gather(1, idx.unsqueeze(-1).expand(b, k, 2)).to(images.dtype)
        half = 0.5 * size_frac * min(h, w)
        u = torch.arange(w, device=images.device, dtype=images.dtype)
        v = torch.arange(h, device=images.device, dtype=images.dtype)
        in_u = (u.view(1, 1, w) - centres[..., 0:1]).abs() < half  # (B, k, W)
        in_v = (v.view(1, 1, h) - centres[..., 1:2]).abs() < half  # (B, k, H)
        mask = (in_v.unsqueeze(-1) & in_u.unsqueeze(-2) & chosen[..., None, None]).any(dim=1)  # (B, H, W)
    if fill == "noise":
        filler = _random("rand", images.shape, images, generator)
    elif fill == "mean":
        filler = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    else:
        filler = torch.full_like(images, float(fill))
    out = torch.where(mask.unsqueeze(1), filler, images)
    return (out, mask) if return_mask else out


# ----------------------------------------------------------------------------------------------
# configurations


@dataclass(frozen=True)
class AugmentConfig:
    """One augmentation distribution for person crops (the output has the input's size).

    Attributes:
        rotation_deg: largest absolute rotation, degrees.
        scale_range: ``(low, high)`` zoom factors.
        translate_frac: largest shift as a fraction of the crop size.
        rand_augment_num_ops: photometric RandAugment ops per image (0 = none).
        rand_augment_magnitude: their strength in ``[0, MAX_MAGNITUDE]``.
        rand_augment_ops: op names to draw from.
        joint_cutout_k: joints cut out per image (0 = none).
        joint_cutout_size_frac: cut-out square side / shorter crop side.
        joint_cutout_fill: ``"noise"``, ``"mean"`` or a float in [0, 1].
    """

    rotation_deg: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    translate_frac: float = 0.0
    rand_augment_num_ops: int = 0
    rand_augment_magnitude: float = 0.0
    rand_augment_ops: tuple[str, ...] = field(default=RANDAUGMENT_OPS)
    joint_cutout_k: int = 0
    joint_cutout_size_frac: float = 0.15
    joint_cutout_fill: str | float = "noise"

    def __post_init__(self):
        check_positive("rotation_deg", self.rotation_deg, allow_zero=True)
        if not isinstance(self.scale_range, tuple) or len(self.scale_range) != 2:
            raise ValueError(f"scale_range: expected a (low, high) tuple, got {self.scale_range!r}")
        lo, hi = (check_positive(f"scale_range[{i}]", s) for i, s in enumerate(self.scale_range))
        if lo > hi:
            raise ValueError(f"scale_range: expected low <= high, got {self.scale_range!r}")
        check_positive("translate_frac", self.translate_frac, allow_zero=True)
        check_int("rand_augment_num_ops", self.rand_augment_num_ops, minimum=0)
        check_positive("rand_augment_magnitude", self.rand_augment_magnitude, allow_zero=True)
        if self.rand_augment_magnitude > MAX_MAGNITUDE:
            raise ValueError(f"rand_augment_magnitude: expected at most {MAX_MAGNITUDE}, got {self.rand_augment_magnitude}")
        if not isinstance(self.rand_augment_ops, tuple) or not self.rand_augment_ops:
            raise ValueError(f"rand_augment_ops: expected a non-empty tuple of op names, got {self.rand_augment_ops!r}")
        for name in self.rand_augment_ops:
            check_choice("rand_augment_ops", name, RANDAUGMENT_OPS + EXTRA_OPS)
        check_int("joint_cutout_k", self.joint_cutout_k, minimum=0)
        check_positive("joint_cutout_size_frac", self.joint_cutout_size_frac)
        fill = self.joint_cutout_fill
        if isinstance(fill, str):
            check_choice("joint_cutout_fill", fill, ("noise", "mean"))
        elif not isinstance(fill, (int, float)) or isinstance(fill, bool) or not 0.0 <= fill <= 1.0:
            raise ValueError(f"joint_cutout_fill: expected 'noise', 'mean' or a number in [0, 1], got {fill!r}")


NONE = AugmentConfig()
"""No augmentation (identity affine, no colour change, no cut-out)."""

EASY = AugmentConfig(rotation_deg=30.0, scale_range=(0.75, 1.25), translate_frac=0.05)
"""The standard augmentation of a supervised heatmap model (SimpleBaseline-like): rotation ±30°,
scale 0.75–1.25, shift ±5 % of the crop; no colour ops, no cut-out."""

HARD = AugmentConfig(
    rotation_deg=60.0,
    scale_range=(0.6, 1.4),
    translate_frac=0.1,
    rand_augment_num_ops=2,
    rand_augment_magnitude=10.0,
    joint_cutout_k=5,
    joint_cutout_size_frac=0.15,
    joint_cutout_fill="noise",
)
"""Hard augmentation: rotation ±60°, scale 0.6–1.4, shift ±10 %, RandAugment with 2 photometric ops
at magnitude 10 (of 30) and Joint Cutout of 5 joints ("JC 5") with squares of 0.15 × the crop side."""

SAME = EASY
"""Standard consistency SSL (the baseline that collapses): both views are drawn from this one
distribution, the easy one."""

AUGMENT_PAIRS = {"same": (SAME, SAME), "easy_hard": (EASY, HARD)}
"""(teacher view, student view) augmentation distributions of the two SSL schemes."""


def augment(
    images: torch.Tensor,
    keypoints: torch.Tensor | None,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
    visible: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one augmentation per image from ``config``: affine warp, then RandAugment, then Joint Cutout.

    Joint Cutout centres its squares on the keypoints *after* the warp (``transform_points(keypoints,
    affine)``), choosing only joints that are ``visible`` and land inside the augmented crop. The
    warp pads with black. Draw order is fixed, so a seeded generator reproduces the result.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        keypoints: ``(B, K, 2)`` pixels in ``images``; needed only when ``config.joint_cutout_k > 0``.
        config: an :class:`AugmentConfig` (e.g. :data:`EASY`, :data:`HARD`).
        generator: ``torch.Generator`` (global RNG when ``None``).
        visible: ``(B, K)`` bool, or ``None`` for all joints.

    Returns:
        ``(aug_images (B, 3, H, W), affine (B, 2, 3))`` with ``affine`` mapping pixels of ``images``
        to pixels of ``aug_images`` (same dtype/device as ``images``).
    """
    _check_images("images", images, 3)
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config: expected an AugmentConfig, got {type(config).__name__}")
    check_generator(generator)
    if config.joint_cutout_k > 0:
        if keypoints is None:
            raise ValueError("keypoints: required (B, K, 2) pixels when config.joint_cutout_k > 0, got None")
    if keypoints is not None:
        check_float_tensor("keypoints", keypoints)
        check_shape("keypoints", keypoints, (images.shape[0], None, 2))
    if visible is not None:
        if not isinstance(visible, torch.Tensor) or visible.dtype != torch.bool:
            raise TypeError(f"visible: expected a (B, K) bool tensor or None, got {type(visible).__name__}")
        if keypoints is None:
            raise ValueError("visible: given without keypoints")
        check_shape("visible", visible, (images.shape[0], keypoints.shape[1]))
    b, _, h, w = images.shape
    affine = random_affine(
        b, (h, w), config.rotation_deg, config.scale_range, config.translate_frac,
        generator=generator, device=images.device, dtype=images.dtype,
    )
    out = warp_images(images, affine)
    if config.rand_augment_num_ops > 0:
        out = rand_augment(out, config.rand_augment_num_ops, config.rand_augment_magnitude, generator,
                           ops=config.rand_augment_ops)
    if config.joint_cutout_k > 0:
        kp = transform_points(keypoints, affine)
        inside = (kp[..., 0] >= -0.5) & (kp[..., 0] <= w - 0.5) & (kp[..., 1] >= -0.5) & (kp[..., 1] <= h - 0.5)
        vis = inside if visible is None else inside & visible.to(images.device)
        k = min(config.joint_cutout_k, keypoints.shape[1])
        out = joint_cutout(out, kp, k, config.joint_cutout_size_frac, generator, visible=vis,
                           fill=config.joint_cutout_fill)
    return out, affine
