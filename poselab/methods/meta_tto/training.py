"""Training the regressor (meta-learning through TTO, or plain regression) as a :mod:`poselab.engine` task.

Part of :mod:`poselab.methods.meta_tto`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import asdict

import torch
from torch import nn

from poselab import optim as O
from poselab.checkpoint import check_checkpoint_path, data_sha256, module_state_sha256
from poselab.checks import check_int, resolve_device
from poselab.data.body import BodyModel, body_model
from poselab.data.images import PersonImages
from poselab.engine import History, Streams, Task, fit, log_points as training_log_points
from poselab.methods.meta_tto.evaluation import evaluate_mesh
from poselab.methods.meta_tto.losses import training_loss, training_terms
from poselab.methods.meta_tto.meta import _adapted_parameters, _check_meta_args
from poselab.methods.meta_tto.settings import DETECTOR_NOISE, DetectorNoise, MetaTTOConfig
from poselab.methods.meta_tto.stacked import predict_stacked
from poselab.methods.meta_tto.targets import MeshTargets, mesh_targets
from poselab.models.mesh import MeshPrediction

__all__ = ["predict_images", "train_mesh"]


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
        "initial": [module_state_sha256(n) for n in (network, aux_network) if n is not None],
        "eval_sets": {name: _images_sha256(images) for name, images in sorted(eval_sets.items())}}
    mode = ("meta" if config.use_meta else "regression") + ("+aux" if config.use_aux else "")
    history = fit(task, steps=config.iterations, seed=seed, streams=Streams(seeds={"batches": 2 * seed, "noise": 2 * seed + 1}),
                  record_at=training_log_points(config.iterations, config.log_every), record_start=True,
                  on_divergence="record", watch=("loss",), seed_global=False, checkpoint=path, resume=resume,
                  fingerprint=fingerprint, device=dev, progress=progress, desc=f"mesh {mode}")
    return task.main.eval(), None if task.aux is None else task.aux.eval(), history
