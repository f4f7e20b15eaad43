"""Semi-supervised 2D heatmap learning: consistency training, its collapse, and the easy-hard cure.

"An Empirical Study of the Collapsing Problem in Semi-Supervised 2D Human Pose Estimation"
(Xie, Wang, Zeng, Wang, ICCV 2021). A heatmap network ``f`` (:mod:`poselab.models.heatmap`) learns
from labelled images (MSE to Gaussian target heatmaps) and from unlabelled images, by asking its
predictions on two augmentations of one image to agree once mapped into a common frame.

Methods (:data:`SSL_METHODS`), one training step each (:func:`ssl_step`):

* ``supervised``: labelled images only, with the standard (easy) augmentation.
* ``consistency``: the standard consistency baseline. Two augmentations ``T_1``, ``T_2`` of an
  unlabelled image drawn from the *same* distribution; the loss pulls ``T_{1->2}(f(T_1 I))`` and
  ``f(T_2 I)`` together, with gradients through both. Both can agree by predicting background
  everywhere, and heatmaps are about 1000:1 background, so the response on unlabelled images
  decays towards 0: the collapse.
* ``easy_hard``: the prediction on an easy augmentation ``T_e`` is the target (stop-gradient) of
  the prediction on a hard augmentation ``T_h`` of the same image, mapped with ``T_{e->h}``; never
  the other way round. Because the easy prediction is more accurate than the hard one, the
  teacher's foreground pixels pull the student's back up instead of both sinking to background.
* ``dual``: two networks trained together, each the easy-image teacher of the other's hard
  image, both also supervised on the labelled batch.

Choices (our reading of the paper; the chapter discusses them):

* **Joint Cutout on unlabelled images** needs joint locations, which unlabelled images lack: the
  hard view cuts out patches around the joints its *teacher* predicts on the easy view (mapped
  back to the original image with ``T_e^{-1}``). In ``dual`` each student gets its own hard view,
  cut around its own teacher's predictions.
* **Frames.** Unlabelled losses live in the student's frame: the teacher's heatmaps are warped
  with ``T_{e->h}`` (bilinear, :func:`poselab.data.augment.warp_heatmaps`), and pixels that the
  warp brings in from outside the teacher's view carry no target and are left out of the mean.
* **Losses.** Supervised: squared error averaged over heatmap pixels, over visible joints and over
  images (SimpleBaseline's JointsMSELoss without its factor 1/2). Unsupervised: squared error
  averaged over valid pixels, joints and images. Total ``L_s + lambda L_u``.
* **Initial networks.** :func:`train_ssl` takes the networks and does not build them, so a run
  can start from random weights or from a supervised model. The chapter's experiment starts every
  method from the same random initialisation, as the paper's released configurations do; a
  warm start from a model that has already overfitted the few labels hides the collapse.
* **Two networks, one optimiser.** ``dual`` sums the two networks' losses and takes one Adam
  step over both parameter sets. Adam's state is per parameter, so this is exactly two separate
  Adams. The two forward passes stay separate: BatchNorm's running statistics are updated in
  place, which ``torch.func.vmap`` over stacked weights cannot do.
* **Response** (:func:`poselab.metrics.heatmap_response`): the mean over joints of each heatmap's
  maximum, on unlabelled images. Logged every step on the students' training predictions and,
  every ``log_every`` steps, on a fixed unlabelled evaluation subset in eval mode (no
  augmentation), which is what the chapter plots.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from poselab import metrics as M
from poselab import optim as O
from poselab.checkpoint import check_checkpoint_path, module_state_sha256
from poselab.checks import check_choice, check_int, check_positive, check_shape, resolve_device
from poselab.data.augment import EASY, HARD, AugmentConfig, augment
from poselab.engine import History, Streams, Task, fit, log_points
from poselab.heatmap_learning import (as_float_images, evaluate_heatmaps, joints_mse_loss, masked_mse_loss,
                                      supervised_targets, teacher_keypoints, teacher_targets)
from poselab.tensorfile import tensor_sha256

__all__ = [
    "SSL_METHODS",
    "SSLConfig",
    "SSLData",
    "joints_mse_loss",
    "masked_mse_loss",
    "supervised_targets",
    "teacher_targets",
    "unsupervised_terms",
    "ssl_step",
    "evaluate_heatmaps",
    "train_ssl",
]

SSL_METHODS = ("supervised", "consistency", "easy_hard", "dual")


@dataclass(frozen=True)
class SSLConfig:
    """Hyper-parameters of one semi-supervised run.

    Attributes:
        method: one of :data:`SSL_METHODS`.
        iterations: optimisation steps.
        labelled_batch, unlabelled_batch: images per step from each pool.
        lr: Adam's learning rate; multiplied by ``lr_factor`` at each fraction of ``iterations``
            in ``lr_milestones`` (SimpleBaseline's step schedule).
        unsupervised_weight: ``lambda`` in ``L_s + lambda L_u`` (0 gives supervised training on
            the same batches).
        sigma: Gaussian target width in heatmap pixels.
        easy: augmentation of labelled images and of the teacher's (easy) view; ``consistency``
            draws both of its views from it.
        hard: augmentation of the student's (hard) view in ``easy_hard`` and ``dual``.
        log_every: steps between two history records (each with an evaluation).
    """

    method: str = "easy_hard"
    iterations: int = 1000
    labelled_batch: int = 32
    unlabelled_batch: int = 32
    lr: float = 1e-3
    lr_milestones: tuple[float, ...] = (0.7, 0.9)
    lr_factor: float = 0.1
    unsupervised_weight: float = 1.0
    sigma: float = 1.5
    easy: AugmentConfig = EASY
    hard: AugmentConfig = HARD
    log_every: int = 50

    def __post_init__(self) -> None:
        check_choice("method", self.method, SSL_METHODS)
        check_int("iterations", self.iterations, 1)
        check_int("labelled_batch", self.labelled_batch, 1)
        check_int("unlabelled_batch", self.unlabelled_batch, 1)
        check_int("log_every", self.log_every, 1)
        check_positive("lr", self.lr)
        check_positive("lr_factor", self.lr_factor)
        check_positive("unsupervised_weight", self.unsupervised_weight, allow_zero=True)
        check_positive("sigma", self.sigma)
        object.__setattr__(self, "lr_milestones", tuple(float(m) for m in self.lr_milestones))
        if any(not 0.0 < m < 1.0 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones: expected fractions of the run in (0, 1), got {self.lr_milestones}")
        for name in ("easy", "hard"):
            if not isinstance(getattr(self, name), AugmentConfig):
                raise TypeError(f"{name}: expected an AugmentConfig, got {type(getattr(self, name)).__name__}")

    @property
    def num_networks(self) -> int:
        """2 for ``dual``, else 1."""
        return 2 if self.method == "dual" else 1

    def lr_at(self, iteration: int) -> float:
        """Learning rate of step ``iteration`` (0-based)."""
        drops = sum(iteration >= m * self.iterations for m in self.lr_milestones)
        return self.lr * self.lr_factor**drops


@dataclass
class SSLData:
    """The images one run learns from.

    Attributes:
        labelled: ``(N, 3, S, S)`` images, uint8 or float in [0, 1].
        keypoints: ``(N, K, 2)`` pixels of the labelled images (pixel-centre convention).
        visible: ``(N, K)`` bool, which keypoints are labelled.
        unlabelled: ``(M, 3, S, S)`` images, same kind and size as ``labelled``.
    """

    labelled: torch.Tensor
    keypoints: torch.Tensor
    visible: torch.Tensor
    unlabelled: torch.Tensor

    def __post_init__(self) -> None:
        check_shape("labelled", self.labelled, ("N", 3, "S", "S"))
        n, _, s, _ = self.labelled.shape
        check_shape("keypoints", self.keypoints, (n, None, 2))
        check_shape("visible", self.visible, (n, self.keypoints.shape[1]))
        check_shape("unlabelled", self.unlabelled, (None, 3, s, s))
        if self.visible.dtype != torch.bool:
            raise TypeError(f"visible: expected a bool tensor, got dtype {self.visible.dtype}")
        if self.unlabelled.dtype != self.labelled.dtype:
            raise TypeError(f"unlabelled: expected the dtype of labelled ({self.labelled.dtype}), got {self.unlabelled.dtype}")
        if not self.keypoints.is_floating_point():
            raise TypeError(f"keypoints: expected a float tensor, got dtype {self.keypoints.dtype}")
        if n == 0 or self.unlabelled.shape[0] == 0:
            raise ValueError(f"SSLData: expected at least one labelled and one unlabelled image, got {n} and "
                             f"{self.unlabelled.shape[0]}")

    @property
    def size(self) -> int:
        """Image side ``S`` in pixels."""
        return int(self.labelled.shape[-1])

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[1])


# ------------------------------------------------------------------------------------- one step


def unsupervised_terms(networks: Sequence[nn.Module], unlabelled: torch.Tensor, config: SSLConfig,
                       generator: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The unsupervised loss of each student network on one unlabelled batch.

    Args:
        networks: one network (two for ``dual``), in train mode.
        unlabelled: ``(U, 3, S, S)`` float images in [0, 1].
        config: its ``method`` is ``consistency``, ``easy_hard`` or ``dual``.
        generator: draws the augmentations.

    Returns:
        ``(terms, heatmaps)``: one scalar loss per student (gradients reach the student only,
        and for ``consistency`` both views), and each student's ``(U, K, h, w)`` prediction
        (detached), whose response is logged.
    """
    check_choice("method", config.method, SSL_METHODS[1:])
    stride = networks[0].output_stride
    if config.method == "consistency":
        # Both views from the same distribution, both with gradients.
        u1, a1 = augment(unlabelled, None, config.easy, generator)
        u2, a2 = augment(unlabelled, None, config.easy, generator)
        h1, h2 = networks[0](torch.cat([u1, u2])).chunk(2)
        target, valid = teacher_targets(h1, a1, a2, stride)
        return [masked_mse_loss(h2, target, valid)], [h2.detach()]
    # easy_hard: the network teaches itself; dual: network i is taught by network 1 - i.
    teachers = networks if config.method == "easy_hard" else networks[::-1]
    terms, heatmaps = [], []
    for student, teacher in zip(networks, teachers):
        u_e, a_e = augment(unlabelled, None, config.easy, generator)
        with torch.no_grad():
            h_e = teacher(u_e)
        joints = teacher_keypoints(h_e, a_e, stride)
        u_h, a_h = augment(unlabelled, joints, config.hard, generator)
        target, valid = teacher_targets(h_e, a_e, a_h, stride)
        h_h = student(u_h)
        terms.append(masked_mse_loss(h_h, target, valid))
        heatmaps.append(h_h.detach())
    return terms, heatmaps


def ssl_step(networks: Sequence[nn.Module], optimizer: torch.optim.Optimizer, labelled: tuple, unlabelled: torch.Tensor,
             config: SSLConfig, generator: torch.Generator) -> dict[str, float]:
    """One optimisation step of ``config.method`` on one labelled and one unlabelled batch.

    Every network is supervised on the same augmented labelled batch; then the unsupervised
    terms (:func:`unsupervised_terms`) are added with weight ``config.unsupervised_weight`` and
    one Adam step is taken over all networks.

    Args:
        networks: one network (two for ``dual``), in train mode, on the batches' device.
        optimizer: over all their parameters.
        labelled: ``(images (B, 3, S, S) float [0, 1], keypoints (B, K, 2) px, visible (B, K))``.
        unlabelled: ``(U, 3, S, S)`` float images (unused by ``supervised``).
        config: the run's :class:`SSLConfig`.
        generator: draws every augmentation (CPU generator; tensors are moved to the images' device).

    Returns:
        ``{"loss", "loss_sup", "loss_unsup", "response"}`` as floats, summed over networks;
        ``response`` is the students' mean heatmap response on the unlabelled batch (NaN for
        ``supervised``).
    """
    if len(networks) != config.num_networks:
        raise ValueError(f"networks: method {config.method!r} trains {config.num_networks} network(s), "
                         f"got {len(networks)}")
    images, keypoints, visible = labelled
    stride = networks[0].output_stride
    size = images.shape[-1]
    x_l, y_l, vis_l = supervised_targets(images, keypoints, visible, config.easy, config.sigma, stride,
                                         (size // stride, size // stride), generator)
    loss_sup = sum(joints_mse_loss(net(x_l), y_l, vis_l) for net in networks)
    if config.method == "supervised":
        loss_unsup, heatmaps = torch.zeros_like(loss_sup), []
    else:
        terms, heatmaps = unsupervised_terms(networks, unlabelled, config, generator)
        loss_unsup = sum(terms)
    loss = loss_sup + config.unsupervised_weight * loss_unsup
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    response = float(torch.stack([M.heatmap_response(h) for h in heatmaps]).mean()) if heatmaps else math.nan
    return {"loss": float(loss.detach()), "loss_sup": float(loss_sup.detach()), "loss_unsup": float(loss_unsup.detach()),
            "response": response}


# -------------------------------------------------------------------------------------- training


def _fingerprint(config: SSLConfig, data: SSLData, seed: int, eval_sets: Mapping[str, tuple]) -> dict:
    """Everything a checkpoint must share with this call to be continued by it: every field of
    ``config``, every network's configuration (:func:`poselab.checkpoint.module_fingerprint`), the
    SHA-256 of every byte of the data and of each evaluation set, and the seed (not the device)."""
    def hashes(items: Sequence[torch.Tensor], names: Sequence[str]) -> dict:
        return {name: tensor_sha256(t) for name, t in zip(names, items)}

    fingerprint = {
        "config": asdict(config),
        "data": hashes([data.labelled, data.keypoints, data.visible, data.unlabelled],
                       ["labelled", "keypoints", "visible", "unlabelled"]),
        "eval_sets": {name: hashes(items, ["images", "keypoints", "visible"]) for name, items in sorted(eval_sets.items())},
        "seed": seed,
    }
    return json.loads(json.dumps(fingerprint))  # as it reads back from the file: tuples become lists


class SSLTask(Task):
    """:func:`train_ssl` as an engine task: one :func:`ssl_step` on batches drawn with replacement."""

    def __init__(self, nets: list[nn.Module], data: SSLData, config: SSLConfig, eval_sets: Mapping[str, tuple],
                 device: torch.device):
        self.nets, self.data, self.config, self.eval_sets, self.device = nets, data, config, eval_sets, device
        self.modules = {f"net{i}": net for i, net in enumerate(nets)}
        self.optimizer = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=config.lr)
        self.scheduler = O.ExplicitLR(self.optimizer, config.lr_at)

    def step(self, iteration: int, streams: Streams) -> dict[str, float]:
        generator, data, config, dev = streams["ssl"], self.data, self.config, self.device
        li = torch.randint(data.labelled.shape[0], (config.labelled_batch,), generator=generator)
        ui = torch.randint(data.unlabelled.shape[0], (config.unlabelled_batch,), generator=generator)
        labelled = (as_float_images(data.labelled[li], dev), data.keypoints[li].to(dev), data.visible[li].to(dev))
        unlabelled = as_float_images(data.unlabelled[ui], dev)
        return ssl_step(self.nets, self.optimizer, labelled, unlabelled, config, generator)

    def evaluate(self) -> dict[str, float]:
        record = {}
        for name, items in self.eval_sets.items():
            for i, net in enumerate(self.nets):
                prefix = f"{name}/" if i == 0 else f"net2/{name}/"
                for key, value in evaluate_heatmaps(net, *items).items():
                    record[prefix + key] = value
        return record


def train_ssl(networks: Sequence[nn.Module], data: SSLData, config: SSLConfig, *,
              eval_sets: Mapping[str, tuple] | None = None, device: str | torch.device = "auto", seed: int = 0,
              checkpoint_path: str | os.PathLike | None = None, progress: bool = True,
              resume: bool = True) -> tuple[list[nn.Module], History]:
    """Train copies of ``networks`` with ``config.method`` and return them with their History.

    Args:
        networks: the initial network(s), random or pre-trained; not modified.
            ``dual`` takes two, the other methods one.
        data: labelled and unlabelled images (:class:`SSLData`), kept on the CPU; each step's
            batches are moved to ``device``.
        config: :class:`SSLConfig`.
        eval_sets: ``{name: (images,)}`` or ``{name: (images, keypoints, visible)}``, evaluated
            with :func:`evaluate_heatmaps` every ``log_every`` steps (and at step 0) for every
            network; records get ``"{name}/{metric}"`` (first network) and ``"net2/{name}/{metric}"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: seeds the step's batch sampling and augmentations (one CPU generator).
        checkpoint_path: if given, the run is saved there at every record (atomically, as a
            safetensors file: :data:`poselab.engine.CHECKPOINT_FORMAT`) and a rerun with the same configuration
            resumes from it (or returns at once if it had finished). It must be the same run:
            every ``config`` field, the networks' configurations, the SHA-256 of the data and of
            every eval set, and the seed, else ``ValueError``. A damaged or foreign file is a
            ``ValueError`` naming it; nothing in it is executed.
        progress: a ``tqdm`` bar over steps.
        resume: with ``False`` an existing checkpoint is ignored and overwritten (a fresh run).

    Returns:
        ``(networks, history)``: trained copies in eval mode, and one record per ``log_every``
        steps with ``iteration``, ``lr``, ``loss``, ``loss_sup``, ``loss_unsup``, ``response``
        (means over the steps since the previous record) and the evaluations.
    """
    if not isinstance(data, SSLData):
        raise TypeError(f"data: expected an SSLData, got {type(data).__name__}")
    if not isinstance(config, SSLConfig):
        raise TypeError(f"config: expected an SSLConfig, got {type(config).__name__}")
    networks = list(networks)
    if len(networks) != config.num_networks or not all(isinstance(n, nn.Module) for n in networks):
        raise ValueError(f"networks: method {config.method!r} trains {config.num_networks} nn.Module(s), "
                         f"got {len(networks)} object(s)")
    eval_sets = dict(eval_sets or {})
    for name, items in eval_sets.items():
        if not isinstance(items, tuple) or len(items) not in (1, 3):
            raise ValueError(f"eval_sets[{name!r}]: expected (images,) or (images, keypoints, visible)")
        if not all(isinstance(t, torch.Tensor) for t in items):
            raise TypeError(f"eval_sets[{name!r}]: expected tensors, got {[type(t).__name__ for t in items]}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected a bool, got {type(resume).__name__}")
    path = None if checkpoint_path is None else check_checkpoint_path("checkpoint_path", checkpoint_path)
    dev = resolve_device(device)
    nets = [copy.deepcopy(n).to(dev).train() for n in networks]
    task = SSLTask(nets, data, config, eval_sets, dev)
    history = fit(task, steps=config.iterations, seed=seed, streams=Streams(seeds={"ssl": seed}),
                  record_at=log_points(config.iterations, config.log_every), record_start=True,
                  on_divergence="record", watch=("loss",), seed_global=False, checkpoint=path, resume=resume,
                  fingerprint=None if path is None else {**_fingerprint(config, data, seed, eval_sets),
                                                         "initial": [module_state_sha256(n) for n in networks]},
                  device=dev,
                  progress=progress, desc=config.method, postfix=("loss", "response"))
    for net in nets:
        net.eval()
    return nets, history
