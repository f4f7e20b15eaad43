"""The targets of a batch of crops: ground-truth body parameters, 3D and 2D joints, and the simulated
detector's 2D keypoints (the only thing test-time optimisation sees).

Part of :mod:`poselab.methods.meta_tto`.
"""

from __future__ import annotations

from dataclasses import dataclass

import roma
import torch

from poselab.checks import check_int, check_shape, resolve_device
from poselab.data.body import BodyModel, to_camera_frame
from poselab.data.cameras import detector_noise, project_points
from poselab.data.images import PersonImages
from poselab.methods.meta_tto.settings import DETECTOR_NOISE, DetectorNoise, NUM_JOINTS
from poselab.models.mesh import (MeshPrediction, NUM_BONES, NUM_PHENOTYPES, matrix_to_rotation_6d,
                                 rotation_6d_to_matrix, translation_to_camera)

__all__ = ["MeshTargets", "mesh_targets", "targets_as_prediction"]


@dataclass
class MeshTargets:
    """Ground truth and simulated detections of a batch of crops, camera frame, one dtype and device.

    Attributes:
        pose: ``(B, 31, 4, 4)`` Anny pose parameters placing each body in its camera frame.
        phenotypes: ``(B, 6)`` in [0, 1].
        joints_cam: ``(B, 17, 3)`` metres, H36M-17 joints of ``pose`` (``BodyModel.skeleton``).
        joints2d: ``(B, 17, 2)`` crop pixels, their projections.
        detected: ``(B, 17, 2)`` crop pixels, noisy "detected" keypoints (:class:`DetectorNoise`).
        visible: ``(B, 17)`` bool, False where the detector missed the keypoint.
        focal, center: ``(B, 2)`` crop pixels, the crops' intrinsics.
        size: ``S``, the crop side in pixels.
    """

    pose: torch.Tensor
    phenotypes: torch.Tensor
    joints_cam: torch.Tensor
    joints2d: torch.Tensor
    detected: torch.Tensor
    visible: torch.Tensor
    focal: torch.Tensor
    center: torch.Tensor
    size: int

    _TENSORS = ("pose", "phenotypes", "joints_cam", "joints2d", "detected", "visible", "focal", "center")

    def __post_init__(self) -> None:
        expected = {"pose": ("B", NUM_BONES, 4, 4), "phenotypes": ("B", NUM_PHENOTYPES),
                    "joints_cam": ("B", NUM_JOINTS, 3), "joints2d": ("B", NUM_JOINTS, 2),
                    "detected": ("B", NUM_JOINTS, 2), "visible": ("B", NUM_JOINTS), "focal": ("B", 2),
                    "center": ("B", 2)}
        b = None
        for name, shape in expected.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"MeshTargets.{name}: expected a torch.Tensor, got {type(value).__name__}")
            check_shape(f"MeshTargets.{name}", value, shape)
            if b is not None and value.shape[0] != b:
                raise ValueError(f"MeshTargets.{name}: expected {b} rows (one per image), got {value.shape[0]}")
            b = value.shape[0]
            if name != "visible" and (value.dtype != self.pose.dtype or not value.is_floating_point()):
                raise TypeError(f"MeshTargets.{name}: expected the pose's dtype {self.pose.dtype}, got {value.dtype}")
            if value.device != self.pose.device:
                raise ValueError(f"MeshTargets.{name}: on {value.device}, expected the pose's device "
                                 f"{self.pose.device}")
        if self.visible.dtype != torch.bool:
            raise TypeError(f"MeshTargets.visible: expected a bool tensor, got {self.visible.dtype}")
        check_int("size", self.size)

    def __len__(self) -> int:
        return int(self.pose.shape[0])

    @property
    def rotations(self) -> torch.Tensor:
        """``(B, 31, 3, 3)`` per-bone rotations; the root's is the body's orientation in the camera frame."""
        return self.pose[..., :3, :3]

    @property
    def translation(self) -> torch.Tensor:
        """``(B, 3)`` metres, the pelvis in the camera frame."""
        return self.pose[:, 0, :3, 3]

    def subset(self, index) -> MeshTargets:
        """The samples at ``index`` (a slice, a long index tensor or a bool mask)."""
        return MeshTargets(**{name: getattr(self, name)[index] for name in self._TENSORS}, size=self.size)


