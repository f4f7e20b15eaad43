"""Tests for poselab.methods.seal: the energy (loss-net), its objectives, SEAL-dynamic steps, GBI."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from poselab.checks import seed_everything
from poselab.data.skeleton import CMU31
from poselab.methods.seal import (
    ENERGY_LOSSES,
    ENERGY_OBJECTIVES,
    OBJECTIVES,
    PAPER_ENERGY_CONFIGS,
    EnergyNet,
    SealModel,
    difference_loss,
    energies,
    frozen_energy,
    gbi_refine,
    joint_mse,
    joint_mse_loss,
    margin_loss,
    nce_loss,
    paper_energy_config,
    prediction_energy,
    seal_step,
    task_loss,
    train_energy,
)
from poselab.models.lifting import LIFTERS, build_lifter
from tiny_lifters import TINY_LIFTER_SIZES
from poselab.train import train_model

J = 17
SMALL = TINY_LIFTER_SIZES


def lifter(name, num_joints=J, seed=0, **kwargs):
    seed_everything(seed)
    if name == "gcn" and num_joints == CMU31.num_joints:
        kwargs.setdefault("parents", CMU31.parents)
    return build_lifter(name, num_joints=num_joints, **{**SMALL[name], **kwargs})


def energy_net(num_joints=J, seed=0, **kwargs):
    seed_everything(seed)
    return EnergyNet(num_joints, **{"hidden": 16, "num_blocks": 1, "dropout": 0.0, **kwargs})


def keypoints(batch, num_joints=J, seed=1, dtype=torch.float32):
    return torch.randn(batch, num_joints, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def poses(batch, num_joints=J, seed=2, dtype=torch.float32):
    y = 0.3 * torch.randn(batch, num_joints, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return y - y[:, :1]


def params_close(a, b, atol=1e-6):
    return all(torch.allclose(p, q, rtol=0, atol=atol) for p, q in zip(a.parameters(), b.parameters()))


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class SumEnergy(nn.Module):
    """Hand-made energy E(x, y) = w * (sum of all coordinates of y), one learnable scalar w."""

    def __init__(self, w=1.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))

    def forward(self, x, y):
        return self.w * y.flatten(1).sum(1)


class Quadratic(nn.Module):
    """E(x, y) = |y - c|^2 per sample: gradient 2 (y - c)."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", c)

    def forward(self, x, y):
        return (y - self.c).pow(2).sum((1, 2))


def with_sums(sums):
    """Two-joint poses (B, 2, 3) whose coordinates sum to ``sums`` (all on joint 1, x coordinate)."""
    y = torch.zeros(len(sums), 2, 3)
    y[:, 1, 0] = torch.tensor(sums)
    return y


# ----------------------------------------------------------------------------- configs and the energy net


def test_paper_energy_config():
    assert paper_energy_config("mlp") == dict(hidden=2048, num_blocks=2, dropout=0.0, norm="none")
    for name in ("cnn", "gcn", "transformer"):
        assert paper_energy_config(name) == PAPER_ENERGY_CONFIGS["default"]
    cfg = paper_energy_config("mlp")
    cfg["hidden"] = 1
    assert PAPER_ENERGY_CONFIGS["mlp"]["hidden"] == 2048  # a copy
    assert EnergyNet(**paper_energy_config("gcn")).hidden == 256
    with pytest.raises(ValueError, match="unknown task_net 'resnet'.*'mlp'"):
        paper_energy_config("resnet")
    assert set(OBJECTIVES) < set(ENERGY_OBJECTIVES) == set(ENERGY_LOSSES)


