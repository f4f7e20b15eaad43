"""HMR-style body-parameter regressors: a person crop -> Anny pose, shape and a crop camera.

Kanazawa et al. 2018 ("End-to-end Recovery of Human Shape and Pose", HMR) regress SMPL
parameters from an image with a ResNet encoder and an *iterative error feedback* head: an MLP
reads ``[feature, current parameters]`` and adds a correction, a few times, starting from the
mean parameters. Here, scaled down for 64x64 crops and for the Anny body of
:mod:`poselab.data.body`:

* **Encoder**: stem ``conv3x3(3 -> w1, stride 2) -> GN -> ReLU``, four stages of BasicBlocks
  (two ``3x3`` convs with GroupNorm, identity / ``1x1``-projection shortcut) with widths
  ``w1..w4`` and strides 1, 2, 2, 2 (stride 16: a 4x4 map for a 64x64 crop), global average
  pooling -> a feature of size ``w4``.
* **Head**: ``iterations`` (default 3, as HMR) passes of one shared MLP
  ``Linear(w4 + 195, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, 195)`` on
  ``[feature, params]``, each adding its output to ``params``; the first pass starts from the
  buffer ``init_params``.
* **Parameters** (195 numbers per image): one 6D rotation per bone (31 x 6, :func:`rotation_6d_to_matrix`),
  6 phenotype logits (``sigmoid`` -> Anny's phenotypes in (0, 1), :data:`poselab.data.body.PHENOTYPES`
  order) and a weak-perspective crop camera ``(log s, tx, ty)`` (``s = exp(log s) > 0``, see
  :func:`camera_translation`). ``s`` is kept positive with ``exp`` rather than softplus: depth is
  proportional to ``1 / s``, so the raw value is minus the log-depth up to a constant, and an
  additive correction of the head rescales the depth by a factor, whatever the distance.

Networks (``MESH_REGRESSORS``):

================  ================  ===========  ======  ============  ==========
name              widths            blocks       hidden  head params   parameters
================  ================  ===========  ======  ============  ==========
``"mesh_tiny"``   16, 32, 64, 128   1 per stage  192     136,899       444,435
``"mesh_small"``  32, 64, 128, 256  2, 2, 2, 1   512     594,115       2,208,483
================  ================  ===========  ======  ============  ==========

The encoder of ``"mesh_tiny"`` is the backbone of ``"resnet_tiny"`` in :mod:`poselab.models.heatmap`
with GroupNorm (HMR: ResNet-50, 23.5 M, and a 1024-wide head). A training step (Adam, batch 32 of
64x64 crops) took about 0.06 s (tiny) and 0.28 s (small) on one CPU thread of the development
machine; per-sample gradients of the whole batch with ``vmap(grad(...))`` about 0.12 s and 0.6 s.

**torch.func-friendly by construction** (the methods that adapt the network's weights per
sample, e.g. test-time optimisation trained with MAML-style inner steps, vectorise over the batch
with ``torch.func.functional_call`` + ``vmap`` over per-sample weights): GroupNorm instead of
BatchNorm (no batch statistics, no running buffers updated in ``forward``: one image's output does
not depend on the others', so ``model(x)[b] == model(x[b:b+1])``), no in-place operations on
activations, no dropout (no randomness), no Python branch on tensor values. The input checks look
at shapes, dtypes and devices only.

Initialisation: He (fan-out, ReLU) for convolutions, GroupNorm weight 1 and bias 0, PyTorch's
default for the head's hidden layers, and **zeros for the head's last layer** (weight and bias).
A fresh network therefore predicts exactly ``init_params`` (the mean pose when set from data with
:meth:`MeshRegressor.set_initial`) instead of random rotations and an ``exp``-random depth, and the
iterations do not compound random corrections. Gradients still reach the last layer at the first
step (its inputs are not zero), and every layer from the second step on, like the zero-initialised
residual branches of Goyal et al. 2017.

Units: images ``(B, 3, S, S)`` float in [0, 1]; rotations are Anny pose rotations, each relative
to the parent bone (the root's: the body's orientation in the camera frame when its translation
comes from :func:`camera_translation`); camera intrinsics in crop pixels with the pixel-centre
convention of :mod:`poselab.data.images` (pixel (0, 0) is the centre of the top-left pixel, the
crop spans ``[-0.5, S - 0.5]``). Inputs must have the model's dtype and device (``model.double()``
for float64); a mismatch is an error, never a silent cast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import roma
import torch
import torch.nn as nn
import torch.nn.functional as F

from poselab.checks import check_choice, check_float_tensor, check_int, check_like_model

__all__ = [
    "MESH_REGRESSORS",
    "NUM_BONES",
    "NUM_PHENOTYPES",
    "NUM_PARAMS",
    "INITIAL_SCALE",
    "BACKBONE_STRIDE",
    "MeshPrediction",
    "GroupNormBlock",
    "MeshRegressor",
    "build_mesh_regressor",
    "rotation_6d_to_matrix",
    "matrix_to_rotation_6d",
    "camera_translation",
    "translation_to_camera",
    "to_pose_parameters",
]

MESH_REGRESSORS = ("mesh_tiny", "mesh_small")
"""Names accepted by :func:`build_mesh_regressor`."""

NUM_BONES = 31
"""Anny's ``cmu_mb`` rig (:mod:`poselab.data.body`); bone 0 is the root (pelvis)."""