def _homogeneous(pose: torch.Tensor) -> torch.Tensor:
    """``(B, 31, 3, 4)`` -> ``(B, 31, 4, 4)`` with the last row ``(0, 0, 0, 1)``."""
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=pose.dtype, device=pose.device)
    return torch.cat([pose, bottom.expand(*pose.shape[:2], 1, 4)], dim=-2)


def mesh_targets(images: PersonImages, body: BodyModel, device: str | torch.device | None = None,
                 noise: DetectorNoise = DETECTOR_NOISE, seed: int = 0) -> MeshTargets:
    """Camera-frame ground truth and simulated detections for rendered crops.

    The joints are recomputed from the pose with ``body.skeleton`` (not read from
    ``images.joints_cam``), so that a prediction equal to the ground truth has exactly zero loss; they
    equal the rendered labels to float32 round-off (the rotations are projected onto proper rotations,
    a change of about 1e-7). The detections are drawn on the CPU from a
    generator seeded with ``seed``, so they do not depend on the device.

    Args:
        images: :class:`~poselab.data.images.PersonImages` (``pose``, ``phenotypes``, ``rotation``,
            ``translation``, ``focal``, ``center`` are read).
        body: the body model; the targets take its dtype and device.
        device: ``None`` (the body's) or the body's device, named for clarity.
        noise: the detector's errors (:class:`DetectorNoise`, fractions of the crop side).
        seed: seed of the detector noise.

    Returns:
        :class:`MeshTargets` of ``len(images)`` samples.
    """
    if not isinstance(images, PersonImages):
        raise TypeError(f"images: expected a PersonImages, got {type(images).__name__}")
    if not isinstance(body, BodyModel):
        raise TypeError(f"body: expected a poselab.data.body.BodyModel, got {type(body).__name__}")
    if device is not None and resolve_device(device).type != body.device.type:
        raise ValueError(f"device: {device!r} differs from the body model's {body.device}; use body_model({device!r})")
    if not isinstance(noise, DetectorNoise):
        raise TypeError(f"noise: expected a DetectorNoise, got {type(noise).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    like = dict(dtype=body.dtype, device=body.device)
    rotation, translation = images.rotation.to(**like), images.translation.to(**like)
    pose = to_camera_frame(images.pose.to(**like), rotation, translation)
    # float32 labels are orthonormal to 1e-7 only: project onto the rotations, so that a float64 oracle
    # (6D -> Gram-Schmidt) reproduces them exactly.
    pose = _homogeneous(torch.cat([roma.special_procrustes(pose[..., :3]), pose[..., 3:]], dim=-1))
    phenotypes = images.phenotypes.to(**like)
    focal, center = images.focal.to(**like), images.center.to(**like)
    with torch.no_grad():
        joints = body.skeleton(pose, phenotypes).joints
    joints2d = project_points(joints, focal[:, None], center[:, None])
    s = images.size
    g = torch.Generator().manual_seed(seed)
    detected, visible = detector_noise(joints2d.cpu(), noise.sigma * s, noise.outlier_prob, noise.outlier_sigma * s,
                                       noise.dropout_prob, generator=g)
    return MeshTargets(pose, phenotypes, joints, joints2d, detected.to(**like), visible.to(body.device), focal,
                       center, s)


def targets_as_prediction(targets: MeshTargets) -> MeshPrediction:
    """The :class:`~poselab.models.mesh.MeshPrediction` that reproduces the ground truth exactly.

    6D rotations of the true rotations, the true phenotypes, and the crop camera whose translation is
    the true pelvis (:func:`~poselab.models.mesh.translation_to_camera`): an oracle prediction, whose
    losses and errors are zero.
    """
    if not isinstance(targets, MeshTargets):
        raise TypeError(f"targets: expected a MeshTargets, got {type(targets).__name__}")
    rotation6d = matrix_to_rotation_6d(targets.rotations)
    camera = translation_to_camera(targets.translation, targets.focal, targets.center, targets.size)
    return MeshPrediction(rotation6d, rotation_6d_to_matrix(rotation6d), targets.phenotypes, camera)
