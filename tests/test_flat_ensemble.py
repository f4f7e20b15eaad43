"""Tests for poselab.methods.flat_ensemble: adaptive scaling and M-head ensembles on a shared encoder."""

import pytest
import torch

from poselab.checks import seed_everything
from poselab.methods.flat_ensemble import (
    SCALE_BIAS_INIT,
    FlatEnsemble,
    adaptive_scaling,
    ensemble_loss,
    flat_ensemble,
    head_deviation,
)
from poselab.models.lifting import LIFTERS, build_lifter
from tiny_lifters import TINY_LIFTER_SIZES
from poselab.train import mpjpe_loss, train_model

J = 17
SMALL = TINY_LIFTER_SIZES


def lifter(name, seed=0, **kwargs):
    seed_everything(seed)
    return build_lifter(name, **{**SMALL[name], **kwargs})


def keypoints(batch, num_joints=J, seed=1, dtype=torch.float32):
    return torch.randn(batch, num_joints, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def poses(batch, num_joints=J, seed=2):
    y = 0.3 * torch.randn(batch, num_joints, 3, generator=torch.Generator().manual_seed(seed))
    return y - y[:, :1]


def set_scales(model, offsets):
    """Make head m's scale exactly relu(offsets[m]) + 1 for every input (second scaling layer zeroed)."""
    with torch.no_grad():
        model.scale_weight2.zero_()
        model.scale_bias2.copy_(torch.tensor(offsets, dtype=model.scale_bias2.dtype))


def tiny_model(num_heads, pose_biases, scaling=False):
    """A 2-joint ensemble whose heads ignore the input: zero weights, head m's pose = pose_biases[m] (2, 3)."""
    seed_everything(0)
    model = FlatEnsemble(build_lifter("mlp", num_joints=2, hidden=4, num_blocks=0), num_heads, scaling=scaling)
    with torch.no_grad():
        model.head_weight.zero_()
        model.head_bias.copy_(torch.stack([torch.as_tensor(b, dtype=torch.float32) for b in pose_biases]).reshape(-1))
    return model.eval()


# ----------------------------------------------------------------------------- construction and shapes


@pytest.mark.parametrize("name", LIFTERS)
def test_shapes_and_parameter_layout(name):
    base = lifter(name)
    m, h = 3, 16
    model = FlatEnsemble(base, m, scaling=True, scale_hidden=h).eval()
    f = base.feature_dim
    assert model.encoder is base.encoder
    assert (model.num_heads, model.scaling, model.scale_hidden) == (m, True, h)
    assert (model.num_joints, model.feature_dim, model.root) == (J, f, base.root)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters() if not k.startswith("encoder.")}
    assert shapes == {
        "head_weight": (m * J * 3, f), "head_bias": (m * J * 3,),
        "scale_weight1": (m * h, f), "scale_bias1": (m * h,),
        "scale_weight2": (m, h), "scale_bias2": (m,),
    }
    # the lifter's head is copied, not shared: it is not a parameter of the ensemble
    assert all(p is not base.head.weight for p in model.parameters())
    x = keypoints(5)
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (5, f)
        assert model.head_outputs(feats).shape == (5, m, J * 3)
        assert model.scales(feats).shape == (5, m)
        assert model.head_poses(x).shape == (5, m, J, 3)
        out = model(x)
    assert out.shape == (5, J, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()
    encoder = sum(p.numel() for p in base.encoder.parameters())
    assert model.num_parameters == encoder + m * (J * 3 * (f + 1) + h * (f + 1) + h + 1)
    plain = FlatEnsemble(base, m, scaling=False)
    assert plain.num_parameters == encoder + m * J * 3 * (f + 1)
    assert not hasattr(plain, "scale_weight1")


def test_convenience_constructors_and_init():
    base = lifter("mlp")
    single = adaptive_scaling(base, scale_hidden=8)
    assert (single.num_heads, single.scaling, single.scale_hidden) == (1, True, 8)
    ens = flat_ensemble(base, 4)
    assert (ens.num_heads, ens.scaling, ens.scale_hidden) == (4, True, 64)
    out, f = J * 3, base.feature_dim
    torch.testing.assert_close(ens.head_weight[:out], base.head.weight, rtol=0, atol=0)
    torch.testing.assert_close(ens.head_bias[:out], base.head.bias, rtol=0, atol=0)
    # other heads: nn.Linear's default U(+-1/sqrt(fan_in)), different from head 0 and from each other
    bound = f**-0.5
    assert ens.head_weight.abs().max() <= bound and ens.scale_weight1.abs().max() <= bound
    assert ens.scale_weight2.abs().max() <= 64**-0.5
    assert (ens.scale_bias2 == SCALE_BIAS_INIT).all()  # positive: the ReLU starts active
    heads = ens.head_weight.view(4, out, f)
    assert all(not torch.equal(heads[i], heads[j]) for i in range(4) for j in range(i))
    # reproducible under seed_everything
    seed_everything(5)
    a = FlatEnsemble(base, 3)
    seed_everything(5)
    b = FlatEnsemble(base, 3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("name", LIFTERS)
def test_single_head_without_scaling_equals_the_lifter(name):
    base = lifter(name)
    model = FlatEnsemble(base, 1, scaling=False)
    x = keypoints(6)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), base.eval()(x))
        torch.manual_seed(3)  # same dropout masks in train mode
        expected = base.train()(x)
        torch.manual_seed(3)
        assert torch.equal(model.train()(x), expected)


