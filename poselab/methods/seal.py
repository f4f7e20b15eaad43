"""SEAL-Pose: a trainable structured energy as the loss of a 2D-to-3D lifter.

Two networks are trained together (SEAL-dynamic, Algorithm 1 of the paper):

* the **task-net** ``F_phi(x) -> y_hat``, any lifter of :mod:`poselab.models.lifting`
  (2D keypoints ``(B, J, 2)`` -> root-relative 3D pose ``(B, J, 3)`` in metres), and
* the **loss-net** ``E_theta(x, y) -> (B,)``, a residual MLP (:class:`EnergyNet`) that scores how
  plausible a pose ``y`` is for the input ``x`` (low energy = plausible).

Every training batch takes one loss-net step, then one task-net step:

1. ``y_hat = F_phi(x)``;
2. loss-net: minimise ``L_E(x, y, y_hat)`` over ``theta``, with the task-net's own predictions as
   the negatives: margin ``[Delta(y, y_hat) - E(x, y_hat) + E(x, y)]_+`` (``Delta`` = MPJPE) or
   NCE ``-log(exp(-E(x, y)) / (exp(-E(x, y)) + exp(-E(x, y_hat))))``;
3. task-net: minimise ``L_F = sum_j MSE(y_j, y_hat_j) + alpha * E_theta(x, y_hat)`` over ``phi``,
   with the loss-net frozen at its new ``theta``.

At test time only the task-net runs: the energy is a training signal, not a predictor. The
gradient-based-inference baseline (Algorithm 2) instead trains the task-net alone, then an
energy on its fixed predictions (:func:`train_energy`), then moves each prediction down the
energy's gradient (:func:`gbi_refine`).

Choices (our reading of the paper):

* **Loss-net input.** ``concat(flatten(x), flatten(y))``, ``J * 5`` numbers, into a residual MLP
  shaped like SimpleBaseline: ``Linear -> [LayerNorm] -> ReLU -> Dropout``, ``num_blocks`` residual
  blocks of two such layers, then ``Linear(hidden, 1, bias=False)``. Sizes from the paper:
  :data:`PAPER_ENERGY_CONFIGS` (width 2048, 2 blocks, no dropout for the SimpleBaseline task-net;
  width 256, 3 blocks "with dropout" for the others, where the rate, 0.25, is ours).
* **No batch normalisation in the loss-net**, on purpose: with batch statistics the energy of a
  sample would depend on the rest of its batch. The loss-net step scores ground truths and
  predictions together (one pass over the ``2B`` pairs) while the task-net step scores
  predictions alone, so a BatchNorm energy would rate the same pose differently in the two
  steps, and could separate positives from negatives by batch statistics instead of by
  structure. LayerNorm (per sample) is offered instead.
* **No output bias.** A constant added to the energy cancels in both objectives and in the task
  loss's gradient; as a parameter it would only collect rounding noise, which Adam's normalised
  step turns into a random walk.
* **MSE.** ``sum_j MSE(y_j, y_hat_j)`` is the squared error summed over joints, averaged over the
  3 coordinates and over the batch (:func:`joint_mse`, m^2).
* **One optimiser, two parameter groups.** ``poselab.train.train_model`` builds one Adam with the
  groups of :meth:`SealModel.param_groups` (each network its own lr). Adam keeps its state per
  parameter and skips parameters whose ``.grad`` is ``None``, so a step after a backward pass that
  reached only one network is exactly a step of that network's own Adam: the paper's two
  separate optimisers.
* **Frozen loss-net in the task-net step.** The energy term of ``L_F`` is evaluated with the
  loss-net's parameters detached (:func:`frozen_energy`), so its gradient reaches only the
  prediction and ``phi``; ``theta`` gets no ``.grad`` at all.
* **Negatives are detached** inside every loss-net objective: the loss-net step must not move
  the task-net.
* **Phase 2 of Algorithm 2** (:func:`train_energy`) offers the margin and NCE objectives and the
  algorithm's verbatim ``E(x, y) - E(x, y_hat)`` (``"difference"``), which is unbounded below:
  the loss-net can lower it for ever by scaling its output, so only a few epochs of it are
  meaningful.
* **GBI** keeps the root joint fixed by default (targets are root-relative) and runs the energy in
  eval mode (no dropout).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from poselab.checks import check_choice, check_int, check_like_model, check_positive, check_probability, resolve_device
from poselab.evaluation import predict
from poselab.models.lifting import LIFTERS, check_keypoints
from poselab.train import History, _as_tensors, train_model

__all__ = [
    "OBJECTIVES",
    "ENERGY_OBJECTIVES",
    "PAPER_ENERGY_CONFIGS",
    "paper_energy_config",
    "EnergyNet",
    "joint_mse",
    "joint_mse_loss",
    "margin_loss",
    "nce_loss",
    "difference_loss",
    "ENERGY_LOSSES",
    "frozen_energy",
    "task_loss",
    "SealModel",
    "seal_step",
    "train_energy",
    "gbi_refine",
    "energies",
    "prediction_energy",
]

OBJECTIVES = ("margin", "nce")
"""Loss-net objectives of SEAL-dynamic (paper eq. 4 and 5)."""

ENERGY_OBJECTIVES = ("margin", "nce", "difference")
"""Objectives for training an energy on a fixed task-net (GBI phase 2): :data:`OBJECTIVES` plus
Algorithm 2's ``E(x, y) - E(x, y_hat)``."""

