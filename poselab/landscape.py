"""Loss landscapes: 1D/2D slices, linear interpolation between networks, and the Hessian
(Hessian-vector products, top eigenvalues, trace) of any ``nn.Module`` trained with a loss
``loss_fn(model, inputs, targets) -> scalar`` (default :func:`poselab.train.mpjpe_loss`).

**The loss is a fixed function of the parameters.** Every evaluation runs the model in eval
mode (dropout off, BatchNorm with its running statistics) on the model's device, so the loss
at a parameter vector does not depend on the batch composition or on random dropout masks.
Parameters are never written: perturbed parameters are evaluated with
``torch.func.functional_call``, which swaps them in for one call and swaps the originals
back (also when an exception is raised), and the train/eval flag of every submodule is
restored afterwards. ``loss_fn`` receives the model itself (with the swapped-in parameters),
so losses that look at the model's type or call its methods work unchanged.

**Directions.** A direction (or a parameter vector) is a ``dict[str, Tensor]`` keyed like
``dict(model.named_parameters())``, restricted to the parameters with ``requires_grad``
(frozen parameters are never perturbed).

**Why filter normalisation** (Li et al. 2018, "Visualizing the loss landscape of neural
nets"). ReLU and BatchNorm networks are scale invariant: multiplying the weights of a ReLU
neuron by ``c > 0`` and dividing the next layer's weights by ``c`` (or any rescaling of the
weights in front of a BatchNorm) leaves the function unchanged but changes how far a step of
fixed length moves it. A raw Gaussian direction therefore moves large-norm filters relatively
little and small-norm filters a lot, and its "sharpness" depends on an arbitrary scale: raw
directions are not comparable between networks (or between two minima of one network).
:func:`random_direction` therefore rescales each filter of the direction to the norm of the
same filter of the weights, ``d_f <- d_f / ||d_f|| * ||w_f||``, so that a step ``alpha = 1``
changes every filter by a perturbation as large as the filter itself, whatever its scale.

Choices (see :func:`random_direction`):

- A *filter* is one output neuron: a row of an ``nn.Linear`` weight, an output channel of a
  convolution (dim 0). A module whose weight stores output neurons along another dimension
  declares it with a class attribute ``filter_dims = {param_name: dim}`` (SemGCN's
  ``SemGraphConv`` stores ``(c_in, 2 * c_out)``, so its output neurons are columns, dim 1).
- 1-D parameters (biases, BatchNorm/LayerNorm affine parameters, SemGCN edge logits) get a
  zero direction by default (``one_d="zero"``, Li et al.'s choice): they stay at their trained
  values, and the slice shows how the loss depends on the weights. ``one_d="filter"`` perturbs
  each of them as one filter, rescaled to its norm.
- Filters whose weights are all zero get a zero direction (nothing to scale to).

**Hessian.** :func:`hessian_vector_product` uses forward-over-reverse differentiation
(``torch.func.jvp`` of ``torch.func.grad``). Reverse-over-reverse (double backward) is no
option for MPJPE: the root joint's error is exactly 0 (predictions and targets are
root-relative) and the double backward of the Euclidean norm at 0 is NaN, while the forward
derivative of its (masked) backward is finite. Eigenvalues come from power iteration with
deflation (PyHessian style), the trace from Hutchinson's estimator with Rademacher vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from poselab.checks import check_choice, check_generator, check_int
from poselab.train import _as_tensors, mpjpe_loss

__all__ = [
    "Direction",
    "Eigen",
    "NORMALIZATIONS",
    "ONE_D",
    "filter_dim",
    "random_direction",
    "direction_norm",
    "add_direction",
    "dataset_loss",
    "loss_along_line",
    "loss_surface",
    "interpolate_models",
    "barrier_height",
    "hessian_vector_product",
    "top_hessian_eigenvalue",
    "top_hessian_eigenvalues",
    "hessian_trace",
    "sample_batches",
]

Direction = dict[str, torch.Tensor]
"""A direction or parameter vector: ``{name: tensor}`` keyed like ``dict(model.named_parameters())``
(trainable parameters only), each tensor of its parameter's shape."""

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

NORMALIZATIONS = ("filter", "layer", "none")
ONE_D = ("zero", "filter")


