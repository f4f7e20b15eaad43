"""Procedural looks: the two visual domains of rendered person images.

A *look* is everything about an image's appearance that is not the body's shape, pose or
camera: clothing colours and patterns, background, lighting, occluders and the camera's
photometric faults. Two looks stand for the source and target domains of the 2D chapters:

* ``"synthetic"`` (SURREAL-like): flat colours per body region (skin for head and hands, a
  top for torso and arms, a bottom for the legs, shoes for the feet), a plain background or a
  two-colour linear gradient, near-frontal lighting, no blur, noise or occluders.
* ``"realistic"``: striped, checked or mottled clothing whose pattern is a function of the
  rest-pose vertex positions (so it moves with the body), hair, bare arms, a wide range of skin
  tones, cluttered backgrounds (a wall/floor split with perspective floor tiles, a dozen textured
  rectangles and ellipses, per-pixel grain), varied light direction and strength, exposure and
  colour-cast changes, Gaussian blur, sensor noise, and 0-2 occluders over the centre of the
  crop, where the person is.

All randomness is drawn once, in :func:`sample_look`, from an explicit ``torch.Generator``
into a :class:`LookParams` (one row per image). Every other function is a deterministic
function of those parameters; per-pixel randomness (grain, sensor noise) comes from an
integer hash of a per-image seed, so an image looks the same whatever batch it is part of and
(up to floating-point rounding) on whatever device it is made. The functions are data-driven:
the synthetic look is the same code with neutral parameters (no shapes, no pattern, zero
noise), not a separate branch.

Frames and units
----------------
* Rest vertices: Anny's world frame, metres, Z up, the body faces -Y, its left is +X.
  Pattern wave vectors are in cycles per metre in that frame.
* Light directions: the camera frame (OpenCV: x right, y down, z forward), unit vectors
  pointing from the surface *towards* the light; light from the camera is ``(0, 0, -1)``.
* Image-plane geometry (shapes, occluders, texture frequencies, blur) is in *image heights*:
  a pixel ``(u, v)`` (``(0, 0)`` = centre of the top-left pixel) sits at
  ``x = (u + 0.5) / H``, ``y = (v + 0.5) / H``, so ``x`` spans ``[0, W / H]`` and ``y`` spans
  ``[0, 1]``; positions given as fractions of the image are fractions of ``(W, H)``. The same
  parameters therefore give the same picture at any resolution.
* Images are float tensors ``(B, 3, H, W)`` in [0, 1]; masks are ``(B, H, W)`` bool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from poselab.checks import check_choice, check_int, check_shape, check_size_pair, resolve_device
from poselab.data.body import REGIONS  # clothing regions, in the order of vertex_regions ids

__all__ = [
    "LOOKS",
    "REGIONS",
    "PATTERNS",
    "TEXTURES",
    "SHAPES",
    "LookParams",
    "sample_look",
    "clothing_colours",
    "backgrounds",
    "lighting",
    "post_process",
    "occluders",
    "composite",
]

LOOKS = ("synthetic", "realistic")
"""Names accepted by :func:`sample_look`."""


PATTERNS = ("flat", "stripes", "checks", "noise")
"""Clothing patterns (:attr:`LookParams.pattern`)."""

TEXTURES = ("flat", "gradient", "stripes", "checks", "grain", "tiles")
"""Background surface textures (:attr:`LookParams.surface_texture`): ``flat`` = the primary colour;
the others blend primary and secondary colours by a linear ramp, hard-edged stripes, axis-aligned
checks, per-pixel grain, or perspective floor tiles/planks (meant for the floor)."""

SHAPES = ("rectangle", "ellipse")
"""Shape kinds of clutter and occluders (bars are thin rectangles)."""

NUM_SHAPES = 12  # clutter shapes per realistic background
NUM_OCCLUDERS = 2  # occluder slots per image
NUM_NOISE_WAVES = 6  # sinusoids summed into the clothing's smooth noise

# Skin tones from very light to dark (linear interpolation between neighbours).
_SKIN_TONES = ((0.98, 0.84, 0.74), (0.87, 0.67, 0.53), (0.63, 0.43, 0.30), (0.33, 0.21, 0.14))
_HAIR_COLOURS = ((0.06, 0.05, 0.05), (0.22, 0.13, 0.08), (0.45, 0.30, 0.18), (0.80, 0.66, 0.42), (0.62, 0.62, 0.62))
# Garment slots of the clothing colour table; region -> slot.
_SKIN, _TOP, _BOTTOM, _SHOES, _HAIR = range(5)
_REGION_SLOT = (_SKIN, _SKIN, _TOP, _TOP, _BOTTOM, _SHOES)
_HEAD, _ARMS = REGIONS.index("head"), REGIONS.index("arms")
_SYNTHETIC_LIGHT = (0.0, -0.25, -1.0)  # from the camera, slightly from above
_MASK32 = 0xFFFFFFFF
_STREAM_GRAIN, _STREAM_SENSOR = 1, 2


@dataclass
class LookParams:
    """Everything random about the appearance of ``B`` images, drawn by :func:`sample_look`.

    Colours are RGB in [0, 1]; ``(.., 2, 3)`` colour pairs are (primary, secondary). Float fields
    share one dtype, all tensors one device.

    Attributes:
        look: the look's name (one of :data:`LOOKS`), for information only.
        skin: ``(B, 3)`` skin colour (head and hands, bare arms).
        hair: ``(B, 3)`` hair colour.
        hair_length: ``(B,)`` metres: hair covers the head vertices less than this below the
            top of the head (twice as far down at the back); 0 = no hair.
        top, bottom: ``(B, 2, 3)`` colour pairs of the top (torso and arms) and bottom (legs).
        shoes: ``(B, 3)`` colour of the feet.
        bare_arms: ``(B,)`` bool, arms in skin colour instead of the top's.
        pattern: ``(B, 2)`` long, index into :data:`PATTERNS` for (top, bottom).
        pattern_waves: ``(B, 2, 2, 3)`` cycles per metre (rest-pose frame): two wave vectors
            ``(u, v)`` per garment; stripes follow ``u``, checks ``u`` and ``v``.
        pattern_phase: ``(B, 2, 2)`` radians, phases of those waves.
        noise_waves: ``(B, K, 3)`` cycles per metre, ``noise_phase``: ``(B, K)`` radians: the
            sinusoids summed into the smooth noise (``noise`` pattern, shading variation).
        shade_variation: ``(B,)`` relative amplitude of the smooth brightness variation over
            the whole body (0 = none).
        surface_colours: ``(B, 2 + S, 2, 3)`` colour pairs of the background surfaces, in
            painting order: wall, floor, then ``S`` clutter shapes.
        surface_texture: ``(B, 2 + S)`` long, index into :data:`TEXTURES` per surface.
        horizon: ``(B,)`` wall/floor boundary, in image heights from the top, at the image's
            horizontal centre (> 1: no floor visible); ``horizon_slope``: ``(B,)`` its slope.
        shape_kind: ``(B, S)`` long, index into :data:`SHAPES` (axis-aligned clutter shapes).
        shape_centre: ``(B, S, 2)`` centres as fractions of the image (width, height).
        shape_size: ``(B, S, 2)`` half-extents (x, y) in image heights.
        gradient_angle: ``(B,)`` radians, direction of the ``gradient`` ramp (0 = left to
            right, pi/2 = top to bottom).
        stripes: ``(B, 3)``: frequency (cycles per image height), angle (radians), phase.
        checks: ``(B, 4)``: x and y frequencies (cycles per image height), x and y phases.
        tiles: ``(B, 2)``: floor-tile frequency (cycles per unit of floor depth; the camera is
            one unit above the floor), and 1 for planks (stripes across the floor) or 0 for tiles.
        grain: ``(B,)`` amplitude of per-pixel grain added to the whole background.
        occluder_present: ``(B, N)`` bool; occluders are painted in slot order.
        occluder_kind: ``(B, N)`` long, index into :data:`SHAPES`.
        occluder_centre: ``(B, N, 2)`` fractions of the image (width, height).
        occluder_size: ``(B, N, 2)`` half-extents along the occluder's own axes, image heights.
        occluder_angle: ``(B, N)`` radians (rotation of the occluder's x axis towards +y).
        occluder_colours: ``(B, N, 2, 3)`` colour pairs (equal colours: a flat occluder).
        occluder_stripes: ``(B, N, 3)``: stripe frequency (cycles per image height), angle, phase.
        light_dir: ``(B, 3)`` unit vector towards the light, camera frame.
        ambient, diffuse: ``(B,)`` light strengths (shading = ambient + diffuse * max(0, n.l)).
        exposure: ``(B,)`` stops (the image is multiplied by ``2 ** exposure``).
        colour_gain: ``(B, 3)`` per-channel gains (colour cast).
        blur_sigma: ``(B,)`` Gaussian blur sigma in image heights (0 = sharp).
        noise_std: ``(B,)`` standard deviation of additive Gaussian sensor noise.
        seed: ``(B,)`` int64 in ``[0, 2**31)``, seeds the per-pixel hash noise.
    """

    look: str
    skin: torch.Tensor
    hair: torch.Tensor
    hair_length: torch.Tensor
    top: torch.Tensor
    bottom: torch.Tensor
    shoes: torch.Tensor
    bare_arms: torch.Tensor
    pattern: torch.Tensor
    pattern_waves: torch.Tensor
    pattern_phase: torch.Tensor
    noise_waves: torch.Tensor
    noise_phase: torch.Tensor
    shade_variation: torch.Tensor
    surface_colours: torch.Tensor
    surface_texture: torch.Tensor
    horizon: torch.Tensor
    horizon_slope: torch.Tensor
    shape_kind: torch.Tensor
    shape_centre: torch.Tensor
    shape_size: torch.Tensor
    gradient_angle: torch.Tensor
    stripes: torch.Tensor
    checks: torch.Tensor
    tiles: torch.Tensor
    grain: torch.Tensor
    occluder_present: torch.Tensor
    occluder_kind: torch.Tensor
    occluder_centre: torch.Tensor
    occluder_size: torch.Tensor
    occluder_angle: torch.Tensor
    occluder_colours: torch.Tensor
    occluder_stripes: torch.Tensor
    light_dir: torch.Tensor
    ambient: torch.Tensor
    diffuse: torch.Tensor
    exposure: torch.Tensor
    colour_gain: torch.Tensor
    blur_sigma: torch.Tensor
    noise_std: torch.Tensor
    seed: torch.Tensor

    def __post_init__(self) -> None:
        check_choice("LookParams.look", self.look, LOOKS)
        tensors = self._tensors()
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"LookParams.{name}: expected a torch.Tensor, got {type(t).__name__}")
        B = self.seed.shape[0] if self.seed.dim() else -1
        bad = [f"{n} {tuple(t.shape)}" for n, t in tensors.items() if t.dim() == 0 or t.shape[0] != B]
        if bad:
            raise ValueError(f"LookParams: every field needs the same leading batch size as seed, got {', '.join(bad)}")
        devices = {str(t.device) for t in tensors.values()}
        if len(devices) > 1:
            raise ValueError(f"LookParams: all tensors must be on one device, got {sorted(devices)}")

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "look"}

    def __len__(self) -> int:
        return self.seed.shape[0]

    @property
    def device(self) -> torch.device:
        return self.seed.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the parameters (and of the images made from them)."""
        return self.skin.dtype

    def __getitem__(self, idx) -> LookParams:
        """Select images; an integer index keeps the batch dimension (a batch of one)."""
        if isinstance(idx, int) and not isinstance(idx, bool):
            if not -len(self) <= idx < len(self):
                raise IndexError(f"image index {idx} out of range for {len(self)} images")
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return LookParams(self.look, **{n: t[idx] for n, t in self._tensors().items()})

    def to(self, device=None, dtype: torch.dtype | None = None) -> LookParams:
        """Return the parameters on ``device``; ``dtype`` casts the floating fields only."""
        out = {}
        for n, t in self._tensors().items():
            out[n] = t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)
        return LookParams(self.look, **out)