NUM_PHENOTYPES = 6
"""Anny's phenotypes (:data:`poselab.data.body.PHENOTYPES`)."""

NUM_PARAMS = NUM_BONES * 6 + NUM_PHENOTYPES + 3
"""Regressed numbers per image: 31 6D rotations, 6 phenotype logits, ``(log s, tx, ty)`` = 195."""

INITIAL_SCALE = 1.0
"""Default initial camera scale ``s0``: one metre at the pelvis's depth spans one half-crop. A
standing body of about 1.7 m in a crop 1.15 times its extent (the synthetic look's margin,
:data:`poselab.data.images.CROP_MARGIN`) gives ``s = 2 / (1.7 * 1.15) = 1.02``."""

BACKBONE_STRIDE = 16
"""Stem (2) x stages (1, 2, 2, 2): input size / encoder feature-map size."""

_CONFIGS = {
    "mesh_tiny": {"widths": (16, 32, 64, 128), "blocks": (1, 1, 1, 1), "hidden": 192},
    "mesh_small": {"widths": (32, 64, 128, 256), "blocks": (2, 2, 2, 1), "hidden": 512},
}
_STAGE_STRIDES = (1, 2, 2, 2)
_ROT, _PHEN = NUM_BONES * 6, NUM_BONES * 6 + NUM_PHENOTYPES  # ends of the rotation / phenotype slices
_GS_EPS = 1e-8  # Gram-Schmidt norm floor: a (near-)zero 6D column gives a finite, if arbitrary, rotation
_LOGIT_EPS = 1e-4  # set_initial clamps phenotypes to [eps, 1 - eps] before the logit


