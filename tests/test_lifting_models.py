"""Tests for poselab.models.lifting: the four lifting backbones behind one encoder/head split."""

import pytest
import torch
import torch.nn as nn

from poselab.checks import seed_everything
from poselab.models.lifting import (
    H36M17_PARENTS,
    LIFTERS,
    Lifter,
    SemGraphConv,
    build_lifter,
    skeleton_adjacency,
)

J = 17
BN_NEEDS_BATCH = {"mlp", "cnn"}  # BatchNorm over samples only: train mode needs B >= 2


def make(name, seed=0, **kwargs):
    seed_everything(seed)
    return build_lifter(name, **kwargs)


def keypoints(batch, num_joints=J, seed=1, dtype=torch.float32):
    return torch.randn(batch, num_joints, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_lifters_are_the_four_backbones():
    assert LIFTERS == ("mlp", "cnn", "gcn", "transformer")


# ----------------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", LIFTERS)
def test_interface_and_output_shape(name):
    model = make(name)
    assert isinstance(model, Lifter)
    assert model.num_joints == J
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (model.feature_dim, J * 3)
    model.train()
    out = model(keypoints(4))
    assert out.shape == (4, J, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    model.eval()
    for batch in (1, 4):
        with torch.no_grad():
            out = model(keypoints(batch))
        assert out.shape == (batch, J, 3)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", LIFTERS)
def test_batch_of_one_in_train_mode(name):
    model = make(name).train()
    if name in BN_NEEDS_BATCH:
        with pytest.raises(ValueError, match="at least 2 samples"):
            model(keypoints(1))
    else:  # gcn normalises over samples and joints; the transformer has no BatchNorm
        assert model(keypoints(1)).shape == (1, J, 3)


@pytest.mark.parametrize("name", LIFTERS)
def test_forward_is_head_of_encoder(name):
    model = make(name).eval()
    x = keypoints(5)
    with torch.no_grad():
        features = model.encoder(x)
        assert features.shape == (5, model.feature_dim)
        raw = model.head(features).view(5, J, 3)
        torch.testing.assert_close(model(x), raw - raw[:, :1])
        torch.testing.assert_close(model(x), model.to_pose(model.head(features)))
        assert torch.equal(model(x)[:, model.root], torch.zeros(5, 3))  # root-relative by construction


@pytest.mark.parametrize(
    "name, kwargs, feature_dim",
    [
        ("mlp", {"hidden": 32, "num_blocks": 1}, 32),
        ("cnn", {"channels": 24, "num_blocks": 3}, 24),
        ("gcn", {"hidden": 8, "num_blocks": 1}, J * 8),
        ("transformer", {"dim": 16, "depth": 1, "heads": 2, "ff_dim": 32}, J * 16),
    ],
)
def test_size_options(name, kwargs, feature_dim):
    model = make(name, **kwargs)
    assert model.feature_dim == feature_dim
    assert model.eval()(keypoints(2)).shape == (2, J, 3)


def test_default_parameter_counts_by_hand():
    # mlp: stem Linear(34, 512)+BN, 2 blocks x 2 x (Linear(512, 512)+BN), head Linear(512, 51)
    mlp = (34 * 512 + 512 + 2 * 512) + 4 * (512 * 512 + 512 + 2 * 512) + (512 * 51 + 51)
    # cnn: bias-free 1x1 convs + BN, channels 256
    cnn = (34 * 256 + 2 * 256) + 4 * (256 * 256 + 2 * 256) + (256 * 51 + 51)
    assert make("mlp").num_parameters == mlp == 1_099_827
    assert make("cnn").num_parameters == cnn == 286_515


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_other_joint_counts(name):
    model = make(name, num_joints=5, **({"dim": 16, "heads": 2} if name == "transformer" else {}))
    assert model.eval()(keypoints(3, num_joints=5)).shape == (3, 5, 3)


def test_gcn_other_skeleton_needs_parents():
    with pytest.raises(ValueError, match="parents: required"):
        build_lifter("gcn", num_joints=5)
    with pytest.raises(ValueError, match="expected 5 entries"):
        build_lifter("gcn", num_joints=5, parents=(-1, 0, 1))
    model = make("gcn", num_joints=5, parents=(-1, 0, 1, 0, 3), hidden=8)
    assert model.eval()(keypoints(3, num_joints=5)).shape == (3, 5, 3)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", LIFTERS)
def test_gradients_reach_every_parameter(name):
    model = make(name).train()
    target = torch.randn(8, J, 3, generator=torch.Generator().manual_seed(2))
    loss = (model(keypoints(8)) - target).pow(2).mean()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.requires_grad
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", LIFTERS)
def test_hessian_vector_product(name):
    # The flat-landscape chapter estimates the top Hessian eigenvalue by power iteration,
    # which needs double backward through every backbone.
    model = make(name).train()
    params = [p for p in model.parameters()]
    loss = model(keypoints(8)).pow(2).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vec = [torch.randn_like(p) for p in params]
    hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vec)), params)
    assert all(torch.isfinite(h).all() for h in hvp)
    assert sum(h.abs().sum() for h in hvp) > 0