# --- sampling ----------------------------------------------------------------------------


class _Draw:
    """Random draws from ``generator``, on its device, floating ones in ``dtype``."""

    def __init__(self, generator: torch.Generator, dtype: torch.dtype):
        self.g, self.device, self.dtype = generator, generator.device, dtype

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.g, device=self.device).to(self.dtype)

    def uniform(self, lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * self.rand(*shape)

    def normal(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.g, device=self.device).to(self.dtype)

    def bernoulli(self, p: float, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.g, device=self.device) < p

    def choice(self, probs: Sequence[float], *shape: int) -> torch.Tensor:
        """Long indices drawn with the given probabilities."""
        u = torch.rand(shape, generator=self.g, device=self.device)
        edges = torch.tensor(probs, device=self.device).cumsum(0)[:-1]
        return (u[..., None] >= edges).sum(-1)

    def unit(self, *shape: int) -> torch.Tensor:
        """Unit 3-vectors, uniform on the sphere: ``(*shape, 3)``."""
        v = self.normal(*shape, 3)
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def hsv(self, sat: tuple[float, float], val: tuple[float, float], *shape: int) -> torch.Tensor:
        """Colours ``(*shape, 3)`` with uniform hue and saturation/value in the given ranges."""
        h, s, v = self.rand(*shape), self.uniform(*sat, *shape), self.uniform(*val, *shape)
        n = torch.tensor([5.0, 3.0, 1.0], device=self.device, dtype=self.dtype)
        k = (n + 6.0 * h[..., None]) % 6.0
        return v[..., None] - (v * s)[..., None] * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)

    def palette(self, colours, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear interpolation along a list of colours at ``t`` in [0, 1]: ``(*t.shape, 3)``."""
        pal = torch.tensor(colours, device=self.device, dtype=self.dtype)
        pos = t.clamp(0.0, 1.0) * (len(colours) - 1)
        i = pos.floor().long().clamp(max=len(colours) - 2)
        w = (pos - i)[..., None]
        return pal[i] * (1 - w) + pal[i + 1] * w

    def seeds(self, n: int) -> torch.Tensor:
        return torch.randint(0, 2**31, (n,), generator=self.g, device=self.device)


def _pair(c: torch.Tensor) -> torch.Tensor:
    """A flat colour pair: ``(..., 3)`` -> ``(..., 2, 3)`` with secondary = primary."""
    return torch.stack([c, c], dim=-2)


def _sample_synthetic(d: _Draw, n: int) -> dict[str, torch.Tensor]:
    z = lambda *shape: torch.zeros(shape, device=d.device, dtype=d.dtype)  # noqa: E731
    zl = lambda *shape: torch.zeros(shape, device=d.device, dtype=torch.long)  # noqa: E731
    skin = d.palette(_SKIN_TONES, d.uniform(0.05, 0.55, n))
    top, bottom = d.hsv((0.3, 0.9), (0.3, 0.9), n), d.hsv((0.3, 0.9), (0.25, 0.85), n)
    shoes = d.hsv((0.0, 0.5), (0.1, 0.5), n)
    # Background: a plain colour, or (half the time) a linear gradient to a second colour.
    c0, c1 = d.hsv((0.0, 0.4), (0.35, 0.95), n), d.hsv((0.0, 0.4), (0.35, 0.95), n)
    graded = d.bernoulli(0.5, n)
    wall = torch.stack([c0, torch.where(graded[:, None], c1, c0)], dim=1)
    surface_texture = zl(n, 2)
    surface_texture[:, 0] = torch.where(graded, TEXTURES.index("gradient"), TEXTURES.index("flat"))
    gradient_angle = math.pi / 2 + d.uniform(-0.35, 0.35, n)
    light = torch.tensor(_SYNTHETIC_LIGHT, device=d.device, dtype=d.dtype) + d.uniform(-0.05, 0.05, n, 3)
    N = NUM_OCCLUDERS
    return dict(
        skin=skin, hair=skin.clone(), hair_length=z(n),
        top=_pair(top), bottom=_pair(bottom), shoes=shoes,
        bare_arms=torch.zeros(n, dtype=torch.bool, device=d.device),
        pattern=zl(n, 2), pattern_waves=z(n, 2, 2, 3), pattern_phase=z(n, 2, 2),
        noise_waves=z(n, NUM_NOISE_WAVES, 3), noise_phase=z(n, NUM_NOISE_WAVES), shade_variation=z(n),
        surface_colours=torch.stack([wall, wall], dim=1), surface_texture=surface_texture,
        horizon=z(n) + 2.0, horizon_slope=z(n),
        shape_kind=zl(n, 0), shape_centre=z(n, 0, 2), shape_size=z(n, 0, 2),
        gradient_angle=gradient_angle, stripes=z(n, 3), checks=z(n, 4), tiles=z(n, 2), grain=z(n),
        occluder_present=torch.zeros(n, N, dtype=torch.bool, device=d.device), occluder_kind=zl(n, N),
        occluder_centre=z(n, N, 2) + 0.5, occluder_size=z(n, N, 2), occluder_angle=z(n, N),
        occluder_colours=z(n, N, 2, 3), occluder_stripes=z(n, N, 3),
        light_dir=light / light.norm(dim=-1, keepdim=True), ambient=d.uniform(0.38, 0.45, n), diffuse=z(n) + 0.55,
        exposure=z(n), colour_gain=z(n, 3) + 1.0, blur_sigma=z(n), noise_std=z(n), seed=d.seeds(n),
    )


def _sample_realistic(d: _Draw, n: int) -> dict[str, torch.Tensor]:
    two_pi = 2 * math.pi
    # Body: skin tones over the whole range, hair (15 % bald), patterned garments.
    skin = (d.palette(_SKIN_TONES, d.rand(n)) + d.uniform(-0.04, 0.04, n, 3)).clamp(0, 1)
    hair = (d.palette(_HAIR_COLOURS, d.rand(n)) + d.uniform(-0.03, 0.03, n, 3)).clamp(0, 1)
    hair_length = d.uniform(0.03, 0.12, n) * (~d.bernoulli(0.15, n))
    top = torch.stack([d.hsv((0.1, 0.9), (0.15, 0.95), n), d.hsv((0.0, 0.9), (0.1, 1.0), n)], dim=1)
    bottom = torch.stack([d.hsv((0.1, 0.7), (0.1, 0.7), n), d.hsv((0.0, 0.7), (0.1, 0.9), n)], dim=1)
    shoes = d.hsv((0.0, 0.6), (0.05, 0.6), n)
    u = d.unit(n, 2)
    v = torch.linalg.cross(u, d.unit(n, 2))
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    freq = d.uniform(5.0, 15.0, n, 2, 1)
    pattern_waves = torch.stack([u * freq, v * freq * d.uniform(0.7, 1.3, n, 2, 1)], dim=2)
    noise_waves = d.unit(n, NUM_NOISE_WAVES) * d.uniform(2.0, 7.0, n, NUM_NOISE_WAVES, 1)
    # Background: wall (flat, gradient, stripes or grain), tiled floor, clutter shapes.
    S = NUM_SHAPES
    wall = torch.stack([d.hsv((0.0, 0.5), (0.3, 0.95), n), d.hsv((0.0, 0.6), (0.2, 0.95), n)], dim=1)
    floor_c = d.hsv((0.0, 0.5), (0.2, 0.8), n)
    floor = torch.stack([floor_c, floor_c * d.uniform(0.4, 0.85, n, 1)], dim=1)
    shapes = torch.stack([d.hsv((0.0, 1.0), (0.1, 1.0), n, S), d.hsv((0.0, 1.0), (0.1, 1.0), n, S)], dim=2)
    T = TEXTURES.index
    wall_tex = torch.tensor([T("flat"), T("gradient"), T("stripes"), T("grain")], device=d.device)[
        d.choice((0.3, 0.3, 0.2, 0.2), n)
    ]
    shape_tex = d.choice((0.3, 0.15, 0.2, 0.2, 0.15), n, S)  # flat, gradient, stripes, checks, grain
    surface_texture = torch.cat([wall_tex[:, None], torch.full_like(wall_tex, T("tiles"))[:, None], shape_tex], 1)
    size = d.uniform(0.03, 0.25, n, S, 2)
    thin = d.bernoulli(1 / 3, n, S)  # bars: one side 0.01-0.03
    thin_axis = d.bernoulli(0.5, n, S)
    thin_size = d.uniform(0.01, 0.03, n, S)
    size[..., 0] = torch.where(thin & thin_axis, thin_size, size[..., 0])
    size[..., 1] = torch.where(thin & ~thin_axis, thin_size, size[..., 1])
    # Occluders: the first in half the images, a second in 40 % of those; rectangles, ellipses, bars.
    N = NUM_OCCLUDERS
    first = d.bernoulli(0.5, n)
    present = torch.stack([first, first & d.bernoulli(0.4, n)], dim=1)
    occ_type = d.choice((0.35, 0.35, 0.3), n, N)  # rectangle, ellipse, bar
    blob = d.uniform(0.07, 0.2, n, N, 2)
    bar = torch.stack([d.uniform(0.25, 0.5, n, N), d.uniform(0.025, 0.06, n, N)], dim=-1)
    occ_colour = d.hsv((0.0, 1.0), (0.05, 1.0), n, N)
    occ_flat = d.bernoulli(0.5, n, N)
    occ_second = torch.where(occ_flat[..., None], occ_colour, d.hsv((0.0, 1.0), (0.05, 1.0), n, N))
    # Light from anywhere in the half-space facing the camera, up to ~70 degrees off-axis.
    theta, phi = d.uniform(0.0, 1.2, n), d.uniform(0.0, two_pi, n)
    light = torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), -theta.cos()], dim=-1)
    return dict(
        skin=skin, hair=hair, hair_length=hair_length, top=top, bottom=bottom, shoes=shoes,
        bare_arms=d.bernoulli(0.3, n), pattern=d.choice((0.25, 0.25, 0.25, 0.25), n, 2),
        pattern_waves=pattern_waves, pattern_phase=d.uniform(0.0, two_pi, n, 2, 2),
        noise_waves=noise_waves, noise_phase=d.uniform(0.0, two_pi, n, NUM_NOISE_WAVES),
        shade_variation=d.uniform(0.05, 0.25, n),
        surface_colours=torch.cat([wall[:, None], floor[:, None], shapes], dim=1), surface_texture=surface_texture,
        horizon=d.uniform(0.4, 0.85, n), horizon_slope=d.uniform(-0.15, 0.15, n),
        shape_kind=d.choice((0.5, 0.5), n, S), shape_centre=d.rand(n, S, 2), shape_size=size,
        gradient_angle=d.uniform(0.0, two_pi, n),
        stripes=torch.stack([d.uniform(6.0, 30.0, n), d.uniform(0.0, math.pi, n), d.uniform(0.0, two_pi, n)], -1),
        checks=torch.cat([d.uniform(4.0, 16.0, n, 2), d.uniform(0.0, two_pi, n, 2)], -1),
        tiles=torch.stack([d.uniform(0.8, 2.5, n), d.bernoulli(0.4, n).to(d.dtype)], -1),
        grain=d.uniform(0.03, 0.12, n),
        occluder_present=present, occluder_kind=torch.where(occ_type == 2, 0, occ_type),
        occluder_centre=d.uniform(0.3, 0.7, n, N, 2), occluder_size=torch.where((occ_type == 2)[..., None], bar, blob),
        occluder_angle=d.uniform(0.0, math.pi, n, N), occluder_colours=torch.stack([occ_colour, occ_second], dim=2),
        occluder_stripes=torch.stack(
            [d.uniform(5.0, 20.0, n, N), d.uniform(0.0, math.pi, n, N), d.uniform(0.0, two_pi, n, N)], -1
        ),
        light_dir=light, ambient=d.uniform(0.25, 0.55, n), diffuse=d.uniform(0.35, 0.8, n),
        exposure=d.uniform(-0.6, 0.6, n), colour_gain=1.0 + d.uniform(-0.12, 0.12, n, 3),
        blur_sigma=d.uniform(0.0, 1.5 / 128, n) * (~d.bernoulli(0.3, n)), noise_std=d.uniform(0.0, 0.05, n),
        seed=d.seeds(n),
    )


def sample_look(
    look: str,
    n: int,
    generator: torch.Generator,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> LookParams:
    """Draw the appearance of ``n`` images of the given look.

    Args:
        look: one of :data:`LOOKS`.
        n: number of images (>= 1).
        generator: the only source of randomness; numbers are drawn on its device and then
            moved, so a CPU generator gives the same looks on every device.
        device: where the parameters live; ``None`` = the generator's device, ``"auto"`` as in
            :func:`poselab.checks.resolve_device`.
        dtype: floating dtype of the parameters.
    Returns:
        :class:`LookParams` with ``n`` rows. The distributions are in ``_sample_synthetic`` and
        ``_sample_realistic`` (ranges commented there and summarised in the module docstring).
    """
    check_choice("look", look, LOOKS)
    check_int("n", n, minimum=1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    dev = generator.device if device is None else resolve_device(device)
    # Everything is computed where the generator lives, then moved: bitwise the same on any device.
    draw = _Draw(generator, dtype)
    values = _sample_synthetic(draw, n) if look == "synthetic" else _sample_realistic(draw, n)
    return LookParams(look, **values).to(dev)


# --- checks and small helpers --------------------------------------------------------------


def _check_params(params) -> LookParams:
    if not isinstance(params, LookParams):
        raise TypeError(f"params: expected LookParams (from sample_look), got {type(params).__name__}")
    return params


def _check_images(arg: str, x, batch: int | str = "B", channels: int | None = 3) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{arg}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{arg}: expected a floating-point tensor, got dtype {x.dtype}")
    check_shape(arg, x, (batch, channels, None, None))
    return x


def _check_device(arg: str, x: torch.Tensor, params: LookParams) -> None:
    if x.device != params.device:
        raise ValueError(f"{arg}: on device {x.device} but params are on {params.device}; move one of them")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of dtype {x.dtype}"
    return type(x).__name__


def _grid(H: int, W: int, params: LookParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in image heights: ``x`` ``(1, 1, W)``, ``y`` ``(1, H, 1)``."""
    kw = dict(device=params.device, dtype=params.dtype)
    x = (torch.arange(W, **kw) + 0.5) / H
    y = (torch.arange(H, **kw) + 0.5) / H
    return x.view(1, 1, W), y.view(1, H, 1)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply), in place on an int64 tensor of values < 2**32.

    The multiplier is < 2**27, so no product overflows int64: the same bits on every device.
    """
    buf = torch.empty_like(x)
    for _ in range(2):
        x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=buf))
        x.mul_(0x45D9F3B).bitwise_and_(_MASK32)
    return x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=buf))


def _hash_uniform(seed: torch.Tensor, stream: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, count)`` uniform numbers in (0, 1), a fixed function of the per-image ``seed`` (B,)."""
    key = _mix32((seed + stream * 0x9E3779B9) & _MASK32)
    bits = torch.arange(count, device=seed.device)[None, :] ^ key[:, None]
    return _unit_interval(_mix32(bits).bitwise_right_shift_(9), dtype)