# ----------------------------------------------------------------------------- rotations and cameras


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """6D rotation representation -> rotation matrices (Zhou et al. 2019, "On the Continuity of
    Rotation Representations in Neural Networks").

    Convention: the 6D vector is the first two *columns* of the matrix, concatenated:
    ``x[..., :3] = R[..., :, 0]`` and ``x[..., 3:] = R[..., :, 1]`` (as in HMR 2.0; the identity is
    ``(1, 0, 0, 0, 1, 0)``). Any 6D vector maps to a rotation by Gram-Schmidt
    (``roma.special_gramschmidt``): ``b1 = a1 / |a1|``, ``b2 = normalise(a2 - (b1 . a2) b1)``,
    ``b3 = b1 x b2``; so the map is continuous and differentiable wherever ``a1`` and ``a2`` are
    not parallel, unlike axis-angle or quaternions.

    Args:
        x: ``(..., 6)`` float.

    Returns:
        ``(..., 3, 3)`` rotation matrices (orthonormal, det +1), same dtype and device.
    """
    check_float_tensor("x", x)
    if x.ndim < 1 or x.shape[-1] != 6:
        raise ValueError(f"x: expected 6D rotations of shape (..., 6), got {tuple(x.shape)}")
    columns = x.unflatten(-1, (2, 3)).transpose(-1, -2)  # (..., 3, 2): a1, a2 as columns
    return roma.special_gramschmidt(columns, epsilon=_GS_EPS)