PAPER_ENERGY_CONFIGS = {
    # SimpleBaseline task-net (paper Sec. 3.3): width 2048, 2 residual blocks, no BN, no dropout
    "mlp": dict(hidden=2048, num_blocks=2, dropout=0.0, norm="none"),
    # the other task-nets: width 256, 3 blocks "with dropout layers" (the rate is not given: ours)
    "default": dict(hidden=256, num_blocks=3, dropout=0.25, norm="none"),
}
""":class:`EnergyNet` sizes of the paper's H36M experiments, by task-net."""

NORMS = ("none", "layer")


def paper_energy_config(task_net: str) -> dict:
    """The :class:`EnergyNet` keyword arguments the paper uses with the task-net ``task_net``.

    ``task_net`` is a name of :data:`poselab.models.lifting.LIFTERS`: ``"mlp"`` (SimpleBaseline)
    gets ``PAPER_ENERGY_CONFIGS["mlp"]``, every other lifter ``PAPER_ENERGY_CONFIGS["default"]``.
    Returns a copy (safe to modify). ``ValueError`` for an unknown name.
    """
    check_choice("task_net", task_net, LIFTERS)
    return dict(PAPER_ENERGY_CONFIGS["mlp" if task_net == "mlp" else "default"])


# ----------------------------------------------------------------------------- the loss-net


def _check_poses(arg: str, y: Any, num_joints: int | None = None, like: torch.Tensor | None = None) -> None:
    """Raise unless ``y`` is a floating tensor ``(B, J, 3)`` (``J = num_joints`` if given), with
    the dtype and device of ``like`` if given."""
    j = "J" if num_joints is None else num_joints
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{arg}: expected a torch.Tensor of shape (B, {j}, 3), got {type(y).__name__}")
    if y.dim() != 3 or y.shape[2] != 3 or (num_joints is not None and y.shape[1] != num_joints):
        raise ValueError(f"{arg}: expected 3D poses of shape (B, {j}, 3) (batch, joints, xyz), got {tuple(y.shape)}")
    if not y.is_floating_point():
        raise TypeError(f"{arg}: expected a floating-point tensor, got dtype {y.dtype}")
    if like is not None:
        check_like_model(arg, y, like, "y")


