"""Settings of meta-TTO: the simulated detector's errors, the loss weights and a run's configuration.

Part of :mod:`poselab.methods.meta_tto`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from poselab.checks import check_choice, check_int, check_positive
from poselab.models.mesh import MeshPrediction

__all__ = ["TTO_OPTIMIZERS", "LossFn", "DetectorNoise", "DETECTOR_NOISE", "LossWeights", "MetaTTOConfig"]


TTO_OPTIMIZERS = ("sgd", "adam")
"""Optimisers of :func:`test_time_optimise` (per-image state, on the stacked weights)."""

NUM_JOINTS = 17  # H36M-17 joints of BodyModel.skeleton; joint 0 is the pelvis

_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8

_NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase)

LossFn = Callable[[MeshPrediction, torch.Tensor], torch.Tensor]
"""``loss_fn(prediction, index) -> (n,)``: per-sample losses of a prediction of ``n`` samples, whose rows
are the samples ``index`` ``(n,)`` (long) of the batch, so that the loss can pick their targets."""


@dataclass(frozen=True)
class DetectorNoise:
    """Errors of the simulated 2D keypoint detector (:func:`poselab.data.cameras.detector_noise`).

    Lengths are fractions of the crop side ``S`` (at 64 px: 1.3 px jitter, 9.6 px outliers). The
    defaults imitate a decent detector on clean crops: small jitter on every keypoint, one keypoint in
    20 a gross outlier, one in 20 missed.

    Attributes:
        sigma: jitter standard deviation per coordinate.
        outlier_prob: probability that a keypoint is an outlier.
        outlier_sigma: the outliers' extra standard deviation per coordinate.
        dropout_prob: probability that a keypoint is missed (never the pelvis).
    """

    sigma: float = 0.02
    outlier_prob: float = 0.05
    outlier_sigma: float = 0.15
    dropout_prob: float = 0.05

    def __post_init__(self) -> None:
        check_positive("sigma", self.sigma, allow_zero=True)
        check_positive("outlier_sigma", self.outlier_sigma, allow_zero=True)
        for name in ("outlier_prob", "dropout_prob"):
            value = getattr(self, name)
            check_positive(name, value, allow_zero=True)
            if value > 1:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")


DETECTOR_NOISE = DetectorNoise()
"""The default detector of :func:`mesh_targets`."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of :func:`training_loss` (each term a per-sample mean, module docstring).

    Attributes:
        rotations: MSE of the 31 rotation matrices' entries (SPIN: 1).
        phenotypes: MSE of the 6 phenotypes in [0, 1] (they set the skeleton's size, which the joint
            terms see too; kept small as SPIN's shape term).
        joints3d: MSE of the root-relative 3D joint coordinates, m^2 (SPIN: 5).
        joints2d: MSE of the 2D joint coordinates divided by the crop side (SPIN: 5 on ``[-1, 1]``
            coordinates, i.e. 20 on ours).
    """

    rotations: float = 1.0
    phenotypes: float = 0.1
    joints3d: float = 5.0
    joints2d: float = 20.0

    def __post_init__(self) -> None:
        for name in ("rotations", "phenotypes", "joints3d", "joints2d"):
            check_positive(name, getattr(self, name), allow_zero=True)


@dataclass(frozen=True)
class MetaTTOConfig:
    """Hyper-parameters of meta-learning with test-time optimisation (and of the TTO used to evaluate).

    Attributes:
        iterations: outer optimisation steps.
        batch: images per step.
        lr: the outer (Adam) learning rate of both networks.
        inner_lr: ``alpha``, the inner SGD step on each sample's copy of the weights.
        inner_steps: inner steps per sample (the paper: 1).
        first_order: drop the second-order term of the outer gradient (first-order MAML).
        use_meta: train through the inner step; ``False`` = plain regression training (the EFT baseline).
        use_aux: train the auxiliary network and use its pseudo targets in the test loss.
        aux_weight: ``lambda``, the weight of the auxiliary term of :func:`test_loss`.
        freeze_norm: keep normalisation layers' affine parameters shared in the inner step and in TTO.
        weights: :class:`LossWeights` of the training loss.
        tto_steps, tto_lr, tto_optimizer: test-time optimisation at evaluation (:data:`TTO_OPTIMIZERS`).
        log_every: steps between two history records.

    The step sizes are large by the usual standards because the test loss is small (2D errors in crop
    sides, squared: 0.007 for a mean-pose ``"mesh_tiny"``); SGD at 0.1 takes that loss to about half in
    five steps on 64 px synthetic crops (0.01: 14 %), the inner step imitates the test-time step
    (``inner_lr == tto_lr``). Starting points: tune them per experiment.
    """

    iterations: int = 1000
    batch: int = 16
    lr: float = 1e-4
    inner_lr: float = 0.1
    inner_steps: int = 1
    first_order: bool = False
    use_meta: bool = True
    use_aux: bool = True
    aux_weight: float = 0.1
    freeze_norm: bool = True
    weights: LossWeights = field(default_factory=LossWeights)
    tto_steps: int = 10
    tto_lr: float = 0.1
    tto_optimizer: str = "sgd"
    log_every: int = 50

    def __post_init__(self) -> None:
        check_int("iterations", self.iterations)
        check_int("batch", self.batch)
        check_int("inner_steps", self.inner_steps)
        check_int("tto_steps", self.tto_steps, 0)
        check_int("log_every", self.log_every)
        check_positive("lr", self.lr)
        check_positive("inner_lr", self.inner_lr)
        check_positive("tto_lr", self.tto_lr)
        check_positive("aux_weight", self.aux_weight, allow_zero=True)
        for name in ("first_order", "use_meta", "use_aux", "freeze_norm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.weights, LossWeights):
            raise TypeError(f"weights: expected a LossWeights, got {type(self.weights).__name__}")
        check_choice("tto_optimizer", self.tto_optimizer, TTO_OPTIMIZERS)
