"""Optimisers and schedules: the HamiPose Hamiltonian optimiser, a warm-up + cosine lr multiplier,
a step-to-step fluctuation measure, and one constructor for every optimiser a chapter can pick.

**The Hamiltonian optimiser** (:class:`Hamiltonian`) treats the loss ``L(theta)`` as potential
energy and pairs every parameter with a momentum ``p``::

    H(theta, p) = 1/2 p^T D^-1 p + L(theta),        D = (alpha + mass_eps) I

and advances ``(theta, p)`` by one kick-drift-kick step per call of :meth:`Hamiltonian.step`, with
the one gradient ``g`` available at the current ``theta`` (``eps`` = the group's ``lr``)::

    p     <- p - eps/2 * g                      kick
    alpha <- (eps^2 * mean(p^2))^(1/3)          first step of the tensor only: the fixed point
    theta <- theta + eps * p / (alpha + mass_eps)   drift (alpha of the previous steps)
    p     <- p - eps/2 * g                      kick, the same g
    p     <- (1 - friction) * p                 damping
    alpha <- mass_decay * alpha + (1 - mass_decay) * mean((theta_new - theta_old)^2)

Choices (our reading of "HamiPose"; the chapter discusses them):

* **Block = one parameter tensor.** Each tensor (a conv weight, a bias, a BatchNorm scale) has
  its own scalar mass ``alpha``, so ``D`` is block-diagonal with isotropic blocks. This is the
  coarsest metric that still lets layers of very different scales move at their own pace, and
  it costs one scalar of state per tensor.
* **The mass comes from the increments, not from squared gradients** (as Adam's second moment
  does). ``alpha`` is an EMA of the mean squared *update* ``theta_new - theta_old`` the
  integrator actually made, which ties the geometry to the motion: a tensor that has been moving
  a lot becomes heavy and is slowed down; one that has barely moved becomes light. We take the
  increment the drift computed (``eps * p / (alpha + mass_eps)``) rather than subtracting the
  parameters, which is the same number without the rounding of a difference of nearly equal
  values.
* **The step size normalises itself.** Under a steady gradient ``g`` the momentum settles at
  ``p ~ -eps g (1 - friction/2) / friction`` (at the drift), so the increment is
  ``d = eps^2 g (1 - friction/2) / (friction alpha)``. With ``alpha ~ mean(d^2)`` this gives
  ``rms(d)^3 = eps^2 rms(g) (1 - friction/2) / friction``: the steady step scales like
  ``(eps^2 |g| / friction)^(1/3)``, only weakly with the gradient's scale (a gradient 1000 times
  larger gives 10 times larger steps), and ``eps`` is a true step parameter. The flip side: near a
  minimum the step shrinks only like ``|g|^(1/3)``, more slowly than the distance to it, so at a
  fixed ``eps`` the iterate hovers in a neighbourhood of the minimum instead of converging to it.
  On a quadratic that neighbourhood is exactly proportional to ``eps`` (scaling ``theta`` by
  ``c``, ``p`` and ``alpha`` by ``c^2``, ``eps`` by ``c`` and ``mass_eps`` by ``c^2`` maps
  trajectories onto trajectories), so decaying ``eps`` (:func:`warmup_cosine`) brings it to rest.
* **Friction.** The paper gives no damping term, and without one the integrator does not settle
  at a minimum: it orbits it, and with this scheme even slowly gains energy (next bullet;
  ``friction=0`` is that integrator). ``friction`` bleeds a fraction of the momentum each step, so
  the kinetic energy that the kicks inject is dissipated and the iterate comes to rest;
  ``friction=0.1`` keeps momentum for about 10 steps, comparable to heavy-ball momentum 0.9.
* **One gradient, used twice, is not symplectic.** The paper takes both half kicks with the
  gradient at the old ``theta`` (one gradient per step), which gives, per step,
  ``theta' = theta + eps/m (p - eps/2 g)`` and ``p' = (1 - friction)(p - eps g)``. On a quadratic
  ``L = k theta^2 / 2`` with a fixed mass ``m`` the one-step map has determinant
  ``(1 - friction)(1 + eps^2 k / (2 m))``; without friction that is ``1 + eps^2 k / (2 m) > 1``:
  the map expands phase-space area every step, so the scheme gains energy slowly (the orbit's
  amplitude grows by ``sqrt(1 + eps^2 k / (2 m))`` per step) and never settles without friction.
  With friction the area contracts as long as ``eps^2 k / (2 m) < friction / (1 - friction)``,
  which the small steps of training satisfy by far. A symplectic scheme with one gradient per
  step exists: defer the second half kick to the next step's gradient, where it merges with that
  step's first half kick, ``p <- p - eps g(theta_t); theta <- theta + eps D^-1 p`` (symplectic
  Euler, i.e. leapfrog with the momentum read at the half steps; determinant exactly 1 at a fixed
  mass). We keep the paper's scheme; the tests pin its one-step map.
* **The first step starts at the fixed point of the mass.** A mass that started at 0 would make
  the first drift divide by ``mass_eps`` alone and jolt the parameters by
  ``eps^2 g / (2 mass_eps)`` (50 ``g`` for ``eps = 1e-3``, ``mass_eps = 1e-8``), kicking a
  pretrained network far from where it started. Instead, on a tensor's first step (state
  ``step == 0``), after the first half kick, ``alpha`` is set to the value consistent with the
  increment it produces: with ``d = eps p / alpha``, ``mean(d^2) = alpha`` holds for
  ``alpha0 = (eps^2 mean(p^2))^(1/3)`` (ignoring ``mass_eps``). The drift then uses
  ``alpha0 + mass_eps`` and the EMA takes the real increment, as on every other step. From rest
  (``p = -eps g / 2``) the first increment has ``rms(d) = (eps^2 rms(g) / 2)^(1/3)`` at most
  (exactly that as ``mass_eps -> 0``), whatever ``mass_eps`` is: the cube-root law of the steady
  step with the momentum not yet built up, a factor ``(friction / (2 - friction))^(1/3)`` below
  the steady step (0.37 for ``friction = 0.1``), so the steps then grow smoothly as momentum
  accumulates. A learning-rate warm-up (:func:`warmup_cosine`) is no longer needed to tame the
  first step, only as the usual gentle start.

The update is vectorised with ``torch._foreach_*`` ops over the tensors of a parameter group
that share a device and dtype; the state (``momentum`` like the parameter, ``mass`` a 0-dim
tensor, ``step`` an int: the number of updates taken, 0 before the first) round-trips through
``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from poselab.checks import check_choice, check_int, check_positive, check_same_shape

__all__ = [
    "Hamiltonian",
    "OPTIMIZERS",
    "DEFAULT_LR",
    "build_optimizer",
    "warmup_cosine",
    "update_fluctuation",
    "fluctuation_tensor",
    "ExplicitLR",
]

OPTIMIZERS = ("adam", "sgd", "hamiltonian")
"""Names accepted by :func:`build_optimizer`."""

DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2, "hamiltonian": 1e-3}
"""Learning rate (for ``hamiltonian``: the symplectic step) used when :func:`build_optimizer` gets ``lr=None``."""


def _check_unit_interval(arg: str, value: float) -> float:
    """``value`` if it is a finite number in [0, 1), else ``ValueError`` naming ``arg``."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"{arg}: expected a number in [0, 1), got {value!r}")
    return value