# ------------------------------------------------------------------------ validation


def _check_model(arg: str, model: Any) -> Direction:
    """The trainable parameters of ``model`` (detached), or an error."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{arg}: expected a torch.nn.Module, got {type(model).__name__}")
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"{arg}: the model has no trainable parameters (none with requires_grad=True)")
    return params


def _model_device(params: Direction) -> torch.device:
    return next(iter(params.values())).device


def _check_loss_fn(loss_fn: Any) -> LossFn:
    if loss_fn is None:
        return mpjpe_loss
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn: expected a callable (model, inputs, targets) -> scalar tensor, got {type(loss_fn).__name__}"
        )
    return loss_fn


def _check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol: expected a finite number > 0 (relative tolerance), got {tol!r}")
    return float(tol)


def _check_direction(arg: str, direction: Any, reference: Direction) -> Direction:
    """``direction`` with exactly ``reference``'s keys and shapes, on its devices and dtypes."""
    if not isinstance(direction, Mapping):
        raise TypeError(f"{arg}: expected a dict {{parameter name: tensor}}, got {type(direction).__name__}")
    missing = [k for k in reference if k not in direction]
    if missing:
        raise ValueError(
            f"{arg}: missing key {missing[0]!r} ({len(missing)} parameter(s) missing); expected the trainable "
            "parameter names of the model, as in dict(model.named_parameters())"
        )
    extra = [k for k in direction if k not in reference]
    if extra:
        raise ValueError(
            f"{arg}: unexpected key {extra[0]!r}; expected only the model's trainable parameter names "
            f"(frozen parameters and buffers are not part of a direction)"
        )
    out: Direction = {}
    for name, ref in reference.items():
        t = direction[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg}[{name!r}]: expected a torch.Tensor, got {type(t).__name__}")
        if t.shape != ref.shape:
            raise ValueError(
                f"{arg}[{name!r}]: expected shape {tuple(ref.shape)} (the parameter's), got {tuple(t.shape)}"
            )
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{arg}[{name!r}]: expected a floating-point tensor, got dtype {t.dtype}")
        out[name] = t.detach().to(device=ref.device, dtype=ref.dtype)
    return out