def matrix_to_rotation_6d(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices -> the 6D representation of :func:`rotation_6d_to_matrix` (first two columns).

    ``rotation_6d_to_matrix(matrix_to_rotation_6d(R)) == R`` for rotations ``R``.

    Args:
        R: ``(..., 3, 3)`` float.

    Returns:
        ``(..., 6)``: ``(R[..., :, 0], R[..., :, 1])``.
    """
    check_float_tensor("R", R)
    if R.ndim < 2 or tuple(R.shape[-2:]) != (3, 3):
        raise ValueError(f"R: expected rotation matrices of shape (..., 3, 3), got {tuple(R.shape)}")
    return R[..., :, :2].transpose(-1, -2).flatten(-2)


def _check_camera_args(focal, center, size) -> None:
    for arg, x in (("focal", focal), ("center", center)):
        check_float_tensor(arg, x)
        if x.ndim < 1 or x.shape[-1] != 2:
            raise ValueError(f"{arg}: expected crop intrinsics of shape (..., 2) pixels, got {tuple(x.shape)}")
    check_int("size", size)


def camera_translation(camera: torch.Tensor, focal: torch.Tensor, center: torch.Tensor, size: int) -> torch.Tensor:
    """Weak-perspective crop camera ``(s, tx, ty)`` -> the pelvis's position in the camera frame.

    The perspective translation of SPIN / CLIFF, written for crops whose principal point
    ``center`` need not be the crop's centre:

    * ``s`` is the size of one metre at the pelvis's depth, in half-crops (``S / 2`` pixels), so
      ``f_x / z = s S / 2`` and the depth is ``z = 2 f_x / (S s)``;
    * ``(tx, ty)`` place the pelvis in the crop, in half-crops from its centre: it projects to the
      pixel ``p = (S / 2) (1 + tx, 1 + ty) - 0.5`` (``-1`` and ``+1`` are the crop's edges, pixels
      ``-0.5`` and ``S - 0.5`` in the pixel-centre convention of :mod:`poselab.data.images`);
    * back-projecting ``p`` at depth ``z``: ``x = (p_x - c_x) z / f_x``, ``y = (p_y - c_y) z / f_y``.

    So ``poselab.data.cameras.project_points(t, focal, center) == p``, and halving ``s`` doubles
    the depth. Inverse: :func:`translation_to_camera`. Values are not inspected (``s`` must be
    > 0), so the function also runs under ``torch.func.vmap``.

    Args:
        camera: ``(..., 3)`` ``(s, tx, ty)``, ``s > 0`` (e.g. :attr:`MeshPrediction.camera`).
        focal: ``(..., 2)`` crop pixels ``(f_x, f_y)``, > 0; broadcastable against ``camera``'s
            leading dimensions (``PersonImages.focal``).
        center: ``(..., 2)`` crop pixels ``(c_x, c_y)`` (``PersonImages.center``).
        size: ``S``, the crop's side in pixels.

    Returns:
        ``(..., 3)`` metres, camera frame: ``t = (x, y, z)``.
    """
    check_float_tensor("camera", camera)
    if camera.ndim < 1 or camera.shape[-1] != 3:
        raise ValueError(
            f"camera: expected weak-perspective cameras (s, tx, ty) of shape (..., 3), got {tuple(camera.shape)}"
        )
    _check_camera_args(focal, center, size)
    half = size / 2
    depth = focal[..., :1] / (half * camera[..., :1])  # (..., 1)
    pixel = half * (1 + camera[..., 1:]) - 0.5  # (..., 2)
    return torch.cat([(pixel - center) * depth / focal, depth], dim=-1)


def translation_to_camera(
    translation: torch.Tensor, focal: torch.Tensor, center: torch.Tensor, size: int
) -> torch.Tensor:
    """Inverse of :func:`camera_translation`: the pelvis in the camera frame -> ``(s, tx, ty)``.

    ``s = 2 f_x / (S z)`` and ``(tx, ty) = 2 (p + 0.5) / S - 1`` with ``p`` the pelvis's projection;
    e.g. the crop camera of a training image, from its pelvis position, for supervision or for
    :meth:`MeshRegressor.set_initial`.

    Args:
        translation: ``(..., 3)`` metres, camera frame, ``z > 0``.
        focal, center: ``(..., 2)`` crop pixels (broadcastable); size: ``S`` pixels.

    Returns:
        ``(..., 3)`` ``(s, tx, ty)``.
    """
    check_float_tensor("translation", translation)
    if translation.ndim < 1 or translation.shape[-1] != 3:
        raise ValueError(f"translation: expected positions of shape (..., 3) metres, got {tuple(translation.shape)}")
    _check_camera_args(focal, center, size)
    depth = translation[..., 2:]
    pixel = focal * translation[..., :2] / depth + center
    scale = 2 * focal[..., :1] / (size * depth)
    return torch.cat([scale, 2 * (pixel + 0.5) / size - 1], dim=-1)


# ----------------------------------------------------------------------------- predictions


class MeshPrediction(NamedTuple):
    """Output of :class:`MeshRegressor` (a NamedTuple, so a pytree for ``torch.func``).

    Attributes:
        rotation6d: ``(B, 31, 6)`` the regressed 6D rotations (before Gram-Schmidt).
        rotations: ``(B, 31, 3, 3)`` rotation matrices, one per bone relative to its parent (Anny's order).
        phenotypes: ``(B, 6)`` in (0, 1), :data:`poselab.data.body.PHENOTYPES` order.
        camera: ``(B, 3)`` ``(s, tx, ty)`` with ``s > 0`` (:func:`camera_translation`).
    """

    rotation6d: torch.Tensor
    rotations: torch.Tensor
    phenotypes: torch.Tensor
    camera: torch.Tensor


def _decode(params: torch.Tensor) -> MeshPrediction:
    """``(B, 195)`` raw parameters -> :class:`MeshPrediction`."""
    rotation6d = params[:, :_ROT].unflatten(-1, (NUM_BONES, 6))
    raw_camera = params[:, _PHEN:]
    camera = torch.cat([raw_camera[:, :1].exp(), raw_camera[:, 1:]], dim=-1)
    return MeshPrediction(rotation6d, rotation_6d_to_matrix(rotation6d), torch.sigmoid(params[:, _ROT:_PHEN]), camera)


def _default_init_params() -> torch.Tensor:
    """Identity rotations, phenotype logits 0 (phenotypes 0.5), camera ``(log s0, 0, 0)``."""
    identity = matrix_to_rotation_6d(torch.eye(3)).repeat(NUM_BONES)
    camera = torch.tensor([math.log(INITIAL_SCALE), 0.0, 0.0])
    return torch.cat([identity, torch.zeros(NUM_PHENOTYPES), camera])


def to_pose_parameters(prediction: MeshPrediction, translation: torch.Tensor) -> torch.Tensor:
    """Anny pose parameters from a prediction and the root's translation.

    The format of :meth:`poselab.data.body.BodyModel.forward`: bone ``k``'s ``4x4`` block has the
    rotation ``prediction.rotations[:, k]``, a zero translation except for the root (bone 0), whose
    translation is ``translation``, and the last row ``(0, 0, 0, 1)``. The root rotation is the
    body's orientation in the frame ``translation`` is given in (the camera frame for
    :func:`camera_translation`), so the posed body lands in that frame.

    Args:
        prediction: a :class:`MeshPrediction` (only ``rotations`` ``(B, 31, 3, 3)`` is read).
        translation: ``(B, 3)`` metres, the pelvis's position; same dtype and device as the rotations.

    Returns:
        ``(B, 31, 4, 4)``.
    """
    rotations = getattr(prediction, "rotations", None)
    check_float_tensor("prediction.rotations", rotations)
    if rotations.ndim != 4 or tuple(rotations.shape[1:]) != (NUM_BONES, 3, 3):
        raise ValueError(f"prediction.rotations: expected shape (B, {NUM_BONES}, 3, 3), got {tuple(rotations.shape)}")
    check_float_tensor("translation", translation)
    if tuple(translation.shape) != (rotations.shape[0], 3):
        raise ValueError(
            f"translation: expected shape ({rotations.shape[0]}, 3), one per prediction, "
            f"got {tuple(translation.shape)}"
        )
    if translation.dtype != rotations.dtype or translation.device != rotations.device:
        raise TypeError(
            f"translation: {translation.dtype} on {translation.device} does not match the rotations' "
            f"{rotations.dtype} on {rotations.device}; convert it with translation.to(rotations)"
        )
    b = rotations.shape[0]
    column = torch.cat([translation[:, None], translation.new_zeros(b, NUM_BONES - 1, 3)], dim=1)  # (B, 31, 3)
    top = torch.cat([rotations, column[..., None]], dim=-1)  # (B, 31, 3, 4)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=rotations.dtype, device=rotations.device)
    return torch.cat([top, bottom.expand(b, NUM_BONES, 1, 4)], dim=-2)


# ----------------------------------------------------------------------------- network


class GroupNormBlock(nn.Module):
    """ResNet BasicBlock with GroupNorm: ``relu(gn(conv3x3(relu(gn(conv3x3(x))))) + shortcut(x))``.

    The shortcut is the identity, or ``conv1x1(stride) -> GN`` where the width or the
    resolution changes. Nothing in place, so ``torch.func`` transforms apply.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, num_groups: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(num_groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(num_groups, c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.GroupNorm(num_groups, c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class MeshRegressor(nn.Module):
    """GroupNorm ResNet encoder + HMR iterative regression head: images -> :class:`MeshPrediction`.

    See the module docstring for the architecture; build the named networks with
    :func:`build_mesh_regressor`. ``forward = regress(encode(images))``.

    Args:
        widths: four stage widths ``(w1, w2, w3, w4)``, each a multiple of ``num_groups``.
        blocks: blocks per stage (four ints >= 1).
        hidden: width of the head's two hidden layers.
        iterations: passes of the head (HMR: 3).
        input_size: ``S``, a multiple of 16; ``forward`` accepts exactly ``(B, 3, S, S)``.
        num_groups: GroupNorm groups in every normalisation layer.

    Attributes:
        num_bones (31), input_size, iterations, feature_size (``w4``), encoder (stem + stages),
        head (the MLP; ``head[-1]`` is the zero-initialised last layer), init_params (buffer, ``(195,)``).
    """

    num_bones = NUM_BONES

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        hidden: int,
        iterations: int = 3,
        input_size: int = 64,
        num_groups: int = 8,
    ):
        super().__init__()
        widths, blocks = tuple(widths), tuple(blocks)
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"widths, blocks: expected four stages each, got {widths!r} and {blocks!r}")
        check_int("num_groups", num_groups)
        for i, (c, n) in enumerate(zip(widths, blocks)):
            check_int(f"widths[{i}]", c)
            check_int(f"blocks[{i}]", n)
            if c % num_groups:
                raise ValueError(f"widths[{i}]: expected a multiple of num_groups={num_groups} (GroupNorm), got {c}")
        check_int("hidden", hidden)
        self.iterations = check_int("iterations", iterations)
        check_int("input_size", input_size)
        if input_size % BACKBONE_STRIDE:
            raise ValueError(
                f"input_size: expected a positive multiple of the encoder stride {BACKBONE_STRIDE} (e.g. 64), "
                f"got {input_size}"
            )
        self.input_size = input_size
        self.feature_size = widths[-1]

        stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), nn.GroupNorm(num_groups, widths[0]), nn.ReLU()
        )
        stages, c_in = [], widths[0]
        for c, n, s in zip(widths, blocks, _STAGE_STRIDES):
            stage = [GroupNormBlock(c_in if i == 0 else c, c, s if i == 0 else 1, num_groups) for i in range(n)]
            stages.append(nn.Sequential(*stage))
            c_in = c
        self.encoder = nn.Sequential(stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(self.feature_size + NUM_PARAMS, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, NUM_PARAMS),
        )
        self.register_buffer("init_params", _default_init_params())
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero last layer: a fresh network predicts init_params exactly (module docstring).
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    # -- inputs ---------------------------------------------------------------------------------

    def check_images(self, images: torch.Tensor, arg: str = "images") -> None:
        """Raise unless ``images`` is float ``(B, 3, S, S)`` of the model's input size, dtype and device."""
        s = self.input_size
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{arg}: expected a torch.Tensor of shape (B, 3, {s}, {s}), got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(
                f"{arg}: expected floating-point images in [0, 1], got dtype {images.dtype}; "
                f"convert uint8 crops with {arg}.float() / 255"
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{arg}: expected RGB images of shape (B, 3, {s}, {s}), got {tuple(images.shape)}")
        if tuple(images.shape[2:]) != (s, s):
            raise ValueError(
                f"{arg}: expected images of the model's input size (B, 3, {s}, {s}), got {tuple(images.shape)}; "
                "resize the crops or build the network with input_size=S"
            )
        if images.shape[0] == 0:
            raise ValueError(f"{arg}: expected at least one image, got {tuple(images.shape)}")
        check_like_model(arg, images, self.head[-1].weight, arg)

    # -- forward --------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``(B, 3, S, S)`` in [0, 1] -> features ``(B, w4)`` (globally average-pooled)."""
        self.check_images(images)
        return self.encoder(images)

    def regress(self, features: torch.Tensor) -> MeshPrediction:
        """The iterative head: features ``(B, w4)`` -> :class:`MeshPrediction`.

        ``params = init_params``, then ``iterations`` times ``params = params + head([features, params])``.
        """
        check_float_tensor("features", features)
        if features.ndim != 2 or features.shape[1] != self.feature_size:
            raise ValueError(f"features: expected shape (B, {self.feature_size}), got {tuple(features.shape)}")
        check_like_model("features", features, self.head[-1].weight, "features")
        params = self.init_params.expand(features.shape[0], -1)
        for _ in range(self.iterations):  # a fixed count, not data-dependent
            params = params + self.head(torch.cat([features, params], dim=-1))
        return _decode(params)

    def forward(self, images: torch.Tensor) -> MeshPrediction:
        """``images`` ``(B, 3, S, S)`` float in [0, 1], the model's dtype and device -> :class:`MeshPrediction`."""
        return self.regress(self.encode(images))

    # -- initial parameters ---------------------------------------------------------------------

    @torch.no_grad()
    def set_initial(
        self,
        *,
        rotations: torch.Tensor | None = None,
        phenotypes: torch.Tensor | None = None,
        camera: torch.Tensor | None = None,
    ) -> None:
        """Set the head's starting point ``init_params`` from prediction-like values (e.g. the mean training pose).

        Each argument is one value or a batch (leading ``N``) that is averaged; ``None`` keeps the
        current part. Means: rotations, the chordal L2 mean (mean matrix projected onto the
        rotations, ``roma.special_procrustes``); phenotypes, the arithmetic mean (clamped to
        ``[1e-4, 1 - 1e-4]`` before the logit); camera, the geometric mean of ``s`` and the mean of
        ``tx``, ``ty``. The network's outputs change accordingly (a fresh one predicts exactly these).

        Args:
            rotations: ``(31, 3, 3)`` or ``(N, 31, 3, 3)`` rotation matrices (e.g. ``PersonImages.pose[..., :3]``).
            phenotypes: ``(6,)`` or ``(N, 6)`` in [0, 1].
            camera: ``(3,)`` or ``(N, 3)`` ``(s, tx, ty)`` with ``s > 0`` (e.g. from :func:`translation_to_camera`).
        """
        params = self.init_params.clone()
        if rotations is not None:
            r = _batched("rotations", rotations, (NUM_BONES, 3, 3)).to(params)
            mean = roma.special_procrustes(r.mean(dim=0))
            params[:_ROT] = matrix_to_rotation_6d(mean).flatten()
        if phenotypes is not None:
            p = _batched("phenotypes", phenotypes, (NUM_PHENOTYPES,)).to(params)
            if bool(((p < 0) | (p > 1) | p.isnan()).any()):
                raise ValueError("phenotypes: expected values in [0, 1]")
            params[_ROT:_PHEN] = torch.logit(p.mean(dim=0).clamp(_LOGIT_EPS, 1 - _LOGIT_EPS))
        if camera is not None:
            c = _batched("camera", camera, (3,)).to(params)
            if not bool((c[:, 0] > 0).all()):
                raise ValueError("camera: expected scales s = camera[..., 0] > 0")
            params[_PHEN:] = torch.cat([c[:, :1].log().mean(dim=0), c[:, 1:].mean(dim=0)])
        if not bool(params.isfinite().all()):
            raise ValueError("set_initial: the values gave non-finite parameters; check for NaN or inf")
        self.init_params.copy_(params)

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _batched(arg: str, x, shape: tuple[int, ...]) -> torch.Tensor:
    """``x`` of shape ``shape`` or ``(N, *shape)`` (N >= 1) -> ``(N, *shape)``."""
    shown = ", ".join(map(str, shape))
    check_float_tensor(arg, x)
    if tuple(x.shape) == shape:
        return x[None]
    if x.ndim == len(shape) + 1 and tuple(x.shape[1:]) == shape and x.shape[0] > 0:
        return x
    raise ValueError(f"{arg}: expected shape ({shown}) or (N, {shown}), got {tuple(x.shape)}")


def build_mesh_regressor(name: str, input_size: int = 64, **kwargs) -> MeshRegressor:
    """Build the mesh regressor ``name`` (one of ``MESH_REGRESSORS``).

    Args:
        name: ``"mesh_tiny"`` or ``"mesh_small"`` (sizes in the module docstring).
        input_size: crop side ``S``, a multiple of 16.
        **kwargs: overrides of :class:`MeshRegressor`'s arguments (``widths``, ``blocks``,
            ``hidden``, ``iterations``, ``num_groups``).

    Returns:
        A freshly initialised :class:`MeshRegressor` (seed torch's global generator first for
        reproducible weights, e.g. with ``poselab.checks.seed_everything``).
    """
    check_choice("mesh regressor name", name, MESH_REGRESSORS)
    allowed = ("widths", "blocks", "hidden", "iterations", "num_groups")
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"build_mesh_regressor: unknown arguments {unknown}; expected some of {list(allowed)}")
    return MeshRegressor(**{**_CONFIGS[name], **kwargs}, input_size=input_size)
