"""Pinhole cameras, camera rigs, projection, screen normalisation and 2D keypoint noise.

Frames and units
----------------
* **World frame** = the mocap world frame (:mod:`poselab.data.mocap`): the BVH axes in
  metres, +Y up, floor at about y = 0, X and Z horizontal.
* **Camera frame** = the OpenCV convention: x to the right of the image, y down the image,
  z forward along the optical axis. A world point maps to ``x_cam = R @ x_world + t``.
* **Pixels**: ``u = fx * x / z + cx``, ``v = fy * y / z + cy`` (no lens distortion).
* **Normalised screen coordinates** (VideoPose3D): ``x / w * 2 - 1`` and ``y / w * 2 - h / w``,
  so the image width maps to [-1, 1] and the aspect ratio is kept.

Two rigs stand for the two camera domains of the lifting chapters: ``"studio"``
(Human3.6M-like, fixed) and ``"wild"`` (3DHP/3DPW-like, randomly sampled); see :func:`make_rig`.

Everything is batched over cameras and points; tensors follow the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from poselab.checks import check_choice, check_float_tensor, check_positive, check_shape

__all__ = [
    "Cameras",
    "RIGS",
    "STUDIO_AZIMUTHS_DEG",
    "STUDIO_HEIGHTS_M",
    "STUDIO_DISTANCES_M",
    "STUDIO_TARGET_M",
    "STUDIO_FOCAL_PX",
    "STUDIO_SIZE_PX",
    "WILD_IMAGE_SIZES",
    "look_at",
    "make_rig",
    "project_points",
    "pixels_to_normalized",
    "normalized_to_pixels",
    "backproject",
    "gaussian_noise",
    "detector_noise",
]

RIGS = ("studio", "wild")
"""Names accepted by :func:`make_rig`."""

# Studio rig (Human3.6M-like): four cameras at the corners of the capture area, at chest
# height, a few metres away, all aimed at the centre of the volume about 1 m above the floor.
STUDIO_AZIMUTHS_DEG = (45.0, 135.0, 225.0, 315.0)
STUDIO_HEIGHTS_M = (1.45, 1.30, 1.55, 1.35)
STUDIO_DISTANCES_M = (4.7, 5.4, 4.9, 5.6)  # horizontal distance from the vertical axis x = z = 0
STUDIO_TARGET_M = (0.0, 1.0, 0.0)
STUDIO_FOCAL_PX = 1145.0
STUDIO_SIZE_PX = (1000.0, 1000.0)

# Wild rig (3DHP/3DPW-like) ranges; see make_rig.
WILD_IMAGE_SIZES = ((1920.0, 1080.0), (1080.0, 1920.0), (2048.0, 2048.0), (1280.0, 720.0))
"""(width, height) in pixels: landscape HD, portrait phone video (3DPW), square (3DHP), 720p."""
_WILD_TARGET_M = (0.0, 1.0, 0.0)
_WILD_TARGET_JITTER_M = (0.3, 0.2, 0.3)  # uniform +- per axis around _WILD_TARGET_M
_WILD_AZIMUTH_DEG = (0.0, 360.0)
_WILD_ELEVATION_DEG = (-10.0, 60.0)
_WILD_DISTANCE_M = (2.5, 9.0)
_WILD_FOV_DEG = (40.0, 90.0)
_WILD_ROLL_DEG = 20.0
_WILD_FIT_HALF_EXTENT_M = 1.2  # a person spans about +-1.2 m around the look-at point
_WILD_MIN_CAMERA_HEIGHT_M = 0.3


def _check_last_dim(arg: str, x: torch.Tensor, size: int, min_dims: int = 1) -> None:
    if x.dim() < min_dims or x.shape[-1] != size:
        dims = "(..., " + ", ".join(["*"] * (min_dims - 1) + [str(size)]) + ")"
        raise ValueError(f"{arg}: expected shape {dims}, got {tuple(x.shape)}")


def _check_probability(arg: str, p: float) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not (0.0 <= p <= 1.0):
        raise ValueError(f"{arg}: expected a probability in [0, 1], got {p!r}")
    return float(p)


def _random(kind: str, shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None):
    """``torch.rand``/``torch.randn`` on the generator's device, then moved to ``like``'s device.

    A CPU generator thus gives the same numbers whether ``like`` lives on the CPU or a GPU.
    """
    fn = torch.rand if kind == "rand" else torch.randn
    device = generator.device if generator is not None else like.device
    return fn(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


@dataclass
class Cameras:
    """A batch of ``C`` pinhole cameras (OpenCV frame, no distortion).

    Attributes:
        R: ``(C, 3, 3)`` world-to-camera rotations (rows = camera x, y, z axes in world coordinates).
        t: ``(C, 3)`` metres, translations: ``x_cam = R @ x_world + t``.
        focal: ``(C, 2)`` pixels, ``(fx, fy)``.
        center: ``(C, 2)`` pixels, principal point ``(cx, cy)``.
        size: ``(C, 2)`` pixels, image ``(width, height)``.
    """

    R: torch.Tensor
    t: torch.Tensor
    focal: torch.Tensor
    center: torch.Tensor
    size: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("R", "t", "focal", "center", "size"):
            check_float_tensor(f"Cameras.{name}", getattr(self, name))
        check_shape("Cameras.R", self.R, ("C", 3, 3))
        C = self.R.shape[0]
        for name, last in (("t", 3), ("focal", 2), ("center", 2), ("size", 2)):
            check_shape(f"Cameras.{name}", getattr(self, name), (C, last))
        devices = {str(getattr(self, n).device) for n in ("R", "t", "focal", "center", "size")}
        if len(devices) > 1:
            raise ValueError(f"Cameras: all tensors must be on one device, got {sorted(devices)}")
        if C and (bool((self.focal <= 0).any()) or bool((self.size <= 0).any())):
            raise ValueError("Cameras: focal lengths and image sizes must be > 0")

    def __len__(self) -> int:
        return self.R.shape[0]

    def __getitem__(self, idx) -> Cameras:
        """Select cameras; an integer index keeps the batch dimension (a batch of one)."""
        if isinstance(idx, torch.Tensor) and idx.dim() == 0 and idx.dtype != torch.bool:
            idx = int(idx)
        elif not isinstance(idx, (slice, torch.Tensor, list, tuple, bool)) and hasattr(idx, "__index__"):
            idx = int(idx)  # numpy integers
        if isinstance(idx, int):
            if not -len(self) <= idx < len(self):
                raise IndexError(f"camera index {idx} out of range for {len(self)} cameras")
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return Cameras(self.R[idx], self.t[idx], self.focal[idx], self.center[idx], self.size[idx])

    @property
    def device(self) -> torch.device:
        return self.R.device

    @property
    def position(self) -> torch.Tensor:
        """``(C, 3)`` metres: camera centres in the world frame, ``-R^T t``."""
        return -torch.einsum("cji,cj->ci", self.R, self.t)

    def to(self, device=None, dtype: torch.dtype | None = None) -> Cameras:
        """Return the cameras on ``device`` (and/or cast to floating ``dtype``)."""
        return Cameras(*(getattr(self, n).to(device=device, dtype=dtype) for n in ("R", "t", "focal", "center", "size")))

    @staticmethod
    def cat(cameras: Sequence[Cameras]) -> Cameras:
        """Concatenate several camera batches into one."""
        if not cameras:
            raise ValueError("Cameras.cat: expected at least one Cameras batch, got none")
        return Cameras(*(torch.cat([getattr(c, n) for c in cameras]) for n in ("R", "t", "focal", "center", "size")))

    def _params_like(self, points: torch.Tensor):
        # Cameras follow the points' device and dtype (one code path for CPU and GPU).
        return (getattr(self, n).to(device=points.device, dtype=points.dtype) for n in ("R", "t", "focal", "center"))

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """Every point set through every camera.

        Args:
            points: ``(..., J, 3)`` metres, world frame.
        Returns:
            ``(..., C, J, 3)`` metres, camera frames.
        """
        check_float_tensor("points", points)
        _check_last_dim("points", points, 3, min_dims=2)
        R, t, _, _ = self._params_like(points)
        return torch.einsum("cab,...jb->...cja", R, points) + t[:, None, :]

    def project(self, points_world: torch.Tensor) -> torch.Tensor:
        """Project ``(..., J, 3)`` world points through every camera -> ``(..., C, J, 2)`` pixels."""
        cam = self.world_to_camera(points_world)
        _, _, focal, center = self._params_like(points_world)
        return project_points(cam, focal[:, None, :], center[:, None, :])

    def world_to_camera_paired(self, points: torch.Tensor) -> torch.Tensor:
        """Camera ``n`` applied to point set ``n`` only: ``(N, J, 3)`` world -> ``(N, J, 3)`` camera, ``N == C``."""
        check_float_tensor("points", points)
        check_shape("points", points, (len(self), None, 3))
        R, t, _, _ = self._params_like(points)
        return torch.einsum("nab,njb->nja", R, points) + t[:, None, :]

    def project_paired(self, points_world: torch.Tensor) -> torch.Tensor:
        """Camera ``n`` projects point set ``n``: ``(N, J, 3)`` world metres -> ``(N, J, 2)`` pixels, ``N == C``.

        Used where every sample has its own camera (the wild test domain).
        """
        cam = self.world_to_camera_paired(points_world)
        _, _, focal, center = self._params_like(points_world)
        return project_points(cam, focal[:, None, :], center[:, None, :])


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, 1.0, 0.0), roll=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera rotation and translation of cameras at ``eye`` aimed at ``target``.

    The optical axis (camera z) points from ``eye`` to ``target``; camera x is
    ``forward x up`` (to the right), camera y = ``z x x`` (down the image), so with
    ``roll = 0`` the world's up direction projects straight up the image.
    ``roll`` then turns the camera about its optical axis: positive roll turns the
    scene's up direction towards the image's left (the picture rotates counter-clockwise
    on screen). The target stays on the optical axis, i.e. projects to the principal point.

    Args:
        eye: ``(C, 3)`` metres, camera centres in the world frame.
        target: ``(C, 3)`` or ``(3,)`` metres, points to look at.
        up: ``(3,)`` world up direction (default +Y); must not be parallel to the view direction.
        roll: float or ``(C,)`` radians.
    Returns:
        ``R`` ``(C, 3, 3)`` (orthonormal, det +1) and ``t`` ``(C, 3)`` with ``x_cam = R @ x_world + t``.
    """
    check_float_tensor("eye", eye)
    check_shape("eye", eye, ("C", 3))
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device)
    if target.shape != (3,):
        check_shape("target", target, (eye.shape[0], 3))
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device)
    if up.shape != (3,):
        raise ValueError(f"up: expected shape (3,), got {tuple(up.shape)}")
    roll = torch.as_tensor(roll, dtype=eye.dtype, device=eye.device)
    if roll.dim() > 1 or (roll.dim() == 1 and roll.shape[0] != eye.shape[0]):
        raise ValueError(f"roll: expected a float or shape ({eye.shape[0]},), got {tuple(roll.shape)}")
    forward = target - eye
    dist = forward.norm(dim=-1, keepdim=True)
    if bool((dist < 1e-9).any()):
        raise ValueError("look_at: eye and target coincide for some camera")
    z = forward / dist
    x = torch.linalg.cross(z, up.expand_as(z))
    xn = x.norm(dim=-1, keepdim=True)
    if bool((xn < 1e-6 * up.norm()).any()):
        raise ValueError("look_at: the view direction is parallel to `up` for some camera; choose another up vector")
    x = x / xn
    y = torch.linalg.cross(z, x)
    c, s = torch.cos(roll)[..., None], torch.sin(roll)[..., None]
    x, y = c * x + s * y, c * y - s * x
    R = torch.stack([x, y, z], dim=-2)
    t = -torch.einsum("cab,cb->ca", R, eye)
    return R, t