class _Layer(nn.Sequential):
    """Linear -> [LayerNorm] -> ReLU -> Dropout on (B, C)."""

    def __init__(self, c_in: int, c_out: int, dropout: float, norm: str):
        layers: list[nn.Module] = [nn.Linear(c_in, c_out)]
        if norm == "layer":
            layers.append(nn.LayerNorm(c_out))
        super().__init__(*layers, nn.ReLU(), nn.Dropout(dropout))


class EnergyNet(nn.Module):
    """Loss-net ``E_theta(x, y) -> energy (B,)``, a residual MLP on ``concat(flatten(x), flatten(y))``.

    Architecture (SimpleBaseline's residual MLP with a scalar output)::

        stem    Linear(J * 5, hidden) [-> LayerNorm] -> ReLU -> Dropout
        blocks  num_blocks x  h + (Linear, [LayerNorm], ReLU, Dropout) x 2 (h)
        out     Linear(hidden, 1, bias=False)

    There is deliberately no BatchNorm option: with batch statistics the energy of a sample
    depends on the rest of its batch, so the loss-net step (ground truths and predictions in one
    pass) and the task-net step (predictions alone) would score the same pose differently (see
    the module docstring). ``norm="layer"`` normalises each sample on its own.

    Args:
        num_joints: J.
        hidden: width of every hidden layer.
        num_blocks: residual blocks (>= 0).
        dropout: dropout probability in [0, 1) after every ReLU.
        norm: ``"none"`` or ``"layer"`` (LayerNorm after every hidden Linear).

    The energy is unitless; lower means more plausible. Inputs must have the model's dtype
    and device (no silent casts).
    """

    def __init__(
        self, num_joints: int = 17, hidden: int = 256, num_blocks: int = 3, dropout: float = 0.25, norm: str = "none"
    ):
        super().__init__()
        self.num_joints = check_int("num_joints", num_joints)
        self.hidden = check_int("hidden", hidden)
        self.num_blocks = check_int("num_blocks", num_blocks, minimum=0)
        self.dropout = check_probability("dropout", dropout)
        self.norm = check_choice("norm", norm, NORMS)
        self.stem = _Layer(num_joints * 5, hidden, self.dropout, norm)
        self.blocks = nn.ModuleList(
            nn.Sequential(_Layer(hidden, hidden, self.dropout, norm), _Layer(hidden, hidden, self.dropout, norm))
            for _ in range(num_blocks)
        )
        # No output bias: a constant offset cancels in every objective (margin, NCE, the task
        # loss's gradient), so it would only receive rounding noise, which Adam's normalised step
        # turns into a random walk of about lr per step.
        self.out = nn.Linear(hidden, 1, bias=False)

    def extra_repr(self) -> str:
        return (
            f"num_joints={self.num_joints}, hidden={self.hidden}, num_blocks={self.num_blocks}, "
            f"dropout={self.dropout}, norm={self.norm!r}"
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` (B, J, 2) normalised 2D keypoints, ``y`` (B, J, 3) root-relative pose in metres
        -> energies (B,)."""
        like = self.out.weight
        check_keypoints(x, self.num_joints, like, arg="x")
        _check_poses("y", y, self.num_joints, like)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y: expected the same batch size B, got x {tuple(x.shape)} and y {tuple(y.shape)}"
            )
        h = self.stem(torch.cat([x.flatten(1), y.flatten(1)], dim=1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).squeeze(-1)

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- losses


def joint_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's ``sum_j MSE(y_j, y_hat_j)``: per-joint squared error averaged over the 3
    coordinates, summed over joints, averaged over the batch.

    Args:
        pred, target: ``(B, J, 3)`` metres, the same shape.

    Returns:
        A scalar tensor in m^2 (keeps the graph).
    """
    _check_poses("pred", pred)
    if not isinstance(target, torch.Tensor) or target.shape != pred.shape:
        got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target: expected the shape of pred {tuple(pred.shape)}, got {got}")
    return (pred - target).pow(2).mean(-1).sum(-1).mean()


def joint_mse_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` for ``poselab.train.train_model``: ``joint_mse(model(inputs), targets)`` (m^2)."""
    return joint_mse(model(inputs), targets)


def _energy(energy: nn.Module, x: torch.Tensor, y: torch.Tensor, arg: str) -> torch.Tensor:
    e = energy(x, y)
    if not isinstance(e, torch.Tensor) or tuple(e.shape) != (y.shape[0],):
        got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
        raise ValueError(f"energy({arg}): expected one energy per sample, shape ({y.shape[0]},), got {got}")
    return e


def _pair_energies(energy: nn.Module, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor):
    """``(E(x, y), E(x, y_hat))``, each ``(B,)``, from one forward pass over the ``2B`` pairs.

    One pass of twice the batch is cheaper than two passes, and equivalent because the energy
    of a sample does not depend on the rest of its batch (:class:`EnergyNet` has no batch norm).
    """
    both = _energy(energy, torch.cat([x, x]), torch.cat([y, y_hat]), "x, y and x, y_hat")
    return both[: y.shape[0]], both[y.shape[0]:]


def _check_pair(y: torch.Tensor, y_hat: torch.Tensor) -> None:
    _check_poses("y", y)
    _check_poses("y_hat", y_hat)
    if y.shape != y_hat.shape:
        raise ValueError(f"y and y_hat: expected equal shapes (B, J, 3), got {tuple(y.shape)} and {tuple(y_hat.shape)}")


def margin_loss(energy: nn.Module, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """Margin loss-net objective (paper eq. 4), mean over the batch of
    ``relu(Delta(y, y_hat) - E(x, y_hat) + E(x, y))``.

    ``Delta`` is the per-sample MPJPE (mean Euclidean joint distance, metres), so the energy of a
    prediction must exceed the ground truth's by at least its error. ``y_hat`` is detached here:
    no gradient reaches the task-net.

    Args:
        energy: ``energy(x, y) -> (B,)``, e.g. an :class:`EnergyNet`.
        x: ``(B, J, 2)`` 2D keypoints; y, y_hat: ``(B, J, 3)`` ground truth and prediction, metres.

    Returns:
        A scalar tensor.
    """
    _check_pair(y, y_hat)
    y_hat = y_hat.detach()
    delta = (y - y_hat).norm(dim=-1).mean(-1)
    e_pos, e_neg = _pair_energies(energy, x, y, y_hat)
    return F.relu(delta - e_neg + e_pos).mean()


def nce_loss(energy: nn.Module, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """NCE loss-net objective (paper eq. 5), mean over the batch of
    ``-log(exp(-E(x, y)) / (exp(-E(x, y)) + exp(-E(x, y_hat))))``.

    Computed as ``softplus(E(x, y) - E(x, y_hat))``, which is the same quantity and finite for
    any finite energies (no ``exp`` overflow). ``y_hat`` is detached. Shapes as in
    :func:`margin_loss`; returns a scalar tensor.
    """
    _check_pair(y, y_hat)
    y_hat = y_hat.detach()
    e_pos, e_neg = _pair_energies(energy, x, y, y_hat)
    return F.softplus(e_pos - e_neg).mean()


def difference_loss(energy: nn.Module, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """Algorithm 2 line 10 verbatim: mean over the batch of ``E(x, y) - E(x, y_hat)``.

    Unbounded below: any energy that ranks ground truth below predictions can lower it for ever
    by scaling its output, so it measures ranking only for a few epochs. ``y_hat`` is detached.
    Shapes as in :func:`margin_loss`; returns a scalar tensor.
    """
    _check_pair(y, y_hat)
    y_hat = y_hat.detach()
    e_pos, e_neg = _pair_energies(energy, x, y, y_hat)
    return (e_pos - e_neg).mean()


ENERGY_LOSSES = {"margin": margin_loss, "nce": nce_loss, "difference": difference_loss}
"""Loss-net objectives by name, each ``fn(energy, x, y, y_hat) -> scalar``."""


def frozen_energy(energy: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``E(x, y)`` (B,) with the energy's parameters and buffers detached.

    Runs ``energy`` through ``torch.func.functional_call`` with detached copies of its tensors,
    so the gradient flows to ``y`` (and ``x``) only: a task-net step leaves ``theta`` untouched and
    creates no ``.grad`` on it. The module's train/eval mode is used as it is.
    """
    tensors = {name: t.detach() for name, t in energy.named_parameters()}
    tensors.update({name: b.detach() for name, b in energy.named_buffers()})
    e = functional_call(energy, tensors, (x, y))
    if not isinstance(e, torch.Tensor) or tuple(e.shape) != (y.shape[0],):
        got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
        raise ValueError(f"energy(x, y): expected one energy per sample, shape ({y.shape[0]},), got {got}")
    return e


def _check_alpha(alpha: Any) -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise TypeError(f"alpha: expected a finite number >= 0, got {type(alpha).__name__} {alpha!r}")
    return float(check_positive("alpha", alpha, allow_zero=True))


def task_loss(
    task_net: nn.Module,
    energy: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    y_hat: torch.Tensor | None = None,
) -> torch.Tensor:
    """Task-net loss ``L_F = joint_mse(y_hat, y) + alpha * mean_b E(x, y_hat)`` (paper eq. 2).

    The energy is :func:`frozen_energy`: its gradient reaches ``y_hat`` and so the task-net, never
    the loss-net. ``alpha = 0`` skips the energy (plain :func:`joint_mse`).

    Args:
        task_net: the lifter ``F_phi``; called as ``task_net(x)`` when ``y_hat`` is None.
        energy: the loss-net.
        x: ``(B, J, 2)`` 2D keypoints; y: ``(B, J, 3)`` ground truth, metres.
        alpha: weight of the energy term, finite >= 0.
        y_hat: ``(B, J, 3)`` predictions ``task_net(x)`` with their graph, to reuse a forward pass.

    Returns:
        A scalar tensor (m^2 + alpha * energy units).
    """
    alpha = _check_alpha(alpha)
    if y_hat is None:
        y_hat = task_net(x)
    loss = joint_mse(y_hat, y)
    if alpha == 0:
        return loss
    return loss + alpha * frozen_energy(energy, x, y_hat).mean()


# ----------------------------------------------------------------------------- SEAL-dynamic


class SealModel(nn.Module):
    """Task-net + loss-net trained together by SEAL-dynamic (Algorithm 1).

    Train it with ``poselab.train.train_model(model, ..., step_fn=seal_step,
    param_groups=lambda m: m.param_groups(lr_task, lr_energy), lr_decay=1.0)``. At test time the
    model *is* the task-net: ``model(x) == model.task(x)``.

    Args:
        task: the task-net, ``(B, J, 2) -> (B, J, 3)`` (a lifter).
        energy: the loss-net, an :class:`EnergyNet` with the task-net's number of joints.
        objective: loss-net objective, one of :data:`OBJECTIVES` (``"margin"``, ``"nce"``).
        alpha: weight of the energy in the task-net loss, finite >= 0 (0: plain MSE training).
    """

    def __init__(self, task: nn.Module, energy: EnergyNet, objective: str = "margin", alpha: float = 1.0):
        super().__init__()
        if not isinstance(task, nn.Module):
            raise TypeError(f"task: expected a torch.nn.Module (a lifter), got {type(task).__name__}")
        if not isinstance(energy, EnergyNet):
            raise TypeError(f"energy: expected an EnergyNet, got {type(energy).__name__}")
        self.objective = check_choice("objective", objective, OBJECTIVES)
        self.alpha = _check_alpha(alpha)
        task_joints = getattr(task, "num_joints", None)
        if task_joints is not None and task_joints != energy.num_joints:
            raise ValueError(
                f"energy: expected num_joints={task_joints} like the task-net, got num_joints={energy.num_joints}"
            )
        self.task = task
        self.energy = energy

    def extra_repr(self) -> str:
        return f"objective={self.objective!r}, alpha={self.alpha}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, J, 2) -> the task-net's prediction (B, J, 3), root-relative metres."""
        return self.task(x)

    def param_groups(self, lr_task: float, lr_energy: float) -> list[dict]:
        """Adam parameter groups ``[task-net at lr_task, loss-net at lr_energy]`` for
        ``train_model(param_groups=...)`` (trainable parameters only)."""
        for arg, value in (("lr_task", lr_task), ("lr_energy", lr_energy)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{arg}: expected a finite number > 0, got {type(value).__name__} {value!r}")
            check_positive(arg, value)
        return [
            {"params": [p for p in self.task.parameters() if p.requires_grad], "lr": float(lr_task)},
            {"params": [p for p in self.energy.parameters() if p.requires_grad], "lr": float(lr_energy)},
        ]


def seal_step(model: SealModel, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One iteration of Algorithm 1; a ``step_fn`` for ``poselab.train.train_model``.

    1. ``y_hat = model.task(x)`` (``phi_{t-1}``; the graph is kept);
    2. loss-net step: ``ENERGY_LOSSES[model.objective](energy, x, y, y_hat.detach())``, backward,
       ``optimizer.step()``: only ``theta`` has gradients, and Adam skips parameters whose
       ``.grad`` is None, so ``phi`` is untouched;
    3. task-net step with ``theta_t``: :func:`task_loss` on step 1's ``y_hat``, backward,
       ``optimizer.step()``: the energy is frozen, so only ``phi`` moves. Reusing step 1's forward
       pass is exact because ``phi`` does not change between lines 4 and 8 of Algorithm 1.

    Args:
        model: a :class:`SealModel`.
        x: ``(B, J, 2)`` 2D keypoints; y: ``(B, J, 3)`` root-relative ground truth, metres.
        optimizer: holds the parameters of both networks (e.g. from :meth:`SealModel.param_groups`).

    Returns:
        The task-net loss ``L_F`` of this batch, detached, 0-d.
    """
    if not isinstance(model, SealModel):
        raise TypeError(f"model: expected a SealModel, got {type(model).__name__}")
    y_hat = model.task(x)
    optimizer.zero_grad(set_to_none=True)
    ENERGY_LOSSES[model.objective](model.energy, x, y, y_hat.detach()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = task_loss(model.task, model.energy, x, y, model.alpha, y_hat)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ----------------------------------------------------------------------------- GBI baseline


class _PairObjective:
    """``loss_fn(energy, inputs, targets)`` for :func:`train_energy`: ``targets`` is ``(B, 2, J, 3)``
    (ground truth, fixed prediction). A class with a stable ``__qualname__`` naming the objective,
    because ``train_model`` fingerprints its ``loss_fn`` for checkpoints."""

    def __init__(self, objective: str):
        self.objective = objective
        self.__qualname__ = f"{type(self).__qualname__}({objective!r})"

    def __call__(self, energy: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ENERGY_LOSSES[self.objective](energy, inputs, targets[:, 0], targets[:, 1])


@torch.no_grad()
def _energy_gap_eval(energy: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """``eval_fn`` for :func:`train_energy`: mean ``E(x, y_hat) - E(x, y)`` (positive when the
    ground truth has the lower energy); ``targets`` is ``(B, 2, J, 3)``."""
    gap = _energy(energy, inputs, targets[:, 1], "x, y_hat") - _energy(energy, inputs, targets[:, 0], "x, y")
    return {"energy_gap": float(gap.mean())}


def _module_device(module: nn.Module) -> torch.device:
    t = next(iter(module.parameters()), None)
    if t is None:
        t = next(iter(module.buffers()), None)
    return torch.device("cpu") if t is None else t.device


def _with_predictions(arg: str, task_net: nn.Module, dataset: Any, device: torch.device) -> tuple:
    """``(inputs, stack([targets, task_net(inputs)], dim=1))`` on the CPU, ``(N, 2, J, 3)``."""
    inputs, targets = _as_tensors(arg, dataset)
    y_hat = predict(task_net, inputs, device=device)
    targets = targets.detach().cpu()
    if targets.shape != y_hat.shape:
        raise ValueError(
            f"{arg}: expected targets of the task-net's output shape {tuple(y_hat.shape)}, got {tuple(targets.shape)}"
        )
    return inputs.detach().cpu(), torch.stack([targets, y_hat.to(targets.dtype)], dim=1)


def train_energy(
    energy: nn.Module,
    task_net: nn.Module,
    train_set: Any,
    *,
    epochs: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    objective: str = "margin",
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    checkpoint_path: str | os.PathLike | None = None,
    eval_sets: Mapping[str, Any] | None = None,
    resume: bool = True,
) -> History:
    """Phase 2 of Algorithm 2: train ``energy`` on the fixed predictions of ``task_net``.

    The task-net's eval-mode predictions ``y_hat`` on ``train_set`` are computed once
    (:func:`poselab.evaluation.predict`); then ``poselab.train.train_model`` trains ``energy``
    alone with Adam (no lr decay, as in the paper) on ``(inputs, stack([y, y_hat], dim=1))``,
    minimising ``ENERGY_LOSSES[objective](energy, x, y, y_hat)``.

    Args:
        energy: the loss-net (e.g. :class:`EnergyNet`), trained in place.
        task_net: the trained task-net ``(N, J, 2) -> (N, J, 3)``; not modified (it is moved to
            ``device`` for the predictions).
        train_set: dataset with ``.inputs`` (N, J, 2) and ``.targets`` (N, J, 3, metres), or a tuple.
        epochs, batch_size, lr, device, seed, progress, checkpoint_path, resume: as for ``train_model``.
        objective: one of :data:`ENERGY_OBJECTIVES`.
        eval_sets: ``{name: dataset}``; after every epoch the record gets ``"name/energy_gap"``,
            the mean ``E(x, y_hat) - E(x, y)`` in eval mode (positive: ground truth lower).

    Returns:
        The :class:`poselab.train.History` (``train_loss`` is the objective's epoch mean).
    """
    if not isinstance(energy, nn.Module):
        raise TypeError(f"energy: expected a torch.nn.Module, got {type(energy).__name__}")
    if not isinstance(task_net, nn.Module):
        raise TypeError(f"task_net: expected a torch.nn.Module, got {type(task_net).__name__}")
    check_choice("objective", objective, ENERGY_OBJECTIVES)
    eval_sets = {} if eval_sets is None else eval_sets
    if not isinstance(eval_sets, Mapping):
        raise TypeError(f"eval_sets: expected a dict {{name: dataset}}, got {type(eval_sets).__name__}")
    dev = resolve_device(device)
    train_pairs = _with_predictions("train_set", task_net, train_set, dev)
    eval_pairs = {name: _with_predictions(f"eval_sets[{name!r}]", task_net, ds, dev) for name, ds in eval_sets.items()}
    return train_model(
        energy,
        train_pairs,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_decay=1.0,
        loss_fn=_PairObjective(objective),
        eval_sets=eval_pairs,
        eval_fn=_energy_gap_eval,
        device=dev,
        seed=seed,
        checkpoint_path=checkpoint_path,
        resume=resume,
        progress=progress,
    )


def gbi_refine(
    energy: nn.Module,
    x: torch.Tensor,
    y_init: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    root: int | None = 0,
) -> torch.Tensor:
    """Phase 3 of Algorithm 2: ``y^(k) = y^(k-1) - step_size * grad_y E(x, y^(k-1))``, k = 1..steps.

    Batched over samples: the energy is per sample, so the gradient of the summed energy is
    each sample's own gradient. The energy runs in eval mode (its mode is restored afterwards)
    with its parameters not differentiated (:func:`frozen_energy`); works inside ``torch.no_grad``.

    Args:
        energy: ``energy(x, y) -> (B,)``, e.g. a trained :class:`EnergyNet`.
        x: ``(B, J, 2)`` 2D keypoints; y_init: ``(B, J, 3)`` initial poses (metres), e.g. task-net
            predictions; on the energy's device and dtype.
        steps: K >= 0 gradient steps.
        step_size: eta >= 0 (metres per unit energy gradient).
        root: index of the root joint, whose gradient is zeroed (targets are root-relative, so the
            root is not free); None moves every joint.

    Returns:
        The trajectory ``(steps + 1, B, J, 3)``, detached; ``[0]`` is ``y_init``, ``[-1]`` the result.
    """
    if not isinstance(energy, nn.Module):
        raise TypeError(f"energy: expected a torch.nn.Module, got {type(energy).__name__}")
    check_int("steps", steps, minimum=0)
    if not isinstance(step_size, (int, float)) or isinstance(step_size, bool):
        raise TypeError(f"step_size: expected a finite number >= 0, got {type(step_size).__name__} {step_size!r}")
    check_positive("step_size", step_size, allow_zero=True)
    _check_poses("y_init", y_init)
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != y_init.shape[0]:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"x: expected a tensor (B, J, 2) with the batch size of y_init, B = {y_init.shape[0]}; got {got}"
        )
    num_joints = y_init.shape[1]
    if root is not None:
        if not isinstance(root, int) or isinstance(root, bool) or not 0 <= root < num_joints:
            raise ValueError(f"root: expected None or a joint index in [0, {num_joints}), got {root!r}")
    x = x.detach()
    y = y_init.detach()
    trajectory = [y]
    was_training = energy.training
    energy.eval()
    try:
        with torch.enable_grad():
            for _ in range(steps):
                y = y.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(frozen_energy(energy, x, y).sum(), y)
                if root is not None:
                    grad[:, root] = 0
                y = (y - step_size * grad).detach()
                trajectory.append(y)
    finally:
        energy.train(was_training)
    return torch.stack(trajectory)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def energies(energy: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Eval-mode energies of poses ``y`` (N, J, 3, metres) for inputs ``x`` (N, J, 2).

    Batches of ``batch_size`` samples are moved to the energy's device; the energy's train/eval
    mode is restored afterwards. Returns ``(N,)`` on the CPU.
    """
    if not isinstance(energy, nn.Module):
        raise TypeError(f"energy: expected a torch.nn.Module, got {type(energy).__name__}")
    check_int("batch_size", batch_size)
    _check_poses("y", y)
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != y.shape[0]:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a tensor (N, J, 2) with the N of y, N = {y.shape[0]}; got {got}")
    if y.shape[0] == 0:
        raise ValueError("y: expected at least one pose, got N = 0")
    device = _module_device(energy)
    was_training = energy.training
    energy.eval()
    try:
        out = [
            _energy(energy, x[i : i + batch_size].to(device), y[i : i + batch_size].to(device), "x, y").cpu()
            for i in range(0, y.shape[0], batch_size)
        ]
    finally:
        energy.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def prediction_energy(energy: nn.Module, task_net: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean eval-mode energy of the task-net's predictions ``F(x)`` for inputs ``x`` (N, J, 2).

    The task-net predicts on its own device in eval mode, the energy scores on its own; both
    modes are restored. Returns a Python float (energy units, lower = more plausible).
    """
    if not isinstance(task_net, nn.Module):
        raise TypeError(f"task_net: expected a torch.nn.Module, got {type(task_net).__name__}")
    check_int("batch_size", batch_size)
    y_hat = predict(task_net, x, batch_size=batch_size, device=_module_device(task_net))
    return float(energies(energy, x, y_hat, batch_size=batch_size).double().mean())
