"""MPJPE, PA-MPJPE and PVE of mesh predictions against their targets.

Part of :mod:`poselab.methods.meta_tto`.
"""

from __future__ import annotations

import torch

from poselab.checks import check_int
from poselab.data.body import BodyModel
from poselab.methods.meta_tto.losses import _check_prediction, mesh_joints
from poselab.methods.meta_tto.targets import MeshTargets
from poselab.metrics import mpjpe, p_mpjpe, pve
from poselab.models.mesh import MeshPrediction, camera_translation, to_pose_parameters

__all__ = ["evaluate_mesh"]


@torch.no_grad()
def evaluate_mesh(predictions: MeshPrediction, targets: MeshTargets, body: BodyModel, vertices: bool = False,
                  chunk_size: int = 64) -> dict[str, float]:
    """MPJPE, PA-MPJPE and (optionally) PVE of predictions, in millimetres.

    Joints are root-relative (pelvis, H36M joint 0, at the origin) for MPJPE; PA-MPJPE aligns each
    prediction by a similarity (:func:`poselab.metrics.p_mpjpe`). PVE compares Anny's full meshes
    (``body.forward``, 13,718 vertices, in chunks of ``chunk_size`` bodies), each translated so that its
    pelvis joint is at the origin.

    Args:
        predictions: :class:`MeshPrediction` of ``B = len(targets)`` samples.
        targets: :class:`MeshTargets`.
        body: the body model.
        vertices: also compute PVE (skins ``2 B`` meshes: slower).
        chunk_size: bodies skinned at once.

    Returns:
        ``{"mpjpe_mm": ..., "pa_mpjpe_mm": ...}`` plus ``"pve_mm"`` with ``vertices``.
    """
    if not isinstance(targets, MeshTargets):
        raise TypeError(f"targets: expected a MeshTargets, got {type(targets).__name__}")
    _check_prediction("predictions", predictions, len(targets))
    check_int("chunk_size", chunk_size)
    joints = mesh_joints(predictions, targets.focal, targets.center, targets.size, body)
    pred_rel = joints - joints[:, :1]
    true_rel = targets.joints_cam - targets.joints_cam[:, :1]
    out = {"mpjpe_mm": 1000 * float(mpjpe(pred_rel, true_rel)),
           "pa_mpjpe_mm": 1000 * float(p_mpjpe(pred_rel, true_rel))}
    if vertices:
        translation = camera_translation(predictions.camera, targets.focal, targets.center, targets.size)
        pose = to_pose_parameters(predictions, translation)
        errors = []
        for start in range(0, len(targets), chunk_size):
            rows = slice(start, start + chunk_size)
            p = body.forward(pose[rows], predictions.phenotypes[rows])
            t = body.forward(targets.pose[rows], targets.phenotypes[rows])
            errors.append(pve(p.vertices - p.joints[:, :1], t.vertices - t.joints[:, :1], reduction="none"))
        out["pve_mm"] = 1000 * float(torch.cat(errors).mean())
    return out