def _check_alphas(arg: str, alphas: Any) -> torch.Tensor:
    """A non-empty 1-D float64 CPU tensor of finite values."""
    try:
        t = torch.as_tensor(alphas.detach().cpu() if isinstance(alphas, torch.Tensor) else alphas, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{arg}: expected a 1-D sequence of floats, got {type(alphas).__name__}") from exc
    if t.ndim != 1:
        raise ValueError(f"{arg}: expected a 1-D sequence of floats, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{arg}: expected at least one value, got an empty sequence")
    if not torch.isfinite(t).all():
        raise ValueError(f"{arg}: expected finite values, got {t.tolist()}")
    return t


def _data_on(device: torch.device, data: Any, arg: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = _as_tensors(arg, data)
    return inputs.to(device), targets.to(device)


def _check_batches(batches: Any, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(batches, (tuple, list)) and len(batches) == 2 and all(isinstance(b, torch.Tensor) for b in batches):
        raise TypeError(
            "batches: expected a sequence of (inputs, targets) pairs, got one pair of tensors; "
            "wrap it in a list: [(inputs, targets)]"
        )
    if not isinstance(batches, Sequence) or isinstance(batches, (str, bytes)):
        raise TypeError(f"batches: expected a sequence of (inputs, targets) pairs, got {type(batches).__name__}")
    if len(batches) == 0:
        raise ValueError("batches: expected at least one (inputs, targets) batch, got an empty sequence")
    return [_data_on(device, b, f"batches[{i}]") for i, b in enumerate(batches)]


# ------------------------------------------------------------------- evaluation core


class _LossCall(nn.Module):
    """``forward(x, y) = loss_fn(model, x, y)``. ``functional_call`` on this wrapper swaps
    parameters into the *real* model for the duration of the call, so ``loss_fn`` gets the
    model itself (its type, its methods) rather than a stand-in callable."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, x, y)


class _Objective:
    """``objective(params, x, y)``: the loss at parameter values ``params`` (a dict of some or
    all of the model's parameters and buffers; the others keep the model's own values)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        self.call = _LossCall(model, loss_fn)

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = functional_call(self.call, {"model." + k: v for k, v in params.items()}, (x, y))
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn: expected it to return a scalar tensor, got {got}")
        return loss


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    """Eval mode inside; afterwards every submodule gets back its own train/eval flag
    (also a mixed state, e.g. a frozen BatchNorm kept in eval inside a training model)."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@torch.no_grad()
def _set_loss(
    objective: _Objective,
    params: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
) -> float:
    """Loss of the whole set at ``params``: sample-weighted mean of the per-batch losses
    (exact for losses that are means over samples), accumulated in float64."""
    n = inputs.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        total += objective(params, inputs[start:stop], targets[start:stop]).double() * (stop - start)
    return total.item() / n


def _combine(theta: Direction, *terms: tuple[float, Direction]) -> Direction:
    """``theta + sum_i scale_i * d_i`` per parameter."""
    out = {}
    for name, t in theta.items():
        for scale, d in terms:
            t = t + scale * d[name]
        out[name] = t
    return out


# ------------------------------------------------------------------------ directions


def filter_dim(module_class_or_module: type | nn.Module, param_name: str) -> int:
    """The dimension of parameter ``param_name`` of a module (class) that indexes its filters
    (output neurons): ``filter_dims[param_name]`` if the module declares a class attribute
    ``filter_dims: dict[str, int]``, else 0 (rows of ``nn.Linear``, output channels of convs)."""
    dims = getattr(module_class_or_module, "filter_dims", None)
    if dims is None:
        return 0
    if not isinstance(dims, Mapping):
        owner = getattr(module_class_or_module, "__name__", type(module_class_or_module).__name__)
        raise TypeError(f"{owner}.filter_dims: expected a dict {{param name: dim}}, got {type(dims).__name__}")
    dim = dims.get(param_name, 0)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"filter_dims[{param_name!r}]: expected an int, got {type(dim).__name__} {dim!r}")
    return dim


def _rescale_filters(d: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """Rescale each slice of ``d`` along ``dim`` to the norm of the same slice of ``w``
    (zero where the weight slice is zero)."""
    d_f = d.movedim(dim, 0)
    moved_shape = d_f.shape
    d_f = d_f.reshape(moved_shape[0], -1)
    w_f = w.movedim(dim, 0).reshape(moved_shape[0], -1)
    d_norm = torch.linalg.vector_norm(d_f, dim=1, keepdim=True)
    w_norm = torch.linalg.vector_norm(w_f, dim=1, keepdim=True)
    ok = (w_norm > 0) & (d_norm > 0)
    scale = torch.where(ok, w_norm / torch.where(ok, d_norm, torch.ones_like(d_norm)), torch.zeros_like(d_norm))
    return (d_f * scale).reshape(moved_shape).movedim(0, dim)


def random_direction(
    model: nn.Module,
    *,
    generator: torch.Generator | None = None,
    normalization: str = "filter",
    one_d: str = "zero",
) -> Direction:
    """A random direction in the space of ``model``'s trainable parameters.

    Each parameter's direction is drawn from N(0, 1) on the CPU (``generator``, or torch's
    global RNG when None), in float64 for float64 parameters and float32 otherwise, then cast
    to the parameter's dtype and moved to its device: the same generator state gives the same
    direction on every device. Every parameter gets a draw, in ``named_parameters()`` order,
    so ``one_d`` does not change the directions of the weights.

    Args:
        normalization: ``"filter"`` (default): for parameters with >= 2 dims, each filter
            (slice along :func:`filter_dim`, 0 unless the owning module declares
            ``filter_dims``) is rescaled to the norm of the same filter of the weights,
            ``d_f <- d_f / ||d_f|| * ||w_f||``. ``"layer"``: each parameter's direction as a
            whole is rescaled to ``||w||``. ``"none"``: the raw Gaussian.
        one_d: how parameters with < 2 dims (biases, norm-layer affine parameters, SemGCN edge
            logits) are handled. ``"zero"`` (default, Li et al. 2018): zero direction, they keep
            their trained values. ``"filter"``: each is one filter, rescaled to its norm
            (``"filter"``/``"layer"``) or left raw (``"none"``).

    Filters (or parameters) whose weights are all zero get a zero direction.
    Returns a :data:`Direction` (``{name: tensor}`` for each trainable parameter).
    """
    params = _check_model("model", model)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("one_d", one_d, ONE_D)
    generator = check_generator(generator, cpu=True)
    direction: Direction = {}
    for name, w in params.items():
        draw_dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
        d = torch.randn(w.shape, generator=generator, dtype=draw_dtype).to(device=w.device, dtype=w.dtype)
        if w.ndim < 2:
            if one_d == "zero":
                d = torch.zeros_like(w)
            elif normalization != "none":
                d = _rescale_filters(d.reshape(1, -1), w.reshape(1, -1), 0).reshape(w.shape)
        elif normalization == "filter":
            owner_name, _, param_name = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            dim = filter_dim(owner, param_name)
            if not -w.ndim <= dim < w.ndim:
                raise ValueError(
                    f"{type(owner).__name__}.filter_dims[{param_name!r}] = {dim} is out of range for parameter "
                    f"{name!r} of shape {tuple(w.shape)}"
                )
            d = _rescale_filters(d, w, dim)
        elif normalization == "layer":
            d = _rescale_filters(d.reshape(1, -1), w.reshape(1, -1), 0).reshape(w.shape)
        direction[name] = d
    return direction


def direction_norm(direction: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of a direction over all its parameters together (computed in float64)."""
    if not isinstance(direction, Mapping):
        raise TypeError(f"direction: expected a dict {{parameter name: tensor}}, got {type(direction).__name__}")
    return math.sqrt(sum(float(t.detach().double().square().sum()) for t in direction.values()))


def add_direction(params: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor], scale: float) -> Direction:
    """``params + scale * direction``, per key (both with the same keys and shapes); a new dict
    of detached tensors on ``params``' devices and dtypes."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict {{parameter name: tensor}}, got {type(params).__name__}")
    reference = {k: v.detach() for k, v in params.items()}
    d = _check_direction("direction", direction, reference)
    return {k: reference[k] + scale * d[k] for k in reference}


def _dot(a: Direction, b: Direction) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


def _scaled(a: Direction, scale: float) -> Direction:
    return {k: t * scale for k, t in a.items()}


def _orthogonalize(v: Direction, basis: Sequence[Direction]) -> Direction:
    """Gram-Schmidt: remove from ``v`` its components along the unit vectors in ``basis``."""
    for u in basis:
        c = _dot(u, v)
        v = {k: v[k] - c * u[k] for k in v}
    return v


def _draw_like(params: Direction, generator: torch.Generator | None, kind: str) -> Direction:
    """Gaussian (``kind="gauss"``) or Rademacher (``"rademacher"``) vectors, drawn on the CPU."""
    out = {}
    for name, p in params.items():
        draw_dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        if kind == "gauss":
            t = torch.randn(p.shape, generator=generator, dtype=draw_dtype)
        else:
            t = torch.randint(0, 2, p.shape, generator=generator).to(draw_dtype).mul_(2).sub_(1)
        out[name] = t.to(device=p.device, dtype=p.dtype)
    return out


# ----------------------------------------------------------------- slices of the loss


def dataset_loss(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: LossFn | None = None,
    batch_size: int = 4096,
    params: Direction | None = None,
) -> float:
    """Loss of ``model`` on the whole of ``data`` (eval mode, no gradients).

    Args:
        data: an object with tensors ``.inputs``/``.targets`` or an ``(inputs, targets)``
            tuple; moved to the model's device (once, for the whole call).
        loss_fn: ``loss_fn(model, inputs, targets) -> scalar``; default MPJPE (metres).
        batch_size: samples per forward pass. The set's loss is the sample-weighted mean of
            the per-batch losses (exact for losses that are means over samples).
        params: evaluate at these parameter values instead of the model's (a full
            :data:`Direction`-shaped dict of values, not an offset); the model is untouched.
    """
    theta = _check_model("model", model)
    loss_fn = _check_loss_fn(loss_fn)
    batch_size = check_int("batch_size", batch_size, 1)
    at = theta if params is None else _check_direction("params", params, theta)
    inputs, targets = _data_on(_model_device(theta), data)
    objective = _Objective(model, loss_fn)
    with _eval_mode(model):
        return _set_loss(objective, at, inputs, targets, batch_size)


def loss_along_line(
    model: nn.Module,
    data: Any,
    direction: Direction,
    alphas: Any,
    *,
    loss_fn: LossFn | None = None,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Loss of the whole set at ``theta + alpha * direction`` for each ``alpha``.

    ``theta`` = the model's trainable parameters; ``alphas`` a non-empty 1-D sequence of
    floats (``alpha = 1`` with a filter-normalised direction perturbs every filter by its own
    norm). Eval mode, no gradients, the model is left unchanged (see the module doc).
    Returns a ``(A,)`` float64 CPU tensor (the loss's unit, metres for MPJPE).
    """
    theta = _check_model("model", model)
    direction = _check_direction("direction", direction, theta)
    alphas = _check_alphas("alphas", alphas)
    loss_fn = _check_loss_fn(loss_fn)
    batch_size = check_int("batch_size", batch_size, 1)
    inputs, targets = _data_on(_model_device(theta), data)
    objective = _Objective(model, loss_fn)
    out = torch.empty(len(alphas), dtype=torch.float64)
    with _eval_mode(model):
        # One full-set (batched) forward pass per grid point: batching over grid points as
        # well (vmap) would multiply the activation memory by the number of points for
        # little gain, since each pass already runs batches of thousands of samples.
        for i, a in enumerate(alphas.tolist()):
            out[i] = _set_loss(objective, _combine(theta, (a, direction)), inputs, targets, batch_size)
    return out


