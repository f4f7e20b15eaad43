"""Evaluate a 2D-to-3D lifter: batched prediction and the standard table of 3D metrics."""

from __future__ import annotations

import torch

from poselab import metrics
from poselab.checks import resolve_device

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

