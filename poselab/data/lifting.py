"""2D-to-3D lifting data: camera domains, subject splits and the depth ambiguity ratio.

The lifting chapters train a network that maps a 2D pose (17 keypoints, normalised screen
coordinates) to the 3D pose (17 joints, metres, root-relative, camera frame). The data come
from the CMU mocap clips in ``data/mocap`` (:mod:`poselab.data.mocap`), seen through the
camera rigs of :mod:`poselab.data.cameras`:

* ``train``: most subjects, everyday/sport/martial-arts motions, **studio** rig (4 views per frame);
* ``test_in``: held-out subjects 2 and 124, same kind of motions, **studio** rig;
* ``test_cross``: held-out subjects 1 (playground) and 5 (modern dance), only their clips
  whose activities appear nowhere in training, seen by **wild** cameras (a fresh random
  camera per sample).

Splits are by subject (hence by clip), never by frame; see :data:`SPLIT_SUBJECTS` and
:func:`clips_by_split`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from poselab.checks import check_choice, check_positive, check_profile, check_shape
from poselab.data.skeleton import LAYOUTS
from poselab.data.cameras import Cameras, gaussian_noise, make_rig, normalized_to_pixels, pixels_to_normalized

__all__ = [
    "dar_groups",
    "dar_thirds",
    "fixed_subset",
    "mean_image_extent",
    "DOMAINS",
    "SPLIT_SUBJECTS",
    "SPLIT_RIGS",
    "EXCLUDED_PROPORTIONS",
    "PROFILE_FRAME_STRIDE",
    "CROSS_VIEWS_PER_FRAME",
    "ROOT",
    "depth_ambiguity_ratio",
    "LiftingSet",
    "center_poses",
    "make_lifting_set",
    "clips_by_split",
    "excluded_clips",
    "build_lifting_splits",
    "clear_lifting_cache",
]

DOMAINS = ("train", "test_in", "test_cross")

ROOT = 0
"""Index of the root joint (pelvis, ``Hip``) in the 17-joint layout."""

SPLIT_SUBJECTS: dict[str, tuple[int, ...] | None] = {
    "train": None,  # every subject not listed below
    "test_in": (2, 124),  # held-out people doing the same kinds of motion as in training
    "test_cross": (1, 5),  # held-out people *and* activities (playground, modern dance)
}
"""CMU subject numbers per split (``None`` = all remaining subjects)."""

SPLIT_RIGS = {"train": "studio", "test_in": "studio", "test_cross": "wild"}
"""Camera rig per split (:func:`poselab.data.cameras.make_rig`)."""

EXCLUDED_PROPORTIONS = ("short-torso",)
"""Clips left out of every split: the 4 ``short-torso`` clips (08_02, 09_11, 49_08, 55_01)
have their neck and shoulders about 12 cm too low (``data/mocap/README.md``, caveat 1), an
error as large as the effects the lifting chapters measure."""

PROFILE_FRAME_STRIDE = {"fast": 12, "book": 3, "full": 1}
"""Every ``stride``-th frame of each 30 fps clip (``fast``: 2.5 fps, ``book``: 10 fps,
``full``: all frames). Neighbouring frames are near duplicates, so sparse sampling loses
little variety."""

CROSS_VIEWS_PER_FRAME = 4
"""Wild cameras per frame in ``test_cross`` (each sample its own camera), matching the
studio rig's 4 views per frame."""