def loss_surface(
    model: nn.Module,
    data: Any,
    direction_x: Direction,
    direction_y: Direction,
    alphas: Any,
    betas: Any,
    *,
    loss_fn: LossFn | None = None,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Loss of the whole set on the plane ``theta + alpha * dx + beta * dy``.

    Returns a ``(A, B)`` float64 CPU tensor whose ``[i, j]`` entry is the loss at
    ``theta + alphas[i] * direction_x + betas[j] * direction_y`` (so ``alphas`` index rows:
    transpose for plotting libraries that put x on columns). Eval mode, no gradients, the
    model is left unchanged.
    """
    theta = _check_model("model", model)
    dx = _check_direction("direction_x", direction_x, theta)
    dy = _check_direction("direction_y", direction_y, theta)
    alphas = _check_alphas("alphas", alphas)
    betas = _check_alphas("betas", betas)
    loss_fn = _check_loss_fn(loss_fn)
    batch_size = check_int("batch_size", batch_size, 1)
    inputs, targets = _data_on(_model_device(theta), data)
    objective = _Objective(model, loss_fn)
    out = torch.empty(len(alphas), len(betas), dtype=torch.float64)
    with _eval_mode(model):
        # A loop over grid points, each a batched full-set pass (see loss_along_line).
        for i, a in enumerate(alphas.tolist()):
            for j, b in enumerate(betas.tolist()):
                out[i, j] = _set_loss(objective, _combine(theta, (a, dx), (b, dy)), inputs, targets, batch_size)
    return out


def interpolate_models(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    alphas: Any,
    *,
    loss_fn: LossFn | None = None,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Loss of the whole set along the straight line between two networks.

    At each ``a`` in ``alphas`` the parameters are ``(1 - a) * theta_a + a * theta_b`` (all
    parameters, frozen ones included); floating-point buffers (BatchNorm running statistics)
    are interpolated the same way and integer buffers (``num_batches_tracked``) are taken from
    ``model_a``. Note that interpolated running statistics are not the statistics of the
    interpolated network, which can add to the loss barrier of BatchNorm networks.
    ``model_b``'s tensors are moved to ``model_a``'s devices and dtypes; the network is
    evaluated with ``model_a``'s module (eval mode, neither model is changed).

    Returns a ``(A,)`` float64 CPU tensor. Raises ``ValueError`` unless both models have the
    same parameter and buffer names and shapes.
    """
    _check_model("model_a", model_a)
    _check_model("model_b", model_b)
    alphas = _check_alphas("alphas", alphas)
    loss_fn = _check_loss_fn(loss_fn)
    batch_size = check_int("batch_size", batch_size, 1)
    tensors_a: dict[str, torch.Tensor] = {}
    tensors_b: dict[str, torch.Tensor] = {}
    for kind, items_a, items_b in (
        ("parameter", model_a.named_parameters(), model_b.named_parameters()),
        ("buffer", model_a.named_buffers(), model_b.named_buffers()),
    ):
        ta = {k: v.detach() for k, v in items_a}
        tb = {k: v.detach() for k, v in items_b}
        only_a, only_b = sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta))
        if only_a or only_b:
            raise ValueError(
                f"model_a and model_b must have the same {kind} names; only in model_a: {only_a[:5]}, "
                f"only in model_b: {only_b[:5]}"
            )
        for k in ta:
            if ta[k].shape != tb[k].shape:
                raise ValueError(
                    f"model_a and model_b: {kind} {k!r} has shape {tuple(ta[k].shape)} in model_a but "
                    f"{tuple(tb[k].shape)} in model_b"
                )
            tensors_a[k] = ta[k]
            tensors_b[k] = tb[k].to(device=ta[k].device, dtype=ta[k].dtype)
    device = next(t.device for t in tensors_a.values())
    inputs, targets = _data_on(device, data)
    objective = _Objective(model_a, loss_fn)
    out = torch.empty(len(alphas), dtype=torch.float64)
    with _eval_mode(model_a):
        for i, a in enumerate(alphas.tolist()):
            at = {
                k: ((1.0 - a) * ta + a * tensors_b[k]) if ta.is_floating_point() else ta
                for k, ta in tensors_a.items()
            }
            out[i] = _set_loss(objective, at, inputs, targets, batch_size)
    return out


