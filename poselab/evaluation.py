"""Evaluate a 2D-to-3D lifter: batched prediction and the standard table of 3D metrics."""

from __future__ import annotations

import torch

from poselab import metrics
from poselab.checks import resolve_device

STRUCTURE_METRICS = ("lse", "lle", "bsle")
"""The structural-consistency metrics of SEAL-Pose (Sec. 4): limb symmetry, limb length and
body-segment length errors, all relative (unitless)."""

LIFTING_METRICS = ("mpjpe_mm", "p_mpjpe_mm", "n_mpjpe_mm", "pck150", "auc")
"""Keys of :func:`lifting_metrics`: errors in millimetres, PCK@150 mm and AUC (0-150 mm) as fractions."""


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 4096,
            device: str | torch.device = "auto") -> torch.Tensor:
    """Run ``model`` in eval mode over ``inputs`` (N, J, 2) in batches; return (N, J, 3) on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    try:
        out = [model(inputs[i:i + batch_size].to(dev)).cpu() for i in range(0, inputs.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


def lifting_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MPJPE, P-MPJPE, N-MPJPE (mm), PCK@150 mm and AUC of ``pred`` vs ``target``, both (N, J, 3) metres."""
    return {
        "mpjpe_mm": 1000 * float(metrics.mpjpe(pred, target)),
        "p_mpjpe_mm": 1000 * float(metrics.p_mpjpe(pred, target)),
        "n_mpjpe_mm": 1000 * float(metrics.n_mpjpe(pred, target)),
        "pck150": float(metrics.pck3d(pred, target, threshold=0.150)),
        "auc": float(metrics.auc3d(pred, target)),
    }



def structure_ratios(pred: torch.Tensor, target: torch.Tensor, skeleton, thresholds=(0.1, 0.2)) -> dict[str, float]:
    """SEAL-Pose Tables 3-4: the share of (sample, limb) values of LSE, LLE and BSLE above each threshold.

    Args:
        pred, target: ``(N, J, 3)`` poses (any unit; the metrics are relative).
        skeleton: the :class:`~poselab.data.skeleton.Skeleton` of the poses; its zero-length bones
            (:data:`~poselab.data.skeleton.ZERO_LENGTH_JOINTS`) are left out, since a relative
            length error on them is undefined.
        thresholds: relative-error thresholds (the paper: 0.1 and 0.2).
    Returns:
        ``{"lse@0.1": fraction, "lle@0.1": ..., "bsle@0.1": ..., "lse@0.2": ...}``, fractions in [0, 1].
        LSE needs no target (it compares a pose's left and right limbs); ``structure_ratios(target,
        target, ...)`` gives the ground truth's own LSE ratios (LLE and BSLE are then 0).
    """
    from poselab.data.skeleton import structure_limbs, structure_symmetric_limbs

    pairs, limbs = structure_symmetric_limbs(skeleton), structure_limbs(skeleton)
    values = {"lse": metrics.lse(pred, pairs, reduction="none"),
              "lle": metrics.lle(pred, target, pairs, reduction="none"),
              "bsle": metrics.bsle(pred, target, limbs, reduction="none")}
    return {f"{name}@{t:g}": float(metrics.above_threshold_ratio(values[name], t))
            for t in thresholds for name in STRUCTURE_METRICS}