# ----------------------------------------------------------------------------- the computation


@pytest.mark.parametrize("name", LIFTERS)
def test_scales_at_least_one_and_ones_without_scaling(name):
    base = lifter(name)
    x = keypoints(32)
    model = FlatEnsemble(base, 4, scaling=True).eval()
    with torch.no_grad():
        model.scale_bias2.copy_(torch.tensor([-1.0, 0.0, 0.0, 1.0]))  # some heads below 0, some above
        s = model.scales(model.features(x))
    assert (s >= 1).all()
    assert (s > 1).any()
    plain = FlatEnsemble(base, 4, scaling=False).eval()
    with torch.no_grad():
        assert torch.equal(plain.scales(plain.features(x)), torch.ones(32, 4))


@pytest.mark.parametrize("name", LIFTERS)
def test_forward_is_mean_of_head_poses_and_root_is_zero(name):
    model = FlatEnsemble(lifter(name), 3).eval()
    x = keypoints(7)
    with torch.no_grad():
        heads = model.head_poses(x)
        out = model(x)
    torch.testing.assert_close(out, heads.mean(1), rtol=0, atol=0)
    assert torch.equal(heads[:, :, model.root], torch.zeros(7, 3, 3))
    assert torch.equal(out[:, model.root], torch.zeros(7, 3))
    # also in train mode (with gradients)
    out = model.train()(x)
    assert torch.equal(out[:, model.root].detach(), torch.zeros(7, 3))


@pytest.mark.parametrize("name", LIFTERS)
def test_head_poses_match_a_loop_over_heads(name):
    m, h = 3, 8
    model = FlatEnsemble(lifter(name), m, scaling=True, scale_hidden=h).eval()
    with torch.no_grad():
        model.scale_bias2.copy_(torch.tensor([4.0, 5.0, 6.0]))  # every head's scale active (> 1)
        x = keypoints(5)
        feats = model.features(x)
        got = model.head_poses(x)
        out = J * 3
        for k in range(m):  # reference: one head at a time, from the stacked tensors' rows
            f_k = feats @ model.head_weight[k * out : (k + 1) * out].T + model.head_bias[k * out : (k + 1) * out]
            rows = slice(k * h, (k + 1) * h)
            hid = torch.relu(feats @ model.scale_weight1[rows].T + model.scale_bias1[rows])
            scale = torch.relu(hid @ model.scale_weight2[k] + model.scale_bias2[k]) + 1
            assert (scale > 1).all()
            pose = (f_k / scale[:, None]).view(5, J, 3)
            torch.testing.assert_close(got[:, k], pose - pose[:, :1], rtol=1e-5, atol=1e-6)


def test_scaled_output_is_unscaled_over_scale():
    base = lifter("mlp")
    model = FlatEnsemble(base, 3, scaling=True).eval()
    set_scales(model, [1.5, -2.0, 0.5])  # scales relu(.) + 1 = 2.5, 1, 1.5
    x = keypoints(4)
    with torch.no_grad():
        feats = model.features(x)
        torch.testing.assert_close(model.scales(feats), torch.tensor([[2.5, 1.0, 1.5]]).expand(4, 3))
        raw = model.head_outputs(feats).view(4, 3, J, 3)
        raw = raw - raw[:, :, :1]
        expected = raw / torch.tensor([2.5, 1.0, 1.5]).view(1, 3, 1, 1)
        torch.testing.assert_close(model.head_poses(x), expected)
        # heads 0 and 1 without scaling are the unscaled heads
        unscaled = FlatEnsemble(base, 3, scaling=False).eval()
        unscaled.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("scale_")})
        torch.testing.assert_close(unscaled.head_poses(x), raw)


