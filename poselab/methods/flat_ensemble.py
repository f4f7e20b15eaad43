"""Ensembles on flat loss landscapes: the Adaptive Scaling Mechanism (ASM) and M prediction
heads on one shared encoder, for the 2D-to-3D lifters of :mod:`poselab.models.lifting`.

For an input ``x`` (2D keypoints) and the lifter's encoder ``g`` (shared by all heads),
head ``m`` predicts

    ``y_tilde_m = f_m(g(x)) / (relu(h_m(g(x))) + 1)``,     prediction ``= mean_m y_tilde_m``

where ``f_m`` is a linear prediction head ``Linear(F, J * 3)`` (the lifter's head layout) and
``h_m`` a small scaling MLP ``Linear(F, H) -> ReLU -> Linear(H, 1)``. The denominator is >= 1
and input dependent; it makes many parameter settings give the same output (redundancy),
which the paper argues widens and flattens the minima. Every head's pose is made
root-relative the same way as the lifter does it (the predicted root joint is subtracted),
so the root joint is exactly 0 for each head and for the mean.

Choices (our reading of the paper):

* **Parameter layout.** The M heads are not M ``nn.Linear`` modules but stacked tensors whose
  dim 0 indexes the output neurons of all heads (``head_weight`` is ``(M * J * 3, F)``,
  ``scale_weight1`` is ``(M * H, F)``, ``scale_weight2`` is ``(M, H)``). One matmul then
  computes every head (cost close to one network, not M), and a per-row "filter" of
  filter-normalised landscape directions is one neuron of one head, exactly as for separate
  linear layers.
* **Diversity** between heads comes only from their different random initialisations (plus
  the shared encoder's training): head 0 copies the lifter's head, so
  ``FlatEnsemble(lifter, 1, scaling=False)`` is the lifter itself; heads 1..M-1 and every
  scaling layer get ``nn.Linear``'s default initialisation, U(+-1/sqrt(fan_in)) for weight
  and bias, drawn from torch's global RNG (call ``seed_everything`` before construction for
  reproducible heads), except the scaling MLPs' output biases, which start at
  :data:`SCALE_BIAS_INIT` so that no ReLU starts dead.
* **Training loss** (:func:`ensemble_loss`): the mean over heads of each head's MPJPE, so each
  head is trained as a predictor on its own. Training the MPJPE of the *mean* prediction
  instead would let heads compensate each other's errors and collapse their diversity.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from poselab.checks import check_int
from poselab.models.lifting import Lifter
from poselab.train import mpjpe_loss

__all__ = [
    "SCALE_BIAS_INIT",
    "FlatEnsemble",
    "ensemble_loss",
    "adaptive_scaling",
    "flat_ensemble",
    "head_deviation",
]


SCALE_BIAS_INIT = 0.5
"""Initial output bias of every scaling MLP ``h_m``. The denominator is ``relu(h) + 1``: where
``h < 0`` for every input, the ReLU passes no gradient and ASM is switched off for good (the head
then trains exactly like the plain lifter; we saw this with nn.Linear's default, zero-centred
initialisation on a small Transformer). Starting the bias at 0.5 puts ``h`` above 0 for nearly all
inputs at initialisation (denominators start near 1.5)."""


class FlatEnsemble(nn.Module):
    """M linear prediction heads, each with its own adaptive scaling head, on a lifter's encoder.

    Args:
        lifter: a :class:`poselab.models.lifting.Lifter`. Its ``encoder`` is shared (the same
            module object, trained further by the ensemble); its ``head`` is copied into head 0
            and is not part of the ensemble.
        num_heads: M >= 1 prediction heads.
        scaling: use the adaptive scaling mechanism (one scaling MLP per head); without it every
            scale is 1 and the heads are plain linear heads.
        scale_hidden: H, the hidden width of each scaling MLP ``Linear(F, H) -> ReLU -> Linear(H, 1)``.

    Parameters (dim 0 indexes output neurons of all heads; head ``m`` owns rows
    ``m * J * 3 : (m + 1) * J * 3`` of the head tensors and ``m * H : (m + 1) * H`` of the first
    scaling layer)::

        head_weight   (M * J * 3, F)   head_bias   (M * J * 3,)
        scale_weight1 (M * H, F)       scale_bias1 (M * H,)        # only if scaling
        scale_weight2 (M, H)           scale_bias2 (M,)            # only if scaling

    Attributes:
        encoder: the lifter's encoder, ``(B, J, 2) -> (B, F)``.
        num_heads, scaling, scale_hidden, num_joints, feature_dim, root: as above / as the lifter.

    Input ``x``: ``(B, J, 2)`` normalised 2D keypoints with the model's dtype and device (checked
    by the encoder, as for the lifter). Output poses are root-relative, in metres.
    """

    def __init__(self, lifter: Lifter, num_heads: int = 1, scaling: bool = True, scale_hidden: int = 64):
        super().__init__()
        if not isinstance(lifter, Lifter):
            raise TypeError(
                f"lifter: expected a poselab.models.lifting.Lifter (see build_lifter), got {type(lifter).__name__}"
            )
        self.num_heads = check_int("num_heads", num_heads)
        if not isinstance(scaling, bool):
            raise TypeError(f"scaling: expected a bool, got {type(scaling).__name__} {scaling!r}")
        self.scaling = scaling
        self.scale_hidden = check_int("scale_hidden", scale_hidden)
        self.num_joints = lifter.num_joints
        self.feature_dim = lifter.feature_dim
        self.root = lifter.root
        self.encoder = lifter.encoder

        m, out, f, h = self.num_heads, self.num_joints * 3, self.feature_dim, self.scale_hidden
        src_w, src_b = lifter.head.weight, lifter.head.bias
        if tuple(src_w.shape) != (out, f) or src_b is None:
            raise ValueError(
                f"lifter.head: expected nn.Linear({f}, {out}) with a bias, got weight {tuple(src_w.shape)}"
                f"{' and no bias' if src_b is None else ''}"
            )
        like = {"dtype": src_w.dtype, "device": src_w.device}
        with torch.no_grad():
            head_weight = torch.empty(m * out, f, **like)
            head_bias = torch.empty(m * out, **like)
            head_weight[:out] = src_w
            head_bias[:out] = src_b
            bound = 1.0 / math.sqrt(f)  # nn.Linear's default: U(+-1/sqrt(fan_in)) for weight and bias
            head_weight[out:].uniform_(-bound, bound)
            head_bias[out:].uniform_(-bound, bound)
        self.head_weight = nn.Parameter(head_weight)
        self.head_bias = nn.Parameter(head_bias)
        if scaling:
            b1, b2 = 1.0 / math.sqrt(f), 1.0 / math.sqrt(h)
            self.scale_weight1 = nn.Parameter(torch.empty(m * h, f, **like).uniform_(-b1, b1))
            self.scale_bias1 = nn.Parameter(torch.empty(m * h, **like).uniform_(-b1, b1))
            self.scale_weight2 = nn.Parameter(torch.empty(m, h, **like).uniform_(-b2, b2))
            # not nn.Linear's default: a positive start keeps the ReLU active (see SCALE_BIAS_INIT)
            self.scale_bias2 = nn.Parameter(torch.full((m,), SCALE_BIAS_INIT, **like))

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, scaling={self.scaling}, scale_hidden={self.scale_hidden}, "
            f"num_joints={self.num_joints}, feature_dim={self.feature_dim}"
        )

    # ------------------------------------------------------------------ pieces

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, J, 2) -> shared encoder features (B, F). The encoder validates ``x``."""
        return self.encoder(x)

    def _check_features(self, features: torch.Tensor) -> None:
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features: expected a torch.Tensor of shape (B, {self.feature_dim}), got "
                            f"{type(features).__name__}")
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features: expected shape (B, {self.feature_dim}), got {tuple(features.shape)}")

    def head_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Unscaled outputs ``f_m(g(x))`` of every head: features (B, F) -> (B, M, J * 3) (metres,
        not yet root-relative). One matmul against the stacked ``(M * J * 3, F)`` weight."""
        self._check_features(features)
        return F.linear(features, self.head_weight, self.head_bias).view(features.shape[0], self.num_heads, -1)

    def scales(self, features: torch.Tensor) -> torch.Tensor:
        """Denominators ``relu(h_m(g(x))) + 1`` of every head: features (B, F) -> (B, M), all >= 1
        (exactly 1 when ``scaling`` is False)."""
        self._check_features(features)
        b = features.shape[0]
        if not self.scaling:
            return features.new_ones(b, self.num_heads)
        hidden = F.relu(F.linear(features, self.scale_weight1, self.scale_bias1))  # (B, M * H)
        hidden = hidden.view(b, self.num_heads, self.scale_hidden)
        # second layer, head by head: (B, M, H) . (M, H) -> (B, M)
        logits = (hidden * self.scale_weight2).sum(-1) + self.scale_bias2
        return F.relu(logits) + 1.0

    def _poses(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F) -> scaled, root-relative poses of every head (B, M, J, 3)."""
        out = self.head_outputs(features)
        if self.scaling:
            out = out / self.scales(features).unsqueeze(-1)
        pose = out.view(features.shape[0], self.num_heads, self.num_joints, 3)
        # the lifter's convention (Lifter.to_pose), per head: subtract the predicted root joint
        return pose - pose[:, :, self.root : self.root + 1]

    def head_poses(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, J, 2) -> every head's scaled, root-relative pose (B, M, J, 3) in metres."""
        return self._poses(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, J, 2) -> the ensemble prediction (B, J, 3): mean over heads of
        :meth:`head_poses` (root-relative, metres)."""
        return self.head_poses(x).mean(dim=1)

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters (shared encoder + all heads + all scaling MLPs)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- loss and helpers


def ensemble_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Training loss with the ``loss_fn(model, inputs, targets)`` signature of ``poselab.train``.

    For a :class:`FlatEnsemble`: the mean over heads of each head's MPJPE against ``targets``
    (mean Euclidean distance over joints and samples). Each head is trained as a predictor on
    its own: training the MPJPE of the mean prediction instead would let the heads compensate
    each other's errors and collapse their diversity. For any other model: plain MPJPE of
    ``model(inputs)`` (:func:`poselab.train.mpjpe_loss`), so the same ``loss_fn`` serves the
    baselines.

    Args:
        inputs: ``(B, J, 2)`` 2D keypoints.
        targets: ``(B, J, 3)`` root-relative 3D poses, metres.

    Returns:
        A scalar tensor, in the targets' unit (metres).
    """
    if not isinstance(model, FlatEnsemble):
        return mpjpe_loss(model, inputs, targets)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets: expected a torch.Tensor, got {type(targets).__name__}")
    poses = model.head_poses(inputs)  # (B, M, J, 3)
    expected = (poses.shape[0], model.num_joints, 3)
    if tuple(targets.shape) != expected:
        raise ValueError(
            f"targets: expected shape (B, J, 3) = {expected} to match the inputs, got {tuple(targets.shape)}"
        )
    # the heads have equal sizes, so the mean over (B, M, J) is the mean over heads of each head's MPJPE
    return (poses - targets.unsqueeze(1)).norm(dim=-1).mean()


