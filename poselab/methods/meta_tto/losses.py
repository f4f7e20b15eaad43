"""Losses of a mesh prediction: the training terms against the targets, and the test loss against the
detected keypoints that test-time optimisation descends.

Part of :mod:`poselab.methods.meta_tto`.
"""

from __future__ import annotations

import torch

from poselab.checks import check_int, check_positive, check_shape
from poselab.data.body import BodyModel
from poselab.data.cameras import project_points
from poselab.methods.meta_tto.settings import LossWeights, NUM_JOINTS
from poselab.methods.meta_tto.targets import MeshTargets
from poselab.models.mesh import MeshPrediction, NUM_BONES, NUM_PHENOTYPES, camera_translation, to_pose_parameters

__all__ = ["mesh_joints", "mesh_vertices", "training_terms", "training_loss", "test_loss"]


def _check_prediction(arg: str, pred, batch: int | None = None) -> int:
    """Raise unless ``pred`` is a :class:`MeshPrediction` of consistent shapes; returns ``B``."""
    if not isinstance(pred, MeshPrediction):
        raise TypeError(f"{arg}: expected a poselab.models.mesh.MeshPrediction, got {type(pred).__name__}")
    b = pred.rotations.shape[0] if batch is None else batch
    expected = {"rotation6d": (b, NUM_BONES, 6), "rotations": (b, NUM_BONES, 3, 3),
                "phenotypes": (b, NUM_PHENOTYPES), "camera": (b, 3)}
    for name, shape in expected.items():
        value = getattr(pred, name)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{arg}.{name}: expected a torch.Tensor, got {type(value).__name__}")
        check_shape(f"{arg}.{name}", value, shape)
    return int(b)


def _check_points(arg: str, x, batch: int, last: int, joints: int | None = NUM_JOINTS) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{arg}: expected a torch.Tensor, got {type(x).__name__}")
    check_shape(arg, x, (batch, joints, last) if joints is not None else (batch, last))


def mesh_joints(pred: MeshPrediction, focal: torch.Tensor, center: torch.Tensor, size: int,
                body: BodyModel) -> torch.Tensor:
    """The H36M-17 joints of predictions, in the camera frame.

    Args:
        pred: :class:`MeshPrediction` of ``B`` samples, the body's dtype and device.
        focal, center: ``(B, 2)`` crop pixels; size: ``S`` pixels.
        body: the body model.

    Returns:
        ``(B, 17, 3)`` metres (pelvis at :func:`~poselab.models.mesh.camera_translation` of the camera).
    """
    b = _check_prediction("pred", pred)
    _check_points("focal", focal, b, 2, None)
    _check_points("center", center, b, 2, None)
    for arg, x in (("pred", pred.rotations), ("focal", focal), ("center", center)):
        if x.dtype != body.dtype or x.device != body.device:
            raise TypeError(f"{arg}: {x.dtype} on {x.device} does not match the body model's {body.dtype} on "
                            f"{body.device}; use a network and targets of the body's dtype and device")
    translation = camera_translation(pred.camera, focal, center, size)
    return body.skeleton(to_pose_parameters(pred, translation), pred.phenotypes).joints