# ----------------------------------------------------------------------------- gradients and training


@pytest.mark.parametrize("name", LIFTERS)
def test_gradients_reach_encoder_every_head_and_every_scaling_parameter(name):
    m, h = 3, 8
    model = FlatEnsemble(lifter(name), m, scaling=True, scale_hidden=h).train()
    # positive second-layer bias: every head's outer ReLU is active, so its scaling MLP gets gradient
    set_scales(model, [1.0, 1.0, 1.0])
    with torch.no_grad():
        model.scale_weight2.uniform_(-0.1, 0.1)
    ensemble_loss(model, keypoints(8), poses(8)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    per_head = {
        "head_weight": model.head_weight.grad.view(m, -1),
        "head_bias": model.head_bias.grad.view(m, -1),
        "scale_weight1": model.scale_weight1.grad.view(m, -1),
        "scale_weight2": model.scale_weight2.grad,
        "scale_bias2": model.scale_bias2.grad.view(m, 1),
    }
    for pname, g in per_head.items():
        assert (g.abs().sum(1) > 0).all(), f"{pname}: some head got no gradient"


def test_ensemble_loss_known_answer():
    # two joints, root at the origin; targets all zero
    head0 = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]  # joint-1 error 1   -> MPJPE 0.5
    head1 = [[0.0, 0.0, 0.0], [0.0, 0.3, 0.4]]  # joint-1 error 0.5 -> MPJPE 0.25
    model = tiny_model(2, [head0, head1])
    x, y = keypoints(3, num_joints=2), torch.zeros(3, 2, 3)
    assert ensemble_loss(model, x, y).item() == pytest.approx(0.375)
    # not the MPJPE of the mean prediction (0.5, 0.15, 0.2): |.| / 2
    assert mpjpe_loss(model, x, y).item() == pytest.approx((0.25 + 0.0225 + 0.04) ** 0.5 / 2)
    # with scaling: head 0 divided by relu(1) + 1 = 2 -> MPJPE 0.25; head 1 by 1
    scaled = FlatEnsemble(build_lifter("mlp", num_joints=2, hidden=4, num_blocks=0), 2, scaling=True).eval()
    scaled.load_state_dict({**scaled.state_dict(), "head_weight": model.head_weight, "head_bias": model.head_bias})
    set_scales(scaled, [1.0, -3.0])
    assert ensemble_loss(scaled, x, y).item() == pytest.approx((0.25 + 0.25) / 2)
    # other models: plain MPJPE
    base = lifter("mlp").eval()
    xs, ys = keypoints(4), poses(4)
    assert torch.equal(ensemble_loss(base, xs, ys), mpjpe_loss(base, xs, ys))


@pytest.mark.parametrize("name", LIFTERS)
def test_adam_steps_reduce_ensemble_loss(name):
    model = FlatEnsemble(lifter(name), 3)
    x, y = keypoints(32), poses(32)
    with torch.no_grad():
        before = ensemble_loss(model.eval(), x, y).item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(25):
        loss = ensemble_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = ensemble_loss(model.eval(), x, y).item()
    assert after < before


def test_train_model_with_ensemble_loss():
    model = FlatEnsemble(lifter("mlp"), 2)
    history = train_model(
        model, (keypoints(40), poses(40)), epochs=1, batch_size=16, loss_fn=ensemble_loss,
        eval_sets={"val": (keypoints(8, seed=5), poses(8, seed=6))}, device="cpu", progress=False,
    )
    assert len(history) == 1
    rec = history.last
    assert rec["train_loss"] > 0 and torch.isfinite(torch.tensor(rec["train_loss"]))
    assert rec["val/mpjpe_mm"] > 0