class Hamiltonian(torch.optim.Optimizer):
    """Kick-drift-kick integration of ``H = 1/2 p^T D^-1 p + L(theta)`` with an increment-based mass.

    See the module docstring for the update and the reasons behind it. One gradient per step.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimiser.
        lr: the symplectic step ``eps`` (> 0). Read from ``group["lr"]`` at every step, so
            ``torch.optim.lr_scheduler`` schedules it as usual.
        mass_decay: EMA decay ``mu`` of the mass ``alpha`` (in [0, 1)).
        mass_eps: added to ``alpha`` before dividing (> 0), in squared parameter units.
        friction: fraction of the momentum removed after each step (in [0, 1)); 0 is the
            undamped integrator, which does not come to rest.

    State per parameter: ``momentum`` (same shape as the parameter), ``mass`` (0-dim tensor, the
    same dtype; set to its fixed point on the tensor's first step, see the module docstring),
    ``step`` (int, number of updates taken; a state with ``step == 0``, e.g. one written by hand,
    gets the first-step start of the mass).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 mass_decay: float = 0.99, mass_eps: float = 1e-8, friction: float = 0.1) -> None:
        check_positive("lr", lr)
        _check_unit_interval("mass_decay", mass_decay)
        check_positive("mass_eps", mass_eps)
        _check_unit_interval("friction", friction)
        defaults = dict(lr=lr, mass_decay=mass_decay, mass_eps=mass_eps, friction=friction)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Take one kick-drift-kick step; return ``closure()`` (evaluated first, with grad) or None.

        Parameters whose ``grad`` is None are skipped (their state is not touched). Sparse
        gradients raise ``RuntimeError``: the mass is a mean over the whole tensor, which a
        sparse update would not respect.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # foreach kernels need one device and dtype per call; groups usually have one of each
            buckets: dict[tuple[torch.device, torch.dtype], tuple[list, list, list, list, list]] = {}
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError(
                        "Hamiltonian: got a sparse gradient; this optimiser needs dense gradients "
                        "(e.g. nn.Embedding(..., sparse=False))")
                state = self.state[param]
                if len(state) == 0:
                    state["momentum"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["mass"] = torch.zeros((), dtype=param.dtype, device=param.device)
                    state["step"] = 0
                lists = buckets.setdefault((param.device, param.dtype), ([], [], [], [], []))
                first = state["step"] == 0
                for store, item in zip(lists, (param, param.grad, state["momentum"], state["mass"], first)):
                    store.append(item)
                state["step"] += 1
            for params, grads, momenta, masses, first in buckets.values():
                _kick_drift_kick(params, grads, momenta, masses, first, lr=group["lr"],
                                 mass_decay=group["mass_decay"], mass_eps=group["mass_eps"],
                                 friction=group["friction"])
        return loss


def _kick_drift_kick(params: list[torch.Tensor], grads: list[torch.Tensor], momenta: list[torch.Tensor],
                     masses: list[torch.Tensor], first: list[bool], *, lr: float, mass_decay: float,
                     mass_eps: float, friction: float) -> None:
    """One step for tensors sharing a device and dtype; updates params, momenta and masses in place.

    ``first[i]`` says that tensor ``i`` takes its first step: its mass is set to the fixed point
    ``(eps^2 mean(p^2))^(1/3)`` after the first half kick (module docstring).
    """
    torch._foreach_add_(momenta, grads, alpha=-0.5 * lr)
    if any(first):
        _start_masses([p for p, f in zip(momenta, first) if f], [m for m, f in zip(masses, first) if f], lr=lr)
    # D^-1 = 1 / (alpha + mass_eps) with alpha of the previous steps: the metric is fixed during a step
    inverse_mass = torch._foreach_add(masses, mass_eps)
    torch._foreach_reciprocal_(inverse_mass)
    increments = torch._foreach_mul(momenta, inverse_mass)
    torch._foreach_mul_(increments, lr)
    torch._foreach_add_(params, increments)
    torch._foreach_add_(momenta, grads, alpha=-0.5 * lr)
    if friction > 0:
        torch._foreach_mul_(momenta, 1.0 - friction)
    # mean squared increment = ||d||^2 / numel; max(., 1) keeps an empty tensor's mass at 0, not NaN
    squares = torch._foreach_norm(increments)
    torch._foreach_mul_(squares, squares)
    torch._foreach_div_(squares, [float(max(p.numel(), 1)) for p in params])
    # lerp with weight 1 - mu is mu * alpha + (1 - mu) * mean(d^2)
    torch._foreach_lerp_(masses, squares, 1.0 - mass_decay)


def _start_masses(momenta: list[torch.Tensor], masses: list[torch.Tensor], *, lr: float) -> None:
    """Set each mass to ``alpha0 = (eps^2 mean(p^2))^(1/3) = (eps rms(p))^(2/3)``, in place.

    ``alpha0`` solves ``mean(d^2) = alpha`` for the increment ``d = eps p / alpha`` it produces,
    so the first drift is as large as the mass says, instead of ``eps p / mass_eps``. Written with
    ``rms(p) = ||p|| / sqrt(numel)`` rather than ``mean(p^2)`` so that half-precision momenta do not
    overflow in the square; an empty tensor (``max(numel, 1)``) and a zero momentum give 0.
    """
    rms = torch._foreach_norm(momenta)
    torch._foreach_div_(rms, [math.sqrt(max(p.numel(), 1)) for p in momenta])
    torch._foreach_mul_(rms, lr)
    torch._foreach_copy_(masses, torch._foreach_pow(rms, 2.0 / 3.0))


def build_optimizer(name: str, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float | None = None,
                    **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimiser ``name`` (one of :data:`OPTIMIZERS`) over ``params``.

    Defaults: ``adam`` lr 1e-3; ``sgd`` lr 1e-2 with momentum 0.9; ``hamiltonian`` step 1e-3 with
    friction 0.1 (:class:`Hamiltonian`). ``lr=None`` takes the default (:data:`DEFAULT_LR`);
    ``kwargs`` go to the optimiser's constructor and override the defaults (``momentum=0`` for
    plain SGD, ``friction=0`` for the undamped integrator).
    """
    check_choice("optimizer", name, OPTIMIZERS)
    lr = DEFAULT_LR[name] if lr is None else check_positive("lr", lr)
    if name == "sgd":
        kwargs.setdefault("momentum", 0.9)
    elif name == "hamiltonian":
        kwargs.setdefault("friction", 0.1)
    cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "hamiltonian": Hamiltonian}[name]
    try:
        return cls(params, lr=lr, **kwargs)
    except TypeError as exc:
        # a keyword meant for another optimiser (friction for adam, ...): say which optimiser refused it
        raise TypeError(f"build_optimizer({name!r}): {exc}") from exc


