"""``train_model``: supervised training of one network (lifting, SEAL) on the training engine.

Batches are drawn by indexing tensors that already live on the device with a per-epoch
permutation from a ``torch.Generator`` seeded from ``(seed, epoch)``: no DataLoader workers,
and the batch order of epoch ``e`` does not depend on how many epochs ran before it in this
process. Adam with per-epoch exponential lr decay; one record per epoch.

The loop, progress bar, divergence check and checkpoints are :func:`poselab.engine.fit`'s: a run
interrupted at any point (Ctrl-C, a notebook kernel restart, a Colab disconnect) loses at most
the epoch in progress, and calling ``train_model`` again with the same arguments and the same
``checkpoint_path`` continues from the last completed epoch, bitwise identical to an
uninterrupted run on the same device and thread count (weights, optimiser, scheduler and random
states are restored). A checkpoint is one safetensors file (:mod:`poselab.checkpoint`): loading it
runs no code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from poselab.checkpoint import check_checkpoint_path, data_sha256, describe_callable
from poselab.checks import check_int, check_positive, check_seed, resolve_device
from poselab.engine import History, Task, fit, log_points

__all__ = ["History", "train_model", "evaluate", "mpjpe_loss", "mpjpe_mm_eval", "log_points", "SupervisedTask"]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EvalFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, float]]
Callback = Callable[[int, "History", nn.Module], Any]
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.optim.Optimizer], torch.Tensor]
ParamGroupsFn = Callable[[nn.Module], Sequence[Mapping[str, Any]]]


# ------------------------------------------------------------------ losses and metrics


def mpjpe_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Default training loss: MPJPE, the mean Euclidean distance over joints and samples.

    ``model(inputs)`` and ``targets`` are ``(B, J, 3)`` (any trailing coordinate size
    works: the norm is over the last dimension), in the targets' unit (metres).
    Returns a scalar tensor.
    """
    pred = model(inputs)
    if pred.shape != targets.shape:
        raise ValueError(f"model output: expected the targets' shape {tuple(targets.shape)}, got {tuple(pred.shape)}")
    return (pred - targets).norm(dim=-1).mean()


@torch.no_grad()
def mpjpe_mm_eval(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Default evaluation: ``{"mpjpe_mm": MPJPE in millimetres}`` (targets in metres)."""
    return {"mpjpe_mm": 1000.0 * mpjpe_loss(model, inputs, targets).item()}


# ------------------------------------------------------------------------ validation


def _as_tensors(arg: str, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of a dataset with ``.inputs``/``.targets`` or of a 2-tuple."""
    if isinstance(dataset, (tuple, list)):
        if len(dataset) != 2:
            raise TypeError(f"{arg}: expected an (inputs, targets) pair, got a sequence of length {len(dataset)}")
        inputs, targets = dataset
    elif hasattr(dataset, "inputs") and hasattr(dataset, "targets"):
        inputs, targets = dataset.inputs, dataset.targets
    else:
        raise TypeError(
            f"{arg}: expected a dataset with tensor attributes .inputs and .targets, or an (inputs, targets) "
            f"tuple, got {type(dataset).__name__}"
        )
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg}: {name} should be a torch.Tensor, got {type(t).__name__}")
        if t.ndim == 0:
            raise ValueError(f"{arg}: {name} should have a first (sample) dimension, got a 0-d tensor")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{arg}: inputs and targets must have the same number of samples N (first dimension), "
            f"got inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)}"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"{arg}: the dataset is empty (N = 0)")
    return inputs, targets


