"""Tests for poselab.optim: the Hamiltonian optimiser (hand steps, dynamics, state, closure, errors),
warmup_cosine, update_fluctuation and build_optimizer."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from poselab.optim import DEFAULT_LR, OPTIMIZERS, Hamiltonian, build_optimizer, update_fluctuation, warmup_cosine

# ---------------------------------------------------------------------------------- helpers


def reference_step(theta, p, alpha, g, *, lr, mass_decay, mass_eps, friction, first=False):
    """The update rule written out per tensor with plain ops, independent of the foreach code.

    ``first``: the tensor's first step, where alpha starts at its fixed point (eps^2 mean(p^2))^(1/3).
    """
    p = p - lr / 2 * g
    if first:
        alpha = (lr ** 2 * (p ** 2).mean()) ** (1 / 3)
    new = theta + lr * p / (alpha + mass_eps)
    p = (1 - friction) * (p - lr / 2 * g)
    alpha = mass_decay * alpha + (1 - mass_decay) * ((new - theta) ** 2).mean()
    return new, p, alpha


def oscillator(theta0: float, p0: float, *, k: float, m: float, lr: float, friction: float, steps: int):
    """Run the optimiser on L = k theta^2 / 2 with the mass pinned at m: returns (thetas, momenta) per step.

    The mass is pinned by zeroing alpha before every step with mass_eps = m, so D = m exactly; the
    state says step 1 so that the first-step start of the mass does not apply.
    """
    theta = torch.tensor([theta0], dtype=torch.float64, requires_grad=True)
    opt = Hamiltonian([theta], lr=lr, mass_decay=0.5, mass_eps=m, friction=friction)
    opt.state[theta] = {"momentum": torch.tensor([p0], dtype=torch.float64),
                        "mass": torch.zeros((), dtype=torch.float64), "step": 1}
    thetas, momenta = [], []
    for _ in range(steps):
        opt.state[theta]["mass"].zero_()
        theta.grad = k * theta.detach().clone()
        opt.step()
        thetas.append(theta.item())
        momenta.append(opt.state[theta]["momentum"].item())
    return torch.tensor(thetas, dtype=torch.float64), torch.tensor(momenta, dtype=torch.float64)


def least_squares(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(40, 5, generator=g, dtype=torch.float64)
    b = a @ torch.randn(5, generator=g, dtype=torch.float64) + 0.01 * torch.randn(40, generator=g, dtype=torch.float64)
    return a, b


# ---------------------------------------------------------------------------------- Hamiltonian: exact steps


def test_two_steps_by_hand():
    theta = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = Hamiltonian([theta], lr=0.1, mass_decay=0.9, mass_eps=0.075, friction=0.1)
    theta.grad = torch.tensor([0.5, -1.0], dtype=torch.float64)
    opt.step()
    # kick: p = -0.05 g = [-0.025, 0.05]; first step: alpha0 = (0.01 * mean(p^2))^(1/3) = (1.5625e-5)^(1/3) = 0.025
    # drift with D = 0.025 + 0.075 = 0.1: d = 0.1 p / 0.1 = p = [-0.025, 0.05]
    # kick: p = [-0.05, 0.1]; friction: p = [-0.045, 0.09]; alpha = 0.9 * 0.025 + 0.1 * 1.5625e-3 = 0.02265625
    state = opt.state[theta]
    torch.testing.assert_close(theta.detach(), torch.tensor([0.975, -1.95], dtype=torch.float64))
    torch.testing.assert_close(state["momentum"], torch.tensor([-0.045, 0.09], dtype=torch.float64))
    torch.testing.assert_close(state["mass"], torch.tensor(0.02265625, dtype=torch.float64))
    assert state["mass"].shape == () and state["step"] == 1
    opt.step()  # same gradient
    # kick: p = [-0.07, 0.14]; drift with D = 0.02265625 + 0.075 = 25/256 (alpha of step 1): d = 1.024 p
    # kick + friction: p = [-0.0855, 0.171]; alpha = 0.9 * 0.02265625 + 0.1 * mean(d^2)
    d = torch.tensor([-0.07168, 0.14336], dtype=torch.float64)
    torch.testing.assert_close(theta.detach(), torch.tensor([0.975, -1.95], dtype=torch.float64) + d)
    torch.testing.assert_close(state["momentum"], torch.tensor([-0.0855, 0.171], dtype=torch.float64))
    torch.testing.assert_close(state["mass"], torch.tensor(0.9 * 0.02265625 + 0.1 * 0.012845056, dtype=torch.float64))
    assert state["step"] == 2


def first_update(grad, *, lr=1e-3, mass_eps=1e-8, friction=0.1):
    """The increment of one step from rest (theta = 0) with gradient ``grad``, in float64."""
    theta = torch.zeros(grad.shape, dtype=torch.float64, requires_grad=True)
    opt = Hamiltonian([theta], lr=lr, mass_eps=mass_eps, friction=friction)
    theta.grad = grad.clone()
    opt.step()
    return theta.detach().clone()


def test_first_step_starts_the_mass_at_its_fixed_point():
    # p = -eps g / 2 after the half kick; alpha0 = (eps^2 mean(p^2))^(1/3) = (eps rms(p))^(2/3), so
    # d = eps p / (alpha0 + mass_eps) and rms(d) = eps rms(p) / (alpha0 + mass_eps) <= (eps rms(p))^(1/3)
    #   = (eps^2 rms(g) / 2)^(1/3), with equality as mass_eps -> 0: no eps^2 g / (2 mass_eps) jolt
    lr = 1e-3
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    p = -lr / 2 * g
    rms_g = g.square().mean().sqrt()
    alpha0 = (lr * p.square().mean().sqrt()) ** (2 / 3)
    bound = (lr ** 2 * rms_g / 2) ** (1 / 3)
    for mass_eps in (1e-8, 1e-12, 1e-16):
        d = first_update(g, lr=lr, mass_eps=mass_eps)
        torch.testing.assert_close(d, lr * p / (alpha0 + mass_eps), rtol=1e-12, atol=0)
        rms_d = d.square().mean().sqrt()
        assert rms_d <= bound
        assert rms_d.item() == pytest.approx(bound.item(), rel=mass_eps / alpha0.item() * 1.01)
    # independent of mass_eps (to mass_eps / alpha0 ~ 1e-4 here), where the old start gave 50 g vs 5e5 g
    torch.testing.assert_close(first_update(g, mass_eps=1e-8), first_update(g, mass_eps=1e-12), rtol=2e-4, atol=0)
    # the mass after the step: mu alpha0 + (1 - mu) mean(d^2), and mean(d^2) ~ alpha0 (fixed point)
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = Hamiltonian([theta], lr=lr, mass_decay=0.99, mass_eps=1e-16)
    theta.grad = g.clone()
    opt.step()
    assert opt.state[theta]["mass"].item() == pytest.approx(alpha0.item(), rel=1e-9)
    # the cube-root law: a gradient 1000 times larger gives a first step 10 times larger
    torch.testing.assert_close(first_update(1e3 * g, mass_eps=1e-16), 10 * first_update(g, mass_eps=1e-16),
                               rtol=1e-9, atol=0)


def test_first_step_does_not_kick_a_pretrained_quadratic_away():
    # start 0.01 from the least-squares optimum (a "pretrained" model: gradient ~ 1e-2) with the
    # default mass_eps and no warm-up. The old start (alpha = 0) moved by eps^2 g / (2 mass_eps) = 50 g
    # on the first step, about 1, a hundred times the distance to the optimum; now the first step is
    # a few 1e-3 and goes downhill, and the run stays in the neighbourhood the fixed eps allows
    a, b = least_squares()
    best = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    g = torch.Generator().manual_seed(3)
    start = best + 1e-2 * torch.randn(5, generator=g, dtype=torch.float64)
    start_distance = (start - best).norm().item()
    theta = start.clone().requires_grad_()
    opt = Hamiltonian([theta], lr=1e-3, mass_eps=1e-8, friction=0.1)
    distances = []
    for step in range(100):
        opt.zero_grad()
        ((a @ theta - b) ** 2).mean().backward()
        if step == 0:
            grad = theta.grad.clone()
        opt.step()
        if step == 0:
            first = (theta.detach() - start).square().mean().sqrt().item()
        distances.append((theta.detach() - best).norm().item())
    assert (50 * grad).norm().item() > 50 * start_distance  # the old first step
    rms_g = grad.square().mean().sqrt().item()
    assert first <= (1e-3 ** 2 * rms_g / 2) ** (1 / 3) < 0.3 * start_distance
    assert distances[0] < start_distance  # downhill
    assert max(distances) < 5 * start_distance


def test_foreach_matches_reference_loop_over_groups_shapes_and_dtypes():
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(3, 4, generator=g, requires_grad=True), torch.randn(5, generator=g, requires_grad=True),
              torch.randn(2, 2, generator=g, dtype=torch.float64).requires_grad_(),
              torch.randn((), generator=g).requires_grad_()]
    hyper = [dict(lr=0.05, mass_decay=0.9, mass_eps=1e-3, friction=0.2),
             dict(lr=0.02, mass_decay=0.5, mass_eps=1e-2, friction=0.0)]
    opt = Hamiltonian([{"params": params[:3], **hyper[0]}, {"params": params[3:], **hyper[1]}])
    ref = [(p.detach().clone(), torch.zeros_like(p), torch.zeros((), dtype=p.dtype)) for p in params]
    for step in range(4):
        grads = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        for p, gr in zip(params, grads):
            p.grad = gr
        opt.step()
        ref = [reference_step(*r, gr, **hyper[0 if i < 3 else 1], first=step == 0)
               for i, (r, gr) in enumerate(zip(ref, grads))]
    for p, (theta, mom, alpha) in zip(params, ref):
        torch.testing.assert_close(p.detach(), theta)
        torch.testing.assert_close(opt.state[p]["momentum"], mom)
        torch.testing.assert_close(opt.state[p]["mass"], alpha)
        assert opt.state[p]["mass"].dtype == p.dtype and opt.state[p]["step"] == 4


def test_skips_params_without_grad_and_empty_tensors():
    used, unused = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    empty = torch.zeros(0, requires_grad=True)
    opt = Hamiltonian([used, unused, empty], lr=0.1, mass_eps=1.0)
    used.grad, empty.grad = torch.ones(2), torch.zeros(0)
    opt.step()
    assert unused not in opt.state and torch.equal(unused.detach(), torch.ones(2))
    assert opt.state[empty]["mass"].item() == 0.0  # not NaN from a mean over no entries (first step too)
    assert (used.detach() < 1).all()


def test_reads_lr_from_group_each_step():
    theta = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = Hamiltonian([theta], lr=0.1, mass_eps=0.96, friction=0.0)
    theta.grad = torch.full((1,), 0.4, dtype=torch.float64)
    opt.param_groups[0]["lr"] = 0.2
    opt.step()
    # p = -0.04; alpha0 = (0.2^2 * 0.04^2)^(1/3) = 0.04 (the lr of this step), drift 0.2 * p / (0.04 + 0.96)
    torch.testing.assert_close(theta.detach(), torch.tensor([-0.008], dtype=torch.float64))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # 0.5 x the lr it finds (0.2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt.step()
    # p was -0.08 after step 1; kick with lr 0.1: -0.1; drift 0.1 * p / (alpha + 0.96),
    # alpha = 0.99 * 0.04 + 0.01 * 0.008^2
    alpha = 0.99 * 0.04 + 0.01 * 0.008 ** 2
    torch.testing.assert_close(theta.detach(), torch.tensor([-0.008 - 0.01 / (alpha + 0.96)], dtype=torch.float64))


# ---------------------------------------------------------------------------------- dynamics


def test_one_step_map_on_a_quadratic_with_pinned_mass():
    # theta' = theta (1 - eps^2 k / 2m) + eps p / m,  p' = (1 - f)(p - eps k theta): linear, with
    # determinant (1 - f)(1 + eps^2 k / 2m): reusing one gradient for both kicks is slightly expanding
    # (the paper's scheme; deferring the second half kick to the next gradient would give det 1 at f = 0)
    k, m, lr, f = 3.0, 2.0, 0.3, 0.25
    c = lr ** 2 * k / m
    columns = [oscillator(*start, k=k, m=m, lr=lr, friction=f, steps=1) for start in ((1.0, 0.0), (0.0, 1.0))]
    jac = torch.tensor([[columns[0][0][0], columns[1][0][0]], [columns[0][1][0], columns[1][1][0]]])
    expected = torch.tensor([[1 - c / 2, lr / m], [-(1 - f) * lr * k, 1 - f]], dtype=torch.float64)
    torch.testing.assert_close(jac, expected)
    assert torch.linalg.det(jac).item() == pytest.approx((1 - f) * (1 + c / 2))


def test_undamped_run_nearly_conserves_energy_over_short_horizons():
    k, m, lr = 1.0, 1.0, 0.01  # eps^2 k / m = 1e-4, period about 630 steps
    thetas, momenta = oscillator(1.0, 0.0, k=k, m=m, lr=lr, friction=0.0, steps=300)
    energy = momenta ** 2 / (2 * m) + k * thetas ** 2 / 2
    assert (energy / 0.5 - 1).abs().max() < 0.02
    assert thetas.min() < -0.99  # it has swung through to the other side


def test_undamped_gains_energy_at_the_rate_of_the_determinant():
    # f = 0, fixed m: the map has complex eigenvalues of modulus sqrt(1 + eps^2 k / 2m), so the orbit's
    # amplitude grows by that factor per step and the iterate never settles
    k, m, lr, steps = 1.0, 1.0, 0.1, 2000  # eps^2 k / 2m = 0.005, period about 63 steps
    thetas, _ = oscillator(1.0, 0.0, k=k, m=m, lr=lr, friction=0.0, steps=steps)
    growth = (1 + lr ** 2 * k / (2 * m)) ** 0.5
    early, late = thetas[:100].abs().max(), thetas[-100:].abs().max()
    assert late > 100  # e^(2000 * 0.0025) ~ 150 times the start: energy pumped in
    assert (late / early).item() == pytest.approx(growth ** (steps - 100), rel=0.05)


def test_undamped_keeps_oscillating_damped_settles():
    kw = dict(k=1.0, m=1.0, lr=0.1, steps=400)  # period about 63 steps
    undamped, _ = oscillator(1.0, 0.0, friction=0.0, **kw)
    damped, _ = oscillator(1.0, 0.0, friction=0.1, **kw)
    assert undamped[-70:].abs().max() > 0.9
    assert damped[-70:].abs().max() < 1e-6


def test_adaptive_mass_is_scale_covariant_on_a_quadratic():
    # theta -> c theta, p -> c^2 p, alpha -> c^2 alpha, eps -> c eps, mass_eps -> c^2 mass_eps maps a
    # trajectory on a quadratic onto another one: the neighbourhood the iterate settles into at a fixed
    # step shrinks in proportion to eps, which is why training decays eps (warmup_cosine)
    def run(scale):
        theta = torch.tensor([1.0 * scale], dtype=torch.float64, requires_grad=True)
        opt = Hamiltonian([theta], lr=1e-2 * scale, mass_decay=0.9, mass_eps=1e-4 * scale ** 2, friction=0.1)
        out = []
        for _ in range(300):
            theta.grad = 2.0 * theta.detach().clone()
            opt.step()
            out.append(theta.item())
        return torch.tensor(out, dtype=torch.float64)

    base, scaled = run(1.0), run(0.125)
    torch.testing.assert_close(scaled, 0.125 * base, rtol=1e-9, atol=0)
    # at a fixed step it hovers near the minimum instead of converging to it
    assert 1e-3 < base[-100:].abs().max() < 0.1


@pytest.mark.parametrize("grad", [1e-2, 1.0, 1e2])
def test_steady_step_follows_the_cube_root_law(grad):
    lr, friction = 1e-2, 0.2
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = Hamiltonian([theta], lr=lr, mass_decay=0.5, mass_eps=1e-10, friction=friction)
    for _ in range(200):
        theta.grad = torch.full((3,), grad, dtype=torch.float64)
        opt.step()
    before = theta.detach().clone()
    opt.step()
    step = (theta.detach() - before).abs()
    expected = (lr ** 2 * grad * (1 - friction / 2) / friction) ** (1 / 3)
    torch.testing.assert_close(step, torch.full((3,), expected, dtype=torch.float64), rtol=1e-6, atol=0)
    assert opt.state[theta]["mass"].sqrt().item() == pytest.approx(expected, rel=1e-6)


def test_converges_on_least_squares_with_warmup_cosine():
    a, b = least_squares()
    best = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    theta = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = Hamiltonian([theta], lr=3e-3, friction=0.1)
    total = 400
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, 0.1))
    for _ in range(total):
        opt.zero_grad()
        ((a @ theta - b) ** 2).mean().backward()
        opt.step()
        scheduler.step()
    torch.testing.assert_close(theta.detach(), best, atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------- state, closure, errors


def test_state_dict_round_trip_continues_identically():
    a, b = least_squares(3)

    def advance(theta, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            ((a @ theta - b) ** 2).mean().backward()
            opt.step()

    theta = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = Hamiltonian([theta], lr=1e-2, mass_eps=1e-4)
    advance(theta, opt, 5)
    buffer = io.BytesIO()
    torch.save({"theta": theta.detach().clone(), "opt": opt.state_dict()}, buffer)
    advance(theta, opt, 5)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = saved["theta"].clone().requires_grad_()
    opt2 = Hamiltonian([resumed], lr=0.5)  # hyper-parameters come back from the state dict
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.state[resumed]["step"] == 5
    advance(resumed, opt2, 5)
    assert torch.equal(resumed.detach(), theta.detach())
    assert torch.equal(opt2.state[resumed]["momentum"], opt.state[theta]["momentum"])
    assert torch.equal(opt2.state[resumed]["mass"], opt.state[theta]["mass"])


def test_closure_is_evaluated_with_grad_and_returned():
    a, b = least_squares(1)
    theta1 = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    theta2 = theta1.detach().clone().requires_grad_()
    opt1, opt2 = Hamiltonian([theta1], lr=1e-2, mass_eps=1e-4), Hamiltonian([theta2], lr=1e-2, mass_eps=1e-4)

    def closure():
        opt1.zero_grad()
        loss = ((a @ theta1 - b) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(3):
        loss = opt1.step(closure)
        opt2.zero_grad()
        expected = ((a @ theta2 - b) ** 2).mean()
        expected.backward()
        opt2.step()
        assert loss.item() == expected.item()
    assert torch.equal(theta1.detach(), theta2.detach())
    assert opt2.step() is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(mass_decay=1.0), "mass_decay"), (dict(mass_decay=-0.1), "mass_decay"),
    (dict(mass_eps=0.0), "mass_eps"), (dict(friction=1.0), "friction"), (dict(friction=-0.5), "friction"),
    (dict(friction=True), "friction"),
])
def test_bad_hyper_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Hamiltonian([torch.zeros(1, requires_grad=True)], **kwargs)


def test_sparse_gradient_raises():
    emb = nn.Embedding(4, 2, sparse=True)
    opt = Hamiltonian(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in start] for _ in range(5)]
    finals = []
    for device in ("cpu", "cuda"):
        params = [p.to(device).requires_grad_() for p in start]
        opt = Hamiltonian(params, lr=1e-2, mass_eps=1e-4)
        for step_grads in grads:
            for p, gr in zip(params, step_grads):
                p.grad = gr.to(device)
            opt.step()
        finals.append([p.detach().cpu() for p in params] + [opt.state[p]["mass"].cpu() for p in params])
    for cpu, cuda in zip(*finals):
        torch.testing.assert_close(cuda, cpu, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- warmup_cosine


def test_warmup_cosine_values():
    total, warmup = 100, 0.1  # 10 warm-up steps, 90 cosine steps
    assert warmup_cosine(0, total, warmup) == pytest.approx(0.1)
    assert warmup_cosine(4, total, warmup) == pytest.approx(0.5)
    assert warmup_cosine(9, total, warmup) == pytest.approx(1.0)
    assert warmup_cosine(10, total, warmup) == pytest.approx(1.0)
    assert warmup_cosine(55, total, warmup) == pytest.approx(0.5)
    assert warmup_cosine(100, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(150, total, warmup) == 0.0
    values = [warmup_cosine(s, total, warmup) for s in range(total + 1)]
    assert all(x < y for x, y in zip(values[:9], values[1:10]))
    assert all(x >= y for x, y in zip(values[10:], values[11:]))


def test_warmup_cosine_without_warmup_and_with_tiny_totals():
    assert warmup_cosine(0, 10, 0.0) == 1.0
    assert warmup_cosine(5, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(0, 3, 0.1) == 1.0  # 0.3 warm-up steps round up to one
    assert warmup_cosine(0, 1, 0.5) == 1.0 and warmup_cosine(1, 1, 0.5) == 0.0


@pytest.mark.parametrize("args, exc", [
    ((-1, 10, 0.1), ValueError), ((1.0, 10, 0.1), TypeError), ((0, 0, 0.1), ValueError),
    ((0, 10, 1.0), ValueError), ((0, 10, -0.1), ValueError),
])
def test_warmup_cosine_bad_args(args, exc):
    with pytest.raises(exc):
        warmup_cosine(*args)


# ---------------------------------------------------------------------------------- update_fluctuation


def test_update_fluctuation_hand_cases():
    d = torch.tensor([3.0, 4.0])
    assert update_fluctuation(d, d) == 0.0
    assert update_fluctuation(d, -d) == pytest.approx(2.0)
    assert update_fluctuation(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(math.sqrt(2))
    assert update_fluctuation(torch.zeros(2), torch.zeros(2)) == 0.0
    assert update_fluctuation(torch.zeros(2), d) == pytest.approx(2.0)
    # |(6,8) - (3,4)| / (0.5 (10 + 5)) = 5 / 7.5
    assert update_fluctuation(d, 2 * d) == pytest.approx(2 / 3)
    assert update_fluctuation(1e-6 * d, 2e-6 * d) == pytest.approx(2 / 3)  # scale-free
    assert update_fluctuation(d.reshape(2, 1), -d.reshape(2, 1)) == pytest.approx(2.0)


@pytest.mark.parametrize("previous, current", [
    ([3.0, 4.0], [3.0, 4.0]), ([3.0, 4.0], [-3.0, -4.0]), ([0.0, 0.0], [0.0, 0.0]), ([0.0, 0.0], [3.0, 4.0]),
    ([3.0, 4.0], [6.0, 8.0]), ([1.0, 0.0], [0.0, 1.0])])
def test_fluctuation_tensor_is_update_fluctuation_without_a_sync(previous, current):
    from poselab.optim import fluctuation_tensor

    prev, curr = torch.tensor(previous), torch.tensor(current)
    value = fluctuation_tensor(prev, curr)
    assert isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype == torch.float64
    assert value.item() == update_fluctuation(prev, curr)


def test_update_fluctuation_bad_input():
    with pytest.raises(ValueError, match="shape"):
        update_fluctuation(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="current"):
        update_fluctuation(torch.zeros(2), [0.0, 0.0])


# ---------------------------------------------------------------------------------- build_optimizer


def test_build_optimizer_names_and_defaults():
    assert OPTIMIZERS == ("adam", "sgd", "hamiltonian")
    params = [torch.zeros(2, requires_grad=True)]
    adam, sgd, ham = (build_optimizer(name, params) for name in OPTIMIZERS)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 1e-3
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 1e-2 and sgd.defaults["momentum"] == 0.9
    assert isinstance(ham, Hamiltonian) and ham.defaults["lr"] == 1e-3 and ham.defaults["friction"] == 0.1
    assert DEFAULT_LR == {"adam": 1e-3, "sgd": 1e-2, "hamiltonian": 1e-3}


def test_build_optimizer_overrides():
    params = [torch.zeros(2, requires_grad=True)]
    assert build_optimizer("sgd", params, lr=0.5, momentum=0.0).defaults["momentum"] == 0.0
    ham = build_optimizer("hamiltonian", params, lr=2e-3, friction=0.0, mass_decay=0.9)
    assert (ham.defaults["lr"], ham.defaults["friction"], ham.defaults["mass_decay"]) == (2e-3, 0.0, 0.9)


def test_build_optimizer_bad_input():
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer("rmsprop", params)
    with pytest.raises(ValueError, match="lr"):
        build_optimizer("adam", params, lr=-1.0)
    with pytest.raises(TypeError, match="build_optimizer\\('adam'\\).*friction"):
        build_optimizer("adam", params, friction=0.1)