@pytest.mark.parametrize("num_joints", [17, 31])
@pytest.mark.parametrize("norm", ["none", "layer"])
def test_energy_net_shapes_and_layout(num_joints, norm):
    h, blocks = 16, 2
    net = energy_net(num_joints, hidden=h, num_blocks=blocks, dropout=0.25, norm=norm)
    out = net(keypoints(5, num_joints), poses(5, num_joints))
    assert out.shape == (5,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    layer_norms = [m for m in net.modules() if isinstance(m, nn.LayerNorm)]
    assert len(layer_norms) == (1 + 2 * blocks if norm == "layer" else 0)
    ln = 2 * h if norm == "layer" else 0
    assert net.num_parameters == (num_joints * 5 * h + h + ln) + blocks * 2 * (h * h + h + ln) + h  # output layer: no bias
    assert net.stem[0].in_features == num_joints * 5
    assert (net.num_joints, net.hidden, net.num_blocks, net.dropout, net.norm) == (num_joints, h, blocks, 0.25, norm)


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_energy_of_a_sample_does_not_depend_on_its_batch(norm):
    net = energy_net(norm=norm).eval()
    x, y = keypoints(6), poses(6)
    whole = net(x, y)
    alone = torch.cat([net(x[i : i + 1], y[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(whole, alone)


def test_energy_net_gradcheck_float64():
    net = energy_net(4, hidden=5, num_blocks=1, norm="layer").double().eval()
    x = keypoints(3, 4, dtype=torch.float64)
    y = poses(3, 4, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda yy: net(x, yy), (y,))


def test_energy_net_bad_input_and_construction():
    net = energy_net()
    x, y = keypoints(2), poses(2)
    with pytest.raises(ValueError, match=r"x: expected 2D keypoints of shape \(B, 17, 2\).*\(2, 16, 2\)"):
        net(keypoints(2, 16), y)
    with pytest.raises(ValueError, match=r"y: expected 3D poses of shape \(B, 17, 3\).*\(2, 31, 3\)"):
        net(x, poses(2, 31))
    with pytest.raises(ValueError, match=r"y: expected 3D poses of shape \(B, 17, 3\).*\(2, 17, 2\)"):
        net(x, torch.zeros(2, 17, 2))
    with pytest.raises(ValueError, match=r"same batch size B.*\(2, 17, 2\).*\(3, 17, 3\)"):
        net(x, poses(3))
    with pytest.raises(TypeError, match=r"y: expected a torch.Tensor of shape \(B, 17, 3\), got list"):
        net(x, [[0.0]])
    with pytest.raises(TypeError, match="does not match the model's torch.float32"):
        net(x, y.double())
    with pytest.raises(ValueError, match="unknown norm 'batch'; expected one of 'none', 'layer'"):
        EnergyNet(norm="batch")
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\), got 1.0"):
        EnergyNet(dropout=1.0)
    with pytest.raises(ValueError, match="hidden: expected an int >= 1, got 0"):
        EnergyNet(hidden=0)
    with pytest.raises(TypeError, match="num_joints"):
        EnergyNet(num_joints=17.0)
    plain = EnergyNet(num_blocks=0)
    assert len(plain.blocks) == 0 and plain(x, y).shape == (2,)


# ----------------------------------------------------------------------------- losses


def test_joint_mse_known_answer():
    target = torch.zeros(2, 2, 3)
    pred = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]],  # joint MSEs 0, 3 -> 3
                         [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]])  # joint MSEs 3, 1 -> 4
    assert joint_mse(pred, target).item() == pytest.approx(3.5)
    model = nn.Identity()
    assert joint_mse_loss(lambda x: x, pred, target).item() == pytest.approx(3.5)
    assert joint_mse_loss(model, pred, target).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match=r"target: expected the shape of pred \(2, 2, 3\), got \(2, 3, 3\)"):
        joint_mse(pred, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"pred: expected 3D poses of shape \(B, J, 3\)"):
        joint_mse(torch.zeros(2, 6), torch.zeros(2, 6))