# ----------------------------------------------------------------------------- reproducibility and modes


@pytest.mark.parametrize("name", LIFTERS)
def test_deterministic_given_seed(name):
    a, b, c = make(name, seed=3), make(name, seed=3), make(name, seed=4)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        assert torch.equal(va, vb), ka
    assert not torch.equal(a.head.weight, c.head.weight)
    x = keypoints(4)
    torch.manual_seed(7)
    out_a = a.train()(x)
    torch.manual_seed(7)
    out_b = b.train()(x)
    assert torch.equal(out_a, out_b)


@pytest.mark.parametrize("name", LIFTERS)
def test_eval_mode_is_deterministic_and_per_sample(name):
    model = make(name).eval()
    x = keypoints(6)
    with torch.no_grad():
        full = model(x)
        torch.testing.assert_close(model(x), full, rtol=0, atol=0)
        single = torch.cat([model(x[i : i + 1]) for i in range(6)])
    # In eval mode each sample's output does not depend on the rest of the batch.
    torch.testing.assert_close(single, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LIFTERS)
def test_train_mode_is_stochastic_and_updates_batchnorm(name):
    # gcn has no dropout by default: switch it on to see train-mode noise.
    model = make(name, **({"dropout": 0.2} if name == "gcn" else {})).train()
    x = keypoints(8)
    assert not torch.equal(model(x), model(x))  # dropout
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bool(norms) == (name != "transformer")
    if norms:
        before = norms[0].running_mean.clone()
        model(x)
        assert not torch.equal(norms[0].running_mean, before)
        model.eval()
        before = norms[0].running_mean.clone()
        with torch.no_grad():
            model(x)
        assert torch.equal(norms[0].running_mean, before)


# ----------------------------------------------------------------------------- dtypes and bad input