def depth_ambiguity_ratio(pose_cam: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Depth ambiguity ratio (DAR): how much of a pose's extent lies along the viewing ray.

    For a pose in the camera frame (z along the optical axis), with statistics over the
    ``J`` joints:

    .. math::  \\mathrm{DAR} = \\frac{\\operatorname{std}_j(z_j)}
               {\\sqrt{(\\operatorname{var}_j(x_j) + \\operatorname{var}_j(y_j)) / 2}}

    i.e. the spread of the joints' depths divided by their spread per image-plane axis
    (population statistics, about the joints' mean; the same as about any common origin
    such as the root, so it is the spread of the root-relative coordinates). A single 2D
    view sees the image-plane spread but not the depth spread, so a high DAR means that
    much of the pose is hidden in the depth a lifter has to guess.

    Properties: 0 for a pose flat in the image plane; about 1 for a pose spread equally
    along all axes; large for a pose stretched along the optical axis (e.g. arms pointing
    at the camera). Invariant to translating the pose, to scaling it and to rotating it
    about the optical axis (camera roll); it does change when the camera looks from another
    direction (that is the point). Uses camera-frame 3D coordinates, not the perspective
    projection.

    Args:
        pose_cam: ``(N, J, 3)`` metres, camera frame (root-relative or not).
        eps: lower bound on the denominator (metres), for poses with no image-plane extent.
    Returns:
        ``(N,)`` DAR per pose (dimensionless).
    """
    if not isinstance(pose_cam, torch.Tensor) or not pose_cam.is_floating_point():
        raise TypeError(f"pose_cam: expected a floating-point torch.Tensor, got {type(pose_cam).__name__}")
    check_shape("pose_cam", pose_cam, ("N", "J", 3))
    if pose_cam.shape[1] < 2:
        raise ValueError(f"pose_cam: expected at least 2 joints, got shape {tuple(pose_cam.shape)}")
    var = pose_cam.var(dim=1, unbiased=False)  # (N, 3)
    plane = ((var[:, 0] + var[:, 1]) / 2).sqrt()
    return var[:, 2].sqrt() / plane.clamp_min(eps)


@dataclass(eq=False)
class LiftingSet(torch.utils.data.Dataset):
    """A 2D-to-3D lifting dataset: one sample = one pose seen by one camera.

    Attributes:
        inputs: ``(N, J, 2)`` float32, 2D keypoints in normalised screen coordinates
            (:func:`~poselab.data.cameras.pixels_to_normalized` of that sample's image).
        targets: ``(N, J, 3)`` float32 metres, camera frame, root-relative (joint ``ROOT`` = 0).
        subject: ``(N,)`` int64, CMU subject number.
        clip: ``(N,)`` int64, index into ``clips``.
        camera: ``(N,)`` int64, index into ``cameras``.
        dar: ``(N,)`` float32, :func:`depth_ambiguity_ratio` of the target.
        domain: ``"train"``, ``"test_in"`` or ``"test_cross"``.
        clips: clip names (``"05_02"``) that ``clip`` indexes.
        cameras: the :class:`~poselab.data.cameras.Cameras` that ``camera`` indexes
            (image sizes for un-normalising: see :meth:`pixels`).
        frame: ``(N,)`` int64, frame number within the clip (30 fps).

    ``dataset[i]`` returns ``(inputs[i], targets[i])``; a ``DataLoader`` batches them.
    Treat the tensors as read-only: built splits are cached and shared.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    subject: torch.Tensor
    clip: torch.Tensor
    camera: torch.Tensor
    dar: torch.Tensor
    domain: str
    clips: tuple[str, ...] = ()
    cameras: Cameras | None = None
    frame: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        check_choice("domain", self.domain, DOMAINS)
        check_shape("inputs", self.inputs, ("N", "J", 2))
        N, J = self.inputs.shape[:2]
        check_shape("targets", self.targets, (N, J, 3))
        if self.frame is None:
            self.frame = torch.full((N,), -1, dtype=torch.int64, device=self.inputs.device)
        for name in ("subject", "clip", "camera", "dar", "frame"):
            check_shape(name, getattr(self, name), (N,))
        for name in ("subject", "clip", "camera", "frame"):
            if getattr(self, name).dtype != torch.int64:
                raise TypeError(f"{name}: expected dtype torch.int64, got {getattr(self, name).dtype}")
        self.clips = tuple(self.clips)
        if N and self.clips and int(self.clip.max()) >= len(self.clips):
            raise ValueError(f"clip: indices up to {int(self.clip.max())} but only {len(self.clips)} clip names")
        if N and self.cameras is not None and int(self.camera.max()) >= len(self.cameras):
            raise ValueError(f"camera: indices up to {int(self.camera.max())} but only {len(self.cameras)} cameras")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]

    def __repr__(self) -> str:
        subjects = sorted(set(self.subject.tolist()))
        return (
            f"LiftingSet(domain={self.domain!r}, samples={len(self)}, joints={self.inputs.shape[1]}, "
            f"subjects={subjects}, clips={len(set(self.clip.tolist()))}, device={self.inputs.device})"
        )

    @property
    def num_joints(self) -> int:
        return self.inputs.shape[1]

    @property
    def clip_names(self) -> tuple[str, ...]:
        """Clip name of every sample (length ``N``)."""
        return tuple(self.clips[i] for i in self.clip.tolist())

    def to(self, device) -> LiftingSet:
        """Return a copy with every tensor (and the cameras) on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("inputs", "targets", "subject", "clip", "camera", "dar", "frame")
        }
        cams = self.cameras.to(device) if self.cameras is not None else None
        return replace(self, cameras=cams, **moved)

    def subset(self, index: Any) -> LiftingSet:
        """Samples selected by a boolean mask ``(N,)`` or by integer indices; same clips/cameras/domain."""
        index = torch.as_tensor(index, device=self.inputs.device)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(f"index: a boolean mask must have shape ({len(self)},), got {tuple(index.shape)}")
        elif index.dtype not in (torch.int64, torch.int32) or index.dim() > 1:
            raise TypeError(f"index: expected a boolean mask or 1-D integer indices, got dtype {index.dtype}, shape {tuple(index.shape)}")
        picked = {
            name: getattr(self, name)[index]
            for name in ("inputs", "targets", "subject", "clip", "camera", "dar", "frame")
        }
        return replace(self, **picked)

    def image_size(self) -> torch.Tensor:
        """``(N, 2)`` pixels: the (width, height) of each sample's image."""
        if self.cameras is None:
            raise ValueError("image_size: this LiftingSet has no cameras")
        return self.cameras.size.to(self.inputs.device)[self.camera]

    def pixels(self) -> torch.Tensor:
        """``(N, J, 2)`` the inputs in pixels of each sample's image."""
        return normalized_to_pixels(self.inputs, self.image_size()[:, None, :])

    def with_noise(self, sigma_px: float, generator: torch.Generator | None = None) -> LiftingSet:
        """A copy whose inputs carry Gaussian noise of ``sigma_px`` pixels (in each sample's image)."""
        noisy = gaussian_noise(self.pixels(), sigma_px, generator)
        return replace(self, inputs=pixels_to_normalized(noisy, self.image_size()[:, None, :]))


def center_poses(poses_world: torch.Tensor) -> torch.Tensor:
    """Move every pose to the middle of the capture volume.

    Subtracts the root's horizontal (x, z) position per frame and keeps its height: the
    person stays at the rigs' centre, the vertical axis x = z = 0, while still jumping,
    crouching or climbing. (CMU clips wander tens of metres, far outside any camera's view.)

    Args:
        poses_world: ``(..., J, 3)`` metres, world frame (+Y up).
    Returns:
        ``(..., J, 3)`` metres.
    """
    if not isinstance(poses_world, torch.Tensor) or poses_world.dim() < 2 or poses_world.shape[-1] != 3:
        raise ValueError(f"poses_world: expected a tensor of shape (..., J, 3), got {getattr(poses_world, 'shape', type(poses_world))}")
    shift = poses_world[..., ROOT : ROOT + 1, :].clone()
    shift[..., 1] = 0
    return poses_world - shift


def make_lifting_set(
    poses_world: torch.Tensor,
    cameras: Cameras,
    domain: str,
    subject: torch.Tensor,
    clip: torch.Tensor,
    frame: torch.Tensor | None = None,
    clips: tuple[str, ...] = (),
    paired: bool = False,
    noise_px: float | None = None,
    generator: torch.Generator | None = None,
) -> LiftingSet:
    """Project world poses through cameras and package them as a :class:`LiftingSet`.

    Args:
        poses_world: ``(T, J, 3)`` metres, world frame, already placed in the capture volume
            (see :func:`center_poses`).
        cameras: ``C`` cameras. ``paired=False``: every pose through every camera, giving
            ``T * C`` samples ordered pose-major (``camera`` = 0..C-1 within each pose).
            ``paired=True``: ``C == T``, camera ``n`` sees pose ``n`` only (``T`` samples).
        domain: one of ``DOMAINS``.
        subject, clip, frame: ``(T,)`` int64 per pose (repeated per camera).
        clips: clip names that ``clip`` indexes.
        noise_px: Gaussian noise (pixels) added to the 2D keypoints before normalising.
        generator: for the noise.
    Returns:
        a :class:`LiftingSet` (float32 inputs/targets, computed in float64).
    """
    check_shape("poses_world", poses_world, ("T", "J", 3))
    T, J = poses_world.shape[:2]
    for name, x in (("subject", subject), ("clip", clip)) + ((("frame", frame),) if frame is not None else ()):
        check_shape(name, x, (T,))
    pts = poses_world.to(torch.float64)
    cams = cameras.to(dtype=torch.float64)
    if paired:
        cam_pts = cams.world_to_camera_paired(pts)  # (T, J, 3)
        pixels = cams.project_paired(pts)
        cam_idx = torch.arange(T)
        reps = 1
    else:
        C = len(cams)
        cam_pts = cams.world_to_camera(pts).reshape(T * C, J, 3)
        pixels = cams.project(pts).reshape(T * C, J, 2)
        cam_idx = torch.arange(C).repeat(T)
        reps = C
    if bool((cam_pts[..., 2] <= 0).any()):
        raise ValueError("make_lifting_set: some joints lie behind a camera; place the poses inside the rig")
    if noise_px is not None:
        pixels = gaussian_noise(pixels, noise_px, generator)
    size = cams.size[cam_idx][:, None, :]
    targets = cam_pts - cam_pts[:, ROOT : ROOT + 1, :]
    if frame is None:
        frame = torch.full((T,), -1, dtype=torch.int64)
    return LiftingSet(
        inputs=pixels_to_normalized(pixels, size).float(),
        targets=targets.float(),
        subject=subject.to(torch.int64).repeat_interleave(reps),
        clip=clip.to(torch.int64).repeat_interleave(reps),
        camera=cam_idx.to(torch.int64),
        dar=depth_ambiguity_ratio(targets).float(),
        domain=domain,
        clips=tuple(clips),
        cameras=cameras,
        frame=frame.to(torch.int64).repeat_interleave(reps),
    )


def _usable_clips():
    from poselab.data import mocap  # imported lazily: the camera/DAR tools work without the data

    return [c for c in mocap.clip_index() if c.proportions not in EXCLUDED_PROPORTIONS]


def clips_by_split() -> dict[str, list[str]]:
    """Clip names per split (``"train"``, ``"test_in"``, ``"test_cross"``), from ``index.csv``.

    Split by subject: ``SPLIT_SUBJECTS`` lists the test subjects; train takes every other
    subject. ``test_cross`` keeps only those clips of its subjects whose activity (the
    top-level category, e.g. ``dance``) appears nowhere in ``train``, so that it holds new
    people *and* new activities (this drops ``05_01``, a walk). The ``short-torso`` clips
    are in no split. :func:`excluded_clips` lists every clip left out, with the reason.
    """
    held_out = set(SPLIT_SUBJECTS["test_in"]) | set(SPLIT_SUBJECTS["test_cross"])
    usable = _usable_clips()
    train_activities = {c.activity for c in usable if c.subject not in held_out}
    out: dict[str, list[str]] = {d: [] for d in DOMAINS}
    for info in usable:
        if info.subject in SPLIT_SUBJECTS["test_in"]:
            out["test_in"].append(info.name)
        elif info.subject in SPLIT_SUBJECTS["test_cross"]:
            if info.activity not in train_activities:
                out["test_cross"].append(info.name)
        else:
            out["train"].append(info.name)
    return out


def excluded_clips() -> dict[str, str]:
    """Clips in no split, with the reason: ``short-torso`` proportions, or a cross-domain
    subject's clip whose activity also occurs in training."""
    from poselab.data import mocap

    used = {name for names in clips_by_split().values() for name in names}
    return {c.name: ("short torso (data README, caveat 1)" if c.proportions in EXCLUDED_PROPORTIONS
                     else f"cross-domain subject, but its activity ({c.activity}) is in train")
            for c in mocap.clip_index() if c.name not in used}


_CACHE: dict[tuple, dict[str, LiftingSet]] = {}


def clear_lifting_cache() -> None:
    """Forget the splits cached by :func:`build_lifting_splits`."""
    _CACHE.clear()


def build_lifting_splits(
    profile: str = "fast",
    seed: int = 0,
    frame_stride: int | None = None,
    train_noise: float | None = None,
    test_noise: float | None = None,
    cross_views: int = CROSS_VIEWS_PER_FRAME,
    layout: str = "h36m17",
) -> dict[str, LiftingSet]:
    """Build the three lifting splits from the mocap clips (deterministic; cached in memory).

    For every clip of a split (:func:`clips_by_split`), every ``frame_stride``-th frame (from
    frame 0) is converted to the 17-joint layout (:func:`poselab.data.mocap.motion_to_h36m`),
    centred horizontally (:func:`center_poses`) and projected:

    * ``train`` and ``test_in`` through the 4 cameras of the studio rig (4 samples per frame);
    * ``test_cross`` through ``cross_views`` wild cameras per frame, each sample with its
      own freshly drawn camera (``make_rig("wild", generator=Generator().manual_seed(seed))``).

    Inputs are the 2D projections in normalised screen coordinates; targets the
    root-relative 3D pose in that camera's frame (metres).

    Args:
        profile: ``"fast"`` (stride 12, ~5k samples), ``"book"`` (stride 3, ~4x more) or
            ``"full"`` (stride 1, every frame); see ``PROFILE_FRAME_STRIDE``.
        seed: seeds the wild cameras and the noise.
        frame_stride: overrides the profile's stride (positive int).
        train_noise: Gaussian noise (pixels) on the ``train`` 2D inputs, or ``None``.
        test_noise: Gaussian noise (pixels) on both test splits' 2D inputs, or ``None``.
        cross_views: wild cameras per frame in ``test_cross`` (positive int).
        layout: ``"h36m17"`` (the 17 Human3.6M joints, default) or ``"cmu31"`` (all 31 joints
            of the BVH skeleton, with hands, toes, clavicles and a two-part neck; three of them
            coincide with the pelvis, see :data:`poselab.data.skeleton.ZERO_LENGTH_JOINTS`).
            Joint 0 is the pelvis in both, the root of the root-relative targets.
    Returns:
        ``{"train": ..., "test_in": ..., "test_cross": ...}`` of :class:`LiftingSet` on the
        CPU (a new dict each call; the sets themselves are shared with the cache).
    """
    from poselab.data import mocap

    check_profile(profile)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
    stride = PROFILE_FRAME_STRIDE[profile] if frame_stride is None else frame_stride
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"frame_stride: expected a positive int or None, got {frame_stride!r}")
    if not isinstance(cross_views, int) or isinstance(cross_views, bool) or cross_views < 1:
        raise ValueError(f"cross_views: expected a positive int, got {cross_views!r}")
    for name, value in (("train_noise", train_noise), ("test_noise", test_noise)):
        if value is not None:
            check_positive(name, value, allow_zero=True)
    data_dir = str(mocap.mocap_dir()) if hasattr(mocap, "mocap_dir") else ""
    check_choice("layout", layout, tuple(LAYOUTS))
    key = (data_dir, stride, seed, train_noise, test_noise, cross_views, layout)
    if key not in _CACHE:
        _CACHE[key] = _build(stride, seed, train_noise, test_noise, cross_views, layout)
    return dict(_CACHE[key])