def barrier_height(alphas: Any, losses: Any) -> float:
    """Largest rise of the loss above the straight line between its end values:

        ``max_a [ L(a) - ((1 - a) L(0) + a L(1)) ]``   (Frankle et al. 2020 style),

    in the loss's unit. ``alphas``: 1-D, sorted ascending, from 0 to 1 (first and last within
    1e-9 of 0 and 1); ``losses``: the same length, finite (e.g. :func:`interpolate_models`'
    output). The end points contribute 0, so the result is >= 0 (0 when the curve never rises
    above the line, e.g. a convex curve).
    """
    a = _check_alphas("alphas", alphas)
    loss = _check_alphas("losses", losses)
    if len(a) != len(loss):
        raise ValueError(f"alphas and losses: expected the same length, got {len(a)} alphas and {len(loss)} losses")
    if len(a) < 2:
        raise ValueError(f"alphas: expected at least the two end points 0 and 1, got {a.tolist()}")
    if abs(a[0].item()) > 1e-9 or abs(a[-1].item() - 1.0) > 1e-9:
        raise ValueError(f"alphas: expected to start at 0 and end at 1, got {a[0].item()} ... {a[-1].item()}")
    if (a[1:] < a[:-1]).any():
        raise ValueError(f"alphas: expected values sorted ascending, got {a.tolist()}")
    line = (1.0 - a) * loss[0] + a * loss[-1]
    return max(0.0, float((loss - line).max()))


