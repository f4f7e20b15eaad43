"""Tests for poselab.landscape: directions, loss slices, interpolation, barrier and Hessian."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from poselab import landscape as L
from poselab.checks import seed_everything
from poselab.models.lifting import LIFTERS, SemGraphConv, build_lifter
from poselab.train import mpjpe_loss


F64 = torch.float64
J = 17
SMALL = {
    "mlp": dict(hidden=16, num_blocks=1),
    "cnn": dict(channels=16, num_blocks=1),
    "gcn": dict(hidden=8, num_blocks=1),
    "transformer": dict(dim=16, depth=1, heads=2, ff_dim=16),
}


def make(name, seed=0, dtype=torch.float32):
    seed_everything(seed)
    return build_lifter(name, **SMALL[name]).to(dtype)


def pose_data(n, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, J, 2, generator=gen, dtype=dtype)
    y = 0.2 * torch.randn(n, J, 3, generator=gen, dtype=dtype)
    return x, y - y[:, :1]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k


def mse(model, x, y):
    return ((model(x) - y) ** 2).mean()


def tiny_net(seed=3):
    """Linear(3, 4) -> tanh -> Linear(4, 2) in float64: 26 parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def tiny_data(seed=3, n=16):
    g = gen(100 + seed)
    return torch.randn(n, 3, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)


def explicit_hessian(model, batches, loss_fn=mse):
    """(P, P) Hessian of the mean batch loss over the flattened parameters (reference)."""
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    sizes = [p.numel() for _, p in named]

    def f(flat):
        params = {n: t.view_as(p) for (n, p), t in zip(named, flat.split(sizes))}
        call = lambda x: functional_call(model, params, (x,))  # noqa: E731
        return sum(loss_fn(call, x, y) for x, y in batches) / len(batches)

    flat = torch.cat([p.flatten() for _, p in named])
    return torch.autograd.functional.hessian(f, flat)


def flatten(direction):
    return torch.cat([t.flatten() for t in direction.values()])


# ----------------------------------------------------------------------------- directions


@pytest.mark.parametrize("name", LIFTERS)
def test_random_direction_is_filter_normalised(name):
    model = make(name)
    d = L.random_direction(model, generator=gen(0))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert list(d) == list(params)
    for n, p in params.items():
        assert d[n].shape == p.shape and d[n].dtype == p.dtype and d[n].device == p.device
        if p.ndim < 2:
            assert torch.equal(d[n], torch.zeros_like(p)), n  # one_d="zero": biases etc. stay put
            continue
        owner_name, _, pname = n.rpartition(".")
        dim = L.filter_dim(model.get_submodule(owner_name), pname)
        d_norms = torch.linalg.vector_norm(d[n].movedim(dim, 0).flatten(1), dim=1)
        w_norms = torch.linalg.vector_norm(p.detach().movedim(dim, 0).flatten(1), dim=1)
        torch.testing.assert_close(d_norms, w_norms, msg=n)


def test_linear_filters_are_rows_by_hand():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))  # row norms 5 and 2
        layer.bias.copy_(torch.tensor([6.0, 8.0]))  # norm 10
    d = L.random_direction(layer, generator=gen(1))
    torch.testing.assert_close(d["weight"].norm(dim=1), torch.tensor([5.0, 2.0]))
    assert torch.equal(d["bias"], torch.zeros(2))
    d = L.random_direction(layer, generator=gen(1), one_d="filter")
    assert d["bias"].norm().item() == pytest.approx(10.0)
    torch.testing.assert_close(d["weight"].norm(dim=1), torch.tensor([5.0, 2.0]))


