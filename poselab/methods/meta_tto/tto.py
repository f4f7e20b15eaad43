"""Test-time optimisation: each image's own copy of the network descends its test loss (SGD or Adam).

Part of :mod:`poselab.methods.meta_tto`.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from poselab.checks import check_choice, check_int, check_positive
from poselab.data.body import BodyModel
from poselab.methods.meta_tto.losses import _check_points, test_loss
from poselab.methods.meta_tto.meta import _select
from poselab.methods.meta_tto.settings import _ADAM_BETAS, _ADAM_EPS, TTO_OPTIMIZERS
from poselab.methods.meta_tto.stacked import _check_network_images, _resolve_frozen, _stacked_gradients, predict_stacked
from poselab.models.mesh import MeshPrediction

__all__ = ["test_time_optimise"]


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