def _studio_rig(num_cameras: int, dtype: torch.dtype) -> Cameras:
    k = torch.arange(num_cameras)
    az = torch.deg2rad(STUDIO_AZIMUTHS_DEG[0] + 360.0 / num_cameras * k.to(torch.float64))
    height = torch.tensor(STUDIO_HEIGHTS_M, dtype=torch.float64)[k % 4]
    dist = torch.tensor(STUDIO_DISTANCES_M, dtype=torch.float64)[k % 4]
    eye = torch.stack([dist * torch.sin(az), height, dist * torch.cos(az)], dim=-1)
    R, t = look_at(eye, torch.tensor(STUDIO_TARGET_M, dtype=torch.float64))
    focal = torch.full((num_cameras, 2), STUDIO_FOCAL_PX, dtype=torch.float64)
    size = torch.tensor(STUDIO_SIZE_PX, dtype=torch.float64).expand(num_cameras, 2).clone()
    return Cameras(R, t, focal, size / 2, size).to(dtype=dtype)


def _wild_rig(num_cameras: int, generator: torch.Generator | None, dtype: torch.dtype) -> Cameras:
    f64 = torch.empty(0, dtype=torch.float64)
    u = _random("rand", (num_cameras, 9), f64, generator)  # one fixed draw order -> reproducible
    lo_hi = lambda a, b, col: a + (b - a) * col  # noqa: E731
    jitter = torch.tensor(_WILD_TARGET_JITTER_M, dtype=torch.float64)
    target = torch.tensor(_WILD_TARGET_M, dtype=torch.float64) + (2 * u[:, 0:3] - 1) * jitter
    sizes = torch.tensor(WILD_IMAGE_SIZES, dtype=torch.float64)
    size = sizes[(u[:, 3] * len(WILD_IMAGE_SIZES)).long().clamp_max(len(WILD_IMAGE_SIZES) - 1)]
    fov = torch.deg2rad(lo_hi(*_WILD_FOV_DEG, u[:, 4]))
    # The field of view spans the shorter image side; the near distance is raised so that
    # a person (+-1.2 m around the look-at point) fits, as wild datasets rarely cut people off.
    focal = (size.min(dim=-1).values / 2) / torch.tan(fov / 2)
    d_min = torch.clamp(_WILD_FIT_HALF_EXTENT_M / torch.tan(fov / 2), min=_WILD_DISTANCE_M[0])
    dist = lo_hi(d_min, _WILD_DISTANCE_M[1], u[:, 5])
    # Low elevations are limited so that the camera stays above the floor (>= 0.3 m).
    el_min = torch.clamp(
        torch.asin(((_WILD_MIN_CAMERA_HEIGHT_M - target[:, 1]) / dist).clamp(-1, 1)),
        min=math.radians(_WILD_ELEVATION_DEG[0]),
    )
    el = lo_hi(el_min, math.radians(_WILD_ELEVATION_DEG[1]), u[:, 6])
    az = torch.deg2rad(lo_hi(*_WILD_AZIMUTH_DEG, u[:, 7]))
    roll = torch.deg2rad(lo_hi(-_WILD_ROLL_DEG, _WILD_ROLL_DEG, u[:, 8]))
    eye = target + dist[:, None] * torch.stack(
        [torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], dim=-1
    )
    R, t = look_at(eye, target, roll=roll)
    return Cameras(R, t, focal[:, None].expand(-1, 2).clone(), size / 2, size).to(dtype=dtype)