def _build(stride: int, seed: int, train_noise, test_noise, cross_views: int, layout: str) -> dict[str, LiftingSet]:
    from poselab.data import mocap

    infos = {c.name: c for c in _usable_clips()}
    # Separate generators per purpose, so that e.g. adding train noise leaves the wild cameras unchanged.
    gens = {name: torch.Generator().manual_seed(seed * 1000 + k) for k, name in enumerate(("wild", "train", "test_in", "test_cross"))}
    noise = {"train": train_noise, "test_in": test_noise, "test_cross": test_noise}
    out = {}
    for domain, names in clips_by_split().items():
        poses, subject, clip, frame = [], [], [], []
        for k, name in enumerate(names):
            motion = mocap.load_clip(name)
            idx = torch.arange(0, motion.num_frames, stride)
            # Keep the strided frames before forward kinematics (FK is per frame).
            motion = replace(motion, root_positions=motion.root_positions[idx], local_rotations=motion.local_rotations[idx])
            # (T', J, 3) metres, world frame
            joints = mocap.motion_to_h36m(motion) if layout == "h36m17" else mocap.motion_joints(motion)
            poses.append(center_poses(joints.to(torch.float64)))
            subject.append(torch.full((len(idx),), infos[name].subject, dtype=torch.int64))
            clip.append(torch.full((len(idx),), k, dtype=torch.int64))
            frame.append(idx)
        poses_t = torch.cat(poses)
        subject_t, clip_t, frame_t = torch.cat(subject), torch.cat(clip), torch.cat(frame)
        if SPLIT_RIGS[domain] == "wild":
            rep = lambda x: x.repeat_interleave(cross_views, dim=0)  # noqa: E731
            poses_t, subject_t, clip_t, frame_t = rep(poses_t), rep(subject_t), rep(clip_t), rep(frame_t)
            cameras = make_rig("wild", num_cameras=poses_t.shape[0], generator=gens["wild"])
            paired = True
        else:
            cameras = make_rig("studio")
            paired = False
        out[domain] = make_lifting_set(
            poses_t, cameras, domain, subject_t, clip_t, frame_t, clips=tuple(names),
            paired=paired, noise_px=noise[domain], generator=gens[domain],
        )
    return out


