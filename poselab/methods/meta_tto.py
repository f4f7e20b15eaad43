"""Test-time optimisation inside training, with dual networks, for human mesh recovery.

"Incorporating Test-Time Optimization into Training with Dual Networks for Human Mesh Recovery"
(Nie et al., NeurIPS 2024). A regressor ``f_w`` (:class:`poselab.models.mesh.MeshRegressor`) maps a
person crop to Anny pose, shape and a crop camera. Its baseline at test time is EFT-style
test-time optimisation (TTO): for one image with detected 2D keypoints, a few gradient steps on
the *network's weights* for the reprojection error, then predict (:func:`test_time_optimise`).

The method trains ``w`` so that it is a good starting point for that optimisation (MAML):

1. **Inner step** (:func:`inner_step`), per training sample ``i``:
   ``w_i' = w - alpha grad_w L_test(w; x_i)``, the test-time step on that sample alone.
2. **Outer loss** (:func:`meta_loss`): the training loss with ground truth on the adapted weights,
   ``mean_i L_train(w_i'; x_i, y_i)``, differentiated through the inner step (second order by
   default; ``first_order=True`` drops the inner gradient's own dependence on ``w``).
3. **Dual networks**: an auxiliary regressor ``f_u`` (same architecture, own weights) predicts
   pseudo ground truth, and the test-time loss becomes
   ``L_test = L_2D + lambda || f_w'(x) - f_u(x) ||^2`` (:func:`test_loss`), closer to the training
   loss, which compares parameters with real ground truth.

Everything is in the **camera frame** (metres; crop pixels for 2D): the ground truth's pose
parameters are :func:`poselab.data.body.to_camera_frame` of the world-frame ones, a prediction's are
``to_pose_parameters(pred, camera_translation(pred.camera, focal, center, S))``, joints come from
:meth:`poselab.data.body.BodyModel.skeleton` (forward kinematics, no skinning) and 2D joints from
:func:`poselab.data.cameras.project_points`.

Vectorisation (the per-sample inner loop is the expensive part): every sample gets its own copy
of the weights, ``p.expand(B, *p.shape)`` (a view: no copy, and gradients flow back to the shared
``p``); the predictions are ``vmap(functional_call)`` over (copies, images); the per-sample
gradients are ``torch.autograd.grad`` of the *sum* of the per-sample losses with respect to the
copies (sample ``b``'s loss depends on copy ``b`` only, so slice ``b`` of that gradient is sample
``b``'s gradient). The body model stays outside ``vmap``, natively batched over ``B`` (Anny's
phenotype code cannot be vmapped over batched phenotypes). :func:`inner_step_loop` and
:func:`meta_loss_loop` do the same with a Python loop over samples, as references.

Choices (our reading of the paper):

* **Both networks are trained.** ``f_u`` must learn to predict pseudo ground truth: its own
  training loss on its predictions is added to the meta-loss (the paper's figure shows ground-truth
  meshes supervising the outer estimate and pseudo meshes supervising the inner one, and updates
  both ``w`` and ``u``). The pseudo targets are *not* detached inside the meta-loss, so with second
  order ``u`` also receives the gradient of the outer loss through the inner step (``w_i'`` depends
  on ``f_u(x_i)``); with ``first_order=True`` that path is cut and ``u`` learns from its own loss only.
* **Norm layers are frozen** in the inner step and at test time (EFT): GroupNorm's affine
  parameters keep their shared values (:func:`norm_parameter_names`; ``frozen="norm"``).
* **Visibility.** Dropped detections (:func:`poselab.data.cameras.detector_noise` collapses them onto
  the pelvis) are left out of the reprojection term, as EFT weights OpenPose keypoints by their
  confidence (a missed joint has confidence 0).
* **Losses are means** (per sample): MSE over the entries of rotation matrices, phenotypes, 3D joint
  coordinates (root-relative, m^2) and 2D joint coordinates divided by the crop side ``S``; the
  weights of :class:`LossWeights` follow SPIN's (keypoints 5, pose 1) with SPIN's ``[-1, 1]`` crop
  coordinates converted to ours (``x 4``). The auxiliary term of the test loss is the mean squared
  difference of the 195 regressed numbers (31 6D rotations, 6 phenotypes, ``(s, tx, ty)``).
* **Test-time optimisation** keeps the auxiliary network fixed: its predictions are computed once
  and are constants of the test loss.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field

import roma
import torch
from torch import nn
from torch.func import functional_call, vmap

from poselab import optim as O
from poselab.checkpoint import check_checkpoint_path, data_sha256
from poselab.checks import check_choice, check_int, check_positive, check_shape, resolve_device
from poselab.data.body import BodyModel, body_model, to_camera_frame
from poselab.data.cameras import detector_noise, project_points
from poselab.data.images import PersonImages
from poselab.metrics import mpjpe, p_mpjpe, pve
from poselab.models.mesh import (NUM_BONES, NUM_PHENOTYPES, MeshPrediction, camera_translation,
                                 matrix_to_rotation_6d, rotation_6d_to_matrix, to_pose_parameters,
                                 translation_to_camera)
from poselab.engine import History, Streams, Task, fit
from poselab.engine import log_points as training_log_points

__all__ = [
    "TTO_OPTIMIZERS",
    "LossFn",
    "DetectorNoise",
    "DETECTOR_NOISE",
    "LossWeights",
    "MeshTargets",
    "MetaTTOConfig",
    "mesh_targets",
    "targets_as_prediction",
    "mesh_joints",
    "mesh_vertices",
    "training_terms",
    "training_loss",
    "test_loss",
    "norm_parameter_names",
    "predict_stacked",
    "inner_step",
    "inner_step_loop",
    "meta_loss",
    "meta_loss_loop",
    "meta_step",
    "test_time_optimise",
    "evaluate_mesh",
    "predict_images",
    "train_mesh",
]

TTO_OPTIMIZERS = ("sgd", "adam")
"""Optimisers of :func:`test_time_optimise` (per-image state, on the stacked weights)."""

NUM_JOINTS = 17  # H36M-17 joints of BodyModel.skeleton; joint 0 is the pelvis
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8
_NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase)

LossFn = Callable[[MeshPrediction, torch.Tensor], torch.Tensor]
"""``loss_fn(prediction, index) -> (n,)``: per-sample losses of a prediction of ``n`` samples, whose rows
are the samples ``index`` ``(n,)`` (long) of the batch, so that the loss can pick their targets."""


# ----------------------------------------------------------------------------- settings


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


# ----------------------------------------------------------------------------- targets


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


# ----------------------------------------------------------------------------- losses


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


# ----------------------------------------------------------------------------- per-sample weights


def norm_parameter_names(network: nn.Module) -> tuple[str, ...]:
    """Names of the affine parameters of the network's normalisation layers (GroupNorm, LayerNorm, BatchNorm)."""
    names = []
    for prefix, module in network.named_modules():
        if isinstance(module, _NORM_LAYERS):
            names += [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
    return tuple(names)


def _resolve_frozen(network: nn.Module, frozen) -> frozenset[str]:
    """``"norm"`` or a collection of parameter names -> a set of names of the network's parameters."""
    if isinstance(frozen, str):
        if frozen != "norm":
            raise ValueError(f"frozen: expected 'norm' or a collection of parameter names, got {frozen!r}")
        return frozenset(norm_parameter_names(network))
    if not isinstance(frozen, Collection):
        raise TypeError(f"frozen: expected 'norm' or a collection of parameter names, got {type(frozen).__name__}")
    names = dict(network.named_parameters())
    unknown = sorted(set(frozen) - set(names))
    if unknown:
        raise ValueError(f"frozen: {unknown} are not parameters of the network (e.g. {list(names)[:3]})")
    return frozenset(frozen)


def _stack(network: nn.Module, params: Mapping[str, torch.Tensor], batch: int,
           need_grad: bool = False) -> dict[str, torch.Tensor]:
    """Per-sample copies ``(B, *shape)`` of the network's parameters.

    A tensor of the parameter's own shape is shared and expanded (a view, so gradients reach it);
    one of shape ``(B, *shape)`` is already per-sample (e.g. the output of a previous inner step).
    With ``need_grad``, a tensor that does not require gradients is detached and made to require
    them, so that the per-sample gradients exist (e.g. parameters passed detached).
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of parameter tensors, got {type(params).__name__}")
    shapes = {k: tuple(p.shape) for k, p in network.named_parameters()}
    if set(params) != set(shapes):
        missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
        raise ValueError(f"params: expected the network's parameters; missing {missing[:3]}, unexpected {extra[:3]}")
    out = {}
    for k, p in params.items():
        if need_grad and not p.requires_grad:
            p = p.detach().requires_grad_()
        if tuple(p.shape) == shapes[k]:
            out[k] = p.expand(batch, *p.shape)
        elif tuple(p.shape) == (batch, *shapes[k]):
            out[k] = p
        else:
            raise ValueError(f"params[{k!r}]: expected shape {shapes[k]} (shared) or {(batch, *shapes[k])} "
                             f"(per sample), got {tuple(p.shape)}")
    return out


def predict_stacked(network: nn.Module, stacked: Mapping[str, torch.Tensor], images: torch.Tensor) -> MeshPrediction:
    """Predict each image with its own weights: ``vmap(functional_call)`` over (weights, images).

    Args:
        network: a :class:`~poselab.models.mesh.MeshRegressor` (its buffers are shared).
        stacked: parameter name -> ``(B, *shape)`` per-sample weights (shared ``(*shape)`` tensors are
            expanded).
        images: ``(B, 3, S, S)`` in the network's dtype and device.

    Returns:
        :class:`MeshPrediction` of ``B`` samples; row ``b`` is ``network`` with ``stacked[.][b]`` on image ``b``.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images: expected a (B, 3, S, S) tensor, got {getattr(images, 'shape', type(images))}")
    stacked = _stack(network, stacked, images.shape[0])
    buffers = dict(network.named_buffers())

    def call(p, x):
        return functional_call(network, (p, buffers), (x,))

    out = vmap(call)(stacked, images[:, None])  # each sample: its weights and a batch of one image
    return MeshPrediction(*(t[:, 0] for t in out))


def _check_losses(losses, n: int) -> torch.Tensor:
    if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (n,):
        raise ValueError(f"loss_fn: expected per-sample losses of shape ({n},), got "
                         f"{tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__}")
    return losses


def _stacked_gradients(network, stacked, images, loss_fn, names, create_graph):
    """Prediction, per-sample losses ``(B,)`` and per-sample gradients of ``stacked[names]``."""
    b = images.shape[0]
    with torch.enable_grad():
        pred = predict_stacked(network, stacked, images)
        losses = _check_losses(loss_fn(pred, torch.arange(b, device=images.device)), b)
        if not losses.requires_grad:
            raise ValueError("loss_fn: the losses do not depend on the weights; compute them from the prediction")
        # Sample b's loss depends on copy b only: the gradient of the sum, sliced at b, is sample b's.
        grads = torch.autograd.grad(losses.sum(), [stacked[k] for k in names], create_graph=create_graph,
                                    materialize_grads=True)
    return pred, losses, dict(zip(names, grads))


def _check_network_images(network, images) -> None:
    if not isinstance(network, nn.Module):
        raise TypeError(f"network: expected an nn.Module, got {type(network).__name__}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images: expected a non-empty (B, 3, S, S) tensor, got {getattr(images, 'shape', images)}")


def _check_step_args(network, images, loss_fn, lr, first_order) -> None:
    _check_network_images(network, images)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable (prediction, index) -> (n,), got {type(loss_fn).__name__}")
    check_positive("lr", lr)
    if not isinstance(first_order, bool):
        raise TypeError(f"first_order: expected a bool, got {type(first_order).__name__}")


def inner_step(network: nn.Module, params: Mapping[str, torch.Tensor], images: torch.Tensor, loss_fn: LossFn,
               lr: float, first_order: bool = False, frozen: Collection[str] | str = ()) -> dict[str, torch.Tensor]:
    """One SGD step per sample on its own copy of the weights, vectorised (no loop over samples).

    ``p_b' = p_b - lr grad_{p_b} loss_b`` for every parameter not in ``frozen``; frozen ones are
    returned as they came (expanded). The gradients are ``torch.autograd.grad`` of the sum of the
    per-sample losses with respect to the copies, with ``create_graph = not first_order``: the result
    is differentiable with respect to ``params`` (and to whatever ``loss_fn`` closes over), through the
    inner gradient too unless ``first_order``. Under ``torch.no_grad()`` the step is still taken (its
    gradients are computed in ``enable_grad``) and the result is detached.

    Args:
        network: a :class:`~poselab.models.mesh.MeshRegressor`.
        params: name -> tensor, every parameter of the network: shared ``(*shape)`` (e.g.
            ``dict(network.named_parameters())``) or per sample ``(B, *shape)`` (a previous step's output).
        images: ``(B, 3, S, S)`` in the network's dtype and device.
        loss_fn: ``loss_fn(prediction, index) -> (n,)`` (:data:`LossFn`).
        lr: the step size ``> 0``.
        first_order: treat the inner gradient as a constant (first-order MAML).
        frozen: parameter names kept at their values, or ``"norm"`` (:func:`norm_parameter_names`).

    Returns:
        name -> ``(B, *shape)`` adapted per-sample weights.
    """
    _check_step_args(network, images, loss_fn, lr, first_order)
    frozen = _resolve_frozen(network, frozen)
    graph = torch.is_grad_enabled()
    with torch.enable_grad():  # the step needs its gradients, also when called under no_grad
        stacked = _stack(network, params, images.shape[0], need_grad=True)
        names = [k for k in stacked if k not in frozen]
        _, _, grads = _stacked_gradients(network, stacked, images, loss_fn, names, not first_order and graph)
        adapted = {k: p - lr * grads[k] if k in grads else p for k, p in stacked.items()}
    return adapted if graph else {k: p.detach() for k, p in adapted.items()}


def _single(network: nn.Module, params: Mapping[str, torch.Tensor], b: int, batch: int) -> dict[str, torch.Tensor]:
    """Sample ``b``'s weights from shared or per-sample ``params`` (the loop references)."""
    shapes = {k: tuple(p.shape) for k, p in network.named_parameters()}
    if set(params) != set(shapes):
        raise ValueError("params: expected exactly the network's parameters")
    out = {}
    for k, p in params.items():
        if tuple(p.shape) == shapes[k]:
            out[k] = p
        elif tuple(p.shape) == (batch, *shapes[k]):
            out[k] = p[b]
        else:
            raise ValueError(f"params[{k!r}]: expected shape {shapes[k]} or {(batch, *shapes[k])}, "
                             f"got {tuple(p.shape)}")
        if not out[k].requires_grad:
            out[k] = out[k].detach().requires_grad_()
    return out


def inner_step_loop(network: nn.Module, params: Mapping[str, torch.Tensor], images: torch.Tensor, loss_fn: LossFn,
                    lr: float, first_order: bool = False,
                    frozen: Collection[str] | str = ()) -> dict[str, torch.Tensor]:
    """:func:`inner_step` with a Python loop over samples (the reference for tests and benchmarks).

    Same arguments and result; sample ``b`` runs ``functional_call`` on ``images[b:b+1]`` and its own
    ``torch.autograd.grad``.
    """
    _check_step_args(network, images, loss_fn, lr, first_order)
    frozen = _resolve_frozen(network, frozen)
    buffers = dict(network.named_buffers())
    batch = images.shape[0]
    adapted = []
    graph = torch.is_grad_enabled()
    with torch.enable_grad():
        for b in range(batch):  # the reference loop, on purpose
            p = _single(network, params, b, batch)
            names = [k for k in p if k not in frozen]
            pred = functional_call(network, (p, buffers), (images[b : b + 1],))
            loss = _check_losses(loss_fn(pred, torch.tensor([b], device=images.device)), 1)
            grads = torch.autograd.grad(loss.sum(), [p[k] for k in names], create_graph=not first_order and graph,
                                        materialize_grads=True)
            g = dict(zip(names, grads))
            adapted.append({k: v - lr * g[k] if k in g else v for k, v in p.items()})
        stacked = {k: torch.stack([a[k] for a in adapted]) for k in adapted[0]}
    return stacked if graph else {k: p.detach() for k, p in stacked.items()}


# ----------------------------------------------------------------------------- meta-learning


def _select(pred: MeshPrediction | None, index: torch.Tensor) -> MeshPrediction | None:
    return None if pred is None else MeshPrediction(*(t[index] for t in pred))


def _inner_loss(targets: MeshTargets, body: BodyModel, pseudo: MeshPrediction | None, aux_weight: float) -> LossFn:
    """The test loss of :func:`meta_loss`'s inner steps, as a :data:`LossFn` over the batch's samples."""
    weight = aux_weight if pseudo is not None else 0.0

    def loss_fn(pred: MeshPrediction, index: torch.Tensor) -> torch.Tensor:
        t = targets.subset(index)
        return test_loss(pred, t.detected, t.focal, t.center, t.size, body, aux=_select(pseudo, index),
                         aux_weight=weight, visible=t.visible)

    return loss_fn


def _check_meta_args(network, aux_network, images, targets, body, config) -> None:
    if not isinstance(config, MetaTTOConfig):
        raise TypeError(f"config: expected a MetaTTOConfig, got {type(config).__name__}")
    if not isinstance(network, nn.Module):
        raise TypeError(f"network: expected an nn.Module, got {type(network).__name__}")
    if config.use_aux and not isinstance(aux_network, nn.Module):
        raise TypeError(f"aux_network: config.use_aux needs the auxiliary network, got {type(aux_network).__name__}")
    if aux_network is network:
        raise ValueError("aux_network: expected a separate network (own weights), got the main network itself")
    if not isinstance(targets, MeshTargets):
        raise TypeError(f"targets: expected a MeshTargets, got {type(targets).__name__}")
    if not isinstance(body, BodyModel):
        raise TypeError(f"body: expected a poselab.data.body.BodyModel, got {type(body).__name__}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != len(targets):
        raise ValueError(f"images: expected ({len(targets)}, 3, S, S), one per target, got "
                         f"{tuple(getattr(images, 'shape', ()))}")


def _adapted_parameters(network, aux_pred, images, targets, body, config, step=None) -> dict[str, torch.Tensor]:
    """Per-sample weights after ``config.inner_steps`` inner steps of the test loss (``step``:
    :func:`inner_step`, or :func:`inner_step_loop` for the reference)."""
    loss_fn = _inner_loss(targets, body, aux_pred, config.aux_weight)
    frozen = "norm" if config.freeze_norm else ()
    params = dict(network.named_parameters())
    for _ in range(config.inner_steps):
        params = (step or inner_step)(network, params, images, loss_fn, config.inner_lr, config.first_order, frozen)
    return params


def _meta_parts(network, aux_network, images, targets, body, config, loop: bool) -> torch.Tensor:
    _check_meta_args(network, aux_network, images, targets, body, config)
    aux_pred = aux_network(images) if config.use_aux else None
    aux_term = 0.0 if aux_pred is None else training_loss(aux_pred, targets, body, config.weights).mean()
    if not config.use_meta:
        return training_loss(network(images), targets, body, config.weights).mean() + aux_term
    params = _adapted_parameters(network, aux_pred, images, targets, body, config,
                                 inner_step_loop if loop else inner_step)
    if loop:
        buffers = dict(network.named_buffers())
        outer = torch.stack([
            training_loss(functional_call(network, (_single(network, params, b, len(targets)), buffers),
                                          (images[b : b + 1],)), targets.subset(slice(b, b + 1)), body,
                          config.weights)[0]
            for b in range(len(targets))
        ])
    else:
        outer = training_loss(predict_stacked(network, params, images), targets, body, config.weights)
    return outer.mean() + aux_term


def meta_loss(network: nn.Module, aux_network: nn.Module | None, images: torch.Tensor, targets: MeshTargets,
              body: BodyModel, config: MetaTTOConfig) -> torch.Tensor:
    """The meta-learning objective of a batch (vectorised over samples).

    With ``config.use_meta``: each sample takes ``config.inner_steps`` inner steps (:func:`inner_step`)
    of :func:`test_loss` (detected keypoints, visibility, and when ``config.use_aux`` the auxiliary
    network's predictions as pseudo targets, weight ``config.aux_weight``) on its own copy of the
    weights, then :func:`training_loss` of the adapted weights is averaged over the batch. Without it:
    the plain training loss of ``network`` (the baseline). With ``config.use_aux`` the auxiliary
    network's own training loss is added (module docstring). Norm layers are frozen in the inner step
    when ``config.freeze_norm``.

    Args:
        network: the main regressor ``f_w``.
        aux_network: the auxiliary regressor ``f_u`` (same architecture), or ``None`` without ``use_aux``.
        images: ``(B, 3, S, S)`` in the networks' dtype and device.
        targets: :class:`MeshTargets` of the batch (the body's dtype and device).
        body: the body model.
        config: :class:`MetaTTOConfig`.

    Returns:
        Scalar; differentiable with respect to both networks' parameters.
    """
    return _meta_parts(network, aux_network, images, targets, body, config, loop=False)


def meta_loss_loop(network: nn.Module, aux_network: nn.Module | None, images: torch.Tensor, targets: MeshTargets,
                   body: BodyModel, config: MetaTTOConfig) -> torch.Tensor:
    """:func:`meta_loss` with a Python loop over samples (:func:`inner_step_loop`): the reference."""
    return _meta_parts(network, aux_network, images, targets, body, config, loop=True)


def meta_step(network: nn.Module, aux_network: nn.Module | None, optimizer: torch.optim.Optimizer,
              images: torch.Tensor, targets: MeshTargets, body: BodyModel, config: MetaTTOConfig) -> float:
    """One optimiser step of :func:`meta_loss` on both networks; returns the loss before the step.

    ``optimizer`` must hold the parameters of ``network`` (and of ``aux_network`` with ``use_aux``),
    e.g. ``torch.optim.Adam([*network.parameters(), *aux_network.parameters()], lr=config.lr)``.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    optimizer.zero_grad(set_to_none=True)
    loss = meta_loss(network, aux_network, images, targets, body, config)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# ----------------------------------------------------------------------------- test-time optimisation


def _adam(p, g, state, step: int, lr: float):
    """One elementwise Adam step (bias-corrected) on stacked weights; ``state`` = (m, v), updated in place."""
    (b1, b2), (m, v) = _ADAM_BETAS, state
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    m_hat, v_hat = m / (1 - b1**step), v / (1 - b2**step)
    return p - lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)


def _detached(pred: MeshPrediction) -> MeshPrediction:
    return MeshPrediction(*(t.detach() for t in pred))


def test_time_optimise(network: nn.Module, images: torch.Tensor, detected: torch.Tensor, focal: torch.Tensor,
                       center: torch.Tensor, body: BodyModel, steps: int, lr: float, optimizer: str = "sgd",
                       aux_network: nn.Module | None = None, aux_weight: float = 0.0,
                       frozen: Collection[str] | str = "norm", visible: torch.Tensor | None = None
                       ) -> list[MeshPrediction]:
    """EFT-style test-time optimisation of the network's weights, one copy per image, vectorised.

    Every image starts from the network's weights and takes ``steps`` gradient steps (SGD or Adam with
    per-image state) on its own :func:`test_loss`; images do not interact, so the result for an image
    does not depend on the rest of the batch. The network itself is never modified (the weights are
    "restored after each image" by construction). The auxiliary network, when given, predicts once;
    its predictions are constant pseudo targets.

    Args:
        network: a :class:`~poselab.models.mesh.MeshRegressor`.
        images: ``(B, 3, S, S)`` in the network's dtype and device.
        detected: ``(B, 17, 2)`` crop pixels, H36M-17 detections; focal, center: ``(B, 2)`` crop pixels.
        body: the body model (the network's dtype and device).
        steps: gradient steps ``>= 0``.
        lr: step size ``> 0``.
        optimizer: ``"sgd"`` or ``"adam"`` (:data:`TTO_OPTIMIZERS`; Adam's betas 0.9, 0.999).
        aux_network: the auxiliary regressor, or ``None``.
        aux_weight: ``lambda >= 0`` (0 without ``aux_network``).
        frozen: parameter names kept fixed, or ``"norm"`` (the default: normalisation layers, as EFT).
        visible: ``(B, 17)`` bool, detections to use (``None``: all).

    Returns:
        ``steps + 1`` detached :class:`MeshPrediction`: entry ``k`` after ``k`` steps (entry 0 is the
        network's own prediction).
    """
    check_int("steps", steps, 0)
    check_choice("optimizer", optimizer, TTO_OPTIMIZERS)
    _check_network_images(network, images)
    check_positive("lr", lr)
    if aux_network is None and aux_weight != 0:
        raise ValueError(f"aux_weight: {aux_weight!r} was given without aux_network; pass one or aux_weight=0")
    b, size = images.shape[0], images.shape[-1]
    _check_points("detected", detected, b, 2)
    _check_points("focal", focal, b, 2, None)
    _check_points("center", center, b, 2, None)
    frozen = _resolve_frozen(network, frozen)
    with torch.no_grad():
        pseudo = None if aux_network is None else _detached(aux_network(images))

    def loss_fn(pred: MeshPrediction, index: torch.Tensor) -> torch.Tensor:
        return test_loss(pred, detected[index], focal[index], center[index], size, body, aux=_select(pseudo, index),
                         aux_weight=aux_weight, visible=None if visible is None else visible[index])

    # Own copies of the trained weights (frozen ones stay shared views); Adam's moments only for Adam.
    stacked = {k: p.detach().expand(b, *p.shape) for k, p in network.named_parameters()}
    names = [k for k in stacked if k not in frozen]
    stacked.update({k: stacked[k].clone() for k in names})
    state = {k: (torch.zeros_like(stacked[k]), torch.zeros_like(stacked[k])) for k in names if optimizer == "adam"}
    predictions = []
    for step in range(1, steps + 1):
        leaves = {k: p.requires_grad_() if k in names else p for k, p in stacked.items()}
        pred, _, grads = _stacked_gradients(network, leaves, images, loss_fn, names, create_graph=False)
        predictions.append(_detached(pred))
        with torch.no_grad():
            for k in names:
                stacked[k] = (stacked[k] - lr * grads[k] if optimizer == "sgd"
                              else _adam(stacked[k], grads[k], state[k], step, lr))
    with torch.no_grad():
        predictions.append(_detached(predict_stacked(network, {k: p.detach() for k, p in stacked.items()}, images)))
    return predictions


# ----------------------------------------------------------------------------- evaluation


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


# ----------------------------------------------------------------------------- training


_STEP_TERMS = ("rotations", "phenotypes", "joints3d", "joints2d")


@torch.no_grad()
def predict_images(network: nn.Module, images: PersonImages, chunk_size: int = 256) -> MeshPrediction:
    """The regressor's own predictions (no test-time optimisation) for a set of crops, in chunks.

    Args:
        network: a :class:`~poselab.models.mesh.MeshRegressor`; its parameters' dtype and device are used.
        images: :class:`~poselab.data.images.PersonImages` (CPU uint8), crops of the network's input size.
        chunk_size: images per forward pass (bounds the memory).

    Returns:
        Detached :class:`MeshPrediction` of ``len(images)`` samples, on the network's device.
    """
    if not isinstance(images, PersonImages):
        raise TypeError(f"images: expected a PersonImages, got {type(images).__name__}")
    check_int("chunk_size", chunk_size)
    p = next(network.parameters())
    chunks = [network(_float_batch(images.images[start : start + chunk_size], p.dtype, p.device))
              for start in range(0, len(images), chunk_size)]
    return MeshPrediction(*(torch.cat(parts) for parts in zip(*chunks)))


def _float_batch(images: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` -> ``dtype`` in [0, 1] on ``device``."""
    return images.to(device).to(dtype).div_(255.0)


def _mesh_step(network: nn.Module, aux_network: nn.Module | None, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, targets: MeshTargets, body: BodyModel, config: MetaTTOConfig
               ) -> dict[str, torch.Tensor]:
    """:func:`meta_step` that also returns the loss's terms (0-dim tensors, before the step; no sync).

    The loss is :func:`meta_loss`'s (built from the same blocks; a test checks that they agree). Keys:
    ``loss``, the unweighted :func:`training_terms` of the main network's (adapted, with
    ``use_meta``) prediction averaged over the batch, and ``aux_loss`` (the auxiliary network's own
    training loss) with ``use_aux``.
    """
    _check_meta_args(network, aux_network, images, targets, body, config)
    aux_pred = aux_network(images) if config.use_aux else None
    if config.use_meta:
        pred = predict_stacked(network, _adapted_parameters(network, aux_pred, images, targets, body, config), images)
    else:
        pred = network(images)
    terms = training_terms(pred, targets, body)
    loss = sum(getattr(config.weights, k) * v for k, v in terms.items()).mean()
    stats = {k: v.detach().mean() for k, v in terms.items()}
    if aux_pred is not None:
        aux_loss = training_loss(aux_pred, targets, body, config.weights).mean()
        loss = loss + aux_loss
        stats["aux_loss"] = aux_loss.detach()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach(), **stats}


def _check_train_args(network, data, config, aux_network, eval_sets, warmup, noise, seed) -> None:
    if not isinstance(network, nn.Module):
        raise TypeError(f"network: expected an nn.Module, got {type(network).__name__}")
    if not isinstance(data, PersonImages):
        raise TypeError(f"data: expected a PersonImages, got {type(data).__name__}")
    if not isinstance(config, MetaTTOConfig):
        raise TypeError(f"config: expected a MetaTTOConfig, got {type(config).__name__}")
    if config.use_aux and not isinstance(aux_network, nn.Module):
        raise TypeError(f"aux_network: config.use_aux needs the auxiliary network, got {type(aux_network).__name__}")
    if not config.use_aux and aux_network is not None:
        raise ValueError("aux_network: given but config.use_aux is False (it would not be trained); pass None")
    if aux_network is network:
        raise ValueError("aux_network: expected a separate network (own weights), got the main network itself")
    size = getattr(network, "input_size", data.size)
    if size != data.size:
        raise ValueError(f"data: crops of {data.size} px, but the network takes {size} px")
    if not isinstance(eval_sets, Mapping):
        raise TypeError(f"eval_sets: expected a dict name -> PersonImages, got {type(eval_sets).__name__}")
    for name, images in eval_sets.items():
        if not isinstance(images, PersonImages) or images.size != data.size:
            got = f"{images.size} px crops" if isinstance(images, PersonImages) else type(images).__name__
            raise ValueError(f"eval_sets[{name!r}]: expected a PersonImages of {data.size} px crops, got {got}")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0 <= warmup < 1:
        raise ValueError(f"warmup: expected a fraction of the run in [0, 1), got {warmup!r}")
    if not isinstance(noise, DetectorNoise):
        raise TypeError(f"noise: expected a DetectorNoise, got {type(noise).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")


def _images_sha256(images: PersonImages) -> dict[str, str]:
    return data_sha256(**{name: getattr(images, name) for name in PersonImages._TENSORS})


class MeshTask(Task):
    """:func:`train_mesh` as an engine task: one :func:`meta_loss` (or regression) step on crops drawn
    with replacement, their targets built with fresh seeded detector noise."""

    def __init__(self, network, aux_network, data: PersonImages, config: MetaTTOConfig,
                 eval_sets: Mapping[str, PersonImages], warmup: float, noise: DetectorNoise, device: torch.device):
        self.data, self.config, self.eval_sets, self.noise, self.device = data, config, eval_sets, noise, device
        self.main = copy.deepcopy(network).to(device).train()
        self.aux = None if aux_network is None else copy.deepcopy(aux_network).to(device).train()
        networks = [self.main] if self.aux is None else [self.main, self.aux]
        self.dtype = next(self.main.parameters()).dtype
        if self.aux is not None and next(self.aux.parameters()).dtype != self.dtype:
            raise TypeError(f"aux_network: {next(self.aux.parameters()).dtype}, expected the network's {self.dtype}")
        self.body = body_model(device, self.dtype)
        self.modules = {"main": self.main} | ({} if self.aux is None else {"aux": self.aux})
        self.optimizer = torch.optim.Adam([p for n in networks for p in n.parameters()], lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: O.warmup_cosine(step, config.iterations, warmup))
        # Evaluation targets once (their detections are unused: no TTO here).
        self.eval_targets = {name: mesh_targets(images, self.body) for name, images in eval_sets.items()}

    def step(self, iteration: int, streams) -> dict[str, torch.Tensor]:
        index = torch.randint(len(self.data), (self.config.batch,), generator=streams["batches"])
        batch = self.data.subset(index)
        noise_seed = int(torch.randint(2**31 - 1, (), generator=streams["noise"]))
        targets = mesh_targets(batch, self.body, noise=self.noise, seed=noise_seed)
        return _mesh_step(self.main, self.aux, self.optimizer, _float_batch(batch.images, self.dtype, self.device),
                          targets, self.body, self.config)

    def evaluate(self) -> dict[str, float]:
        self.main.eval()
        record = {}
        for name, images in self.eval_sets.items():
            scores = evaluate_mesh(predict_images(self.main, images), self.eval_targets[name], self.body)
            record.update({f"{name}/{key}": value for key, value in scores.items()})
        self.main.train()
        return record


def train_mesh(network: nn.Module, data: PersonImages, config: MetaTTOConfig, *,
               aux_network: nn.Module | None = None, eval_sets: Mapping[str, PersonImages] | None = None,
               device: str | torch.device = "auto", seed: int = 0, progress: bool = True, warmup: float = 0.05,
               noise: DetectorNoise = DETECTOR_NOISE, checkpoint_path: str | os.PathLike | None = None,
               resume: bool = True) -> tuple[nn.Module, nn.Module | None, History]:
    """Train copies of the regressor (and of the auxiliary network) by meta-learning with TTO, or plain regression.

    Each of ``config.iterations`` steps samples ``config.batch`` crops of ``data`` with replacement,
    builds their :func:`mesh_targets` with fresh seeded detector noise, and takes one Adam step (both
    networks, learning rate ``config.lr`` under ``LambdaLR`` with :func:`poselab.optim.warmup_cosine`)
    on :func:`meta_loss`: through the per-sample inner TTO step with ``config.use_meta`` (with the
    auxiliary network's pseudo targets with ``config.use_aux``), else plain regression (the
    baseline, and EFT's starting model). Networks and body model are in the network's dtype.

    A run that diverges does not raise: a non-finite loss or parameter stops training; the record of
    that window is appended at its log point (step means, NaN allowed; evaluations NaN), then one record
    per remaining log point with every value NaN but ``iteration`` and ``diverged``.

    Args:
        network: a :class:`~poselab.models.mesh.MeshRegressor` (not modified).
        data: :class:`~poselab.data.images.PersonImages` training crops (CPU), of the network's input size.
        config: :class:`MetaTTOConfig` (``iterations``, ``batch``, ``lr``, the inner step, ``log_every``).
        aux_network: the auxiliary regressor (same architecture, not modified); required with
            ``config.use_aux``, must be ``None`` without.
        eval_sets: ``{name: PersonImages}`` evaluated with :func:`evaluate_mesh` on the main network's
            own prediction (no TTO, so detector noise plays no part) at step 0 and at every record: keys
            ``"{name}/mpjpe_mm"`` and ``"{name}/pa_mpjpe_mm"``. TTO evaluation is the experiments' job.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: seeds two CPU generators (``2 seed``: batch indices; ``2 seed + 1``: detector-noise seeds).
        progress: a ``tqdm`` bar over steps.
        warmup: the learning-rate warm-up's fraction of the run, in [0, 1).
        noise: the simulated detector's errors (:class:`DetectorNoise`).
        checkpoint_path: if given, the run is saved there at every record (:func:`poselab.engine.fit`)
            and a rerun with the same networks, data, settings and seed continues from it, bitwise
            as if uninterrupted.
        resume: with ``False`` an existing checkpoint is ignored and overwritten.

    Returns:
        ``(network, aux_network or None, history)``, trained copies in eval mode. ``history.records``:
        one at step 0 (``iteration``, ``lr``, evaluations, ``diverged``) and one every ``log_every`` steps
        (and at the end) with ``iteration``, ``lr`` of the record's last step, the means over the steps
        since the previous record of ``loss`` (the objective), ``rotations``, ``phenotypes``, ``joints3d``,
        ``joints2d`` (unweighted :func:`training_terms` of the main network's prediction, adapted with
        ``use_meta``), ``aux_loss`` (with ``use_aux``), the evaluations and ``diverged`` (1.0 from the
        window in which the run diverged on, else 0.0).
    """
    eval_sets = {} if eval_sets is None else eval_sets
    _check_train_args(network, data, config, aux_network, eval_sets, warmup, noise, seed)
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected a bool, got {type(resume).__name__}")
    path = None if checkpoint_path is None else check_checkpoint_path("checkpoint_path", checkpoint_path)
    dev = resolve_device(device)
    task = MeshTask(network, aux_network, data, config, eval_sets, warmup, noise, dev)
    fingerprint = None if path is None else {
        "config": asdict(config), "warmup": warmup, "noise": asdict(noise), "data": _images_sha256(data),
        "eval_sets": {name: _images_sha256(images) for name, images in sorted(eval_sets.items())}}
    mode = ("meta" if config.use_meta else "regression") + ("+aux" if config.use_aux else "")
    history = fit(task, steps=config.iterations, seed=seed, streams=Streams(seeds={"batches": 2 * seed, "noise": 2 * seed + 1}),
                  record_at=training_log_points(config.iterations, config.log_every), record_start=True,
                  on_divergence="record", watch=("loss",), seed_global=False, checkpoint=path, resume=resume,
                  fingerprint=fingerprint, device=dev, progress=progress, desc=f"mesh {mode}")
    return task.main.eval(), None if task.aux is None else task.aux.eval(), history