def _unit_interval(bits: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """23-bit integers -> ``(bits + 0.5) / 2**23``, strictly inside (0, 1) even in float32
    (23 bits plus the half fit a float32 significand, so nothing rounds to 1)."""
    return (bits.to(dtype) + 0.5) * 2.0**-23


def _inside_axis_aligned(kind, centre, size, x, y, aspect) -> torch.Tensor:
    """``(B, H, W)`` bool: pixels inside axis-aligned rectangles/ellipses (one per image).

    kind ``(B,)``, centre ``(B, 2)`` fractions of (W, H), size ``(B, 2)`` half-extents (image heights).
    Separable: each axis contributes ``(dx / a) ** 2`` (ellipse) or 0/2 (rectangle) on a
    ``(B, 1, W)`` or ``(B, H, 1)`` tensor; one broadcast add decides.
    """
    ex = (x - (centre[:, 0] * aspect)[:, None, None]) / size[:, 0, None, None].clamp_min(1e-9)
    ey = (y - centre[:, 1, None, None]) / size[:, 1, None, None].clamp_min(1e-9)
    rect = (kind == SHAPES.index("rectangle"))[:, None, None]
    fx = torch.where(rect, (ex.abs() > 1).to(ex.dtype) * 2, ex * ex)
    fy = torch.where(rect, (ey.abs() > 1).to(ey.dtype) * 2, ey * ey)
    return (fx + fy) <= 1


def _inside_rotated(kind, centre, size, angle, x, y, aspect) -> torch.Tensor:
    """``(B, H, W)`` bool: pixels inside rotated rectangles/ellipses (one per image)."""
    dx = x - (centre[:, 0] * aspect)[:, None, None]
    dy = y - centre[:, 1, None, None]
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    a, b = size[:, 0, None, None].clamp_min(1e-9), size[:, 1, None, None].clamp_min(1e-9)
    u = (dx * (c / a)) + (dy * (s / a))
    v = (dy * (c / b)) - (dx * (s / b))
    u2, v2 = u * u, v * v
    rect = (kind == SHAPES.index("rectangle"))[:, None, None]
    return torch.where(rect, torch.maximum(u2, v2), u2 + v2) <= 1


def _stripes(freq, angle, phase, x, y) -> torch.Tensor:
    """``(B, H, W)`` 0/1 hard-edged stripes; freq in cycles per image height, all ``(B,)``."""
    w = 2 * math.pi * freq[:, None, None]
    arg = x * (w * angle.cos()[:, None, None]) + (y * (w * angle.sin()[:, None, None]) + phase[:, None, None])
    return (torch.sin(arg) > 0).to(x.dtype)


# --- clothing -------------------------------------------------------------------------------


def clothing_colours(params: LookParams, rest_vertices: torch.Tensor, vertex_regions: torch.Tensor) -> torch.Tensor:
    """Per-vertex albedo for the body mesh.

    Args:
        params: ``B`` looks.
        rest_vertices: ``(B, V, 3)`` metres, rest-pose vertices in Anny's world frame (Z up,
            facing -Y). Patterns are functions of these positions, so they follow the body
            in any pose.
        vertex_regions: ``(V,)`` integer ids into :data:`REGIONS`.
    Returns:
        ``(B, V, 3)`` colours in [0, 1], rest_vertices' dtype and device. Synthetic: one
        colour per region (skin for head and hands, the top for arms and torso, the bottom for
        legs, shoes for feet). Realistic: the garments' patterns (``lerp(primary, secondary, t)``
        with ``t`` from stripes, checks or smooth noise of the rest positions), hair on the top and
        back of the head, optionally bare arms, and a smooth brightness variation.
    """
    _check_params(params)
    if not isinstance(rest_vertices, torch.Tensor) or not rest_vertices.is_floating_point():
        raise TypeError(f"rest_vertices: expected a floating-point torch.Tensor, got {_describe(rest_vertices)}")
    check_shape("rest_vertices", rest_vertices, (len(params), None, 3))
    integer = isinstance(vertex_regions, torch.Tensor) and not vertex_regions.is_floating_point()
    if not integer or vertex_regions.dtype == torch.bool or vertex_regions.is_complex():
        raise TypeError(f"vertex_regions: expected an integer torch.Tensor, got {_describe(vertex_regions)}")
    check_shape("vertex_regions", vertex_regions, (rest_vertices.shape[1],))
    _check_device("rest_vertices", rest_vertices, params)
    if vertex_regions.device != rest_vertices.device:
        raise ValueError(f"vertex_regions: on device {vertex_regions.device}, rest_vertices on {rest_vertices.device}")
    if vertex_regions.numel() and (int(vertex_regions.min()) < 0 or int(vertex_regions.max()) >= len(REGIONS)):
        raise ValueError(f"vertex_regions: expected ids in [0, {len(REGIONS) - 1}] (REGIONS), "
                         f"got values in [{int(vertex_regions.min())}, {int(vertex_regions.max())}]")
    p = params.to(dtype=rest_vertices.dtype)
    P = rest_vertices
    B, V, _ = P.shape
    regions = vertex_regions.long()

    # Waves: (B, 3, 4 + K) = [top u, top v, bottom u, bottom v, noise waves], in radians per metre.
    # Skipped when no image has a pattern or a shading variation (the synthetic look).
    textured = bool((p.pattern != PATTERNS.index("flat")).any() | (p.shade_variation != 0).any())
    if textured:
        waves = torch.cat([p.pattern_waves.reshape(B, 4, 3), p.noise_waves], dim=1).transpose(1, 2) * (2 * math.pi)
        phases = torch.cat([p.pattern_phase.reshape(B, 4), p.noise_phase], dim=1)
        s = torch.sin(torch.baddbmm(phases[:, None, :], P, waves))  # (B, V, 4 + K)
        noise = s[..., 4:].sum(-1) * math.sqrt(2.0 / max(p.noise_waves.shape[1], 1))  # ~unit variance
        mottle = torch.tanh(1.5 * noise)  # the "noise" pattern, shared by both garments
    else:
        noise = torch.zeros(B, V, device=P.device, dtype=P.dtype)

    def pattern_value(g: int) -> torch.Tensor:  # (B, V) in [0, 1] for garment g (0 top, 1 bottom)
        if not textured:
            return torch.zeros_like(noise)
        su, sv = s[..., 2 * g], s[..., 2 * g + 1]
        kind = p.pattern[:, g, None]
        value = torch.where(kind == PATTERNS.index("stripes"), torch.tanh(4 * su), torch.tanh(8 * su * sv))
        value = torch.where(kind == PATTERNS.index("noise"), mottle, value)
        return torch.where(kind == PATTERNS.index("flat"), 0.0, 0.5 + 0.5 * value)

    # Garment slot per vertex: region default, bare arms -> skin, hair on the head's top and back.
    slot = torch.tensor(_REGION_SLOT, device=P.device)[regions].expand(B, V)
    slot = torch.where(p.bare_arms[:, None] & (regions == _ARMS), _SKIN, slot)
    head = (regions == _HEAD)[None, :]
    z, yb = P[..., 2], P[..., 1]
    top_z = torch.where(head, z, -torch.inf).amax(dim=1, keepdim=True)  # (B, 1)
    n_head = head.sum().clamp_min(1)
    head_y = torch.where(head, yb, 0.0).sum(dim=1, keepdim=True) / n_head
    L = p.hair_length[:, None]
    hair = head & ((z > top_z - L) | ((yb > head_y) & (z > top_z - 2 * L)))
    slot = torch.where(hair, _HAIR, slot)

    t = torch.where(slot == _TOP, pattern_value(0), torch.zeros_like(z))
    t = torch.where(slot == _BOTTOM, pattern_value(1), t)
    table = torch.stack([_pair(p.skin), p.top, p.bottom, _pair(p.shoes), _pair(p.hair)], dim=1)  # (B, 5, 2, 3)
    idx = slot[..., None].expand(B, V, 3)
    c1 = torch.gather(table[:, :, 0], 1, idx)
    c2 = torch.gather(table[:, :, 1], 1, idx)
    colours = c1 + (c2 - c1) * t[..., None]
    colours = colours * (1 + p.shade_variation[:, None, None] * torch.tanh(noise)[..., None])
    return colours.clamp(0.0, 1.0)


# --- backgrounds and occluders ---------------------------------------------------------------


def backgrounds(params: LookParams, size: Sequence[int]) -> torch.Tensor:
    """Background images.

    Args:
        params: ``B`` looks.
        size: ``(H, W)`` pixels.
    Returns:
        ``(B, 3, H, W)`` in [0, 1], params' dtype and device. Synthetic: a plain colour or a
        two-colour linear gradient. Realistic: a wall and a perspective-tiled floor split at a
        tilted horizon, ``S`` textured axis-aligned rectangles and ellipses painted over them,
        and per-pixel grain.
    """
    _check_params(params)
    H, W = check_size_pair("size", size)
    p = params
    B, dt = len(p), p.dtype
    x, y = _grid(H, W, p)
    aspect = W / H
    # Surface label per pixel: 0 wall, 1 floor, 2 + s clutter shape s (later shapes on top).
    line = p.horizon[:, None, None] + p.horizon_slope[:, None, None] * (x - aspect / 2)  # (B, 1, W)
    below = y - line  # (B, H, W), > 0 on the floor
    label = (below > 0).long()
    for s in range(p.shape_kind.shape[1]):
        inside = _inside_axis_aligned(p.shape_kind[:, s], p.shape_centre[:, s], p.shape_size[:, s], x, y, aspect)
        label.masked_fill_(inside, s + 2)

    # Texture fields (B, H, W) in [0, 1], only for the textures in use.
    used = set(torch.unique(p.surface_texture).tolist())
    need_grain = TEXTURES.index("grain") in used or bool((p.grain > 0).any())
    grain = _hash_uniform(p.seed, _STREAM_GRAIN, H * W, dt).view(B, H, W) if need_grain else None
    field = {}
    if TEXTURES.index("gradient") in used:
        c, sn = p.gradient_angle.cos()[:, None, None], p.gradient_angle.sin()[:, None, None]
        extent = aspect * c.abs() + sn.abs()
        field["gradient"] = 0.5 + (x - aspect / 2) * (c / extent) + (y - 0.5) * (sn / extent)
    if TEXTURES.index("stripes") in used:
        field["stripes"] = _stripes(p.stripes[:, 0], p.stripes[:, 1], p.stripes[:, 2], x, y)
    if TEXTURES.index("checks") in used:
        w = 2 * math.pi * p.checks[:, :2]
        cx = torch.sin(x * w[:, 0, None, None] + p.checks[:, 2, None, None]) > 0
        cy = torch.sin(y * w[:, 1, None, None] + p.checks[:, 3, None, None]) > 0
        field["checks"] = (cx ^ cy).to(dt)
    if TEXTURES.index("grain") in used:
        field["grain"] = grain
    if TEXTURES.index("tiles") in used:
        # Ground plane seen from one unit above it: depth ~ 1 / (rows below the horizon).
        depth = 1.0 / below.clamp_min(1e-3)
        lateral = (x - aspect / 2) * depth
        w = 2 * math.pi * p.tiles[:, 0, None, None]
        across = torch.sin(lateral * w) > 0
        along = torch.sin(depth * w) > 0
        planks = p.tiles[:, 1, None, None] > 0.5
        field["tiles"] = torch.where(planks, across, across ^ along).to(dt)
    flat = label.view(B, 1, H * W)
    idx = flat.expand(B, 3, H * W)
    c1 = torch.gather(p.surface_colours[:, :, 0].transpose(1, 2), 2, idx)
    if field:  # blend towards the secondary colour by the surface's texture value t in [0, 1]
        names = sorted(field, key=TEXTURES.index)
        fields_ = torch.stack([torch.zeros(B, H, W, device=p.device, dtype=dt)] + [field[k] for k in names], dim=1)
        lut = torch.zeros(len(TEXTURES), dtype=torch.long, device=p.device)  # texture id -> row of fields_
        lut[[TEXTURES.index(k) for k in names]] = torch.arange(1, len(names) + 1, device=p.device)
        tex = torch.gather(lut[p.surface_texture], 1, flat[:, 0])  # (B, HW)
        t = torch.gather(fields_.view(B, len(names) + 1, H * W), 1, tex[:, None])  # (B, 1, HW)
        dc = torch.gather((p.surface_colours[:, :, 1] - p.surface_colours[:, :, 0]).transpose(1, 2), 2, idx)
        rgb = torch.addcmul(c1, dc, t)
    else:
        rgb = c1
    if grain is not None:
        rgb = rgb + p.grain[:, None, None] * (grain.view(B, 1, H * W) - 0.5)
    return rgb.view(B, 3, H, W).clamp_(0.0, 1.0)


def occluders(params: LookParams, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Occluders to paint over the person (after the person, see :func:`composite`).

    Args:
        params: ``B`` looks.
        size: ``(H, W)`` pixels.
    Returns:
        ``rgb`` ``(B, 3, H, W)`` in [0, 1] (0 where there is no occluder) and ``mask``
        ``(B, H, W)`` bool, True on occluded pixels. Synthetic looks have no occluders (empty
        mask). Realistic: 0-2 rotated rectangles, ellipses or bars, flat or striped, centred in
        the middle 40 % of the crop.
    """
    _check_params(params)
    H, W = check_size_pair("size", size)
    p = params
    B, dt = len(p), p.dtype
    rgb = torch.zeros(B, 3, H, W, device=p.device, dtype=dt)
    mask = torch.zeros(B, H, W, device=p.device, dtype=torch.bool)
    if not bool(p.occluder_present.any()):
        return rgb, mask
    x, y = _grid(H, W, p)
    aspect = W / H
    for k in range(p.occluder_present.shape[1]):
        inside = _inside_rotated(
            p.occluder_kind[:, k], p.occluder_centre[:, k], p.occluder_size[:, k], p.occluder_angle[:, k], x, y, aspect
        ) & p.occluder_present[:, k, None, None]
        st = p.occluder_stripes[:, k]
        t = _stripes(st[:, 0], st[:, 1], st[:, 2], x, y)[:, None]  # (B, 1, H, W)
        c1, c2 = p.occluder_colours[:, k, 0, :, None, None], p.occluder_colours[:, k, 1, :, None, None]
        rgb = torch.where(inside[:, None], c1 + (c2 - c1) * t, rgb)
        mask |= inside
    return rgb.clamp_(0.0, 1.0), mask


# --- lighting and camera ----------------------------------------------------------------------


def lighting(params: LookParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The light of each image, for the renderer's shading.

    Returns:
        ``light_dir`` ``(B, 3)`` unit vectors in the camera frame pointing towards the light
        (``(0, 0, -1)`` = from the camera), ``ambient`` ``(B,)`` and ``diffuse`` ``(B,)`` strengths.
        Synthetic: near-frontal from slightly above, ambient ~0.4, diffuse 0.55. Realistic: up to
        ~70 degrees off-axis in any direction, ambient 0.25-0.55, diffuse 0.35-0.8.
    """
    _check_params(params)
    return params.light_dir, params.ambient, params.diffuse


def post_process(params: LookParams, images: torch.Tensor) -> torch.Tensor:
    """The camera's photometric faults, applied to composited images.

    In order: colour cast and exposure (``images * colour_gain * 2 ** exposure``), Gaussian blur
    (separable, replicate padding; sigma in image heights), additive Gaussian sensor noise
    (hash noise seeded per image, so repeatable), clamping to [0, 1].

    Args:
        params: ``B`` looks.
        images: ``(B, 3, H, W)`` floating, on params' device.
    Returns:
        ``(B, 3, H, W)`` in [0, 1], images' dtype. Synthetic looks have neutral parameters, so
        images already in [0, 1] come back unchanged.
    """
    _check_params(params)
    _check_images("images", images, batch=len(params))
    _check_device("images", images, params)
    p = params.to(dtype=images.dtype)
    B, C, H, W = images.shape
    gain = p.colour_gain * torch.exp2(p.exposure)[:, None]
    out = images * gain[:, :, None, None]
    sigma = p.blur_sigma * H  # pixels
    radius = math.ceil(3 * float(sigma.max()) - 1e-4) if B else 0  # 3 sigma, rounded up
    if radius >= 1:
        taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
        k = torch.exp(-0.5 * (taps[None, :] / sigma[:, None].clamp_min(1e-3)) ** 2)
        k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(C, dim=0)  # (B * C, K)
        x = out.reshape(1, B * C, H, W)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=B * C)
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=B * C)
        out = x.view(B, C, H, W)
    if bool((p.noise_std > 0).any()):
        u = _hash_uniform(p.seed, _STREAM_SENSOR, C * H * W, images.dtype)
        z = torch.erfinv(2 * u - 1) * math.sqrt(2.0)
        out = out + p.noise_std[:, None, None, None] * z.view(B, C, H, W)
    return out.clamp(0.0, 1.0)