def warmup_cosine(step: int, total: int, warmup: float) -> float:
    """Learning-rate multiplier (for ``torch.optim.lr_scheduler.LambdaLR``): linear warm-up, then cosine to 0.

    With ``W = max(1, round(warmup * total))`` warm-up steps (``W = 0`` when ``warmup == 0``):
    steps ``0 .. W-1`` give ``(step + 1) / W`` (from ``1/W`` up to 1), then
    ``0.5 (1 + cos(pi (step - W) / (total - W)))`` falls from 1 at ``step = W`` to 0 at
    ``step = total``; steps past ``total`` give 0.

    Args:
        step: the optimisation step, an int >= 0 (LambdaLR passes its count of ``step()`` calls).
        total: the number of steps of the run, an int >= 1.
        warmup: the warm-up's fraction of ``total``, in [0, 1).
    """
    check_int("step", step, minimum=0)
    check_int("total", total, minimum=1)
    _check_unit_interval("warmup", warmup)
    warm = max(1, round(warmup * total)) if warmup > 0 else 0
    if step >= total:
        return 0.0
    if step < warm:
        return (step + 1) / warm
    # here warm <= step < total, so total - warm >= 1
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / (total - warm)))


def update_fluctuation(previous: torch.Tensor, current: torch.Tensor) -> float:
    """Scale-free step-to-step change of two parameter increments: ``|d_t - d_{t-1}| / mean(|d_t|, |d_{t-1}|)``.

    ``|.|`` is the Euclidean norm over all entries (the tensors are flattened). The value lies in
    [0, 2]: 0 for identical updates, ``sqrt(2)`` for orthogonal ones of equal norm, 2 for a
    reversal ``d_t = -d_{t-1}`` (or when one of them is zero), and 0 when both are zero. Scaling both
    increments by the same factor leaves it unchanged, so optimisers with different step sizes
    compare.

    Args:
        previous: the increment ``d_{t-1}`` (any shape).
        current: the increment ``d_t``, the same shape.
    """
    for arg, x in (("previous", previous), ("current", current)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{arg}: expected a torch.Tensor, got {type(x).__name__}")
    check_same_shape(previous=previous, current=current)
    return float(fluctuation_tensor(previous, current))


def fluctuation_tensor(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """:func:`update_fluctuation` as a 0-dim float64 tensor on the inputs' device, unchecked: a
    training loop can gather it with its other per-step values in one device synchronisation."""
    # float64: the norm of a difference of two close, large vectors loses digits in float32
    prev = previous.detach().reshape(-1).double()
    curr = current.detach().reshape(-1).to(prev)
    scale = 0.5 * (torch.linalg.vector_norm(prev) + torch.linalg.vector_norm(curr))
    ratio = torch.linalg.vector_norm(curr - prev) / torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.where(scale == 0, torch.zeros_like(ratio), ratio)


class ExplicitLR(torch.optim.lr_scheduler.LRScheduler):
    """Sets every group's learning rate to ``lr_at(step)`` exactly, for step ``0, 1, ...``.

    Unlike ``LambdaLR`` (``base_lr * factor``) the rate is the function's own value, bit for bit:
    a schedule written as ``lr * 0.1 ** drops`` gives exactly that number. Its state (the step) is
    a plain int; ``lr_at`` is configuration and is not saved.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float]):
        if not callable(lr_at):
            raise TypeError(f"lr_at: expected a callable step -> lr, got {type(lr_at).__name__}")
        self.lr_at = lr_at
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [float(self.lr_at(self.last_epoch))] * len(self.optimizer.param_groups)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k != "lr_at"}
