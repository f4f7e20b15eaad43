"""Targets, losses and evaluation shared by the 2D heatmap methods (chapters 5 and 6).

Semi-supervised learning (:mod:`poselab.methods.ssl_collapse`) and domain adaptation
(:mod:`poselab.methods.hamipose`) train the same heatmap networks on the same kind of batches:
Gaussian targets of augmented labelled crops, a teacher's decoded peaks re-rendered in the
student's view, masked MSE losses, and PCK / response on un-augmented crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from poselab import metrics as M
from poselab.checks import check_int, check_shape
from poselab.data.augment import (AugmentConfig, augment, heatmap_affine, invert_affine, relative_affine,
                                  transform_points, warp_heatmaps, warp_valid_mask)
from poselab.data.heatmaps import decode_heatmaps, gaussian_heatmaps, to_heatmap_pixels, to_image_pixels

__all__ = ["as_float_images", "joints_mse_loss", "masked_mse_loss", "supervised_targets", "teacher_targets",
           "teacher_keypoints", "evaluate_heatmaps"]


def as_float_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` in [0, 255] or float in [0, 1] -> float32 in [0, 1] on ``device``."""
    images = images.to(device)
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images: expected uint8 or float images, got dtype {images.dtype}")
    return images.float()


# ----------------------------------------------------------------------------------------- losses


def joints_mse_loss(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised heatmap loss: squared error averaged over pixels, visible joints and images.

    Args:
        pred, target: ``(B, K, h, w)`` heatmaps.
        visible: ``(B, K)`` bool; invisible joints contribute nothing (default: all visible).

    Returns:
        Scalar; 0 when no joint is visible.
    """
    check_shape("pred", pred, ("B", "K", None, None))
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"target: expected the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    per_joint = (pred - target).pow(2).mean(dim=(-2, -1))  # (B, K)
    if visible is None:
        return per_joint.mean()
    check_shape("visible", visible, tuple(pred.shape[:2]))
    weight = visible.to(per_joint.dtype)
    return (per_joint * weight).sum() / weight.sum().clamp_min(1.0)


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Consistency loss: squared error averaged over the ``valid`` pixels of every heatmap.

    Args:
        pred, target: ``(B, K, h, w)``.
        valid: ``(B, 1, h, w)`` or ``(B, K, h, w)`` weights in [0, 1] (1 = the target is defined).
    """
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"target: expected the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    valid = valid.expand_as(pred).to(pred.dtype)
    return ((pred - target).pow(2) * valid).sum() / valid.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------ targets


def supervised_targets(images: torch.Tensor, keypoints: torch.Tensor, visible: torch.Tensor,
                       augmentation: AugmentConfig, sigma: float, stride: int, heatmap_size: tuple[int, int],
                       generator: torch.Generator):
    """Augment labelled images with ``augmentation`` and build their Gaussian targets (width ``sigma``
    heatmap pixels).

    Returns:
        ``(images (B, 3, S, S), targets (B, K, h, w), visible (B, K))``; keypoints pushed out of
        the crop by the augmentation become invisible.
    """
    size = images.shape[-1]
    aug, affine = augment(images, keypoints, augmentation, generator)
    moved = transform_points(keypoints, affine)
    inside = ((moved > -0.5) & (moved < size - 0.5)).all(dim=-1)
    vis = visible & inside
    targets = gaussian_heatmaps(to_heatmap_pixels(moved, stride), heatmap_size, sigma, vis)
    return aug, targets, vis


def teacher_targets(teacher: torch.Tensor, easy_affine: torch.Tensor, hard_affine: torch.Tensor, stride: int):
    """Map the teacher's heatmaps from the easy view into the hard view's frame.

    Args:
        teacher: ``(B, K, h, w)`` heatmaps predicted on the easy view.
        easy_affine, hard_affine: ``(B, 2, 3)`` original-image pixels -> view pixels.
        stride: heatmap output stride.

    Returns:
        ``(targets (B, K, h, w), valid (B, 1, h, w))``: ``valid`` is 1 where the hard-view pixel
        comes from inside the easy view.
    """
    rel = relative_affine(easy_affine, hard_affine)
    size = tuple(teacher.shape[-2:])
    targets = warp_heatmaps(teacher, rel, stride, size)
    valid = warp_valid_mask(heatmap_affine(rel, stride), size, size)[:, None].to(teacher.dtype)
    return targets, valid


def teacher_keypoints(heatmaps: torch.Tensor, affine: torch.Tensor, stride: int) -> torch.Tensor:
    """Keypoints predicted on a view, mapped back to the original image's pixels ``(B, K, 2)``."""
    coords, _ = decode_heatmaps(heatmaps, method="quarter")
    return transform_points(to_image_pixels(coords, stride), invert_affine(affine))


# --------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_heatmaps(network: nn.Module, images: torch.Tensor, keypoints: torch.Tensor | None = None,
                      visible: torch.Tensor | None = None, batch_size: int = 256,
                      alphas: Sequence[float] = (0.05, 0.1)) -> dict[str, float]:
    """Response and (with keypoints) 2D PCK of ``network`` on un-augmented images, in eval mode.

    Args:
        images: ``(N, 3, S, S)`` uint8 or float [0, 1] (moved to the network's device batch by batch).
        keypoints, visible: ``(N, K, 2)`` pixels and ``(N, K)`` bool; optional.
        alphas: PCK thresholds as fractions of the crop size ``S``.

    Returns:
        ``{"response": ...}`` plus ``{"pck@0.05": ..., "pck@0.1": ...}`` when keypoints are given.
        The network's train/eval mode is restored.
    """
    check_shape("images", images, ("N", 3, "S", "S"))
    check_int("batch_size", batch_size, 1)
    if (keypoints is None) != (visible is None):
        raise ValueError("keypoints and visible: give both or neither")
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    try:
        peaks, coords = [], []
        for start in range(0, images.shape[0], batch_size):
            heatmaps = network(as_float_images(images[start:start + batch_size], device))
            peaks.append(M.heatmap_response(heatmaps, reduction="none"))
            if keypoints is not None:
                xy, _ = decode_heatmaps(heatmaps, method="quarter")
                coords.append(to_image_pixels(xy, network.output_stride))
    finally:
        network.train(was_training)
    result = {"response": float(torch.cat(peaks).mean())}
    if keypoints is not None:
        pred = torch.cat(coords).cpu()
        size = float(images.shape[-1])
        for alpha in alphas:
            result[f"pck@{alpha:g}"] = float(M.pck2d(pred, keypoints.cpu().float(), alpha, size, visible.cpu()))
    return result