def _check_number(arg: str, value: Any, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{arg}: expected a finite number, got {type(value).__name__} {value!r}")
    return check_positive(arg, value, allow_zero=allow_zero)


def _check_callable(arg: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{arg}: expected a callable (model, inputs, targets) -> ..., got {type(fn).__name__}")


# ------------------------------------------------------------------------ evaluation


@torch.no_grad()
def _evaluate_tensors(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, eval_fn: EvalFn, batch_size: int | None
) -> dict[str, float]:
    """Sample-weighted mean of ``eval_fn`` over batches; model in eval mode, mode restored."""
    was_training = model.training
    model.eval()
    try:
        n = inputs.shape[0]
        step = n if batch_size is None else batch_size
        sums: dict[str, float] = {}
        for start in range(0, n, step):
            stop = min(start + step, n)
            out = eval_fn(model, inputs[start:stop], targets[start:stop])
            if not isinstance(out, Mapping):
                raise TypeError(f"eval_fn: expected it to return a dict of floats, got {type(out).__name__}")
            if start > 0 and set(out) != set(sums):
                raise ValueError(f"eval_fn: returned keys {sorted(out)} for one batch and {sorted(sums)} for another")
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value) * (stop - start)
        return {key: total / n for key, total in sums.items()}
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    dataset: Any,
    eval_fn: EvalFn | None = None,
    batch_size: int | None = 1024,
    device: str | torch.device = "auto",
) -> dict[str, float]:
    """Evaluate ``model`` on ``dataset`` without gradients, in eval mode.

    ``dataset`` has tensor attributes ``.inputs`` / ``.targets`` (first dim N) or is an
    ``(inputs, targets)`` tuple. ``eval_fn(model, inputs, targets) -> dict[str, float]``
    is called on batches of ``batch_size`` samples and the results are averaged with
    weights proportional to the batch sizes, so its metrics must be *means over
    samples* (true for MPJPE and PCK; not for a median or an AUC — pass
    ``batch_size=None`` to call ``eval_fn`` once on the whole set for those).
    Default ``eval_fn``: :func:`mpjpe_mm_eval` (``{"mpjpe_mm": ...}``, targets in metres).
    The model is moved to ``device``; its train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    inputs, targets = _as_tensors("dataset", dataset)
    eval_fn = mpjpe_mm_eval if eval_fn is None else eval_fn
    _check_callable("eval_fn", eval_fn)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    dev = resolve_device(device)
    model.to(dev)
    return _evaluate_tensors(model, inputs.to(dev), targets.to(dev), eval_fn, batch_size)


# ---------------------------------------------------------------------- the training


def _check_scalar(arg: str, loss: Any) -> None:
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{arg}: expected a scalar (0-d) tensor, got {got}")


def _param_groups(model: nn.Module, param_groups: ParamGroupsFn | None, params: list) -> list[dict]:
    """Adam parameter groups: ``param_groups(model)`` checked (every trainable parameter in
    exactly one group, options plain numbers), or one group of ``params``."""
    if param_groups is None:
        return [{"params": params}]
    groups = param_groups(model)
    if not isinstance(groups, Sequence) or not groups or not all(isinstance(g, Mapping) and "params" in g for g in groups):
        raise ValueError(f"param_groups: expected a non-empty list of dicts with a 'params' entry, got {groups!r}")
    out, seen = [], set()
    for i, g in enumerate(groups):
        members = list(g["params"])
        if not members or not all(isinstance(p, nn.Parameter) for p in members):
            raise ValueError(f"param_groups: group {i} must hold at least one parameter, and only parameters")
        for key, value in g.items():
            if key != "params" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise TypeError(f"param_groups: group {i} option {key!r} should be a number, got {value!r}")
        ids = {id(p) for p in members}
        if ids & seen:
            raise ValueError(f"param_groups: group {i} repeats parameters of an earlier group")
        seen |= ids
        out.append({**g, "params": members})
    missing = [p for p in params if id(p) not in seen]
    if missing or len(seen) != len(params):
        raise ValueError(f"param_groups: the groups must cover every trainable parameter of the model exactly once "
                         f"({len(seen)} grouped vs {len(params)} trainable)")
    return out


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Permutation of ``range(n)`` for ``epoch``, a pure function of ``(seed, epoch)``.

    Drawn on the CPU so that the batch order is the same on every device.
    """
    mixed = np.random.SeedSequence((seed % 2**64, epoch)).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(mixed))
    return torch.randperm(n, generator=gen)