def test_semgraphconv_filters_are_columns():
    assert L.filter_dim(SemGraphConv, "weight") == 1
    assert L.filter_dim(SemGraphConv, "edge_logits") == 0
    assert L.filter_dim(nn.Linear, "weight") == 0
    conv = SemGraphConv(3, 2, torch.eye(4))  # weight (3, 4): 4 output columns of 3 entries
    assert L.filter_dim(conv, "weight") == 1
    d = L.random_direction(conv, generator=gen(2))
    torch.testing.assert_close(d["weight"].norm(dim=0), conv.weight.detach().norm(dim=0))

    class Odd(nn.Module):
        filter_dims = {"weight": 2}

        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 3, 5))

    odd = Odd()
    d = L.random_direction(odd, generator=gen(3))
    torch.testing.assert_close(d["weight"].norm(dim=(0, 1)), odd.weight.detach().norm(dim=(0, 1)))


def test_layer_and_none_normalisation():
    seed_everything(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    d = L.random_direction(model, generator=gen(4), normalization="layer", one_d="filter")
    for n, p in model.named_parameters():
        assert d[n].norm().item() == pytest.approx(p.detach().norm().item(), rel=1e-6), n
    raw = L.random_direction(model, generator=gen(5), normalization="none", one_d="filter")
    g = gen(5)
    for n, p in model.named_parameters():  # one N(0, 1) draw per parameter, in order
        assert torch.equal(raw[n], torch.randn(p.shape, generator=g)), n
    raw_zero = L.random_direction(model, generator=gen(5), normalization="none")
    assert torch.equal(raw_zero["0.weight"], raw["0.weight"])  # one_d does not change the weights' draws
    assert torch.equal(raw_zero["0.bias"], torch.zeros(4))


def test_zero_filters_get_zero_direction():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight[1] = 0.0
        layer.bias.zero_()
    for normalization in ("filter", "layer"):
        d = L.random_direction(layer, generator=gen(6), normalization=normalization, one_d="filter")
        assert all(torch.isfinite(t).all() for t in d.values())
        assert torch.equal(d["bias"], torch.zeros(2))
    d = L.random_direction(layer, generator=gen(6))
    assert torch.equal(d["weight"][1], torch.zeros(3))
    assert d["weight"][0].norm().item() == pytest.approx(layer.weight[0].norm().item())


def test_random_direction_reproducible_and_skips_frozen_parameters():
    model = make("mlp")
    model.encoder.stem[0].weight.requires_grad_(False)
    d1 = L.random_direction(model, generator=gen(7))
    d2 = L.random_direction(model, generator=gen(7))
    assert "encoder.stem.0.weight" not in d1
    assert all(torch.equal(d1[k], d2[k]) for k in d1)
    d3 = L.random_direction(model, generator=gen(8))
    assert not torch.equal(d1["head.weight"], d3["head.weight"])


def test_random_direction_bad_arguments():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="normalization"):
        L.random_direction(model, normalization="batch")
    with pytest.raises(ValueError, match="one_d"):
        L.random_direction(model, one_d="keep")
    with pytest.raises(TypeError, match="generator"):
        L.random_direction(model, generator=0)
    with pytest.raises(TypeError, match="nn.Module"):
        L.random_direction({"weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="no trainable parameters"):
        L.random_direction(nn.ReLU())


def test_direction_norm_and_add_direction():
    a = {"w": torch.tensor([[3.0, 0.0]]), "b": torch.tensor([4.0])}
    assert L.direction_norm(a) == pytest.approx(5.0)
    out = L.add_direction(a, {"w": torch.tensor([[1.0, 1.0]]), "b": torch.tensor([-2.0])}, 0.5)
    torch.testing.assert_close(out["w"], torch.tensor([[3.5, 0.5]]))
    torch.testing.assert_close(out["b"], torch.tensor([3.0]))
    with pytest.raises(ValueError, match="'b'"):
        L.add_direction(a, {"w": torch.zeros(1, 2)}, 1.0)


# ----------------------------------------------------------------------------- loss slices


def test_dataset_loss_is_the_sample_weighted_mean_in_eval_mode():
    model = make("transformer").train()  # dropout 0.1: eval mode makes the loss deterministic
    x, y = pose_data(10)
    with torch.no_grad():
        expected = mpjpe_loss(copy.deepcopy(model).eval(), x, y).item()
    for batch_size in (1, 3, 4096):
        assert L.dataset_loss(model, (x, y), batch_size=batch_size) == pytest.approx(expected, rel=1e-5)
    assert model.training

    class Data:
        inputs, targets = x, y

    assert L.dataset_loss(model, Data()) == pytest.approx(expected, rel=1e-5)


def test_dataset_loss_at_other_parameters():
    model = make("gcn")
    x, y = pose_data(12)
    d = L.random_direction(model, generator=gen(0), one_d="filter")
    theta = {n: p.detach() for n, p in model.named_parameters()}
    at = L.add_direction(theta, d, 0.3)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, p in reference.named_parameters():
            p.copy_(at[n])
        expected = mpjpe_loss(reference, x, y).item()
    assert L.dataset_loss(model, (x, y), params=at, batch_size=5) == pytest.approx(expected, rel=1e-5)


def test_loss_along_line_known_answer():
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(2.0)
    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)
    y = torch.zeros(3, 1, dtype=F64)
    # loss(alpha) = mean(((2 + alpha) x)^2) = (2 + alpha)^2 * 14 / 3
    alphas = [-2.0, -1.0, 0.0, 1.0]
    out = L.loss_along_line(model, (x, y), {"weight": torch.ones(1, 1, dtype=F64)}, alphas, loss_fn=mse, batch_size=2)
    assert out.dtype == F64 and out.device.type == "cpu" and out.shape == (4,)
    torch.testing.assert_close(out, torch.tensor([(2 + a) ** 2 * 14 / 3 for a in alphas], dtype=F64))
    assert model.weight.item() == 2.0


@pytest.mark.parametrize("name", LIFTERS)
def test_loss_along_line_equals_perturbed_copy(name):
    model = make(name).train()
    x, y = pose_data(9)
    with torch.no_grad():
        model(x)  # BatchNorm running statistics away from their initial values
    before = snapshot(model)
    d = L.random_direction(model, generator=gen(1))
    alphas = torch.tensor([-0.5, 0.0, 0.25])
    out = L.loss_along_line(model, (x, y), d, alphas, batch_size=4)
    assert_unchanged(model, before)
    assert model.training
    for a, value in zip(alphas.tolist(), out.tolist()):
        reference = copy.deepcopy(model).eval()
        with torch.no_grad():
            for n, p in reference.named_parameters():
                p.add_(a * d[n])
            assert value == pytest.approx(mpjpe_loss(reference, x, y).item(), rel=1e-5)
    assert out[1].item() == pytest.approx(L.dataset_loss(model, (x, y)), rel=1e-6)


def test_loss_surface_known_answer_and_layout():
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    x, y = torch.eye(2, dtype=F64), torch.zeros(2, 1, dtype=F64)
    dx = {"weight": torch.tensor([[1.0, 0.0]], dtype=F64)}
    dy = {"weight": torch.tensor([[0.0, 1.0]], dtype=F64)}
    alphas, betas = [0.0, 1.0, 2.0], [-1.0, 0.5]
    out = L.loss_surface(model, (x, y), dx, dy, alphas, betas, loss_fn=mse)
    assert out.shape == (3, 2) and out.dtype == F64 and out.device.type == "cpu"
    # loss(a, b) = ((1 + a)^2 + (b - 1)^2) / 2
    expected = torch.tensor([[((1 + a) ** 2 + (b - 1) ** 2) / 2 for b in betas] for a in alphas], dtype=F64)
    torch.testing.assert_close(out, expected)


def test_loss_surface_row_at_zero_is_the_line():
    model = make("mlp")
    x, y = pose_data(8)
    dx = L.random_direction(model, generator=gen(2))
    dy = L.random_direction(model, generator=gen(3))
    surface = L.loss_surface(model, (x, y), dx, dy, [-1.0, 1.0], [0.0, 0.5])
    torch.testing.assert_close(surface[:, 0], L.loss_along_line(model, (x, y), dx, [-1.0, 1.0]))


def test_model_is_restored_after_an_exception():
    model = make("mlp").train()
    model.encoder.stem[1].eval()  # a mixed train/eval state must come back as it was
    before = snapshot(model)
    d = L.random_direction(model, generator=gen(4))
    calls = []

    def failing(m, x, y):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return mpjpe_loss(m, x, y)

    with pytest.raises(RuntimeError, match="boom"):
        L.loss_along_line(model, pose_data(4), d, [0.0, 1.0], loss_fn=failing)
    assert_unchanged(model, before)
    assert model.training and model.head.training and not model.encoder.stem[1].training
    calls.clear()
    with pytest.raises(RuntimeError, match="boom"):
        L.hessian_vector_product(model, [pose_data(4), pose_data(4, seed=2)], d, loss_fn=failing)
    assert_unchanged(model, before)
    assert model.training and not model.encoder.stem[1].training


def test_loss_fn_receives_the_model_itself():
    model = make("mlp")
    seen = []

    def loss_fn(m, x, y):
        seen.append(m)
        return mpjpe_loss(m, x, y)

    L.dataset_loss(model, pose_data(4), loss_fn=loss_fn)
    L.hessian_vector_product(model, [pose_data(4)], L.random_direction(model, generator=gen(0)), loss_fn=loss_fn)
    assert all(m is model for m in seen) and len(seen) == 2


def test_slices_bad_inputs():
    model = make("mlp")
    data = pose_data(4)
    d = L.random_direction(model, generator=gen(5))
    missing = {k: v for k, v in d.items() if k != "head.bias"}
    with pytest.raises(ValueError, match="head.bias"):
        L.loss_along_line(model, data, missing, [0.0])
    with pytest.raises(ValueError, match="'extra'"):
        L.loss_along_line(model, data, {**d, "extra": torch.zeros(1)}, [0.0])
    with pytest.raises(ValueError, match=r"head.weight.*expected shape \(51, 16\)"):
        L.loss_along_line(model, data, {**d, "head.weight": torch.zeros(16, 51)}, [0.0])
    with pytest.raises(ValueError, match="direction_y.*head.bias"):
        L.loss_surface(model, data, d, missing, [0.0], [0.0])
    with pytest.raises(ValueError, match="alphas: expected at least one value"):
        L.loss_along_line(model, data, d, [])
    with pytest.raises(ValueError, match=r"alphas: expected a 1-D.*\(2, 1\)"):
        L.loss_along_line(model, data, d, [[0.0], [1.0]])
    with pytest.raises(ValueError, match="betas: expected a 1-D"):
        L.loss_surface(model, data, d, d, [0.0], 0.5)
    with pytest.raises(ValueError, match="batch_size"):
        L.loss_along_line(model, data, d, [0.0], batch_size=0)
    with pytest.raises(TypeError, match="inputs and .targets"):
        L.dataset_loss(model, data[0])
    with pytest.raises(ValueError, match="params.*missing key"):
        L.dataset_loss(model, data, params=missing)
    with pytest.raises(ValueError, match="scalar tensor"):
        L.dataset_loss(model, data, loss_fn=lambda m, x, y: (m(x) - y).norm(dim=-1))


# ----------------------------------------------------------------------------- interpolation


def test_interpolate_models_endpoints_midpoint_and_buffers():
    model_a, model_b = make("mlp", seed=0).train(), make("mlp", seed=1).train()
    x, y = pose_data(10)
    with torch.no_grad():  # different running statistics in the two models
        model_a(x)
        model_b(2.0 * x)
        model_b(x)
    before_a, before_b = snapshot(model_a), snapshot(model_b)
    out = L.interpolate_models(model_a, model_b, (x, y), [0.0, 0.5, 1.0], batch_size=3)
    assert out.shape == (3,) and out.dtype == F64
    assert out[0].item() == pytest.approx(L.dataset_loss(model_a, (x, y)), rel=1e-6)
    assert out[2].item() == pytest.approx(L.dataset_loss(model_b, (x, y)), rel=1e-6)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    mid = copy.deepcopy(model_a).eval()
    mid.load_state_dict(
        {k: (v + state_b[k]) / 2 if v.is_floating_point() else v for k, v in state_a.items()}
    )
    assert state_a["encoder.stem.1.num_batches_tracked"] != state_b["encoder.stem.1.num_batches_tracked"]
    with torch.no_grad():
        assert out[1].item() == pytest.approx(mpjpe_loss(mid, x, y).item(), rel=1e-5)
    assert_unchanged(model_a, before_a)
    assert_unchanged(model_b, before_b)
    assert model_a.training and model_b.training


def test_interpolate_models_rejects_different_architectures():
    x, y = pose_data(4)
    with pytest.raises(ValueError, match="shape"):
        L.interpolate_models(make("mlp"), build_lifter("mlp", hidden=8, num_blocks=1), (x, y), [0.0])
    with pytest.raises(ValueError, match="parameter names"):
        L.interpolate_models(make("mlp"), make("cnn"), (x, y), [0.0])


def test_barrier_height_known_answer():
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    # line from 1 to 2: 1 + a -> rises 0.75, 2.0, 0.25 at the inner points
    assert L.barrier_height(alphas, [1.0, 2.0, 3.5, 2.0, 2.0]) == pytest.approx(2.0)
    assert L.barrier_height(torch.tensor(alphas), torch.tensor([1.0, 0.5, 0.2, 0.5, 1.0])) == 0.0  # convex
    assert L.barrier_height([0.0, 1.0], [3.0, 1.0]) == 0.0


def test_barrier_height_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        L.barrier_height([0.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="start at 0 and end at 1"):
        L.barrier_height([0.1, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="start at 0 and end at 1"):
        L.barrier_height([0.0, 0.9], [1.0, 2.0])
    with pytest.raises(ValueError, match="sorted ascending"):
        L.barrier_height([0.0, 0.7, 0.3, 1.0], [1.0, 2.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        L.barrier_height([0.0, 0.5, 1.0], [1.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="at least one value"):
        L.barrier_height([], [])


# ----------------------------------------------------------------------------- Hessian


def test_hvp_equals_explicit_hessian_times_v():
    model = tiny_net()
    batches = [tiny_data(3), tiny_data(4, n=7)]  # unequal sizes: an unweighted mean over batches
    v = L.random_direction(model, generator=gen(0), normalization="none", one_d="filter")
    H = explicit_hessian(model, batches)
    hv = L.hessian_vector_product(model, batches, v, loss_fn=mse)
    assert list(hv) == list(v) and all(hv[k].shape == v[k].shape for k in v)
    torch.testing.assert_close(flatten(hv), H @ flatten(v), rtol=1e-10, atol=1e-12)
    # several batches = the Hessian of the mean of the batch losses
    h1 = flatten(L.hessian_vector_product(model, batches[:1], v, loss_fn=mse))
    h2 = flatten(L.hessian_vector_product(model, batches[1:], v, loss_fn=mse))
    torch.testing.assert_close(flatten(hv), (h1 + h2) / 2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", LIFTERS)
def test_hvp_is_finite_symmetric_and_matches_gradient_differences(name):
    """MPJPE (root error exactly 0) on every backbone, float64, eval mode with dropout present."""
    model = make(name, dtype=F64).train()
    x, y = pose_data(6, dtype=F64)
    batches = L.sample_batches((x, y), 2, 3, generator=gen(1))
    before = snapshot(model)
    u = L.random_direction(model, generator=gen(2), one_d="filter")
    v = L.random_direction(model, generator=gen(3), one_d="filter")
    hu = L.hessian_vector_product(model, batches, u)
    hv = L.hessian_vector_product(model, batches, v)
    assert all(torch.isfinite(t).all() for t in hv.values())
    assert_unchanged(model, before)
    assert model.training
    assert (flatten(u) @ flatten(hv)).item() == pytest.approx((flatten(v) @ flatten(hu)).item(), rel=1e-8)

    def gradient(scale):  # plain autograd on a perturbed copy in eval mode
        m = copy.deepcopy(model).eval()
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.add_(scale * v[n])
        loss = sum(mpjpe_loss(m, bx, by) for bx, by in batches) / len(batches)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(m.parameters()))])

    eps = 1e-6
    fd = (gradient(eps) - gradient(-eps)) / (2 * eps)
    torch.testing.assert_close(flatten(hv), fd, rtol=1e-4, atol=1e-4 * fd.abs().max().item())


def test_top_eigenvalues_match_explicit_eigendecomposition():
    model = tiny_net()
    batches = [tiny_data(3)]
    evals = torch.linalg.eigvalsh(explicit_hessian(model, batches))
    by_magnitude = evals[evals.abs().argsort(descending=True)]
    top = L.top_hessian_eigenvalue(model, batches, loss_fn=mse, tol=1e-12, max_iter=2000, generator=gen(0))
    assert top.converged and 2 <= top.iterations < 2000
    assert top.value == pytest.approx(by_magnitude[0].item(), rel=1e-6)
    assert L.direction_norm(top.vector) == pytest.approx(1.0)
    H = explicit_hessian(model, batches)
    torch.testing.assert_close(H @ flatten(top.vector), top.value * flatten(top.vector), rtol=0, atol=1e-4)

    eigs = L.top_hessian_eigenvalues(model, batches, 3, loss_fn=mse, tol=1e-12, max_iter=2000, generator=gen(0))
    assert len(eigs) == 3 and all(e.converged for e in eigs)
    for e, expected in zip(eigs, by_magnitude[:3].tolist()):
        assert e.value == pytest.approx(expected, rel=1e-6)
    vectors = torch.stack([flatten(e.vector) for e in eigs])
    torch.testing.assert_close(vectors @ vectors.T, torch.eye(3, dtype=F64), rtol=0, atol=1e-6)


def test_power_iteration_reports_non_convergence():
    model = tiny_net()
    e = L.top_hessian_eigenvalue(model, [tiny_data(3)], loss_fn=mse, tol=1e-14, max_iter=3, generator=gen(0))
    assert not e.converged and e.iterations == 3
    assert L.direction_norm(e.vector) == pytest.approx(1.0)


def test_power_iteration_on_a_quadratic_with_negative_curvature():
    # loss = 0.5 * (2 w0^2 - 5 w1^2) / n summed over n identical samples: H = diag(2, -5)
    model = nn.Linear(2, 1, bias=False).double()

    def quad(m, x, y):
        w = m(x)  # (n, 1) with x = e0 and e1 rows picks the weights
        return (w[0] ** 2 - 2.5 * w[1] ** 2).squeeze() + 0 * y.sum()

    batches = [(torch.eye(2, dtype=F64), torch.zeros(2, 1, dtype=F64))]
    e = L.top_hessian_eigenvalue(model, batches, loss_fn=quad, tol=1e-12, max_iter=500, generator=gen(1))
    assert e.value == pytest.approx(-5.0, rel=1e-9)  # the largest magnitude, negative here
    e2 = L.top_hessian_eigenvalues(model, batches, 2, loss_fn=quad, tol=1e-12, max_iter=500, generator=gen(1))
    assert [x.value for x in e2] == pytest.approx([-5.0, 2.0], rel=1e-9)


def test_hessian_trace_matches_explicit_trace():
    model = tiny_net()
    batches = [tiny_data(3)]
    trace = torch.trace(explicit_hessian(model, batches)).item()
    mean, stderr = L.hessian_trace(model, batches, num_samples=400, loss_fn=mse, generator=gen(0))
    assert stderr > 0
    assert abs(mean - trace) < 4 * stderr
    again = L.hessian_trace(model, batches, num_samples=400, loss_fn=mse, generator=gen(0))
    assert again == (mean, stderr)


def test_hessian_on_a_diagonal_quadratic_has_exact_trace():
    # Rademacher probes give z.Hz = tr(H) exactly for a diagonal H: zero standard error
    model = nn.Linear(3, 1, bias=False).double()
    x, y = torch.eye(3, dtype=F64), torch.zeros(3, 1, dtype=F64)
    mean, stderr = L.hessian_trace(model, [(x, y)], num_samples=5, loss_fn=mse, generator=gen(0))
    assert mean == pytest.approx(3 * 2 / 3) and stderr == pytest.approx(0.0, abs=1e-12)


def test_sample_batches():
    x = torch.arange(10.0).view(10, 1)
    y = -x
    batches = L.sample_batches((x, y), 3, 3, generator=gen(0))
    assert len(batches) == 3 and all(bx.shape == (3, 1) and by.shape == (3, 1) for bx, by in batches)
    seen = torch.cat([bx.flatten() for bx, _ in batches])
    assert len(set(seen.tolist())) == 9  # disjoint
    assert all(torch.equal(by, -bx) for bx, by in batches)  # pairs stay aligned
    again = L.sample_batches((x, y), 3, 3, generator=gen(0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="need 12 samples.*only 10"):
        L.sample_batches((x, y), 4, 3)
    with pytest.raises(ValueError, match="num_batches"):
        L.sample_batches((x, y), 0, 3)


def test_hessian_bad_inputs():
    model = tiny_net()
    batch = tiny_data(3)
    v = L.random_direction(model, generator=gen(0))
    with pytest.raises(ValueError, match="batches: expected at least one"):
        L.hessian_vector_product(model, [], v, loss_fn=mse)
    with pytest.raises(TypeError, match=r"wrap it in a list"):
        L.hessian_vector_product(model, batch, v, loss_fn=mse)
    with pytest.raises(ValueError, match="vector: missing key '2.bias'"):
        L.hessian_vector_product(model, [batch], {k: t for k, t in v.items() if k != "2.bias"}, loss_fn=mse)
    with pytest.raises(ValueError, match=r"vector\['0.weight'\]: expected shape \(4, 3\)"):
        L.hessian_vector_product(model, [batch], {**v, "0.weight": torch.zeros(3, 4, dtype=F64)}, loss_fn=mse)
    with pytest.raises(ValueError, match="k: expected an int >= 1"):
        L.top_hessian_eigenvalues(model, [batch], 0, loss_fn=mse)
    with pytest.raises(ValueError, match="at most the number of trainable parameters"):
        L.top_hessian_eigenvalues(model, [batch], 27, loss_fn=mse)
    with pytest.raises(ValueError, match="tol"):
        L.top_hessian_eigenvalue(model, [batch], loss_fn=mse, tol=0.0)
    with pytest.raises(ValueError, match="tol"):
        L.top_hessian_eigenvalue(model, [batch], loss_fn=mse, tol=-1e-3)
    with pytest.raises(ValueError, match="max_iter"):
        L.top_hessian_eigenvalue(model, [batch], loss_fn=mse, max_iter=0)
    with pytest.raises(ValueError, match="num_samples"):
        L.hessian_trace(model, [batch], num_samples=1, loss_fn=mse)
    with pytest.raises(ValueError, match="batches"):
        L.hessian_trace(model, [], loss_fn=mse)
    assert math.isfinite(L.top_hessian_eigenvalue(model, [batch], loss_fn=mse, generator=gen(1)).value)
