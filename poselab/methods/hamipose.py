"""HamiPose: Mean Teacher domain adaptation with keypoint-wise gradient decomposition and gating.

"HamiPose: Hamiltonian Optimization for Unsupervised Domain Adaptive Pose Estimation" (CVPR 2026).
A heatmap network (:class:`poselab.models.heatmap.HeatmapNet`, the *student* ``f_theta``) learns
from labelled *source* images (synthetic look) and unlabelled *target* images (realistic look).
The *teacher* ``f_theta'`` is an exponential moving average of the student
(``theta' <- tau theta' + (1 - tau) theta``, :func:`ema_update`). The objective is
``L = L_s + lambda L_t``: ``L_s`` the heatmap MSE to Gaussian targets on source images,
``L_t`` the MSE between the student's heatmaps on a strongly augmented view of a target image
and the teacher's heatmaps on a weakly augmented view, mapped into the student's frame.

What HamiPose changes is the gradient, not the loss. Write ``g_s = dL_s/dH`` and
``g_t = dL_t/dH`` for the output-space (heatmap) gradients and ``g^(k)`` for channel ``k``.

1. **Pull-back** (:func:`pull_back`). ``J_k = dH_k / d theta^(k)`` with ``theta^(k)`` the
   parameters that produce channel ``k`` alone: row ``k`` of the final ``1x1`` convolution's
   weight and its bias ``k`` (``P = C + 1`` numbers). Because that layer is linear per pixel,
   ``hat g^(k) = J_k^T g^(k) = sum_{b,u} g[b, k, u] [F[b, :, u], 1]`` with ``F`` the layer's input:
   one einsum gives all ``K`` pull-backs, and they are exactly the layer's autograd gradient.
2. **Metric** (:class:`KeypointMetric`). ``D_k = (alpha_k + eps) I`` with ``alpha_k`` an EMA
   (decay ``mu``) of the mean squared increment of slice ``k`` over the optimiser's steps.
3. **Decomposition** (:func:`decompose`). ``a_k = <hat g_s, hat g_t>_{D_k^-1} / <hat g_s,
   hat g_s>_{D_k^-1}`` and ``rho_k`` the cosine under the same inner product. The target gradient
   splits as ``g_t^(k) = g_perp^(k) + a_k g_s^(k)``, whose pull-back ``hat g_t - a_k hat g_s`` is
   ``D_k^-1``-orthogonal to ``hat g_s``.
4. **Gate** (:func:`gate`). ``phi_k = max(0, tanh(gamma rho_k)) c_k`` with ``c_k`` the teacher's
   peak confidence and ``gamma`` ramped linearly from ``gamma_min`` to ``gamma_max``
   (:meth:`HamiPoseConfig.gamma_at`). Filtered target gradient ``g_perp + phi_k a_k g_s^(k)``.
5. **Recombination** (:func:`output_gradients`) and **one** backward pass of the total
   ``g_s + lambda (g_perp + phi_k a_k g_s^(k))`` through the whole network, then an optimiser step:
   by default the Hamiltonian integrator of :mod:`poselab.optim` (the full method), whose per-tensor
   mass uses the metric's ``mu`` and ``eps`` (one ``mu`` and one ``eps`` in the paper); Adam or SGD
   for the ablations.

Choices (our reading of the paper; the chapter discusses them):

* **The isotropic per-keypoint metric cancels.** ``D_k^-1`` is one scalar per keypoint, so it
  multiplies numerator and denominator of both ``a_k`` and ``rho_k`` alike: in the ``keypoint``
  mode they are the plain Euclidean projection coefficient and cosine of the slice, whatever
  ``alpha_k`` is. The metric matters only where keypoints are pooled: the ``unified`` mode
  (one ``a`` and ``rho`` over all slices, each slice weighted by ``1 / (alpha_k + eps)``, i.e. the
  inner product of the block-diagonal metric on the whole final layer). It would matter per
  keypoint only with a non-isotropic ``D_k``, which the paper does not use. We keep the metric as
  written and test both facts.
* **Modes** (:data:`DECOMPOSITIONS`): ``none`` is plain Mean Teacher (``g_s + lambda g_t``);
  ``unified`` pools the keypoints (one ``a``, one ``rho``, one gate without confidence: the
  "unified metric" row of the paper's ablation); ``keypoint`` is HamiPose (per-keypoint ``a_k``,
  ``rho_k`` and a confidence-weighted gate per channel).
* **Output space.** ``g_s`` lives on the source rows of the batch and ``g_t`` on the target rows,
  so ``g_perp = g_t - a_k g_s`` touches both. The total gives the target heatmaps the *full*
  ``lambda g_t^(k)``, always, whatever ``a_k`` and ``phi_k``: nothing is removed from the target
  rows. The removal of the parallel part is carried by the source rows alone, whose gradient is
  scaled by the *source factor* ``1 - lambda (1 - phi_k) a_k`` (:attr:`Combined.source_factor`;
  logged as ``negative_factor``, the share of keypoints where it is negative). When
  ``a_k > 1 / (lambda (1 - phi_k))`` that factor is negative: removing the parallel part subtracts
  more source gradient than there was, and the gradient on the source heatmaps of keypoint ``k``
  is reversed (it points up ``L_s``). The non-conflict guarantee holds at the final layer's slice
  only, where the decomposition is made: its pull-back has ``D_k^-1``-inner product
  ``(1 + lambda phi_k a_k) |hat g_s|^2 >= |hat g_s|^2`` with the source pull-back (``phi_k > 0``
  only when ``rho_k > 0``, hence ``a_k > 0``). Deeper layers receive the back-propagated total,
  source rows with their factor included, with no such guarantee.
* **Gate schedule.** With ``gamma_min = 0`` (the default) the gate starts *closed*: ``phi_k = 0``
  at step 0 for every keypoint, so early training is the *strictest* filtering of the parallel
  part: only ``g_perp`` of the target gradient is used, every parallel component (agreeing or
  not) is removed, and the agreeing ones (``rho_k > 0``) are let back in as ``gamma`` grows over
  ``T_warm``. The paper's prose says the annealing "avoids hard filtering early"; its formula
  (``phi = max(0, tanh(gamma rho)) c`` with ``gamma`` increasing) does the opposite. We follow the
  formula; ``gamma_min > 0`` starts with a partly open gate.
* **Confidence** ``c_k``: the teacher's peak value of heatmap ``k`` on its (weak) view, averaged
  over the target batch (one gate per channel and step, as the decomposition is per batch),
  clamped to [0, 1].
* **One student forward** on ``cat([source view, target student view])``: BatchNorm's batch
  statistics mix both domains, as they would in one Mean Teacher batch; the features returned by
  :meth:`~poselab.models.heatmap.HeatmapNet.forward_with_features` are then the exact inputs of
  the final layer for every row, so the pull-backs are exact. The two output gradients come from
  :func:`torch.autograd.grad` of each loss with respect to the heatmap tensor (no pass through the
  network), and the combined gradient goes through the network in one ``backward``: the method
  costs one einsum per loss on top of plain back-propagation.
* **Teacher in eval mode.** The teacher predicts without gradients with its running BatchNorm
  statistics, which :func:`ema_update` copies from the student (buffers are copied, parameters
  averaged): its targets do not depend on which images share the batch, and its own forward pass
  changes nothing in it.
* **Views.** Source images get ``source_aug``; the teacher sees ``teacher_aug`` of a target image
  and the student ``student_aug`` of the same image (geometry of :data:`EASY` plus RandAugment,
  :data:`STUDENT`); the teacher's heatmaps are warped into the student's frame and pixels with no
  teacher value are left out of ``L_t`` (:func:`poselab.heatmap_learning.teacher_targets`).
* **Reported loss** is ``L_s + lambda L_t``; the filtered gradient is not the gradient of any
  scalar, so no other loss is defined.
* **Random streams.** :func:`train_hamipose` draws the batch indices, the source augmentations and
  the target views from three CPU generators, so that a source-only or oracle run (which draws no
  target views) sees the same source batches and augmentations as the adaptation runs of the
  same seed.
* **Divergence** ends a run, it does not raise. :func:`combine_gradients` calls unchecked cores
  of :func:`decompose` and :func:`gate` (whose public forms validate their values) that turn
  non-finite inputs into NaN rather than 0, so a step of a NaN network returns NaN statistics;
  :func:`train_hamipose` then stops and fills the remaining records with NaN, flagged
  ``diverged``, so that a table of runs keeps every row.
* **Checkpoints**: :func:`train_hamipose` runs on :func:`poselab.engine.fit`, which checkpoints at
  every record and resumes exactly (student, teacher, optimiser with its masses, schedule, the
  keypoint metric, the last parameter increment and the random streams).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import NamedTuple

import torch
from torch import nn

from poselab import optim as O
from poselab.checkpoint import check_checkpoint_path, data_sha256, module_state_sha256
from poselab.checks import check_choice, check_float_tensor, check_int, check_positive, check_shape, resolve_device
from poselab.data.augment import EASY, AugmentConfig, augment
from poselab.heatmap_learning import (as_float_images, evaluate_heatmaps, joints_mse_loss, masked_mse_loss,
                                      supervised_targets, teacher_targets)
from poselab.engine import History, Streams, Task, fit
from poselab.engine import log_points as training_log_points

__all__ = [
    "DECOMPOSITIONS",
    "STUDENT",
    "HamiPoseConfig",
    "UDAData",
    "Decomposition",
    "Combined",
    "pull_back",
    "KeypointMetric",
    "decompose",
    "gate",
    "teacher_confidence",
    "output_gradients",
    "combine_gradients",
    "ema_update",
    "hamipose_step",
    "keypoint_cosines",
    "train_hamipose",
]

DECOMPOSITIONS = ("none", "unified", "keypoint")
"""Gradient treatments: plain Mean Teacher, one pooled decomposition, one per keypoint."""

STUDENT = replace(EASY, rand_augment_num_ops=2, rand_augment_magnitude=10.0)
"""The student's view of a target image: the geometry of :data:`EASY` plus RandAugment (2 photometric
ops at magnitude 10 of 30)."""


def _check_fraction(arg: str, value, *, closed_right: bool) -> float:
    """``value`` in [0, 1] (``closed_right``) or [0, 1), else ``ValueError`` naming ``arg``."""
    check_positive(arg, value, allow_zero=True)
    if value > 1.0 or (value == 1.0 and not closed_right):
        bound = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{arg}: expected a number in {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class HamiPoseConfig:
    """Hyper-parameters of one HamiPose (or Mean Teacher, or source-only) run.

    Attributes:
        iterations: optimisation steps.
        source_batch, target_batch: images per step from each domain.
        target_weight: ``lambda`` in ``L_s + lambda L_t`` (0 = source only).
        target_batchnorm: with ``target_weight == 0`` only: still pass the student's views of the
            target images through the student together with the source batch (no loss on them), so
            that BatchNorm's batch statistics, and the running statistics used at test time, mix
            both domains as in an adaptation run. The control that tells adaptation through
            BatchNorm apart from adaptation through ``L_t``.
        decomposition: one of :data:`DECOMPOSITIONS` (``none`` = plain Mean Teacher).
        ema_decay: ``tau``, the teacher's EMA decay in [0, 1] (1 = frozen teacher).
        metric_decay: ``mu``, EMA decay of ``alpha_k`` (mean squared increments of slice ``k``); also
            the Hamiltonian optimiser's ``mass_decay``.
        metric_eps: ``eps`` in ``D_k = (alpha_k + eps) I``; also the Hamiltonian optimiser's ``mass_eps``.
        gamma_min, gamma_max: gate sharpness at the start and after the ramp (``>= 0``).
        gate_warmup: fraction of ``iterations`` over which ``gamma`` ramps up (``T_warm``).
        optimizer: a name in :data:`poselab.optim.OPTIMIZERS`; ``hamiltonian`` (the full method) by default.
        lr: base learning rate (the Hamiltonian's step ``epsilon``); ``None`` = the optimiser's default.
        warmup: fraction of the run with a linear lr warm-up before the cosine decay
            (:func:`poselab.optim.warmup_cosine`).
        friction: damping of the Hamiltonian optimiser (ignored by the others).
        sigma: Gaussian target width in heatmap pixels.
        source_aug: augmentation of source images.
        teacher_aug, student_aug: the teacher's and the student's views of a target image.
        log_every: steps between two history records.
    """

    iterations: int = 1000
    source_batch: int = 16
    target_batch: int = 16
    target_weight: float = 1.0
    target_batchnorm: bool = False
    decomposition: str = "keypoint"
    ema_decay: float = 0.99
    metric_decay: float = 0.99
    metric_eps: float = 1e-8
    gamma_min: float = 0.0
    gamma_max: float = 2.0
    gate_warmup: float = 0.1
    optimizer: str = "hamiltonian"
    lr: float | None = None
    warmup: float = 0.1
    friction: float = 0.1
    sigma: float = 1.5
    source_aug: AugmentConfig = EASY
    teacher_aug: AugmentConfig = EASY
    student_aug: AugmentConfig = STUDENT
    log_every: int = 50

    def __post_init__(self) -> None:
        check_int("iterations", self.iterations, 1)
        check_int("source_batch", self.source_batch, 1)
        check_int("target_batch", self.target_batch, 1)
        check_int("log_every", self.log_every, 1)
        check_positive("target_weight", self.target_weight, allow_zero=True)
        if not isinstance(self.target_batchnorm, bool):
            raise TypeError(f"target_batchnorm: expected a bool, got {type(self.target_batchnorm).__name__}")
        if self.target_batchnorm and self.target_weight != 0:
            raise ValueError(f"target_batchnorm: applies to source-only runs (target_weight == 0), got "
                             f"target_weight={self.target_weight!r}; adaptation runs always put the target "
                             "images in the batch")
        check_choice("decomposition", self.decomposition, DECOMPOSITIONS)
        _check_fraction("ema_decay", self.ema_decay, closed_right=True)
        _check_fraction("metric_decay", self.metric_decay, closed_right=False)
        check_positive("metric_eps", self.metric_eps)
        check_positive("gamma_min", self.gamma_min, allow_zero=True)
        check_positive("gamma_max", self.gamma_max, allow_zero=True)
        if self.gamma_min > self.gamma_max:
            raise ValueError(f"gamma_min, gamma_max: expected gamma_min <= gamma_max, got {self.gamma_min} and "
                             f"{self.gamma_max}")
        _check_fraction("gate_warmup", self.gate_warmup, closed_right=True)
        check_choice("optimizer", self.optimizer, O.OPTIMIZERS)
        if self.lr is not None:
            check_positive("lr", self.lr)
        _check_fraction("warmup", self.warmup, closed_right=False)
        _check_fraction("friction", self.friction, closed_right=False)
        check_positive("sigma", self.sigma)
        for name in ("source_aug", "teacher_aug", "student_aug"):
            if not isinstance(getattr(self, name), AugmentConfig):
                raise TypeError(f"{name}: expected an AugmentConfig, got {type(getattr(self, name)).__name__}")

    def gamma_at(self, iteration: int) -> float:
        """Gate sharpness at step ``iteration`` (0-based).

        ``gamma_min + (gamma_max - gamma_min) min(1, t / T_warm)`` with
        ``T_warm = gate_warmup * iterations``; ``gamma_max`` throughout when ``T_warm = 0``.
        """
        check_int("iteration", iteration, 0)
        ramp = self.gate_warmup * self.iterations
        progress = 1.0 if ramp == 0 else min(1.0, iteration / ramp)
        return self.gamma_min + (self.gamma_max - self.gamma_min) * progress


@dataclass
class UDAData:
    """The images of one domain-adaptation run (kept on the CPU; batches move to the device).

    Attributes:
        source_images: ``(N, 3, S, S)`` labelled source images, uint8 (or float in [0, 1]).
        source_keypoints: ``(N, K, 2)`` their keypoints in pixels (pixel-centre convention).
        source_visible: ``(N, K)`` bool, which keypoints are labelled.
        target_images: ``(M, 3, S, S)`` unlabelled target images, the dtype of ``source_images``.
    """

    source_images: torch.Tensor
    source_keypoints: torch.Tensor
    source_visible: torch.Tensor
    target_images: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("source_images", "source_keypoints", "source_visible", "target_images"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(getattr(self, name)).__name__}")
        check_shape("source_images", self.source_images, ("N", 3, "S", "S"))
        n, _, s, _ = self.source_images.shape
        check_shape("source_keypoints", self.source_keypoints, (n, None, 2))
        check_shape("source_visible", self.source_visible, (n, self.source_keypoints.shape[1]))
        check_shape("target_images", self.target_images, (None, 3, s, s))
        if self.source_images.dtype != torch.uint8 and not self.source_images.is_floating_point():
            raise TypeError(f"source_images: expected uint8 or float images, got dtype {self.source_images.dtype}")
        if self.target_images.dtype != self.source_images.dtype:
            raise TypeError(f"target_images: expected the dtype of source_images ({self.source_images.dtype}), "
                            f"got {self.target_images.dtype}")
        if self.source_visible.dtype != torch.bool:
            raise TypeError(f"source_visible: expected a bool tensor, got dtype {self.source_visible.dtype}")
        if not self.source_keypoints.is_floating_point():
            raise TypeError(f"source_keypoints: expected a float tensor, got dtype {self.source_keypoints.dtype}")
        if n == 0 or self.target_images.shape[0] == 0:
            raise ValueError(f"UDAData: expected at least one source and one target image, got {n} and "
                             f"{self.target_images.shape[0]}")

    @property
    def size(self) -> int:
        """Image side ``S`` in pixels."""
        return int(self.source_images.shape[-1])

    @property
    def num_keypoints(self) -> int:
        return int(self.source_keypoints.shape[1])


# ------------------------------------------------------------------------------- decomposition


def _final_slices(final: nn.Module) -> torch.Tensor:
    """``(K, C + 1)`` parameters of a ``1x1`` convolution, per output channel: weight row, then bias."""
    if (not isinstance(final, nn.Conv2d) or final.kernel_size != (1, 1) or final.groups != 1 or final.bias is None):
        raise TypeError(f"final: expected the network's final 1x1 nn.Conv2d with a bias and groups=1, got {final!r}")
    k = final.out_channels
    return torch.cat([final.weight.detach().reshape(k, -1), final.bias.detach()[:, None]], dim=1)


def pull_back(grad_out: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Pull output gradients back to each keypoint's slice of the final ``1x1`` convolution.

    ``hat g^(k) = J_k^T g^(k)`` with ``J_k = dH_k / d(W[k], b[k])``: since
    ``H[b, k, u] = W[k] . F[b, :, u] + b[k]``, this is ``sum_{b,u} g[b, k, u] [F[b, :, u], 1]``,
    the gradient that autograd gives the layer's weight row ``k`` and bias ``k`` for
    ``sum(grad_out * H)``. All ``K`` pull-backs in one einsum.

    Args:
        grad_out: ``(B, K, h, w)`` gradient with respect to the heatmaps.
        features: ``(B, C, h, w)`` input of the final layer (no gradient flows through it).

    Returns:
        ``(K, C + 1)``: per keypoint, the weight part (``C``) then the bias part.
    """
    check_float_tensor("grad_out", grad_out)
    check_float_tensor("features", features)
    check_shape("grad_out", grad_out, ("B", "K", "h", "w"))
    b, _, h, w = grad_out.shape
    check_shape("features", features, (b, "C", h, w))
    features = features.detach()
    weight = torch.einsum("bkhw,bchw->kc", grad_out, features.to(grad_out.dtype))
    return torch.cat([weight, grad_out.sum(dim=(0, 2, 3))[:, None]], dim=1)


class KeypointMetric:
    """Per-keypoint metric ``D_k = (alpha_k + eps) I`` on the final layer's slices.

    ``alpha_k`` is an EMA of the mean squared increment of slice ``k`` (weight row ``k`` and bias
    ``k`` of the final ``1x1`` convolution): after every optimiser step,
    ``alpha_k <- mu alpha_k + (1 - mu) mean((theta_new^(k) - theta_old^(k))^2)``. It starts at 0
    (``D_k = eps I`` for every keypoint: the unified inner product is then Euclidean).

    Args:
        final: the network's final ``nn.Conv2d`` (``1x1``, with bias); its current parameters are
            the reference for the first increment.
        decay: ``mu`` in [0, 1).
        eps: ``eps > 0``.

    Attributes:
        alpha: ``(K,)`` on the layer's device and dtype.
        previous: ``(K, C + 1)`` the slices at the last update.
    """

    def __init__(self, final: nn.Module, decay: float = 0.99, eps: float = 1e-8):
        self.decay = _check_fraction("decay", decay, closed_right=False)
        self.eps = float(check_positive("eps", eps))
        self.previous = _final_slices(final).clone()
        self.alpha = torch.zeros(self.previous.shape[0], dtype=self.previous.dtype, device=self.previous.device)

    @torch.no_grad()
    def update(self, final: nn.Module) -> torch.Tensor:
        """Fold in the increment since the last update; returns ``alpha`` ``(K,)``."""
        current = _final_slices(final)
        if current.shape != self.previous.shape:
            raise ValueError(f"final: expected a layer with slices of shape {tuple(self.previous.shape)} (the one this "
                             f"metric was built on), got {tuple(current.shape)}")
        step = (current - self.previous).pow(2).mean(dim=1)
        self.alpha.mul_(self.decay).add_(step, alpha=1.0 - self.decay)
        self.previous = current.clone()
        return self.alpha

    def inverse(self) -> torch.Tensor:
        """``(K,)`` diagonal of ``D_k^-1``: ``1 / (alpha_k + eps)``."""
        return 1.0 / (self.alpha + self.eps)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running state (for checkpoints): the last final-layer slices and ``alpha``."""
        return {"previous": self.previous, "alpha": self.alpha}

    def load_state_dict(self, state) -> None:
        self.previous = state["previous"].to(self.previous.device)
        self.alpha = state["alpha"].to(self.alpha.device)


class Decomposition(NamedTuple):
    """Projection coefficient ``a`` and metric cosine ``rho`` of the target on the source pull-back, ``(K,)`` each."""

    a: torch.Tensor
    rho: torch.Tensor


def decompose(gs_hat: torch.Tensor, gt_hat: torch.Tensor, inv_metric: torch.Tensor,
              mode: str = "keypoint") -> Decomposition:
    """Project the target pull-backs on the source pull-backs under ``D^-1``.

    ``keypoint``: ``a_k = <gs_k, gt_k>_k / <gs_k, gs_k>_k`` and
    ``rho_k = <gs_k, gt_k>_k / sqrt(<gs_k, gs_k>_k <gt_k, gt_k>_k)`` with
    ``<x, y>_k = x^T D_k^-1 y = (x . y) / (alpha_k + eps)``. The scalar metric of a keypoint
    cancels, so both are invariant to ``inv_metric`` (see the module docstring).

    ``unified``: the same with ``<x, y> = sum_k (x_k . y_k) / (alpha_k + eps)`` over all
    keypoints: one ``a`` and one ``rho``, broadcast to ``(K,)``. This depends on how the metric
    differs across keypoints (not on its overall scale).

    A zero source pull-back gives ``a = rho = 0`` (nothing to project on); a zero target one
    gives ``a = rho = 0`` too. Non-finite inner products (a diverged network) give ``a = rho = NaN``,
    not 0, so that a diverged step does not look like an unrelated one.

    Args:
        gs_hat, gt_hat: ``(K, P)`` pull-backs (:func:`pull_back`).
        inv_metric: ``(K,)`` positive, ``1 / (alpha_k + eps)`` (:meth:`KeypointMetric.inverse`).
        mode: ``"keypoint"`` or ``"unified"``.

    Returns:
        :class:`Decomposition` ``(a (K,), rho (K,))`` with ``rho`` in [-1, 1].
    """
    check_choice("mode", mode, DECOMPOSITIONS[1:])
    for arg, x in (("gs_hat", gs_hat), ("gt_hat", gt_hat), ("inv_metric", inv_metric)):
        check_float_tensor(arg, x)
    check_shape("gs_hat", gs_hat, ("K", "P"))
    check_shape("gt_hat", gt_hat, tuple(gs_hat.shape))
    check_shape("inv_metric", inv_metric, (gs_hat.shape[0],))
    if not bool((inv_metric > 0).all()) or not bool(torch.isfinite(inv_metric).all()):
        raise ValueError("inv_metric: expected finite values > 0 (1 / (alpha + eps)), got "
                         f"{inv_metric.tolist()}")
    return _decompose(gs_hat, gt_hat, inv_metric, mode)


def _decompose(gs_hat: torch.Tensor, gt_hat: torch.Tensor, inv_metric: torch.Tensor, mode: str) -> Decomposition:
    """:func:`decompose` without validation, for :func:`combine_gradients`: no value check (nor its
    device sync), and NaN where an inner product is not finite."""
    inv_metric = inv_metric.to(gs_hat.dtype)
    st = (gs_hat * gt_hat).sum(dim=1) * inv_metric  # (K,)
    ss = gs_hat.pow(2).sum(dim=1) * inv_metric
    tt = gt_hat.pow(2).sum(dim=1) * inv_metric
    if mode == "unified":
        st, ss, tt = st.sum(), ss.sum(), tt.sum()
    tiny = torch.finfo(gs_hat.dtype).tiny
    zero = torch.zeros((), dtype=gs_hat.dtype, device=gs_hat.device)
    has_s, has_t = ss > tiny, tt > tiny
    a = torch.where(has_s, st / ss.clamp_min(tiny), zero)
    # sqrt of each factor rather than of the product, which would underflow first.
    rho = torch.where(has_s & has_t, st / (ss.clamp_min(tiny).sqrt() * tt.clamp_min(tiny).sqrt()), zero)
    rho = rho.clamp(-1.0, 1.0)
    # where() above would turn a NaN norm into 0 (NaN > tiny is False): put the NaN back
    finite = torch.isfinite(st) & torch.isfinite(ss) & torch.isfinite(tt)
    nan = torch.full((), math.nan, dtype=gs_hat.dtype, device=gs_hat.device)
    a, rho = torch.where(finite, a, nan), torch.where(finite, rho, nan)
    k = gs_hat.shape[0]
    return Decomposition(a.expand(k).clone(), rho.expand(k).clone())


def gate(rho: torch.Tensor, confidence: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """Channel gate ``phi = max(0, tanh(gamma rho)) c``.

    Zero where ``rho <= 0`` (conflicting or unrelated target gradients keep no parallel part) and
    for ``gamma = 0``; it approaches ``c`` as ``gamma rho`` grows.

    Args:
        rho: ``(K,)`` metric cosines.
        confidence: ``(K,)`` in [0, 1] (:func:`teacher_confidence`), or ``None`` for ``c = 1``
            (the unified mode: one gate, no per-channel confidence).
        gamma: sharpness ``>= 0``.

    Returns:
        ``(K,)`` in [0, 1] (NaN where ``rho`` is NaN).
    """
    check_float_tensor("rho", rho)
    check_shape("rho", rho, ("K",))
    check_positive("gamma", gamma, allow_zero=True)
    if confidence is not None:
        check_float_tensor("confidence", confidence)
        check_shape("confidence", confidence, tuple(rho.shape))
        if not bool(((confidence >= 0) & (confidence <= 1)).all()):
            raise ValueError(f"confidence: expected values in [0, 1], got {confidence.tolist()}")
    return _gate(rho, confidence, gamma)


def _gate(rho: torch.Tensor, confidence: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """:func:`gate` without validation, for :func:`combine_gradients` (NaN in, NaN out: ``clamp_min``
    and ``tanh`` propagate it)."""
    phi = torch.tanh(gamma * rho).clamp_min(0.0)
    if confidence is None:
        return phi
    return phi * confidence.to(phi.dtype)


def teacher_confidence(heatmaps: torch.Tensor) -> torch.Tensor:
    """``c_k``: the peak of the teacher's heatmap ``k``, averaged over images, clamped to [0, 1].

    Args:
        heatmaps: ``(B, K, h, w)`` teacher predictions.

    Returns:
        ``(K,)``.
    """
    check_float_tensor("heatmaps", heatmaps)
    check_shape("heatmaps", heatmaps, ("B", "K", None, None))
    return heatmaps.detach().amax(dim=(-2, -1)).mean(dim=0).clamp(0.0, 1.0)


def output_gradients(grad_source: torch.Tensor, grad_target: torch.Tensor, a: torch.Tensor, phi: torch.Tensor,
                     target_weight: float) -> torch.Tensor:
    """The filtered total gradient on the heatmaps of ``cat([source, target])``.

    Derivation. ``g_s`` is non-zero on the source rows only and ``g_t`` on the target rows only.
    Per channel ``k`` the target gradient splits as ``g_t = g_perp + g_par`` with
    ``g_par = a_k g_s`` and ``g_perp = g_t - a_k g_s``; its pull-back ``hat g_t - a_k hat g_s``
    is ``D_k^-1``-orthogonal to ``hat g_s`` by the choice of ``a_k``. The filtered total is

        ``g_s + lambda (g_perp + phi_k g_par) = g_s (1 - lambda (1 - phi_k) a_k) + lambda g_t``,

    i.e. the source heatmaps get ``g_s^(k)`` times the *source factor* ``1 - lambda (1 - phi_k) a_k``
    and the target heatmaps the full ``lambda g_t^(k)``. Its pull-back is
    ``hat g_s + lambda (hat g_t - a hat g_s) + lambda phi a hat g_s`` (``J_k^T`` is linear). ``a = 0``
    or ``phi = 1`` give the plain sum ``g_s + lambda g_t``.

    Args:
        grad_source: ``(Bs, K, h, w)`` ``dL_s/dH`` on the source rows.
        grad_target: ``(Bt, K, h, w)`` ``dL_t/dH`` on the target rows.
        a, phi: ``(K,)`` projection coefficients and gates.
        target_weight: ``lambda >= 0``.

    Returns:
        ``(Bs + Bt, K, h, w)``, source rows first.
    """
    check_float_tensor("grad_source", grad_source)
    check_float_tensor("grad_target", grad_target)
    check_shape("grad_source", grad_source, (None, "K", "h", "w"))
    k, h, w = grad_source.shape[1:]
    check_shape("grad_target", grad_target, (None, k, h, w))
    check_float_tensor("a", a)
    check_float_tensor("phi", phi)
    check_shape("a", a, (k,))
    check_shape("phi", phi, (k,))
    check_positive("target_weight", target_weight, allow_zero=True)
    return _recombine(grad_source, grad_target, _source_factor(a, phi, target_weight), target_weight)


def _source_factor(a: torch.Tensor, phi: torch.Tensor, target_weight: float) -> torch.Tensor:
    """``(K,)`` ``1 - lambda (1 - phi_k) a_k``, the scale of the source rows' gradient (:func:`output_gradients`)."""
    return 1.0 - target_weight * (1.0 - phi) * a


def _recombine(grad_source: torch.Tensor, grad_target: torch.Tensor, factor: torch.Tensor,
               target_weight: float) -> torch.Tensor:
    """``cat([g_s * factor_k, lambda g_t])``: source rows scaled per channel, target rows in full."""
    k = grad_source.shape[1]
    return torch.cat([grad_source * factor.to(grad_source.dtype).view(1, k, 1, 1), target_weight * grad_target])


class Combined(NamedTuple):
    """Result of :func:`combine_gradients`.

    Attributes:
        gradients: ``(Bs + Bt, K, h, w)`` the total output gradient to back-propagate.
        a, rho, phi: ``(K,)`` of the mode used (``none``: the keypoint ``a`` and ``rho`` as
            diagnostics and ``phi = 1``, which makes the total the plain ``g_s + lambda g_t``).
        keypoint_rho: ``(K,)`` the per-keypoint cosines whatever the mode (conflict diagnostic).
        source_factor: ``(K,)`` the factor ``1 - lambda (1 - phi_k) a_k`` applied to the source rows'
            gradient (:func:`output_gradients`); exactly 1 for ``none``. Negative: the parallel part
            removed exceeds the source gradient, whose direction the source rows then reverse.
    """

    gradients: torch.Tensor
    a: torch.Tensor
    rho: torch.Tensor
    phi: torch.Tensor
    keypoint_rho: torch.Tensor
    source_factor: torch.Tensor


@torch.no_grad()
def combine_gradients(grad_source: torch.Tensor, grad_target: torch.Tensor, features_source: torch.Tensor,
                      features_target: torch.Tensor, inv_metric: torch.Tensor, confidence: torch.Tensor | None,
                      gamma: float, target_weight: float, mode: str = "keypoint") -> Combined:
    """Pull back, decompose, gate and recombine: the gradient treatment of one HamiPose step.

    Args:
        grad_source, grad_target: ``(Bs, K, h, w)`` and ``(Bt, K, h, w)`` output gradients.
        features_source, features_target: ``(Bs, C, h, w)`` and ``(Bt, C, h, w)`` final-layer inputs.
        inv_metric: ``(K,)`` ``1 / (alpha_k + eps)``.
        confidence: ``(K,)`` teacher confidence (used by ``keypoint`` only).
        gamma: gate sharpness.
        target_weight: ``lambda``.
        mode: one of :data:`DECOMPOSITIONS`.

    Types and shapes are checked; values are not (no device sync): this runs inside every training
    step, where a diverged network must give NaN outputs (NaN ``a``, ``rho``, ``phi``, factor and
    gradients) for :func:`train_hamipose` to detect, not an exception.

    Returns:
        :class:`Combined`.
    """
    check_choice("mode", mode, DECOMPOSITIONS)
    gs_hat = pull_back(grad_source, features_source)
    gt_hat = pull_back(grad_target, features_target)
    check_shape("grad_target", grad_target, (None, *grad_source.shape[1:]))
    check_shape("features_target", features_target, (None, features_source.shape[1], None, None))
    k = gs_hat.shape[0]
    check_float_tensor("inv_metric", inv_metric)
    check_shape("inv_metric", inv_metric, (k,))
    if confidence is not None:
        check_float_tensor("confidence", confidence)
        check_shape("confidence", confidence, (k,))
    check_positive("gamma", gamma, allow_zero=True)
    check_positive("target_weight", target_weight, allow_zero=True)
    per_keypoint = _decompose(gs_hat, gt_hat, inv_metric, "keypoint")
    if mode == "none":
        a, rho, phi = per_keypoint.a, per_keypoint.rho, torch.ones_like(per_keypoint.a)
        factor = torch.ones_like(phi)  # plain Mean Teacher: not 1 - lambda * 0 * a, which a NaN a would spoil
    else:
        if mode == "unified":
            a, rho = _decompose(gs_hat, gt_hat, inv_metric, "unified")
            phi = _gate(rho, None, gamma)
        else:
            a, rho = per_keypoint
            phi = _gate(rho, confidence, gamma)
        factor = _source_factor(a, phi, target_weight)
    gradients = _recombine(grad_source, grad_target, factor, target_weight)
    return Combined(gradients, a, rho, phi, per_keypoint.rho, factor)


# ------------------------------------------------------------------------------------ one step


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``theta' <- decay theta' + (1 - decay) theta`` for parameters; buffers copied from the student.

    Buffers (BatchNorm running statistics and counters) are copied rather than averaged: they
    are already running averages, and the copy keeps integer counters exact.

    Args:
        teacher, student: modules with the same parameter and buffer shapes.
        decay: ``tau`` in [0, 1] (1 leaves the teacher's parameters unchanged).
    """
    _check_fraction("decay", decay, closed_right=True)
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    t_bufs, s_bufs = list(teacher.buffers()), list(student.buffers())
    t_shapes = [tuple(p.shape) for p in t_params + t_bufs]
    s_shapes = [tuple(p.shape) for p in s_params + s_bufs]
    if len(t_params) != len(s_params) or t_shapes != s_shapes:
        raise ValueError(f"teacher, student: expected the same architecture, got {len(t_params)} and {len(s_params)} "
                         "parameter tensors" + ("" if len(t_params) != len(s_params) else " of different shapes"))
    if t_params:
        torch._foreach_lerp_(t_params, [p.detach() for p in s_params], 1.0 - decay)
    for t, s in zip(t_bufs, s_bufs):
        t.copy_(s)


def _check_network(arg: str, network) -> None:
    if not isinstance(network, nn.Module) or not hasattr(network, "forward_with_features") \
            or not hasattr(network, "final") or not hasattr(network, "output_stride"):
        raise TypeError(f"{arg}: expected a HeatmapNet (an nn.Module with forward_with_features, final and "
                        f"output_stride), got {type(network).__name__}")


def _filtered_gradients(student, teacher, metric, source_view, target, config, iteration, generator):
    """Teacher targets, one student forward, output gradients and their :func:`combine_gradients`.

    ``generator`` draws the two views of the target images.

    Returns ``(heatmaps, combined, loss_s, loss_t, target_heatmaps, confidence, gamma)``; ``heatmaps``
    still holds the graph of the student's forward pass (nothing has been back-propagated).
    """
    x_s, y_s, vis_s = source_view
    stride = student.output_stride
    u_e, a_e = augment(target, None, config.teacher_aug, generator)
    u_h, a_h = augment(target, None, config.student_aug, generator)
    teacher.eval()
    with torch.no_grad():
        h_e = teacher(u_e)
    y_t, valid = teacher_targets(h_e, a_e, a_h, stride)
    confidence = teacher_confidence(h_e)
    n_s = x_s.shape[0]
    heatmaps, features = student.forward_with_features(torch.cat([x_s, u_h]))
    h_s, h_t = heatmaps.split([n_s, heatmaps.shape[0] - n_s])
    loss_s = joints_mse_loss(h_s, y_s, vis_s)
    loss_t = masked_mse_loss(h_t, y_t, valid)
    # Gradients with respect to the heatmaps only: these walk the loss graph, not the network.
    (g_s,) = torch.autograd.grad(loss_s, h_s, retain_graph=True)
    (g_t,) = torch.autograd.grad(loss_t, h_t, retain_graph=True)
    f_s, f_t = features.detach().split([n_s, features.shape[0] - n_s])
    gamma = config.gamma_at(iteration)
    combined = combine_gradients(g_s, g_t, f_s, f_t, metric.inverse(), confidence, gamma, config.target_weight,
                                 config.decomposition)
    return heatmaps, combined, loss_s, loss_t, h_t, confidence, gamma


def keypoint_cosines(student: nn.Module, teacher: nn.Module, data: UDAData, config: HamiPoseConfig, batches: int,
                     seed: int = 0) -> torch.Tensor:
    """Per-keypoint cosines ``rho_k`` between the source and target pull-backs, batch by batch.

    The conflict diagnostic of the chapter: for ``batches`` random source/target batches (sizes
    from ``config``), the cosine of :func:`decompose` in ``keypoint`` mode, computed as in a
    training step of ``config`` at step 0 but without any update (a copy of the student in train
    mode does the forward pass, so BatchNorm's batch statistics are those of training).

    Returns:
        ``(batches, K)`` cosines in [-1, 1] (negative: the target gradient of that keypoint
        opposes the source gradient).
    """
    _check_network("student", student)
    _check_network("teacher", teacher)
    if not isinstance(data, UDAData):
        raise TypeError(f"data: expected a UDAData, got {type(data).__name__}")
    check_int("batches", batches, 1)
    device = next(student.parameters()).device
    probe = copy.deepcopy(student).train()
    teacher = copy.deepcopy(teacher)
    metric = KeypointMetric(probe.final, config.metric_decay, config.metric_eps)
    generator = torch.Generator().manual_seed(seed)
    stride = probe.output_stride
    heatmap_size = (data.size // stride, data.size // stride)
    rows = []
    for _ in range(batches):  # one forward pass per batch, as in training
        si = torch.randint(data.source_images.shape[0], (config.source_batch,), generator=generator)
        ti = torch.randint(data.target_images.shape[0], (config.target_batch,), generator=generator)
        x_s, y_s, vis_s = supervised_targets(as_float_images(data.source_images[si], device),
                                             data.source_keypoints[si].to(device).float(),
                                             data.source_visible[si].to(device), config.source_aug, config.sigma,
                                             stride, heatmap_size, generator)
        target = as_float_images(data.target_images[ti], device)
        _, combined, *_ = _filtered_gradients(probe, teacher, metric, (x_s, y_s, vis_s), target, config, 0, generator)
        rows.append(combined.keypoint_rho)
    return torch.stack(rows).cpu()


def hamipose_step(student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer, metric: KeypointMetric,
                  source: tuple, target: torch.Tensor, config: HamiPoseConfig, iteration: int,
                  generator: torch.Generator, *, target_generator: torch.Generator | None = None) -> dict[str, float]:
    """One HamiPose step: views, one student forward, filtered gradient, one backward, updates.

    1. Source images get ``config.source_aug`` and Gaussian targets; each target image gets a
       teacher view (``teacher_aug``) and a student view (``student_aug``).
    2. The teacher (set to eval mode) predicts on its view without gradients; its heatmaps, warped
       into the student's frame, are the targets of ``L_t``, and their peaks the confidences ``c_k``.
    3. One student forward on ``cat([source view, student view])`` gives heatmaps and final-layer
       features; ``g_s``, ``g_t`` by :func:`torch.autograd.grad` of each loss with respect to the
       heatmaps only; :func:`combine_gradients`; one ``backward`` of the total through the student.
    4. Optimiser step, :meth:`KeypointMetric.update`, :func:`ema_update` of the teacher.

    Args:
        student: a :class:`~poselab.models.heatmap.HeatmapNet` in train mode, on the batches' device.
        teacher: a network of the same architecture (its parameters need no gradients).
        optimizer: over the student's parameters (its learning rate is left as it is).
        metric: :class:`KeypointMetric` of ``student.final``.
        source: ``(images (Bs, 3, S, S) float [0, 1], keypoints (Bs, K, 2) px, visible (Bs, K) bool)``.
        target: ``(Bt, 3, S, S)`` float [0, 1] unlabelled images.
        config: :class:`HamiPoseConfig` (augmentations, ``lambda``, mode, gate schedule, ``tau``).
        iteration: 0-based step index (for ``gamma``).
        generator: CPU ``torch.Generator`` drawing the source augmentations (and the target views
            when ``target_generator`` is None).
        target_generator: CPU ``torch.Generator`` drawing the teacher's and the student's views of
            the target images; None uses ``generator``. A separate one keeps the source draws of a
            run independent of whether it draws target views (``target_weight == 0`` does not).

    Returns:
        Floats: ``loss`` (``L_s + lambda L_t``), ``loss_s``, ``loss_t``, ``conflict_ratio`` (share of
        keypoints with a negative per-keypoint cosine, in every mode), ``negative_factor`` (share of
        keypoints whose source factor ``1 - lambda (1 - phi_k) a_k`` is negative; 0 for ``none``),
        ``cosine`` (mean per-keypoint cosine), ``gate`` (mean ``phi``; 1 for ``none``), ``a`` (mean
        ``a`` of the mode; for ``none`` the per-keypoint one, not applied), ``confidence`` (mean
        teacher confidence ``c_k``), ``response`` (student's mean heatmap peak on the target batch),
        ``gamma``. With ``target_weight == 0`` the step is plain supervised training on the source
        batch (no target forward pass, so no BatchNorm mixing, unless ``config.target_batchnorm``:
        then the student's target views share the forward pass, drawn from ``target_generator``,
        with no loss) and the target-side values are NaN (``loss_t`` 0). A step of a non-finite
        network raises nothing and returns NaN values (the shares included: NaN when any cosine or
        factor is NaN, not the share of the finite ones).
    """
    _check_network("student", student)
    _check_network("teacher", teacher)
    if not isinstance(config, HamiPoseConfig):
        raise TypeError(f"config: expected a HamiPoseConfig, got {type(config).__name__}")
    if not isinstance(metric, KeypointMetric):
        raise TypeError(f"metric: expected a KeypointMetric, got {type(metric).__name__}")
    if not isinstance(source, tuple) or len(source) != 3:
        raise ValueError("source: expected a tuple (images, keypoints, visible)")
    images, keypoints, visible = source
    stride = student.output_stride
    size = images.shape[-1]
    heatmap_size = (size // stride, size // stride)
    x_s, y_s, vis_s = supervised_targets(images, keypoints, visible, config.source_aug, config.sigma, stride,
                                         heatmap_size, generator)
    if target_generator is None:
        target_generator = generator
    if config.target_weight == 0:
        extra = None
        if config.target_batchnorm:  # the teacher's view is drawn too, so the student sees an adaptation run's views
            augment(target, None, config.teacher_aug, target_generator)
            extra = augment(target, None, config.student_aug, target_generator)[0]
        return _source_only_step(student, teacher, optimizer, metric, x_s, y_s, vis_s, config, iteration, extra)
    heatmaps, combined, loss_s, loss_t, h_t, confidence, gamma = _filtered_gradients(
        student, teacher, metric, (x_s, y_s, vis_s), target, config, iteration, target_generator)
    optimizer.zero_grad(set_to_none=True)
    heatmaps.backward(gradient=combined.gradients)  # the step's only pass through the network
    optimizer.step()
    metric.update(student.final)
    ema_update(teacher, student, config.ema_decay)

    loss = loss_s.detach() + config.target_weight * loss_t.detach()
    values = [loss, loss_s.detach(), loss_t.detach(), _share_below_zero(combined.keypoint_rho),
              _share_below_zero(combined.source_factor), combined.keypoint_rho.mean(), combined.phi.mean(),
              combined.a.mean(), confidence.mean(),
              # heatmap_response's value, computed here so that a diverged run logs NaN instead of raising
              h_t.detach().amax(dim=(-2, -1)).mean()]
    stats = torch.stack([v.to(loss.dtype) for v in values]).tolist()  # one device sync for all
    keys = ("loss", "loss_s", "loss_t", "conflict_ratio", "negative_factor", "cosine", "gate", "a", "confidence",
            "response")
    return {**dict(zip(keys, stats)), "gamma": gamma}


def _share_below_zero(x: torch.Tensor) -> torch.Tensor:
    """0-dim share of the entries of ``x`` that are < 0; NaN if any entry is NaN (a comparison with
    NaN is False, which would count a diverged keypoint as a non-negative one)."""
    share = (x < 0).to(x.dtype).mean()
    return torch.where(torch.isnan(x).any(), torch.full_like(share, math.nan), share)


def _source_only_step(student, teacher, optimizer, metric, x_s, y_s, vis_s, config, iteration,
                      target_view=None) -> dict[str, float]:
    """``lambda = 0``: plain supervised training on the source batch. Without ``target_view`` the
    target images stay out of the forward pass, so BatchNorm's statistics come from one domain and
    a source-only (or target-oracle) baseline gets no adaptation through them; with it (the
    ``target_batchnorm`` control) they share the forward pass and carry no loss."""
    if target_view is None:
        heatmaps = student(x_s)
    else:
        heatmaps = student(torch.cat([x_s, target_view]))[: x_s.shape[0]]
    loss_s = joints_mse_loss(heatmaps, y_s, vis_s)
    optimizer.zero_grad(set_to_none=True)
    loss_s.backward()
    optimizer.step()
    metric.update(student.final)
    ema_update(teacher, student, config.ema_decay)
    loss = float(loss_s.detach())
    nan = math.nan
    return {"loss": loss, "loss_s": loss, "loss_t": 0.0, "conflict_ratio": nan, "negative_factor": nan, "cosine": nan,
            "gate": nan, "a": nan, "confidence": nan, "response": nan, "gamma": config.gamma_at(iteration)}


# ------------------------------------------------------------------------------------- training


def _flat_parameters(network: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in network.parameters()])


def _optimizer_kwargs(config: HamiPoseConfig) -> dict:
    """The Hamiltonian optimiser's friction, and its mass with the metric's ``mu`` and ``eps``."""
    if config.optimizer != "hamiltonian":
        return {}
    return {"friction": config.friction, "mass_decay": config.metric_decay, "mass_eps": config.metric_eps}


def _stream_seeds(seed: int) -> tuple[int, int, int]:
    """Seeds of the batch-index, source-augmentation and target-view generators of a run.

    ``3 seed``, ``3 seed + 1``, ``3 seed + 2``: runs with different seeds (the experiments use
    ``seed`` and ``seed + 1``) never share a stream.
    """
    return 3 * seed, 3 * seed + 1, 3 * seed + 2


STREAMS = ("batches", "source", "target")
"""The random streams of a run: batch indices, source augmentations, target views."""


class HamiPoseTask(Task):
    """:func:`train_hamipose` as an engine task: one :func:`hamipose_step` on batches drawn with
    replacement, plus the window statistics of the student's parameter increments."""

    def __init__(self, network: nn.Module, data: UDAData, config: HamiPoseConfig, eval_sets: Mapping[str, tuple],
                 device: torch.device):
        self.data, self.config, self.eval_sets, self.device = data, config, eval_sets, device
        self.student = copy.deepcopy(network).to(device).train()
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.optimizer = O.build_optimizer(config.optimizer, self.student.parameters(), lr=config.lr,
                                           **_optimizer_kwargs(config))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: O.warmup_cosine(step, config.iterations, config.warmup))
        self.metric = KeypointMetric(self.student.final, config.metric_decay, config.metric_eps)
        self.modules = {"student": self.student, "teacher": self.teacher}
        self.previous_flat, self.previous_step = _flat_parameters(self.student), None
        self.fluctuations: list[float] = []
        self.step_rms: list[float] = []
        self.last_iteration = 0
        self._finite = torch.tensor(True)

    def step(self, iteration: int, streams: Streams) -> dict[str, float]:
        data, config, dev = self.data, self.config, self.device
        si = torch.randint(data.source_images.shape[0], (config.source_batch,), generator=streams["batches"])
        ti = torch.randint(data.target_images.shape[0], (config.target_batch,), generator=streams["batches"])
        source = (as_float_images(data.source_images[si], dev), data.source_keypoints[si].to(dev).float(),
                  data.source_visible[si].to(dev))
        target = as_float_images(data.target_images[ti], dev)
        stats = hamipose_step(self.student, self.teacher, self.optimizer, self.metric, source, target, config,
                              iteration, streams["source"], target_generator=streams["target"])
        flat = _flat_parameters(self.student)
        increment = flat - self.previous_flat
        values = [increment.pow(2).mean().sqrt(), torch.isfinite(flat).all() & torch.isfinite(self.metric.alpha).all()]
        if self.previous_step is not None:
            values.append(O.fluctuation_tensor(self.previous_step, increment))
        rms, finite, *fluctuation = torch.stack([v.double() for v in values]).tolist()  # one sync
        self.step_rms.append(rms)
        self.fluctuations.extend(fluctuation)
        self.previous_flat, self.previous_step = flat, increment
        self._finite = torch.tensor(finite == 1.0)
        self.last_iteration = iteration
        return stats

    def finite(self) -> torch.Tensor:
        return self._finite

    def start_record(self) -> dict[str, float]:
        return {"gamma": self.config.gamma_at(0)}

    def summarise(self, window: list[dict[str, float]]) -> dict[str, float]:
        """Step means, ``gamma`` of the last step, ``fluctuation``, ``step_rms`` and ``loss_std`` of the window."""
        out = super().summarise(window)
        losses = [w["loss"] for w in window]
        mean_loss = sum(losses) / len(losses)
        out.update(gamma=self.config.gamma_at(self.last_iteration),
                   fluctuation=float(sum(self.fluctuations) / len(self.fluctuations)) if self.fluctuations else math.nan,
                   step_rms=float(sum(self.step_rms) / len(self.step_rms)),
                   loss_std=(math.sqrt(sum((x - mean_loss) ** 2 for x in losses) / (len(losses) - 1))
                             if len(losses) > 1 else math.nan))
        self.fluctuations, self.step_rms = [], []
        return out

    def evaluate(self) -> dict[str, float]:
        return {f"{name}/{key}": value for name, items in self.eval_sets.items()
                for key, value in evaluate_heatmaps(self.student, *items).items()}

    def state_dict(self) -> dict:
        return {"metric": self.metric.state_dict(), "previous_flat": self.previous_flat,
                "previous_step": self.previous_step, "last_iteration": self.last_iteration}

    def load_state_dict(self, state) -> None:
        self.metric.load_state_dict(state["metric"])
        self.previous_flat, self.previous_step = state["previous_flat"].to(self.device), state["previous_step"]
        if self.previous_step is not None:
            self.previous_step = self.previous_step.to(self.device)
        self.last_iteration = state["last_iteration"]


def train_hamipose(network: nn.Module, data: UDAData, config: HamiPoseConfig, *,
                   eval_sets: Mapping[str, tuple] | None = None, device: str | torch.device = "auto", seed: int = 0,
                   progress: bool = True, checkpoint_path: str | os.PathLike | None = None,
                   resume: bool = True) -> tuple[nn.Module, nn.Module, History]:
    """Train a copy of ``network`` with HamiPose (or Mean Teacher / source-only) and return it.

    The student starts as a copy of ``network`` and the teacher as a copy of the student. The
    optimiser is :func:`poselab.optim.build_optimizer` ``(config.optimizer, lr=config.lr)`` (plus,
    for the Hamiltonian one, ``friction``, ``mass_decay = metric_decay`` and
    ``mass_eps = metric_eps``) under ``LambdaLR`` with :func:`poselab.optim.warmup_cosine`, in the
    engine's loop (:func:`poselab.engine.fit`). An oracle (target-labelled) run is this with
    ``target_weight=0`` on target data.

    A run that diverges does not raise: after every step, a non-finite loss, student parameter or
    metric ``alpha`` stops training. The record of the current window is appended at its log point
    (the means of the steps taken, NaN allowed; evaluations NaN, a non-finite network has no
    meaningful prediction), then one record per remaining log point with every value NaN but
    ``iteration`` and ``diverged``: the records have the iterations of a run that did not diverge.

    Args:
        network: a :class:`~poselab.models.heatmap.HeatmapNet` (not modified), with
            ``data.num_keypoints`` heatmaps and input size ``data.size``.
        data: :class:`UDAData` (CPU); each step's batches are sampled with replacement and moved
            to ``device``.
        config: :class:`HamiPoseConfig`.
        eval_sets: ``{name: (images,)}`` or ``{name: (images, keypoints, visible)}`` evaluated on
            the student with :func:`~poselab.heatmap_learning.evaluate_heatmaps` at step 0
            and every record: keys ``"{name}/response"``, ``"{name}/pck@0.05"``, ``"{name}/pck@0.1"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: seeds three CPU generators (with ``3 seed``, ``3 seed + 1``, ``3 seed + 2``): batch
            indices, source augmentations, target views. Target indices are drawn in every run, so a source-only
            run sees the source batches and augmentations of an adaptation run of the same seed.
        progress: a ``tqdm`` bar over steps.
        checkpoint_path: if given, the run is saved there at every record and a rerun with the same
            network, data, config and seed continues from it, bitwise as if uninterrupted.
        resume: with ``False`` an existing checkpoint is ignored and overwritten.

    Returns:
        ``(student, teacher, history)`` in eval mode. ``history.records``: one at step 0
        (``iteration``, ``lr``, ``gamma``, evaluations, ``diverged``) and one every ``log_every``
        steps (and at the end) with ``iteration``, ``lr`` and ``gamma`` of the record's last step,
        the means over the steps since the previous record of :func:`hamipose_step`'s values,
        ``fluctuation`` (the mean of :func:`poselab.optim.update_fluctuation` between successive
        increments of the student's flattened parameters; NaN when the window has none),
        ``step_rms`` (the mean over the window of the root-mean-square of that increment, in
        parameter units), ``loss_std`` (the sample standard deviation of the per-step ``loss`` in
        the window; NaN for a window of one step) and ``diverged`` (1.0 for the record of the
        window in which the run diverged and for every later one, else 0.0).
    """
    _check_network("network", network)
    if not isinstance(data, UDAData):
        raise TypeError(f"data: expected a UDAData, got {type(data).__name__}")
    if not isinstance(config, HamiPoseConfig):
        raise TypeError(f"config: expected a HamiPoseConfig, got {type(config).__name__}")
    k = getattr(network, "num_keypoints", data.num_keypoints)
    if k != data.num_keypoints:
        raise ValueError(f"network: predicts {k} heatmaps but data has {data.num_keypoints} keypoints")
    eval_sets = dict(eval_sets or {})
    for name, items in eval_sets.items():
        if not isinstance(items, tuple) or len(items) not in (1, 3):
            raise ValueError(f"eval_sets[{name!r}]: expected (images,) or (images, keypoints, visible)")
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected a bool, got {type(resume).__name__}")
    path = None if checkpoint_path is None else check_checkpoint_path("checkpoint_path", checkpoint_path)
    dev = resolve_device(device)
    task = HamiPoseTask(network, data, config, eval_sets, dev)
    fingerprint = None if path is None else {
        "config": asdict(config), "data": data_sha256(**{f.name: getattr(data, f.name) for f in fields(data)}),
        "initial": module_state_sha256(network),
        "eval_sets": {name: data_sha256(**{str(i): t for i, t in enumerate(items)})
                      for name, items in sorted(eval_sets.items())}}
    history = fit(task, steps=config.iterations, seed=seed, streams=Streams(seeds=dict(zip(STREAMS, _stream_seeds(seed)))),
                  record_at=training_log_points(config.iterations, config.log_every), record_start=True,
                  on_divergence="record", watch=("loss",), seed_global=False, checkpoint=path, resume=resume,
                  fingerprint=fingerprint, device=dev, progress=progress, desc=f"hamipose {config.decomposition}/{config.optimizer}", postfix=("loss", "conflict_ratio"))
    return task.student.eval(), task.teacher.eval(), history