class SupervisedTask(Task):
    """:func:`train_model` as an engine task: step ``i`` trains on batch ``i mod steps_per_epoch`` of
    epoch ``i // steps_per_epoch + 1``'s permutation, with ``loss_fn`` (or ``step_fn``)."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, batch_size: int, seed: int,
                 optimizer: torch.optim.Optimizer, scheduler, loss_fn: LossFn, step_fn: StepFn | None,
                 max_grad_norm: float | None, eval_data: Mapping[str, tuple], eval_fn: EvalFn,
                 eval_batch_size: int | None):
        self.model, self.inputs, self.targets = model, inputs, targets
        self.modules = {"model": model}
        self.optimizer, self.scheduler = optimizer, scheduler
        self.batch_size, self.seed = batch_size, seed
        self.loss_fn, self.step_fn, self.max_grad_norm = loss_fn, step_fn, max_grad_norm
        self.eval_data, self.eval_fn, self.eval_batch_size = eval_data, eval_fn, eval_batch_size
        n = inputs.shape[0]
        # A trailing batch of one sample is skipped (that sample is in another batch next epoch):
        # BatchNorm cannot compute batch statistics from a single sample.
        self.n, self.n_used = n, (n - 1 if n > 1 and n % batch_size == 1 else n)
        self.steps_per_epoch = math.ceil(self.n_used / batch_size)
        self._permutation: tuple[int, torch.Tensor] | None = None

    def step(self, iteration: int, streams) -> dict[str, Any]:
        epoch, batch = iteration // self.steps_per_epoch + 1, iteration % self.steps_per_epoch
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, _epoch_permutation(self.n, self.seed, epoch).to(self.inputs.device))
        start = batch * self.batch_size
        idx = self._permutation[1][start:start + self.batch_size]
        x, y = self.inputs[idx], self.targets[idx]
        if self.step_fn is not None:
            loss = self.step_fn(self.model, x, y, self.optimizer)
            _check_scalar("step_fn", loss)
        else:
            loss = self.loss_fn(self.model, x, y)
            _check_scalar("loss_fn", loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                               self.max_grad_norm)
            self.optimizer.step()
        # read on the host once per epoch (the engine's sync="record"), not per step
        return {"loss_sum": loss.detach().double() * idx.shape[0], "samples": idx.shape[0], "epoch": epoch}

    def summarise(self, window: list[dict[str, float]]) -> dict[str, float]:
        """``epoch`` and ``train_loss``, the mean loss over the epoch's samples."""
        return {"epoch": int(window[-1]["epoch"]),
                "train_loss": sum(w["loss_sum"] for w in window) / sum(w["samples"] for w in window)}

    def evaluate(self) -> dict[str, float]:
        return {f"{name}/{metric}": value for name, (x, y) in self.eval_data.items()
                for metric, value in _evaluate_tensors(self.model, x, y, self.eval_fn, self.eval_batch_size).items()}