# --------------------------------------------------------------------------- Hessian


class _Hessian:
    """Hessian-vector products of the mean of the batch losses at the model's parameters."""

    def __init__(self, model: nn.Module, batches: Any, loss_fn: LossFn | None):
        self.params = _check_model("model", model)
        self.loss_fn = _check_loss_fn(loss_fn)
        self.batches = _check_batches(batches, _model_device(self.params))
        self.objective = _Objective(model, self.loss_fn)

    def hvp(self, vector: Direction) -> Direction:
        total: Direction | None = None
        # Forward-over-reverse needs forward-mode derivatives of every op's backward formula.
        # The fused CPU/GPU attention kernels that scaled_dot_product_attention picks by default
        # (flash / memory-efficient) have none, so attention is computed with the math kernel,
        # which is built from ordinary differentiable ops (same result up to rounding). The
        # fused nn.TransformerEncoderLayer inference fast path is not an issue: PyTorch skips it
        # whenever gradients are being tracked, as they are inside torch.func.grad.
        with sdpa_kernel(SDPBackend.MATH):
            for x, y in self.batches:
                grad_fn = torch.func.grad(lambda p, x=x, y=y: self.objective(p, x, y))
                _, hv = torch.func.jvp(grad_fn, (self.params,), (vector,))
                total = hv if total is None else {k: total[k] + hv[k] for k in total}
        assert total is not None
        return {k: t.detach() / len(self.batches) for k, t in total.items()}