@torch.no_grad()
def mesh_vertices(pred: MeshPrediction, focal: torch.Tensor, center: torch.Tensor, size: int, body: BodyModel,
                  chunk_size: int = 64) -> torch.Tensor:
    """The skinned Anny meshes of predictions, in the camera frame (for overlays and PVE).

    Args:
        pred: :class:`MeshPrediction` of ``B`` samples, the body's dtype and device.
        focal, center: ``(B, 2)`` crop pixels; size: ``S`` pixels.
        body: the body model (faces in ``body.faces``).
        chunk_size: bodies skinned at once (skinning is the memory-heavy part).

    Returns:
        ``(B, V, 3)`` metres, ``V = 13718``; no gradients.
    """
    b = _check_prediction("pred", pred)
    _check_points("focal", focal, b, 2, None)
    _check_points("center", center, b, 2, None)
    check_int("chunk_size", chunk_size)
    pose = to_pose_parameters(pred, camera_translation(pred.camera, focal, center, size))
    return torch.cat([body.forward(pose[i:i + chunk_size], pred.phenotypes[i:i + chunk_size]).vertices
                      for i in range(0, b, chunk_size)])


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of squared differences over every dimension but the first: ``(B, ...)`` -> ``(B,)``."""
    return (a - b).square().flatten(1).mean(dim=1)


def training_terms(pred: MeshPrediction, targets: MeshTargets, body: BodyModel) -> dict[str, torch.Tensor]:
    """The unweighted terms of :func:`training_loss`, each ``(B,)``.

    Returns:
        ``rotations`` (MSE of matrix entries), ``phenotypes`` (MSE), ``joints3d`` (MSE of root-relative
        joint coordinates, m^2) and ``joints2d`` (MSE of 2D joint coordinates / ``S``, unitless).
    """
    if not isinstance(targets, MeshTargets):
        raise TypeError(f"targets: expected a MeshTargets, got {type(targets).__name__}")
    _check_prediction("pred", pred, len(targets))
    joints = mesh_joints(pred, targets.focal, targets.center, targets.size, body)
    relative = joints - joints[:, :1]
    true_relative = targets.joints_cam - targets.joints_cam[:, :1]
    pixels = project_points(joints, targets.focal[:, None], targets.center[:, None])
    return {
        "rotations": _mse(pred.rotations, targets.rotations),
        "phenotypes": _mse(pred.phenotypes, targets.phenotypes),
        "joints3d": _mse(relative, true_relative),
        "joints2d": _mse(pixels / targets.size, targets.joints2d / targets.size),
    }


def training_loss(pred: MeshPrediction, targets: MeshTargets, body: BodyModel,
                  weights: LossWeights = LossWeights()) -> torch.Tensor:
    """The supervised loss, per sample: the weighted sum of :func:`training_terms`.

    Args:
        pred: :class:`MeshPrediction` of ``B = len(targets)`` samples, the body's dtype and device.
        targets: :class:`MeshTargets`.
        body: the body model.
        weights: :class:`LossWeights`.

    Returns:
        ``(B,)``; zero for :func:`targets_as_prediction` (to float round-off).
    """
    if not isinstance(weights, LossWeights):
        raise TypeError(f"weights: expected a LossWeights, got {type(weights).__name__}")
    terms = training_terms(pred, targets, body)
    return sum(getattr(weights, name) * value for name, value in terms.items())


def _flat_parameters(pred: MeshPrediction) -> torch.Tensor:
    """``(B, 195)``: 6D rotations, phenotypes, camera."""
    return torch.cat([pred.rotation6d.flatten(1), pred.phenotypes, pred.camera], dim=1)


def test_loss(pred: MeshPrediction, detected: torch.Tensor, focal: torch.Tensor, center: torch.Tensor, size: int,
              body: BodyModel, aux: MeshPrediction | None = None, aux_weight: float = 0.0,
              visible: torch.Tensor | None = None) -> torch.Tensor:
    """The test-time objective, per sample: reprojection error (+ the dual network's pseudo targets).

    ``L = mean_{visible j, xy} ((proj_j - detected_j) / S)^2 + aux_weight mean_k (pred_k - aux_k)^2``
    with ``proj`` the predicted joints projected into the crop and ``k`` the 195 regressed numbers
    (31 6D rotations, 6 phenotypes, ``(s, tx, ty)``). Whether ``aux`` carries gradients is the caller's
    choice (detach it for constant pseudo targets).

    Args:
        pred: :class:`MeshPrediction` of ``B`` samples, the body's dtype and device.
        detected: ``(B, 17, 2)`` crop pixels, detected H36M-17 keypoints.
        focal, center: ``(B, 2)`` crop pixels; size: ``S`` pixels.
        body: the body model.
        aux: the auxiliary network's :class:`MeshPrediction` for the same images, or ``None``.
        aux_weight: ``lambda >= 0``; must be 0 when ``aux`` is ``None``.
        visible: ``(B, 17)`` bool, the detected keypoints to use (``None``: all).

    Returns:
        ``(B,)``.
    """
    b = _check_prediction("pred", pred)
    _check_points("detected", detected, b, 2)
    check_int("size", size)
    check_positive("aux_weight", aux_weight, allow_zero=True)
    if aux is None and aux_weight != 0:
        raise ValueError(f"aux_weight: {aux_weight!r} was given without aux predictions; pass aux or aux_weight=0")
    joints = mesh_joints(pred, focal, center, size, body)
    pixels = project_points(joints, focal[:, None], center[:, None])
    squared = ((pixels - detected) / size).square().sum(dim=-1)  # (B, 17)
    if visible is None:
        reprojection = squared.mean(dim=1) / 2
    else:
        if not isinstance(visible, torch.Tensor) or visible.dtype != torch.bool:
            raise TypeError(f"visible: expected a bool torch.Tensor of shape ({b}, {NUM_JOINTS}), got {visible!r}")
        check_shape("visible", visible, (b, NUM_JOINTS))
        w = visible.to(squared.dtype)
        reprojection = (w * squared).sum(dim=1) / (2 * w.sum(dim=1).clamp_min(1.0))
    if aux is None:
        return reprojection
    _check_prediction("aux", aux, b)
    return reprojection + aux_weight * _mse(_flat_parameters(pred), _flat_parameters(aux))