def composite(
    person_rgb: torch.Tensor,
    person_mask: torch.Tensor,
    background: torch.Tensor,
    occluder_rgb: torch.Tensor | None = None,
    occluder_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Person over background, occluders over both.

    Args:
        person_rgb: ``(B, 3, H, W)`` rendered person (anything outside the mask is ignored).
        person_mask: ``(B, H, W)`` bool coverage, or floating coverage in [0, 1] (alpha blend).
        background: ``(B, 3, H, W)``.
        occluder_rgb, occluder_mask: as person's, both given or both ``None``.
    Returns:
        ``(B, 3, H, W)`` in background's dtype.
    """
    bg = _check_images("background", background)
    B, C, H, W = bg.shape
    layers = [("person", person_rgb, person_mask)]
    if (occluder_rgb is None) != (occluder_mask is None):
        raise ValueError("occluder_rgb, occluder_mask: give both or neither")
    if occluder_rgb is not None:
        layers.append(("occluder", occluder_rgb, occluder_mask))
    out = bg
    for name, rgb, mask in layers:
        _check_images(f"{name}_rgb", rgb, batch=B, channels=C)
        check_shape(f"{name}_rgb", rgb, (B, C, H, W))
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name}_mask: expected a torch.Tensor, got {type(mask).__name__}")
        check_shape(f"{name}_mask", mask, (B, H, W))
        for arg, t in ((f"{name}_rgb", rgb), (f"{name}_mask", mask)):
            if t.device != bg.device:
                raise ValueError(f"{arg}: on device {t.device} but background is on {bg.device}")
        if mask.dtype == torch.bool:
            out = torch.where(mask[:, None], rgb.to(bg.dtype), out)
        elif mask.is_floating_point():
            a = mask[:, None].to(bg.dtype)
            out = out + a * (rgb.to(bg.dtype) - out)
        else:
            raise TypeError(f"{name}_mask: expected a bool or floating tensor, got dtype {mask.dtype}")
    return out
