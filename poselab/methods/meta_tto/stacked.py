"""Per-sample network weights (``torch.func``): one copy of the adapted weights per image, and the
inner TTO step taken on all of them at once.

Part of :mod:`poselab.methods.meta_tto`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap

from poselab.checks import check_positive
from poselab.methods.meta_tto.settings import LossFn, _NORM_LAYERS
from poselab.models.mesh import MeshPrediction

__all__ = ["norm_parameter_names", "predict_stacked", "inner_step", "inner_step_loop"]


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