# ------------------------------------------------------------------------------- selections


def dar_groups(dataset: LiftingSet, groups: int = 3) -> list[torch.Tensor]:
    """Split a dataset's samples into ``groups`` equal-size groups of increasing DAR (index tensors)."""
    if groups < 2:
        raise ValueError(f"groups: expected an int >= 2, got {groups!r}")
    order = torch.argsort(dataset.dar)
    return list(torch.tensor_split(order, groups))


def fixed_subset(dataset: LiftingSet, size: int, seed: int) -> LiftingSet:
    """``size`` samples of ``dataset`` drawn without replacement with ``seed`` (all of it if smaller)."""
    if size < 1:
        raise ValueError(f"size: expected an int >= 1, got {size!r}")
    if size >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[:size].sort().values)


def dar_thirds(dataset: LiftingSet) -> dict[str, LiftingSet]:
    """The lowest- and highest-DAR thirds of ``dataset``: ``{"low_dar": ..., "high_dar": ...}``."""
    groups = dar_groups(dataset, 3)
    return {"low_dar": dataset.subset(groups[0]), "high_dar": dataset.subset(groups[-1])}


def mean_image_extent(dataset: LiftingSet) -> float:
    """Mean over samples of the larger side of the 2D pose's bounding box (normalised screen units)."""
    span = dataset.inputs.amax(dim=1) - dataset.inputs.amin(dim=1)  # (N, 2)
    return float(span.amax(dim=-1).mean())