def test_margin_loss_known_answer_with_clipping():
    x, y = keypoints(2, 2), torch.zeros(2, 2, 3)
    y_hat = torch.tensor([[[0.0, 0.0, 0.0], [0.3, 0.0, 0.4]],   # MPJPE 0.5 / 2 = 0.25, E = 0.7
                          [[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]])  # MPJPE 1 / 2 = 0.5,   E = -1
    energy = SumEnergy(1.0)
    loss = margin_loss(energy, x, y, y_hat)
    # relu(0.25 - 0.7 + 0) = 0 (clipped), relu(0.5 + 1 + 0) = 1.5
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    assert energy.w.grad.item() == pytest.approx(0.5)  # only the unclipped sample: d/dw (0.5 + w) / 2
    # with a zero energy the loss is the mean of Delta, the per-sample MPJPE in metres
    assert margin_loss(SumEnergy(0.0), x, y, y_hat).item() == pytest.approx((0.25 + 0.5) / 2)
    # E(x, y) enters with a plus sign: ground truth with coordinate sum 2 raises the first term
    y2 = with_sums([2.0, 2.0])
    d = (y2 - y_hat).norm(dim=-1).mean(-1)
    expected = torch.relu(d - torch.tensor([0.7, -1.0]) + 2.0).mean()
    assert margin_loss(SumEnergy(1.0), x, y2, y_hat).item() == pytest.approx(expected.item())


def test_nce_loss_known_answer_and_stability():
    x = keypoints(2, 2)
    a, b = [0.5, 2.0], [1.5, -1.0]
    loss = nce_loss(SumEnergy(1.0), x, with_sums(a), with_sums(b))
    expected = sum(-math.log(math.exp(-ai) / (math.exp(-ai) + math.exp(-bi))) for ai, bi in zip(a, b)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    energy = SumEnergy(1.0)
    big = nce_loss(energy, x, with_sums([1e4, -1e4]), with_sums([-1e4, 1e4]))
    assert torch.isfinite(big) and big.item() == pytest.approx(2e4 / 2)  # softplus(2e4) = 2e4, softplus(-2e4) = 0
    big.backward()
    assert torch.isfinite(energy.w.grad)


def test_difference_loss_known_answer():
    x = keypoints(2, 2)
    loss = difference_loss(SumEnergy(2.0), x, with_sums([0.5, 2.0]), with_sums([1.5, -1.0]))
    assert loss.item() == pytest.approx(2.0 * ((0.5 - 1.5) + (2.0 + 1.0)) / 2)


@pytest.mark.parametrize("objective", ENERGY_OBJECTIVES)
def test_losses_do_not_propagate_into_predictions(objective):
    net = energy_net()
    x, y = keypoints(4), poses(4)
    y_hat = poses(4, seed=7).requires_grad_(True)
    loss = ENERGY_LOSSES[objective](net, x, y, y_hat)
    assert loss.ndim == 0
    loss.backward()
    assert y_hat.grad is None
    assert all(p.grad is not None for p in net.parameters())


def test_losses_bad_input():
    x, y = keypoints(2), poses(2)
    with pytest.raises(ValueError, match=r"y and y_hat: expected equal shapes.*\(2, 17, 3\) and \(3, 17, 3\)"):
        margin_loss(energy_net(), x, y, poses(3))
    with pytest.raises(ValueError, match=r"energy\(x, y and x, y_hat\): expected one energy per sample, shape \(4,\), got \(4, 1\)"):
        nce_loss(lambda x, y: y.flatten(1).sum(1, keepdim=True), x, y, y)


def test_frozen_energy_gradient_reaches_y_only():
    net = energy_net(dropout=0.25).eval()
    x = keypoints(4)
    y = poses(4).requires_grad_(True)
    e = frozen_energy(net, x, y)
    torch.testing.assert_close(e, net(x, y), rtol=0, atol=0)
    e.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    # the same gradient wrt y as the plain energy
    y2 = y.detach().clone().requires_grad_(True)
    net(x, y2).sum().backward()
    torch.testing.assert_close(y.grad, y2.grad)


def test_task_loss_known_answer():
    x, y = keypoints(2, 2), torch.zeros(2, 2, 3)
    y_hat = with_sums([1.0, -2.0])  # joint MSEs: 1/3 and 4/3 -> joint_mse 5/6; energies 1, -2 (mean -0.5)
    energy = SumEnergy(1.0)
    loss = task_loss(None, energy, x, y, 0.5, y_hat)
    assert loss.item() == pytest.approx(5 / 6 + 0.5 * -0.5)
    assert task_loss(None, energy, x, y, 0, y_hat).item() == pytest.approx(5 / 6)
    # y_hat = task_net(x) when not given
    assert task_loss(lambda inp: y_hat, energy, x, y, 0.5).item() == pytest.approx(loss.item())
    # gradient into the prediction, none into the energy
    p = y_hat.clone().requires_grad_(True)
    task_loss(None, energy, x, y, 2.0, p).backward()
    assert energy.w.grad is None
    torch.testing.assert_close(p.grad, 2 * p.detach() / 3 / 2 + 2.0 / 2 * torch.ones_like(p))
    with pytest.raises(ValueError, match="alpha: expected a finite number >= 0, got -1"):
        task_loss(None, energy, x, y, -1, y_hat)
    with pytest.raises(TypeError, match="alpha"):
        task_loss(None, energy, x, y, "1", y_hat)


# ----------------------------------------------------------------------------- SEAL-dynamic


def test_seal_model_construction():
    task, net = lifter("mlp"), energy_net()
    model = SealModel(task, net, "nce", alpha=0.5)
    assert model.task is task and model.energy is net and (model.objective, model.alpha) == ("nce", 0.5)
    x = keypoints(3)
    torch.testing.assert_close(model.eval()(x), task(x), rtol=0, atol=0)
    groups = model.param_groups(1e-3, 2e-3)
    assert [g["lr"] for g in groups] == [1e-3, 2e-3]
    assert [len(g["params"]) for g in groups] == [len(list(task.parameters())), len(list(net.parameters()))]
    with pytest.raises(ValueError, match="unknown objective 'difference'; expected one of 'margin', 'nce'"):
        SealModel(task, net, "difference")
    with pytest.raises(ValueError, match="alpha: expected a finite number >= 0, got nan"):
        SealModel(task, net, alpha=float("nan"))
    with pytest.raises(ValueError, match="energy: expected num_joints=17 like the task-net, got num_joints=31"):
        SealModel(task, energy_net(31))
    with pytest.raises(TypeError, match="energy: expected an EnergyNet, got SumEnergy"):
        SealModel(task, SumEnergy())
    with pytest.raises(TypeError, match="task: expected a torch.nn.Module"):
        SealModel(lambda x: x, net)
    with pytest.raises(ValueError, match="lr_energy: expected a finite number > 0, got 0"):
        model.param_groups(1e-3, 0)
    with pytest.raises(TypeError, match="expected a SealModel, got MLPLifter"):
        seal_step(task, x, poses(3), torch.optim.Adam(task.parameters()))


def _manual_step(ref, x, y, objective, alpha, lr_task, lr_energy):
    """Algorithm 1 written out with two separate Adams and hand formulas; returns L_F."""
    opt_task = torch.optim.Adam(ref.task.parameters(), lr=lr_task)
    opt_energy = torch.optim.Adam(ref.energy.parameters(), lr=lr_energy)
    y_hat = ref.task(x)
    # one pass over the 2B pairs, as seal_step does: parameters whose gradient is exactly zero in
    # exact arithmetic (biases before BatchNorm, an energy unit active on every sample) get rounding
    # noise, which Adam's first step normalises to about +-lr, so the reference must do the same
    # float operations
    both = ref.energy(torch.cat([x, x]), torch.cat([y, y_hat.detach()]))
    pos, neg = both[: x.shape[0]], both[x.shape[0]:]
    if objective == "margin":
        loss_e = torch.relu((y - y_hat.detach()).norm(dim=-1).mean(-1) - neg + pos).mean()
    else:
        # softplus(pos - neg) is -log(exp(-pos) / (exp(-pos) + exp(-neg))) (see the known-answer test),
        # written with the same float operations as nce_loss for the reason above
        loss_e = torch.nn.functional.softplus(pos - neg).mean()
    opt_energy.zero_grad()
    loss_e.backward()
    opt_energy.step()
    loss_t = (y_hat - y).pow(2).mean(-1).sum(-1).mean() + alpha * ref.energy(x, y_hat).mean()
    opt_task.zero_grad()
    loss_t.backward()
    opt_task.step()
    return loss_t.detach()


@pytest.mark.parametrize(
    "name,num_joints,objective",
    [(n, J, o) for n in LIFTERS for o in OBJECTIVES] + [("gcn", CMU31.num_joints, "margin")],
)
def test_seal_step_matches_algorithm_1(name, num_joints, objective):
    model = SealModel(lifter(name, num_joints, dropout=0.0), energy_net(num_joints), objective, alpha=0.5).train()
    ref = copy.deepcopy(model)
    x, y = keypoints(8, num_joints), poses(8, num_joints)
    optimizer = torch.optim.Adam(model.param_groups(1e-3, 2e-3))
    snapshots = [copy.deepcopy(model)]
    optimizer.register_step_post_hook(lambda opt, args, kwargs: snapshots.append(copy.deepcopy(model)))
    loss = seal_step(model, x, y, optimizer)
    assert loss.ndim == 0 and not loss.requires_grad and torch.isfinite(loss)
    start, after_energy, after_task = snapshots
    # step 2 (loss-net): only the energy moved (BatchNorm statistics moved in step 1's forward pass)
    assert params_close(after_energy.task, start.task, atol=0)
    assert not params_close(after_energy.energy, start.energy, atol=0)
    # step 3 (task-net): only the task moved
    assert states_equal(after_task.energy, after_energy.energy)
    assert not params_close(after_task.task, after_energy.task, atol=0)
    expected = _manual_step(ref, x, y, objective, 0.5, 1e-3, 2e-3)
    assert params_close(model.energy, ref.energy) and params_close(model.task, ref.task)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", LIFTERS)
def test_alpha_zero_is_a_plain_mse_step(name):
    model = SealModel(lifter(name, dropout=0.0), energy_net(), alpha=0.0).train()
    plain = copy.deepcopy(model.task)
    x, y = keypoints(8), poses(8)
    seal_step(model, x, y, torch.optim.Adam(model.param_groups(1e-3, 1e-3)))
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    joint_mse(plain(x), y).backward()
    opt.step()
    assert params_close(model.task, plain)


class Interrupt:
    def __init__(self, after):
        self.after = after

    def __call__(self, epoch, history, model):
        if epoch == self.after:
            raise KeyboardInterrupt


def test_train_model_with_seal_step_resumes_bitwise(tmp_path):
    data = (keypoints(40), poses(40))
    val = {"val": (keypoints(8, seed=5), poses(8, seed=6))}

    def make(seed=0):
        return SealModel(lifter("mlp", seed=seed), energy_net(seed=seed + 1, dropout=0.25), "margin", alpha=0.1)

    kwargs = dict(
        epochs=3, batch_size=16, step_fn=seal_step, param_groups=lambda m: m.param_groups(1e-3, 1e-3),
        lr_decay=1.0, eval_sets=val, device="cpu", progress=False,
    )
    full = make()
    history = train_model(full, data, **kwargs)
    assert len(history) == 3 and all(math.isfinite(v) and v > 0 for v in history.column("train_loss"))
    assert all(v > 0 for v in history.column("val/mpjpe_mm"))
    ckpt = tmp_path / "seal.pt"
    with pytest.raises(KeyboardInterrupt):
        train_model(make(), data, checkpoint_path=ckpt, callbacks=Interrupt(2), **kwargs)
    torch.rand(100)  # another "session": a different global RNG state
    resumed = make(seed=9)
    again = train_model(resumed, data, checkpoint_path=ckpt, **kwargs)
    assert states_equal(resumed, full)
    assert again.column("train_loss") == history.column("train_loss")


# ----------------------------------------------------------------------------- GBI baseline


def test_train_energy_ranks_ground_truth_below_predictions(tmp_path):
    task = lifter("mlp")
    x, y = keypoints(64), poses(64)
    net = energy_net(hidden=32)
    with torch.no_grad():
        before = margin_loss(net.eval(), x, y, task.eval()(x)).item()
    history = train_energy(
        net, task, (x, y), epochs=8, batch_size=16, lr=3e-3, eval_sets={"train": (x, y)}, device="cpu",
        progress=False,
    )
    with torch.no_grad():
        after = margin_loss(net.eval(), x, y, task.eval()(x)).item()
    assert after < before
    gaps = history.column("train/energy_gap")
    assert gaps[-1] > 0 and gaps[-1] > gaps[0]
    assert history.column("lr") == [3e-3] * 8  # no decay
    assert (energies(net, x, task(x)) > energies(net, x, y)).float().mean() > 0.9
    # the difference objective runs; a checkpoint of one objective is not continued by another
    ckpt = tmp_path / "energy.pt"
    diff = train_energy(energy_net(), task, (x, y), epochs=1, objective="difference", device="cpu",
                        progress=False, checkpoint_path=ckpt)
    assert math.isfinite(diff.last["train_loss"])
    with pytest.raises(ValueError, match="incompatible.*loss_fn"):
        train_energy(energy_net(), task, (x, y), epochs=1, objective="nce", device="cpu", progress=False,
                     checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="unknown objective 'mse'"):
        train_energy(net, task, (x, y), epochs=1, objective="mse", progress=False)
    with pytest.raises(ValueError, match=r"targets of the task-net's output shape \(64, 17, 3\)"):
        train_energy(net, task, (x, y[:, :16]), epochs=1, progress=False)


def test_gbi_refine_trajectory():
    net = energy_net(dropout=0.25).train()
    x, y0 = keypoints(5), poses(5, seed=3) + 0.1
    with torch.no_grad():  # GBI needs gradients: it must work inside no_grad too
        traj = gbi_refine(net, x, y0, steps=4, step_size=1e-3)
    assert traj.shape == (5, 5, J, 3) and not traj.requires_grad
    assert torch.equal(traj[0], y0)
    assert torch.equal(traj[:, :, 0], y0[:, 0].expand(5, 5, 3))  # the root stays put
    assert (traj[-1, :, 1:] != y0[:, 1:]).any()
    assert net.training and all(p.grad is None for p in net.parameters())
    assert energies(net, x, traj[-1]).sum() < energies(net, x, traj[0]).sum()
    free = gbi_refine(net, x, y0, steps=1, step_size=1e-3, root=None)
    assert (free[1, :, 0] != y0[:, 0]).any()
    zero = gbi_refine(net, x, y0, steps=0, step_size=1.0)
    assert zero.shape == (1, 5, J, 3) and torch.equal(zero[0], y0)


def test_gbi_refine_quadratic_closed_form():
    c = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    y0 = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(1))
    x, eta = torch.zeros(2, 3, 2), 0.1
    traj = gbi_refine(Quadratic(c), x, y0, steps=3, step_size=eta, root=None)
    for k in range(4):  # y_k - c = (1 - 2 eta)^k (y_0 - c)
        torch.testing.assert_close(traj[k], c + (1 - 2 * eta) ** k * (y0 - c))
    rooted = gbi_refine(Quadratic(c), x, y0, steps=3, step_size=eta, root=1)
    torch.testing.assert_close(rooted[:, :, 1], y0[:, 1].expand(4, 2, 3))
    torch.testing.assert_close(rooted[3][:, [0, 2]], (c + 0.8**3 * (y0 - c))[:, [0, 2]])


def test_gbi_refine_bad_args():
    net, x, y = energy_net(), keypoints(2), poses(2)
    with pytest.raises(ValueError, match="steps: expected an int >= 0, got -1"):
        gbi_refine(net, x, y, steps=-1, step_size=0.1)
    with pytest.raises(TypeError, match="steps"):
        gbi_refine(net, x, y, steps=1.5, step_size=0.1)
    with pytest.raises(ValueError, match="step_size: expected a finite number >= 0, got -0.1"):
        gbi_refine(net, x, y, steps=1, step_size=-0.1)
    with pytest.raises(ValueError, match="step_size"):
        gbi_refine(net, x, y, steps=1, step_size=float("inf"))
    with pytest.raises(ValueError, match=r"root: expected None or a joint index in \[0, 17\), got 17"):
        gbi_refine(net, x, y, steps=1, step_size=0.1, root=17)
    with pytest.raises(ValueError, match=r"y_init: expected 3D poses of shape \(B, J, 3\)"):
        gbi_refine(net, x, y[..., :2], steps=1, step_size=0.1)
    with pytest.raises(ValueError, match="x: expected a tensor .* B = 2"):
        gbi_refine(net, keypoints(3), y, steps=1, step_size=0.1)


# ----------------------------------------------------------------------------- energies


def test_energies_and_prediction_energy():
    net, task = energy_net(dropout=0.25).train(), lifter("gcn").train()
    x, y = keypoints(10), poses(10)
    e = energies(net, x, y, batch_size=3)
    assert e.shape == (10,) and e.device.type == "cpu" and not e.requires_grad
    assert net.training
    with torch.no_grad():
        torch.testing.assert_close(e, net.eval()(x, y))
    net.train()
    value = prediction_energy(net, task, x, batch_size=4)
    assert isinstance(value, float)
    assert net.training and task.training
    with torch.no_grad():
        expected = net.eval()(x, task.eval()(x)).mean().item()
    assert value == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        energies(net, x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"x: expected a tensor \(N, J, 2\) with the N of y, N = 10"):
        energies(net, x[:4], y)
