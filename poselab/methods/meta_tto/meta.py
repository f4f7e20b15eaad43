"""Meta-learning through test-time optimisation: the outer loss after the per-sample inner step, with
the auxiliary network's pseudo targets (dual networks).

Part of :mod:`poselab.methods.meta_tto`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from poselab.data.body import BodyModel
from poselab.methods.meta_tto.losses import test_loss, training_loss
from poselab.methods.meta_tto.settings import LossFn, MetaTTOConfig
from poselab.methods.meta_tto.stacked import _single, inner_step, inner_step_loop, predict_stacked
from poselab.methods.meta_tto.targets import MeshTargets
from poselab.models.mesh import MeshPrediction

__all__ = ["meta_loss", "meta_loss_loop", "meta_step"]


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