def adaptive_scaling(lifter: Lifter, scale_hidden: int = 64) -> FlatEnsemble:
    """The lifter with the adaptive scaling mechanism and a single head (M = 1)."""
    return FlatEnsemble(lifter, num_heads=1, scaling=True, scale_hidden=scale_hidden)


def flat_ensemble(lifter: Lifter, num_heads: int, scale_hidden: int = 64) -> FlatEnsemble:
    """The lifter with ``num_heads`` prediction heads, each with its own adaptive scaling."""
    return FlatEnsemble(lifter, num_heads=num_heads, scaling=True, scale_hidden=scale_hidden)


def head_deviation(model: FlatEnsemble, inputs: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Disagreement of the heads per joint: ``mean_b sqrt(mean_m ||p_bmj - mean_m p_bmj||^2)``.

    The population standard deviation over heads of the predicted joint position (Euclidean,
    over the 3 coordinates), averaged over samples. Computed in eval mode (dropout off,
    BatchNorm running statistics) without gradients, in batches of ``batch_size`` samples; the
    model's train/eval mode is restored afterwards.

    Args:
        model: a :class:`FlatEnsemble` with at least 2 heads.
        inputs: ``(N, J, 2)`` 2D keypoints with the model's dtype; moved to the model's device.
        batch_size: samples per forward pass.

    Returns:
        ``(J,)`` float64 CPU tensor, metres (the root joint is 0: every head predicts it at 0).
    """
    if not isinstance(model, FlatEnsemble):
        raise TypeError(f"model: expected a FlatEnsemble, got {type(model).__name__}")
    if model.num_heads < 2:
        raise ValueError(f"model: head deviation needs at least 2 heads, got num_heads={model.num_heads}")
    check_int("batch_size", batch_size)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs: expected a torch.Tensor of shape (N, {model.num_joints}, 2), "
                        f"got {type(inputs).__name__}")
    if inputs.dim() != 3 or inputs.shape[0] == 0:
        raise ValueError(f"inputs: expected shape (N, {model.num_joints}, 2) with N >= 1, got {tuple(inputs.shape)}")
    device = model.head_weight.device
    was_training = model.training
    model.eval()
    total = torch.zeros(model.num_joints, dtype=torch.float64, device=device)
    try:
        with torch.no_grad():
            for start in range(0, inputs.shape[0], batch_size):
                poses = model.head_poses(inputs[start : start + batch_size].to(device))  # (b, M, J, 3)
                spread = (poses - poses.mean(dim=1, keepdim=True)).pow(2).sum(-1).mean(1).sqrt()  # (b, J)
                total += spread.double().sum(0)
    finally:
        model.train(was_training)
    return (total / inputs.shape[0]).cpu()