def make_rig(
    name: str,
    num_cameras: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """Build a camera rig in the mocap world frame (metres, +Y up), on the CPU.

    ``"studio"`` (Human3.6M-like, deterministic; ``generator`` is ignored):
        ``num_cameras`` defaults to 4: cameras at azimuths 45, 135, 225 and 315 degrees
        around the vertical axis through the origin (``num_cameras = n`` spaces ``n``
        cameras evenly from 45 degrees), heights 1.30-1.55 m (chest height, cycled from
        ``STUDIO_HEIGHTS_M``), horizontal distances 4.7-5.6 m (``STUDIO_DISTANCES_M``), all
        looking at (0, 1, 0) m with no roll; f = 1145 px, 1000 x 1000 px images, principal
        point at the image centre.

    ``"wild"`` (3DHP/3DPW-like, random; ``num_cameras`` defaults to 4), each camera drawn
    independently from ``generator`` (the global torch RNG when ``None``):
        * look-at point: (0, 1, 0) m jittered uniformly by +-0.3 m in x and z and +-0.2 m in y;
        * image size (w, h): uniform over ``WILD_IMAGE_SIZES`` (1920x1080, portrait
          1080x1920, 2048x2048, 1280x720); principal point at the image centre;
        * field of view: uniform 40-90 degrees across the shorter image side, fx = fy;
        * distance to the look-at point: uniform in ``[max(2.5, 1.2 / tan(fov / 2)), 9]`` m
          (narrow lenses are kept far enough for a person to fit);
        * elevation above the look-at point: uniform in ``[max(-10, e0), 60]`` degrees, where
          ``e0`` keeps the camera at least 0.3 m above the floor;
        * azimuth: uniform 0-360 degrees; roll: uniform -20..+20 degrees.

    Args:
        name: ``"studio"`` or ``"wild"``.
        num_cameras: number of cameras (> 0), or ``None`` for 4.
        generator: CPU ``torch.Generator`` for the wild rig.
        dtype: floating dtype of the returned tensors.
    Returns:
        :class:`Cameras` with ``num_cameras`` cameras.
    """
    check_choice("rig", name, RIGS)
    if num_cameras is None:
        num_cameras = 4
    if not isinstance(num_cameras, int) or isinstance(num_cameras, bool) or num_cameras < 1:
        raise ValueError(f"num_cameras: expected a positive int or None, got {num_cameras!r}")
    if name == "studio":
        return _studio_rig(num_cameras, dtype)
    return _wild_rig(num_cameras, generator, dtype)


def project_points(points_cam: torch.Tensor, focal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Pinhole projection ``u = f * (x, y) / z + c``.

    Args:
        points_cam: ``(..., 3)`` metres, camera frame; ``z`` must be > 0 (points behind the
            camera give meaningless pixels; nothing is clipped).
        focal: ``(..., 2)`` pixels, broadcastable against ``points_cam[..., :2]``.
        center: ``(..., 2)`` pixels, broadcastable likewise.
    Returns:
        ``(..., 2)`` pixels.
    """
    for arg, x, n in (("points_cam", points_cam, 3), ("focal", focal, 2), ("center", center, 2)):
        check_float_tensor(arg, x)
        _check_last_dim(arg, x, n)
    return focal * points_cam[..., :2] / points_cam[..., 2:3] + center


def backproject(pixels: torch.Tensor, depth: torch.Tensor, focal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`project_points` given the depth: pixels + z -> camera-frame points.

    Args:
        pixels: ``(..., 2)``; depth: ``(...)`` metres (camera z); focal, center: ``(..., 2)`` pixels
        (broadcastable).
    Returns:
        ``(..., 3)`` metres, camera frame.
    """
    for arg, x, n in (("pixels", pixels, 2), ("focal", focal, 2), ("center", center, 2)):
        check_float_tensor(arg, x)
        _check_last_dim(arg, x, n)
    check_float_tensor("depth", depth)
    if depth.shape != pixels.shape[:-1]:
        raise ValueError(f"depth: expected shape {tuple(pixels.shape[:-1])} (pixels without the last axis), got {tuple(depth.shape)}")
    xy = (pixels - center) / focal * depth[..., None]
    return torch.cat([xy, depth[..., None]], dim=-1)


def _check_image_sizes(size: torch.Tensor) -> None:
    check_float_tensor("size", size)
    _check_last_dim("size", size, 2)
    if bool((size <= 0).any()):
        raise ValueError("size: image widths and heights must be > 0")


def pixels_to_normalized(pixels: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """VideoPose3D screen normalisation: ``(x / w * 2 - 1, y / w * 2 - h / w)``.

    The width maps to [-1, 1]; the height to [-h/w, h/w] (the aspect ratio is kept, so
    distances stay isotropic).

    Args:
        pixels: ``(..., 2)`` pixels; size: ``(..., 2)`` ``(width, height)`` pixels, broadcastable.
    Returns:
        ``(..., 2)`` normalised coordinates.
    """
    check_float_tensor("pixels", pixels)
    _check_last_dim("pixels", pixels, 2)
    _check_image_sizes(size)
    size = size.to(pixels)
    w, h = size[..., 0:1], size[..., 1:2]
    return pixels / w * 2 - torch.cat([torch.ones_like(h), h / w], dim=-1)


def normalized_to_pixels(normalized: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pixels_to_normalized`: ``(..., 2)`` normalised -> ``(..., 2)`` pixels."""
    check_float_tensor("normalized", normalized)
    _check_last_dim("normalized", normalized, 2)
    _check_image_sizes(size)
    size = size.to(normalized)
    w, h = size[..., 0:1], size[..., 1:2]
    return (normalized + torch.cat([torch.ones_like(h), h / w], dim=-1)) * w / 2


def gaussian_noise(keypoints: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add i.i.d. Gaussian noise of standard deviation ``sigma`` to every coordinate.

    Args:
        keypoints: ``(..., J, 2)``, in any unit (``sigma`` is in the same unit, e.g. pixels).
        sigma: >= 0; 0 returns an unchanged copy.
        generator: ``torch.Generator`` for reproducibility (global RNG when ``None``).
    Returns:
        ``(..., J, 2)`` noisy keypoints (a new tensor).
    """
    check_float_tensor("keypoints", keypoints)
    _check_last_dim("keypoints", keypoints, 2, min_dims=2)
    check_positive("sigma", sigma, allow_zero=True)
    if sigma == 0:
        return keypoints.clone()
    return keypoints + sigma * _random("randn", keypoints.shape, keypoints, generator)


def detector_noise(
    keypoints: torch.Tensor,
    sigma: float,
    outlier_prob: float,
    outlier_sigma: float,
    dropout_prob: float,
    generator: torch.Generator | None = None,
    fill_joint: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Imitate a 2D keypoint detector's errors: jitter, outliers and dropouts.

    Per keypoint, independently:

    1. jitter: Gaussian noise of standard deviation ``sigma`` on each coordinate;
    2. outlier: with probability ``outlier_prob`` an extra Gaussian offset of standard
       deviation ``outlier_sigma`` per coordinate (a confident detection of the wrong place,
       e.g. the other wrist); outliers stay marked visible;
    3. dropout: with probability ``dropout_prob`` the keypoint is missed: it is marked
       invisible and **set to the (noisy) position of** ``fill_joint`` (default 0, the
       pelvis/root), i.e. it collapses onto the body centre, which carries no information
       about the missing limb and stays inside the person. The ``fill_joint`` itself never
       drops (a pipeline always estimates the body centre, e.g. from the person's box).

    Args:
        keypoints: ``(..., J, 2)``, e.g. pixels; ``sigma`` and ``outlier_sigma`` are in the same unit.
        sigma, outlier_sigma: >= 0. outlier_prob, dropout_prob: probabilities in [0, 1].
        generator: ``torch.Generator`` (global RNG when ``None``); the draws are made in a
            fixed order, so a seeded generator reproduces the result exactly.
        fill_joint: index of the joint that missing keypoints collapse onto.
    Returns:
        ``noisy`` ``(..., J, 2)`` and ``visible`` ``(..., J)`` bool (False = dropped).
    """
    check_float_tensor("keypoints", keypoints)
    _check_last_dim("keypoints", keypoints, 2, min_dims=2)
    check_positive("sigma", sigma, allow_zero=True)
    check_positive("outlier_sigma", outlier_sigma, allow_zero=True)
    _check_probability("outlier_prob", outlier_prob)
    _check_probability("dropout_prob", dropout_prob)
    J = keypoints.shape[-2]
    if not isinstance(fill_joint, int) or not 0 <= fill_joint < J:
        raise ValueError(f"fill_joint: expected an int in [0, {J - 1}], got {fill_joint!r}")
    jitter = _random("randn", keypoints.shape, keypoints, generator)
    is_outlier = _random("rand", keypoints.shape[:-1], keypoints, generator) < outlier_prob
    offset = _random("randn", keypoints.shape, keypoints, generator)
    drop = _random("rand", keypoints.shape[:-1], keypoints, generator) < dropout_prob
    noisy = keypoints + sigma * jitter
    noisy = torch.where(is_outlier[..., None], noisy + outlier_sigma * offset, noisy)
    drop[..., fill_joint] = False
    noisy = torch.where(drop[..., None], noisy[..., fill_joint : fill_joint + 1, :], noisy)
    return noisy, ~drop