def train_model(
    model: nn.Module,
    train_set: Any,
    *,
    epochs: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_decay: float = 0.96,
    max_grad_norm: float | None = None,
    loss_fn: LossFn | None = None,
    eval_sets: Mapping[str, Any] | None = None,
    eval_fn: EvalFn | None = None,
    eval_batch_size: int | None = 1024,
    device: str | torch.device = "auto",
    seed: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Callback | Sequence[Callback] | None = None,
    step_fn: StepFn | None = None,
    param_groups: ParamGroupsFn | None = None,
) -> History:
    """Train ``model`` with Adam on ``train_set`` for ``epochs`` epochs and return its History.

    Args:
        model: any ``nn.Module``; moved to ``device`` in place and trained in place.
            Its initial weights are the caller's business: ``train_model`` seeds the
            RNGs only *after* the model exists, so for reproducible runs call
            ``seed_everything(seed)`` before building the model.
        train_set: an object with tensors ``.inputs`` and ``.targets`` (first dim N,
            e.g. a ``LiftingSet``), or an ``(inputs, targets)`` tuple of tensors.
        epochs: number of passes over ``train_set`` (int >= 1).
        batch_size: samples per step; the last batch of an epoch may be smaller (a last batch of
            one sample is skipped, since BatchNorm cannot train on it).
        lr, weight_decay: Adam's learning rate and (L2) weight decay.
        lr_decay: the lr is multiplied by this after every epoch (exponential decay,
            as in SimpleBaseline); ``1.0`` keeps it constant. In ``(0, 1]``.
        max_grad_norm: if given, clip the global gradient norm to it before each step.
        loss_fn: ``loss_fn(model, inputs, targets) -> scalar tensor``; by default
            :func:`mpjpe_loss` (mean per-joint Euclidean distance, in the targets' unit).
        eval_sets: ``{name: dataset}`` evaluated after every epoch with ``eval_fn``
            (see :func:`evaluate`); metric ``m`` of set ``name`` goes into the
            epoch's record as ``"name/m"``.
        eval_fn: ``eval_fn(model, inputs, targets) -> dict[str, float]``, run in eval
            mode without gradients on batches of ``eval_batch_size`` (None: one call);
            by default :func:`mpjpe_mm_eval` (``"mpjpe_mm"``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        seed: seeds Python, NumPy and torch at the start (``seed_everything``) and the
            per-epoch batch permutations.
        checkpoint_path: if given, a checkpoint is written there (atomically) after
            every epoch. With ``resume=True`` an existing checkpoint is continued from its
            next epoch — it must come from the same configuration (every hyper-parameter
            including ``epochs`` and ``seed``, the model's full configuration, e.g. its
            dropout rates, see :func:`module_fingerprint`, and the SHA-256 of the training
            data and of every eval set), else ``ValueError``; if it already covers all epochs its
            weights are loaded into ``model`` and its history returned without training.
            With ``resume=False`` an existing checkpoint is ignored and overwritten. A path
            that is a folder, or lies below a regular file, is a ``ValueError`` up front.
        progress: show a ``tqdm`` bar over steps (loss and first eval metric); nothing
            is printed when False.
        callbacks: callable(s) ``callback(epoch, history, model)`` run after each epoch
            once its checkpoint is on disk (``epoch`` is 1-based; ``history.last`` is its
            record). An exception raised there stops training; the run can be resumed.
        step_fn: replaces the default optimisation step (``loss_fn``, ``zero_grad``,
            ``backward``, ``step``) for methods that take several steps per batch, e.g.
            SEAL's loss-net step then task-net step. ``step_fn(model, inputs, targets,
            optimizer)`` does its own backward passes and ``optimizer.step()`` calls and
            returns the scalar loss to record (``train_loss``). ``loss_fn`` and
            ``max_grad_norm`` are then unused and must be left at their defaults.
        param_groups: ``param_groups(model) -> [{"params": [...], "lr": ...}, ...]``, Adam
            parameter groups with their own options (e.g. two networks with their own
            learning rates). Adam keeps its state per parameter, so a group stepped alone
            behaves exactly as a separate Adam optimiser would. Default: one group of all
            trainable parameters at ``lr``. ``lr_decay`` scales every group's lr.

    Returns:
        The :class:`History`, one record per epoch (including epochs from a resumed
        checkpoint). The model keeps the final weights and the train/eval mode it came in.

    Reproducibility: same arguments, same initial weights, same device and thread count
    give bitwise identical weights and history losses, with or without interruptions.
    """
    # ---- validate everything before touching the model or the disk
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    inputs, targets = _as_tensors("train_set", train_set)
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    _check_number("lr", lr)
    _check_number("weight_decay", weight_decay, allow_zero=True)
    _check_number("lr_decay", lr_decay)
    if lr_decay > 1:
        raise ValueError(f"lr_decay: expected a factor in (0, 1], got {lr_decay!r}")
    if max_grad_norm is not None:
        _check_number("max_grad_norm", max_grad_norm)
    loss_fn = mpjpe_loss if loss_fn is None else loss_fn
    eval_fn = mpjpe_mm_eval if eval_fn is None else eval_fn
    _check_callable("loss_fn", loss_fn)
    _check_callable("eval_fn", eval_fn)
    if eval_batch_size is not None:
        check_int("eval_batch_size", eval_batch_size, 1)
    eval_sets = {} if eval_sets is None else eval_sets
    if not isinstance(eval_sets, Mapping):
        raise TypeError(f"eval_sets: expected a dict {{name: dataset}}, got {type(eval_sets).__name__}")
    eval_data = {}
    for name, ds in eval_sets.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"eval_sets: names must be non-empty strings, got {name!r}")
        eval_data[name] = _as_tensors(f"eval_sets[{name!r}]", ds)
    if callbacks is None:
        callbacks = []
    elif callable(callbacks):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"callbacks[{i}]: expected a callable (epoch, history, model), got {type(cb).__name__}")
    if step_fn is not None:
        _check_callable("step_fn", step_fn)
        if loss_fn is not mpjpe_loss or max_grad_norm is not None:
            raise ValueError("step_fn: it replaces loss_fn and max_grad_norm; leave those at their defaults")
    if param_groups is not None:
        _check_callable("param_groups", param_groups)
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected a bool, got {type(resume).__name__}")
    ckpt_path = None if checkpoint_path is None else check_checkpoint_path("checkpoint_path", checkpoint_path)
    dev = resolve_device(device)
    check_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters (requires_grad=True)")
    groups = _param_groups(model, param_groups, params)

    fingerprint = None if ckpt_path is None else dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=float(lr),
        weight_decay=float(weight_decay),
        lr_decay=float(lr_decay),
        max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
        seed=seed,
        loss_fn=describe_callable(loss_fn),
        eval_fn=describe_callable(eval_fn),
        eval_batch_size=eval_batch_size,
        step_fn=None if step_fn is None else describe_callable(step_fn),
        param_groups=[{k: v for k, v in g.items() if k != "params"} | {"size": len(g["params"])} for g in groups],
        num_samples=inputs.shape[0], input_shape=list(inputs.shape[1:]), target_shape=list(targets.shape[1:]),
        parameters={name: list(p.shape) for name, p in model.named_parameters()},
        data_sha256={"train": data_sha256(inputs=inputs, targets=targets),
                     **{f"eval/{k}": data_sha256(inputs=x, targets=y) for k, (x, y) in sorted(eval_data.items())}},
        eval_sets=sorted(eval_data),
    )

    # ---- set up on the device
    was_training = model.training
    model.to(dev)
    inputs, targets = inputs.to(dev), targets.to(dev)
    eval_data = {name: (x.to(dev), y.to(dev)) for name, (x, y) in eval_data.items()}
    optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay)
    task = SupervisedTask(model, inputs, targets, batch_size=batch_size, seed=seed, optimizer=optimizer,
                          scheduler=scheduler, loss_fn=loss_fn, step_fn=step_fn, max_grad_norm=max_grad_norm,
                          eval_data=eval_data, eval_fn=eval_fn, eval_batch_size=eval_batch_size)
    per_epoch = task.steps_per_epoch
    shown = ["train_loss"] + [f"{name}/{metric}" for name in list(eval_data)[:1] for metric in ("mpjpe_mm",)]
    model.train()
    try:
        return fit(task, steps=epochs * per_epoch, seed=seed, record_at=[e * per_epoch for e in range(1, epochs + 1)],
                   scheduler_every=per_epoch, on_divergence="raise", sync="record", timed=True, checkpoint=ckpt_path,
                   resume=resume, fingerprint=fingerprint, device=dev, progress=progress, desc="training",
                   postfix=shown, callbacks=[lambda record, history, cb=cb: cb(record["epoch"], history, model)
                                             for cb in callbacks])
    finally:
        model.train(was_training)