@pytest.mark.parametrize("name", LIFTERS)
def test_float64_needs_a_float64_model(name):
    model = make(name).eval()
    with pytest.raises(TypeError, match="does not match the model's torch.float32"):
        model(keypoints(2, dtype=torch.float64))
    model = model.double()
    out = model(keypoints(2, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", LIFTERS)
def test_bad_input(name):
    model = make(name).eval()
    with pytest.raises(ValueError, match=r"expected 2D keypoints of shape \(B, 17, 2\).*\(2, 16, 2\)"):
        model(torch.zeros(2, 16, 2))
    with pytest.raises(ValueError, match=r"\(B, 17, 2\).*\(2, 17, 3\)"):
        model(torch.zeros(2, 17, 3))
    with pytest.raises(ValueError, match=r"\(B, 17, 2\).*\(17, 2\)"):
        model(torch.zeros(17, 2))
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        model(torch.zeros(2, 17, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0, 0.0]] * 17)
    # Wrappers call the encoder directly: it checks its input too.
    with pytest.raises(ValueError, match=r"\(B, 17, 2\)"):
        model.encoder(torch.zeros(2, 16, 2))


def test_build_lifter_errors():
    with pytest.raises(ValueError, match="unknown lifter name 'resnet'.*'mlp', 'cnn', 'gcn', 'transformer'"):
        build_lifter("resnet")
    with pytest.raises(TypeError, match=r"unknown option\(s\) channels.*accepts hidden, num_blocks, dropout"):
        build_lifter("mlp", channels=64)
    with pytest.raises(ValueError, match="dropout"):
        build_lifter("cnn", dropout=1.0)
    with pytest.raises(ValueError, match="hidden"):
        build_lifter("gcn", hidden=0)
    with pytest.raises(ValueError, match="multiple of heads"):
        build_lifter("transformer", dim=30, heads=4)


# ----------------------------------------------------------------------------- graph convolution


def test_adjacency_matches_h36m_skeleton():
    adj = skeleton_adjacency(H36M17_PARENTS)
    assert adj.shape == (J, J)
    torch.testing.assert_close(adj, adj.T)
    torch.testing.assert_close(torch.diagonal(adj), torch.ones(J))
    assert int(adj.sum()) == J + 2 * (J - 1)  # self loops + both directions of the 16 bones
    for child, parent in enumerate(H36M17_PARENTS):
        if parent >= 0:
            assert adj[child, parent] == 1 and adj[parent, child] == 1
    # thorax (8) joins neck (9), both shoulders (11, 14) and spine (7)
    assert torch.nonzero(adj[8]).flatten().tolist() == [7, 8, 9, 11, 14]
    assert adj[1, 4] == 0 and adj[3, 6] == 0  # left and right hips are not connected


def test_gcn_uses_the_skeleton_and_edge_weights_are_row_softmax():
    model = make("gcn")
    torch.testing.assert_close(model.encoder.adjacency, skeleton_adjacency(H36M17_PARENTS))
    conv = model.encoder.stem.conv
    w = conv.edge_weights()
    adj = model.encoder.adjacency
    torch.testing.assert_close(w.sum(1), torch.ones(J))
    assert (w[adj == 0] == 0).all()
    # Logits start equal, so each row starts uniform over the joint and its neighbours.
    torch.testing.assert_close(w, adj / adj.sum(1, keepdim=True))
    # One learnable logit per non-zero adjacency entry, nothing for the masked ones.
    assert conv.edge_logits.numel() == int(adj.sum())


def test_sem_graph_conv_known_answer():
    # Chain 0 - 1 - 2, one channel, W0 (self) = 2, W1 (neighbours) = 3, no bias.
    conv = SemGraphConv(1, 1, skeleton_adjacency((-1, 0, 1)))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[2.0, 3.0]]))
        conv.bias.zero_()
    x = torch.tensor([[[1.0], [2.0], [3.0]]])
    # row 0: 1/2 * 2*1 + 1/2 * 3*2 = 4; row 1: 1/3 * 2*2 + 1/3 * 3*(1+3) = 16/3; row 2: 1/2 * 2*3 + 1/2 * 3*2 = 6
    torch.testing.assert_close(conv(x), torch.tensor([[[4.0], [16.0 / 3.0], [6.0]]]))
    # Raising the self logit of joint 1 moves its weight towards the self term.
    with torch.no_grad():
        rows, cols = conv.rows.tolist(), conv.cols.tolist()
        conv.edge_logits[[k for k in range(len(rows)) if rows[k] == cols[k] == 1][0]] = 1.0 + 50.0
    torch.testing.assert_close(conv(x)[0, 1], torch.tensor([4.0]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parents", [(0, 0), (-1, 1), (-1, 0, 5), (-1, 0.5)])
def test_adjacency_rejects_bad_parents(parents):
    with pytest.raises(ValueError, match="parents: entry"):
        skeleton_adjacency(parents)