def hessian_vector_product(
    model: nn.Module, batches: Any, vector: Direction, *, loss_fn: LossFn | None = None
) -> Direction:
    """``H v``: the Hessian of the loss with respect to the trainable parameters, at the
    model's parameters, times ``vector``.

    The loss is the mean over ``batches`` (a non-empty sequence of ``(inputs, targets)``
    pairs, e.g. from :func:`sample_batches`) of ``loss_fn`` on each batch (an unweighted mean
    over batches), so ``H v`` is the mean of the per-batch ``H_b v``. Computed exactly by
    forward-over-reverse differentiation (``torch.func.jvp`` of ``torch.func.grad``), with the
    model in eval mode and the batches moved to its device; the model is left unchanged.
    Returns a :data:`Direction` (``{name: tensor}`` like ``vector``), in (loss unit) /
    (parameter unit)^2 times ``vector``'s unit.
    """
    hessian = _Hessian(model, batches, loss_fn)
    vector = _check_direction("vector", vector, hessian.params)
    with _eval_mode(model):
        return hessian.hvp(vector)


@dataclass
class Eigen:
    """One Hessian eigenpair estimate."""

    value: float
    """Eigenvalue estimate: the Rayleigh quotient ``v . H v`` of :attr:`vector`."""
    vector: Direction
    """Unit-norm eigenvector estimate (norm over all parameters together)."""
    iterations: int
    """Hessian-vector products spent on this eigenpair."""
    converged: bool
    """False when ``max_iter`` was reached before the relative tolerance."""


def _power_iteration(
    hessian: _Hessian, found: Sequence[Direction], tol: float, max_iter: int, generator: torch.Generator | None
) -> Eigen:
    v = _orthogonalize(_draw_like(hessian.params, generator, "gauss"), found)
    norm = direction_norm(v)
    if norm == 0.0:  # only when the deflated space is empty (k > number of parameters)
        raise ValueError("top_hessian_eigenvalues: no direction is left orthogonal to the eigenvectors found so far")
    v = _scaled(v, 1.0 / norm)
    previous: float | None = None
    value = 0.0
    for iteration in range(1, max_iter + 1):
        # Orthogonalise H v against the eigenvectors found so far (PyHessian's deflation),
        # which also removes the components that round-off brings back.
        hv = _orthogonalize(hessian.hvp(v), found)
        value = _dot(v, hv)
        if previous is not None and abs(value - previous) <= tol * (abs(previous) + 1e-12):
            return Eigen(value, v, iteration, True)
        hv_norm = direction_norm(hv)
        if hv_norm == 0.0:  # v lies in the null space: an exact eigenvector with eigenvalue 0
            return Eigen(0.0, v, iteration, True)
        previous = value
        if iteration < max_iter:
            v = _scaled(hv, 1.0 / hv_norm)
    return Eigen(value, v, max_iter, False)


def top_hessian_eigenvalues(
    model: nn.Module,
    batches: Any,
    k: int,
    *,
    loss_fn: LossFn | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
) -> list[Eigen]:
    """The ``k`` Hessian eigenvalues of largest magnitude, by power iteration with deflation.

    The Hessian is that of :func:`hessian_vector_product` (mean loss over ``batches``, eval
    mode, at the model's parameters). Each eigenpair is found by power iteration
    ``v <- H v / ||H v||`` from a Gaussian start (``generator``, drawn on the CPU), keeping
    ``v`` orthogonal to the eigenvectors found before (PyHessian style), with eigenvalue
    estimate ``v . H v``. Iteration stops when the estimate changes by at most
    ``tol * |previous estimate|`` (a *relative* tolerance; the Rayleigh quotient converges
    about twice as fast as the vector) or after ``max_iter`` products (``converged=False``).

    Power iteration finds the eigenvalues of largest *magnitude*: at a minimum the Hessian is
    positive semi-definite and these are the largest (positive) ones; elsewhere a large
    negative eigenvalue can come first (its ``value`` is negative). Convergence is slow when
    two eigenvalues have nearly the same magnitude (and fails for a +-lambda pair).
    Returns ``k`` :class:`Eigen` in the order found (decreasing magnitude, up to accuracy).
    """
    check_int("k", k, 1)
    tol = _check_tol(tol)
    check_int("max_iter", max_iter, 1)
    generator = check_generator(generator, cpu=True)
    hessian = _Hessian(model, batches, loss_fn)
    total = sum(p.numel() for p in hessian.params.values())
    if k > total:
        raise ValueError(f"k: expected at most the number of trainable parameters ({total}), got {k}")
    found: list[Eigen] = []
    with _eval_mode(model):
        for _ in range(k):
            found.append(_power_iteration(hessian, [e.vector for e in found], tol, max_iter, generator))
    return found