def test_float64_model():
    model = FlatEnsemble(lifter("gcn"), 2).double().eval()
    out = model(keypoints(3, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- head deviation


def test_head_deviation_known_answer():
    d = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.4]])  # offset between heads per joint, |d| = 0, 0.5
    p = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3]])
    two = tiny_model(2, [p, p + d]).train()
    x = keypoints(10, num_joints=2)
    dev = head_deviation(two, x, batch_size=3)  # batches of 3, 3, 3, 1
    assert dev.shape == (2,) and dev.dtype == torch.float64
    torch.testing.assert_close(dev, torch.tensor([0.0, 0.25], dtype=torch.float64))  # |d| / 2
    assert two.training  # mode restored
    three = tiny_model(3, [p, p + d, p + 2 * d])
    # deviations |d|, 0, |d| from the middle head: sqrt(2/3) |d|
    torch.testing.assert_close(
        head_deviation(three, x), torch.tensor([0.0, 0.5 * (2 / 3) ** 0.5], dtype=torch.float64)
    )
    assert not three.training


@pytest.mark.parametrize("name", LIFTERS)
def test_head_deviation_of_real_heads(name):
    model = FlatEnsemble(lifter(name), 3).train()
    dev = head_deviation(model, keypoints(9), batch_size=4)
    assert dev.shape == (J,) and torch.isfinite(dev).all() and (dev >= 0).all()
    assert dev[model.root] == 0 and (dev[1:] > 0).all()  # differently initialised heads disagree
    assert model.training


def test_head_deviation_errors():
    with pytest.raises(ValueError, match="at least 2 heads.*num_heads=1"):
        head_deviation(FlatEnsemble(lifter("mlp"), 1), keypoints(2))
    with pytest.raises(TypeError, match="expected a FlatEnsemble, got MLPLifter"):
        head_deviation(lifter("mlp"), keypoints(2))
    with pytest.raises(ValueError, match="batch_size"):
        head_deviation(FlatEnsemble(lifter("mlp"), 2), keypoints(2), batch_size=0)


# ----------------------------------------------------------------------------- bad input


def test_bad_construction():
    base = lifter("mlp")
    with pytest.raises(ValueError, match="num_heads: expected an int >= 1, got 0"):
        FlatEnsemble(base, 0)
    with pytest.raises(TypeError, match="num_heads"):
        FlatEnsemble(base, 2.0)
    with pytest.raises(ValueError, match="scale_hidden: expected an int >= 1, got 0"):
        FlatEnsemble(base, 2, scale_hidden=0)
    with pytest.raises(TypeError, match="scaling: expected a bool"):
        FlatEnsemble(base, 2, scaling=1)
    with pytest.raises(TypeError, match="expected a poselab.models.lifting.Lifter.*got Linear"):
        FlatEnsemble(torch.nn.Linear(3, 3), 2)
    with pytest.raises(TypeError, match="Lifter"):
        flat_ensemble(base.encoder, 2)


@pytest.mark.parametrize("name", LIFTERS)
def test_bad_input(name):
    model = FlatEnsemble(lifter(name), 2).eval()
    with pytest.raises(ValueError, match=r"expected 2D keypoints of shape \(B, 17, 2\).*\(2, 16, 2\)"):
        model(torch.zeros(2, 16, 2))
    with pytest.raises(ValueError, match=r"\(B, 17, 2\).*\(17, 2\)"):
        model.head_poses(torch.zeros(17, 2))
    with pytest.raises(TypeError, match="does not match the model's torch.float32"):
        model(keypoints(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"features: expected shape \(B, {model.feature_dim}\), got \(2, 3\)"):
        model.head_outputs(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="features: expected shape"):
        model.scales(torch.zeros(2, model.feature_dim, 1))
    with pytest.raises(ValueError, match=r"targets: expected shape \(B, J, 3\) = \(2, 17, 3\).*\(2, 16, 3\)"):
        ensemble_loss(model, keypoints(2), torch.zeros(2, 16, 3))
    with pytest.raises(ValueError, match="targets' shape"):
        ensemble_loss(lifter(name).eval(), keypoints(2), torch.zeros(2, 16, 3))


@pytest.mark.parametrize("name", LIFTERS)
def test_scaling_starts_active_for_nearly_every_input(name):
    """A dead ReLU (h < 0 for all inputs) would switch ASM off for good: it must start active."""
    seed_everything(0)
    model = flat_ensemble(lifter(name), 4).eval()
    x = torch.randn(256, J, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        active = (model.scales(model.features(x)) > 1).float().mean()
    assert active > 0.9