def top_hessian_eigenvalue(
    model: nn.Module,
    batches: Any,
    *,
    loss_fn: LossFn | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
) -> Eigen:
    """The Hessian eigenvalue of largest magnitude (and its eigenvector), by power iteration;
    see :func:`top_hessian_eigenvalues` (this is its ``k = 1`` case)."""
    return top_hessian_eigenvalues(
        model, batches, 1, loss_fn=loss_fn, tol=tol, max_iter=max_iter, generator=generator
    )[0]


def hessian_trace(
    model: nn.Module,
    batches: Any,
    *,
    num_samples: int = 50,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Hutchinson estimate of the Hessian trace: ``(mean, standard error)`` over
    ``num_samples`` (>= 2) Rademacher vectors ``z`` (entries +-1, drawn on the CPU with
    ``generator``) of ``z . H z``; the Hessian is that of :func:`hessian_vector_product`.
    ``E[z . H z] = tr H``; the standard error is the sample standard deviation / sqrt(n).
    """
    check_int("num_samples", num_samples, 2)
    generator = check_generator(generator, cpu=True)
    hessian = _Hessian(model, batches, loss_fn)
    values = []
    with _eval_mode(model):
        # Probes one after the other: each is a full (batched) forward-over-reverse pass.
        for _ in range(num_samples):
            z = _draw_like(hessian.params, generator, "rademacher")
            values.append(_dot(z, hessian.hvp(z)))
    samples = torch.tensor(values, dtype=torch.float64)
    return float(samples.mean()), float(samples.std(correction=1) / math.sqrt(num_samples))


def sample_batches(
    data: Any, num_batches: int, batch_size: int, *, generator: torch.Generator | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``num_batches`` random, disjoint batches of ``batch_size`` samples of ``data``.

    The samples are the first ``num_batches * batch_size`` indices of a random permutation
    (drawn on the CPU with ``generator``); the tensors stay on their device. Raises
    ``ValueError`` if ``data`` has fewer samples than that.
    """
    inputs, targets = _as_tensors("data", data)
    check_int("num_batches", num_batches, 1)
    check_int("batch_size", batch_size, 1)
    generator = check_generator(generator, cpu=True)
    n, need = inputs.shape[0], num_batches * batch_size
    if need > n:
        raise ValueError(
            f"data: {num_batches} batches of {batch_size} need {need} samples, but the data has only {n}"
        )
    order = torch.randperm(n, generator=generator)[:need].view(num_batches, batch_size)
    return [(inputs[idx.to(inputs.device)], targets[idx.to(targets.device)]) for idx in order]


def dar_curvature_note(holds: bool, extent: dict) -> str:
    """Why the high-DAR third may not be the steeper one (a claim's note; empty when it is).

    ``extent``: ``{"low_dar": ..., "high_dar": ...}`` mean 2D extents of the thirds
    (:func:`poselab.data.lifting.mean_image_extent`), or empty."""
    if holds:
        return ""
    if extent and extent["low_dar"] > extent["high_dar"]:
        return ("lambda_max also grows with the size of the network's inputs, and the low-DAR poses are spread "
                f"wider in the image (mean 2D extent {extent['low_dar']:.2f} vs {extent['high_dar']:.2f} screen "
                "units): input scale, not only ambiguity, sets the curvature here")
    return ("the ambiguity of a pose shows in its error (chapter 0) more than in the curvature of the training loss "
            "around a solution fitted to all poses at once")
