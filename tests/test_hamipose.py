"""Tests for poselab.methods.hamipose: pull-back, metric, decomposition, gate, recombination, step, training."""

import copy
import math
import statistics

import pytest
import torch
from torch import nn

from poselab import optim as O
from poselab.checks import seed_everything
from poselab.data.augment import NONE
from poselab.methods import hamipose as hp
from poselab.methods.hamipose import (
    DECOMPOSITIONS,
    STUDENT,
    HamiPoseConfig,
    KeypointMetric,
    UDAData,
    combine_gradients,
    decompose,
    ema_update,
    gate,
    hamipose_step,
    output_gradients,
    pull_back,
    teacher_confidence,
    train_hamipose,
)
from poselab.heatmap_learning import joints_mse_loss, masked_mse_loss
from poselab.models.heatmap import HeatmapNet

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
SIZE, K = 32, 3
F64 = torch.float64


def tiny_net(seed=0, k=K):
    """A very small HeatmapNet (8x8 heatmaps, 8 feature channels) so that steps take milliseconds."""
    seed_everything(seed)
    return HeatmapNet((4, 8, 8, 8), (1, 1, 1, 1), deconv_channels=8, num_keypoints=k, input_size=SIZE, output_stride=4)


def tiny_data(n_src=6, n_tgt=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    source = (torch.rand(n_src, 3, SIZE, SIZE, generator=g) * 255).to(torch.uint8)
    target = (torch.rand(n_tgt, 3, SIZE, SIZE, generator=g) * 255).to(torch.uint8)
    keypoints = 6 + 20 * torch.rand(n_src, K, 2, generator=g)
    visible = torch.ones(n_src, K, dtype=torch.bool)
    visible[0, 1] = False
    return UDAData(source, keypoints, visible, target)


def config(**kw):
    base = dict(iterations=4, source_batch=4, target_batch=4, log_every=2)
    base.update(kw)
    return HamiPoseConfig(**base)


def metric_dot(x, y, inv_metric):
    """Per-keypoint ``x_k^T D_k^-1 y_k`` for ``(K, P)`` tensors."""
    return (x * y).sum(dim=1) * inv_metric


# ----------------------------------------------------------------------------- HeatmapNet features


def test_forward_with_features_matches_forward():
    net = tiny_net().eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    heatmaps, features = net.forward_with_features(x)
    assert features.shape == (2, 8, 8, 8) and heatmaps.shape == (2, K, 8, 8)
    torch.testing.assert_close(heatmaps, net(x))
    torch.testing.assert_close(net.final(features), heatmaps)
    with pytest.raises(ValueError, match="input size"):
        net.forward_with_features(torch.rand(1, 3, 16, 16))


# ------------------------------------------------------------------------------------- pull-back


def test_pull_back_equals_autograd_of_the_final_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 4, 1).double()
    features = torch.randn(3, 5, 6, 7, dtype=F64)
    grad_out = torch.randn(3, 4, 6, 7, dtype=F64)
    heatmaps = conv(features)
    gw, gb = torch.autograd.grad((grad_out * heatmaps).sum(), (conv.weight, conv.bias))
    hat = pull_back(grad_out, features)
    assert hat.shape == (4, 6)
    torch.testing.assert_close(hat[:, :5], gw.reshape(4, 5))
    torch.testing.assert_close(hat[:, 5], gb)


def test_pull_back_hand_case_and_errors():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])  # (1, C=2, 1, 2)
    grad_out = torch.tensor([[[[1.0, 1.0]], [[2.0, 0.0]]]])  # (1, K=2, 1, 2)
    # k=0: [1+2, 3-1, 1+1]; k=1: [2*1, 2*3, 2]
    torch.testing.assert_close(pull_back(grad_out, features), torch.tensor([[3.0, 2.0, 2.0], [2.0, 6.0, 2.0]]))
    with pytest.raises(ValueError, match="features"):
        pull_back(grad_out, features[:, :, :, :1])
    with pytest.raises(TypeError, match="grad_out"):
        pull_back(grad_out.long(), features)


# ---------------------------------------------------------------------------------------- metric


def test_keypoint_metric_tracks_squared_increments():
    conv = nn.Conv2d(2, 2, 1)
    metric = KeypointMetric(conv, decay=0.5, eps=1e-8)
    torch.testing.assert_close(metric.alpha, torch.zeros(2))
    with torch.no_grad():
        conv.weight[0, :, 0, 0] += torch.tensor([1.0, 2.0])
        conv.bias[0] += 3.0
    metric.update(conv)  # slice 0 moved by (1, 2, 3): mean square 14/3; slice 1 did not move
    torch.testing.assert_close(metric.alpha, torch.tensor([0.5 * 14 / 3, 0.0]))
    metric.update(conv)  # no move: alpha decays
    torch.testing.assert_close(metric.alpha, torch.tensor([0.25 * 14 / 3, 0.0]))
    torch.testing.assert_close(metric.inverse(), 1.0 / (torch.tensor([0.25 * 14 / 3, 0.0]) + 1e-8))
    with pytest.raises(ValueError, match="slices"):
        metric.update(nn.Conv2d(3, 2, 1))
    with pytest.raises(TypeError, match="1x1"):
        KeypointMetric(nn.Conv2d(2, 2, 3))
    with pytest.raises(TypeError, match="bias"):
        KeypointMetric(nn.Conv2d(2, 2, 1, bias=False))
    with pytest.raises(ValueError, match="decay"):
        KeypointMetric(conv, decay=1.0)


# --------------------------------------------------------------------------------- decomposition


def test_decompose_hand_cases():
    gs = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    gt = torch.tensor([[2.0, 4.0], [-3.0, -6.0], [0.0, 5.0], [1.0, 1.0]])
    a, rho = decompose(gs, gt, torch.ones(4), "keypoint")
    # parallel, anti-parallel, orthogonal, zero source norm
    torch.testing.assert_close(a, torch.tensor([2.0, -3.0, 0.0, 0.0]))
    torch.testing.assert_close(rho, torch.tensor([1.0, -1.0, 0.0, 0.0]))
    assert torch.isfinite(a).all() and torch.isfinite(rho).all()
    # zero target: nothing to project
    a0, rho0 = decompose(gs[:1], torch.zeros(1, 2), torch.ones(1))
    assert a0.item() == 0.0 and rho0.item() == 0.0


def test_keypoint_mode_is_invariant_to_the_metric():
    torch.manual_seed(1)
    gs, gt = torch.randn(5, 7, dtype=F64), torch.randn(5, 7, dtype=F64)
    plain = decompose(gs, gt, torch.ones(5, dtype=F64), "keypoint")
    weighted = decompose(gs, gt, torch.tensor([1e-3, 1.0, 7.0, 1e4, 1e8], dtype=F64), "keypoint")
    torch.testing.assert_close(weighted.a, plain.a)
    torch.testing.assert_close(weighted.rho, plain.rho)
    torch.testing.assert_close(plain.rho, torch.cosine_similarity(gs, gt, dim=1))


def test_unified_mode_pools_keypoints_and_depends_on_the_metric():
    gs = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    gt = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    a, rho = decompose(gs, gt, torch.ones(2), "unified")  # (1 - 1) / (1 + 1)
    torch.testing.assert_close(a, torch.zeros(2))
    torch.testing.assert_close(rho, torch.zeros(2))
    a, rho = decompose(gs, gt, torch.tensor([3.0, 1.0]), "unified")  # (3 - 1) / (3 + 1), / sqrt(4 * 4)
    torch.testing.assert_close(a, torch.full((2,), 0.5))
    torch.testing.assert_close(rho, torch.full((2,), 0.5))
    scaled = decompose(gs, gt, torch.tensor([3e5, 1e5]), "unified")  # only relative weights count
    torch.testing.assert_close(scaled.a, a)
    # the keypoint mode keeps the two keypoints apart: one agrees, one conflicts
    per_kp = decompose(gs, gt, torch.tensor([3.0, 1.0]), "keypoint")
    torch.testing.assert_close(per_kp.rho, torch.tensor([1.0, -1.0]))


def test_non_finite_pull_backs_give_nan_not_zero():
    """A diverged keypoint must read as NaN (not as 'unrelated', a = rho = 0); the others are unaffected."""
    gs = torch.tensor([[1.0, 2.0], [math.nan, 0.0], [1.0, 0.0]])
    gt = torch.tensor([[2.0, 4.0], [1.0, 1.0], [math.inf, 0.0]])
    a, rho = decompose(gs, gt, torch.ones(3), "keypoint")
    torch.testing.assert_close(a[0], torch.tensor(2.0))
    torch.testing.assert_close(rho[0], torch.tensor(1.0))
    assert torch.isnan(a[1:]).all() and torch.isnan(rho[1:]).all()
    pooled = decompose(gs, gt, torch.ones(3), "unified")
    assert torch.isnan(pooled.a).all() and torch.isnan(pooled.rho).all()
    assert torch.isnan(gate(rho, None, 2.0)[1:]).all() and gate(rho, None, 2.0)[0] > 0


def test_combine_gradients_does_not_validate_values():
    """The public decompose and gate reject a NaN metric or confidence; inside a step the same values
    give NaN outputs (for train_hamipose to detect) instead of an exception."""
    gs, gt, fs, ft, inv_metric, confidence = conflicting_case()
    bad_metric = inv_metric.clone()
    bad_metric[0] = math.nan
    bad_confidence = confidence.clone()
    bad_confidence[2] = math.nan
    with pytest.raises(ValueError, match="inv_metric"):
        decompose(pull_back(gs, fs), pull_back(gt, ft), bad_metric)
    with pytest.raises(ValueError, match="confidence"):
        gate(torch.zeros(4, dtype=F64), bad_confidence, 1.0)
    out = combine_gradients(gs, gt, fs, ft, bad_metric, bad_confidence, 1.5, 0.7, "keypoint")
    assert torch.isnan(out.a[0]) and torch.isnan(out.phi[[0, 2]]).all() and torch.isnan(out.source_factor[[0, 2]]).all()
    assert torch.isfinite(out.a[1:]).all() and torch.isfinite(out.phi[[1, 3]]).all()
    assert torch.isnan(out.gradients[:3, [0, 2]]).all() and torch.isfinite(out.gradients[:3, [1, 3]]).all()
    assert torch.isfinite(out.gradients[3:]).all()  # the target rows never carry the factor
    unified = combine_gradients(gs, gt, fs, ft, bad_metric, bad_confidence, 1.5, 0.7, "unified")
    assert torch.isnan(unified.a).all() and torch.isnan(unified.gradients[:3]).all()
    # plain Mean Teacher ignores the metric: its gradient stays the plain sum even with a NaN a
    plain = combine_gradients(gs, gt, fs, ft, bad_metric, bad_confidence, 1.5, 0.7, "none")
    assert torch.isnan(plain.a[0])
    torch.testing.assert_close(plain.source_factor, torch.ones(4, dtype=F64))
    torch.testing.assert_close(plain.gradients, torch.cat([gs, 0.7 * gt]))
    with pytest.raises(ValueError, match="inv_metric"):
        combine_gradients(gs, gt, fs, ft, inv_metric[:3], confidence, 1.5, 0.7, "keypoint")
    with pytest.raises(ValueError, match="confidence"):
        combine_gradients(gs, gt, fs, ft, inv_metric, confidence[:3], 1.5, 0.7, "keypoint")
    with pytest.raises(ValueError, match="features_target"):
        combine_gradients(gs, gt, fs, ft[:, :4], inv_metric, confidence, 1.5, 0.7, "keypoint")


def test_decompose_errors():
    gs = torch.ones(2, 3)
    with pytest.raises(ValueError, match="mode"):
        decompose(gs, gs, torch.ones(2), "none")
    with pytest.raises(ValueError, match="gt_hat"):
        decompose(gs, torch.ones(2, 4), torch.ones(2))
    with pytest.raises(ValueError, match="inv_metric"):
        decompose(gs, gs, torch.ones(3))
    with pytest.raises(ValueError, match="inv_metric"):
        decompose(gs, gs, torch.tensor([1.0, 0.0]))


# ------------------------------------------------------------------------------------------ gate


def test_gate_values():
    rho = torch.tensor([-0.5, 0.0, 0.5, 1.0])
    torch.testing.assert_close(gate(rho, None, 2.0), torch.tensor([0.0, 0.0, math.tanh(1.0), math.tanh(2.0)]))
    torch.testing.assert_close(gate(rho, None, 0.0), torch.zeros(4))
    c = torch.tensor([1.0, 1.0, 0.5, 0.25])
    torch.testing.assert_close(gate(rho, c, 2.0), torch.tensor([0.0, 0.0, 0.5 * math.tanh(1.0), 0.25 * math.tanh(2.0)]))
    with pytest.raises(ValueError, match="confidence"):
        gate(rho, torch.full((4,), 1.5), 1.0)
    with pytest.raises(ValueError, match="gamma"):
        gate(rho, None, -1.0)


def test_teacher_confidence_is_the_mean_peak_clamped():
    h = torch.zeros(2, 3, 4, 4)
    h[0, 0, 1, 1], h[1, 0, 2, 2] = 0.8, 0.4  # keypoint 0: peaks 0.8 and 0.4
    h[:, 1] = -0.2  # keypoint 1: negative everywhere -> 0
    h[:, 2, 0, 0] = 1.7  # keypoint 2: above 1 -> 1
    torch.testing.assert_close(teacher_confidence(h), torch.tensor([0.6, 0.0, 1.0]))


# ------------------------------------------------------------------------------- recombination


def test_output_gradients_hand_case():
    gs, gt = torch.ones(1, 2, 1, 1), torch.full((1, 2, 1, 1), 2.0)
    out = output_gradients(gs, gt, a=torch.tensor([2.0, 0.5]), phi=torch.tensor([0.25, 1.0]), target_weight=2.0)
    # source factor 1 - lambda (1 - phi) a: 1 - 2 * 0.75 * 2 = -2 and 1 - 0 = 1; target lambda g_t = 4
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor([[-2.0, 1.0], [4.0, 4.0]]))
    # a = 0 is the plain sum g_s + lambda g_t
    plain = output_gradients(gs, gt, torch.zeros(2), torch.rand(2), 2.0)
    torch.testing.assert_close(plain, torch.cat([gs, 2.0 * gt]))
    with pytest.raises(ValueError, match="grad_target"):
        output_gradients(gs, torch.ones(1, 3, 1, 1), torch.zeros(2), torch.zeros(2), 1.0)


def conflicting_case(seed=0, k=4):
    """Output gradients whose target pull-back is ``c_k`` times the source's plus noise (same features)."""
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(3, 5, 4, 4, generator=g, dtype=F64)
    gs = torch.randn(3, k, 4, 4, generator=g, dtype=F64)
    c = torch.tensor([3.0, -2.0, 0.5, 0.0], dtype=F64)[:k].view(1, k, 1, 1)
    gt = c * gs + 0.3 * torch.randn(3, k, 4, 4, generator=g, dtype=F64)
    inv_metric = torch.tensor([1.0, 20.0, 0.1, 3.0], dtype=F64)[:k]
    confidence = torch.tensor([0.5, 0.9, 1.0, 0.7], dtype=F64)[:k]
    return gs, gt, fs, fs.clone(), inv_metric, confidence


@pytest.mark.parametrize("mode", ["keypoint", "unified"])
def test_recombined_gradient_identities(mode):
    gs, gt, fs, ft, inv_metric, confidence = conflicting_case()
    lam, gamma = 0.7, 1.5
    out = combine_gradients(gs, gt, fs, ft, inv_metric, confidence, gamma, lam, mode)
    gs_hat, gt_hat = pull_back(gs, fs), pull_back(gt, ft)
    a, phi = out.a, out.phi
    total_hat = pull_back(out.gradients, torch.cat([fs, ft]))
    # the source rows carry the factor 1 - lambda (1 - phi) a, the target rows the full lambda g_t
    torch.testing.assert_close(out.source_factor, 1 - lam * (1 - phi) * a)
    torch.testing.assert_close(out.gradients[:3], gs * out.source_factor.view(1, -1, 1, 1))
    torch.testing.assert_close(out.gradients[3:], lam * gt)
    # the total, pulled back, is g_s + lambda (g_t - a g_s) + lambda phi a g_s
    expected = gs_hat + lam * (gt_hat - a[:, None] * gs_hat) + lam * (phi * a)[:, None] * gs_hat
    torch.testing.assert_close(total_hat, expected)
    perp = metric_dot(gt_hat - a[:, None] * gs_hat, gs_hat, inv_metric)
    progress = metric_dot(total_hat, gs_hat, inv_metric)
    source_sq = metric_dot(gs_hat, gs_hat, inv_metric)
    if mode == "keypoint":
        # the perpendicular part is orthogonal to the source, keypoint by keypoint
        torch.testing.assert_close(perp, torch.zeros_like(perp), atol=1e-10, rtol=0)
        # and the total descends L_s at least as fast as the source gradient alone
        assert (progress >= source_sq * (1 - 1e-12)).all()
        torch.testing.assert_close(progress, (1 + lam * phi * a) * source_sq)
        # the case covers a conflict (gate closed), a large a with the gate half open, and a negative
        # source factor in output space
        assert out.rho[1] < 0 and phi[1] == 0 and a[0] > 2 and 0 < phi[0] < 1
        assert out.source_factor[0] < 0 and (out.gradients[:3, 0] * gs[:, 0] <= 0).all()
        torch.testing.assert_close(out.keypoint_rho, out.rho)
    else:
        # one projection for all keypoints: orthogonal and non-conflicting in the pooled metric only
        torch.testing.assert_close(perp.sum(), torch.zeros((), dtype=F64), atol=1e-10, rtol=0)
        assert progress.sum() >= source_sq.sum() * (1 - 1e-12)
        assert torch.unique(a).numel() == 1 and torch.unique(phi).numel() == 1
        assert not torch.allclose(out.keypoint_rho, out.rho)


def test_unified_and_keypoint_modes_differ_and_only_unified_sees_the_metric():
    gs, gt, fs, ft, inv_metric, confidence = conflicting_case()
    args = (gs, gt, fs, ft)
    kp1 = combine_gradients(*args, inv_metric, confidence, 1.5, 1.0, "keypoint")
    kp2 = combine_gradients(*args, torch.ones_like(inv_metric), confidence, 1.5, 1.0, "keypoint")
    un1 = combine_gradients(*args, inv_metric, confidence, 1.5, 1.0, "unified")
    un2 = combine_gradients(*args, torch.ones_like(inv_metric), confidence, 1.5, 1.0, "unified")
    torch.testing.assert_close(kp1.gradients, kp2.gradients)
    assert not torch.allclose(un1.gradients, un2.gradients)
    assert not torch.allclose(kp1.gradients, un1.gradients)


def test_mode_none_equals_autograd_of_the_summed_loss():
    torch.manual_seed(0)
    lam = 0.6
    heatmaps = torch.randn(5, K, 6, 6, dtype=F64, requires_grad=True)
    h_s, h_t = heatmaps.split([2, 3])
    y_s, y_t = torch.rand(2, K, 6, 6, dtype=F64), torch.rand(3, K, 6, 6, dtype=F64)
    vis = torch.tensor([[True, False, True], [True, True, True]])
    valid = (torch.rand(3, 1, 6, 6) > 0.3).to(F64)
    loss_s, loss_t = joints_mse_loss(h_s, y_s, vis), masked_mse_loss(h_t, y_t, valid)
    g_s, = torch.autograd.grad(loss_s, h_s, retain_graph=True)
    g_t, = torch.autograd.grad(loss_t, h_t, retain_graph=True)
    feats = torch.randn(5, 4, 6, 6, dtype=F64)
    out = combine_gradients(g_s, g_t, feats[:2], feats[2:], torch.ones(K, dtype=F64), None, 2.0, lam, "none")
    expected, = torch.autograd.grad(loss_s + lam * loss_t, heatmaps)
    torch.testing.assert_close(out.gradients, expected)
    torch.testing.assert_close(out.phi, torch.ones(K, dtype=F64))
    torch.testing.assert_close(out.source_factor, torch.ones(K, dtype=F64))


def test_backward_of_the_combined_gradient_through_a_network():
    """One backward of the recombined output gradient: plain loss gradient for ``none``; for ``keypoint``
    the final layer receives exactly the pulled-back total, which does not conflict with the source."""
    net = tiny_net().double()
    torch.manual_seed(3)
    x = torch.rand(4, 3, SIZE, SIZE, dtype=F64)
    y = torch.rand(4, K, 8, 8, dtype=F64)
    valid = torch.ones(2, 1, 8, 8, dtype=F64)
    inv_metric = torch.tensor([1.0, 5.0, 0.5], dtype=F64)
    for mode in ("none", "keypoint"):
        net.zero_grad(set_to_none=True)
        heatmaps, features = net.forward_with_features(x)
        h_s, h_t = heatmaps.split([2, 2])
        loss_s, loss_t = joints_mse_loss(h_s, y[:2]), masked_mse_loss(h_t, y[2:], valid)
        g_s, = torch.autograd.grad(loss_s, h_s, retain_graph=True)
        g_t, = torch.autograd.grad(loss_t, h_t, retain_graph=True)
        f = features.detach()
        out = combine_gradients(g_s, g_t, f[:2], f[2:], inv_metric, torch.full((K,), 0.8, dtype=F64), 1.0, 0.5, mode)
        if mode == "none":
            expected = torch.autograd.grad(loss_s + 0.5 * loss_t, list(net.parameters()), retain_graph=True)
        heatmaps.backward(gradient=out.gradients)
        if mode == "none":
            for p, e in zip(net.parameters(), expected):
                torch.testing.assert_close(p.grad, e)
        else:
            final_grad = torch.cat([net.final.weight.grad.reshape(K, -1), net.final.bias.grad[:, None]], dim=1)
            torch.testing.assert_close(final_grad, pull_back(out.gradients, f))
            gs_hat = pull_back(g_s, f[:2])
            assert (metric_dot(final_grad, gs_hat, inv_metric) >= metric_dot(gs_hat, gs_hat, inv_metric) - 1e-15).all()


# ------------------------------------------------------------------------------------ EMA, step


def test_ema_update_hand_case():
    teacher = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(1.0)
        for p in student.parameters():
            p.fill_(3.0)
        student[1].running_mean.fill_(5.0)
        student[1].num_batches_tracked.fill_(7)
    ema_update(teacher, student, 0.75)
    for p in teacher.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1.5))  # 0.75 * 1 + 0.25 * 3
    assert teacher[1].running_mean.item() == 5.0 and teacher[1].num_batches_tracked.item() == 7
    ema_update(teacher, student, 1.0)  # frozen teacher parameters
    torch.testing.assert_close(teacher[0].weight, torch.full((1, 2), 1.5))
    with pytest.raises(ValueError, match="architecture"):
        ema_update(teacher, nn.Sequential(nn.Linear(3, 1), nn.BatchNorm1d(1)), 0.5)
    with pytest.raises(ValueError, match="decay"):
        ema_update(teacher, student, 1.5)


STEP_KEYS = {"loss", "loss_s", "loss_t", "conflict_ratio", "negative_factor", "cosine", "gate", "a", "confidence",
             "response", "gamma"}


def step_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 3, SIZE, SIZE, generator=g)
    keypoints = 6 + 20 * torch.rand(3, K, 2, generator=g)
    visible = torch.ones(3, K, dtype=torch.bool)
    return (images, keypoints, visible), torch.rand(2, 3, SIZE, SIZE, generator=g)


@pytest.mark.parametrize("mode", DECOMPOSITIONS)
def test_step_backpropagates_once_and_updates_the_teacher(mode):
    student = tiny_net().train()
    teacher = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():  # a teacher that differs from the student, to see the average
        for p in teacher.parameters():
            p.add_(0.01)
    before = [p.clone() for p in teacher.parameters()]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    metric = KeypointMetric(student.final, 0.5)
    calls = {"first": 0, "final": 0}
    student.backbone[0][0].weight.register_hook(lambda g: calls.__setitem__("first", calls["first"] + 1))
    student.final.weight.register_hook(lambda g: calls.__setitem__("final", calls["final"] + 1))
    source, target = step_inputs()
    cfg = config(decomposition=mode, ema_decay=0.9, gate_warmup=0.5)
    out = hamipose_step(student, teacher, optimizer, metric, source, target, cfg, 1, torch.Generator().manual_seed(0))
    assert calls == {"first": 1, "final": 1}
    assert set(out) == STEP_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert out["gamma"] == pytest.approx(cfg.gamma_at(1)) and out["gamma"] == pytest.approx(1.0)
    assert out["loss"] == pytest.approx(out["loss_s"] + out["loss_t"])
    assert 0.0 <= out["conflict_ratio"] <= 1.0 and 0.0 <= out["gate"] <= 1.0
    assert 0.0 <= out["negative_factor"] <= 1.0 and 0.0 <= out["confidence"] <= 1.0
    if mode == "none":
        assert out["gate"] == 1.0 and out["negative_factor"] == 0.0
    for p_t, p_b, p_s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(p_t, 0.9 * p_b + 0.1 * p_s)
    for b_t, b_s in zip(teacher.buffers(), student.buffers()):
        assert torch.equal(b_t, b_s)
    assert not teacher.training
    assert metric.alpha.gt(0).all()  # SGD moved every slice of the final layer


def test_step_is_reproducible_and_checks_inputs():
    results = []
    for _ in range(2):
        student = tiny_net()
        teacher = copy.deepcopy(student)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
        source, target = step_inputs()
        results.append(hamipose_step(student, teacher, optimizer, KeypointMetric(student.final), source, target,
                                     config(), 0, torch.Generator().manual_seed(4)))
    assert results[0] == results[1]
    student = tiny_net()
    source, target = step_inputs()
    with pytest.raises(TypeError, match="HeatmapNet"):
        hamipose_step(nn.Linear(2, 2), student, None, KeypointMetric(student.final), source, target, config(), 0,
                      torch.Generator())
    with pytest.raises(ValueError, match="source"):
        hamipose_step(student, student, None, KeypointMetric(student.final), source[:2], target, config(), 0,
                      torch.Generator())


@pytest.mark.parametrize("mode", DECOMPOSITIONS)
def test_step_of_a_nan_student_returns_nan_stats(mode):
    student = tiny_net()
    teacher = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():
        student.final.weight.fill_(math.nan)
    optimizer = O.build_optimizer("hamiltonian", student.parameters())
    metric = KeypointMetric(student.final)
    source, target = step_inputs()
    out = hamipose_step(student, teacher, optimizer, metric, source, target, config(decomposition=mode), 0,
                        torch.Generator().manual_seed(0))
    assert set(out) == STEP_KEYS
    nan_keys = {"loss", "loss_s", "loss_t", "conflict_ratio", "cosine", "a", "response"}
    nan_keys |= set() if mode == "none" else {"gate", "negative_factor"}
    assert all(math.isnan(out[key]) for key in nan_keys), out
    # the teacher is still finite: its confidence is a number; plain Mean Teacher has no factor
    assert 0.0 <= out["confidence"] <= 1.0 and out["gamma"] == config().gamma_at(0)
    if mode == "none":
        assert out["gate"] == 1.0 and out["negative_factor"] == 0.0
    assert not torch.isfinite(metric.alpha).all()
    # a NaN teacher (the next step of a diverged run) raises nothing either
    out = hamipose_step(student, student, optimizer, metric, source, target, config(decomposition=mode), 1,
                        torch.Generator().manual_seed(0))
    assert math.isnan(out["loss"]) and math.isnan(out["confidence"])


# ----------------------------------------------------------------------------------- config, data


def test_config_gamma_schedule():
    cfg = config(iterations=10, gamma_min=0.5, gamma_max=2.5, gate_warmup=0.5)
    assert [cfg.gamma_at(t) for t in (0, 2, 5, 9)] == pytest.approx([0.5, 1.3, 2.5, 2.5])
    assert config(gate_warmup=0.0).gamma_at(0) == 2.0
    assert HamiPoseConfig().student_aug == STUDENT and STUDENT.rand_augment_num_ops == 2
    assert HamiPoseConfig().optimizer == "hamiltonian"  # the full method is the default
    with pytest.raises(ValueError, match="iteration"):
        cfg.gamma_at(-1)


@pytest.mark.parametrize("kw, error, match", [
    ({"iterations": 0}, ValueError, "iterations"),
    ({"source_batch": 1.5}, TypeError, "source_batch"),
    ({"target_weight": -1.0}, ValueError, "target_weight"),
    ({"decomposition": "global"}, ValueError, "decomposition"),
    ({"ema_decay": 1.2}, ValueError, "ema_decay"),
    ({"metric_decay": 1.0}, ValueError, "metric_decay"),
    ({"metric_eps": 0.0}, ValueError, "metric_eps"),
    ({"gamma_min": 3.0}, ValueError, "gamma_min"),
    ({"gate_warmup": 1.5}, ValueError, "gate_warmup"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"warmup": 1.0}, ValueError, "warmup"),
    ({"friction": -0.1}, ValueError, "friction"),
    ({"student_aug": "hard"}, TypeError, "student_aug"),
    ({"target_batchnorm": 1}, TypeError, "target_batchnorm"),
    ({"target_batchnorm": True}, ValueError, "target_batchnorm"),  # lambda = 1: target images always in the batch
])
def test_config_validation(kw, error, match):
    with pytest.raises(error, match=match):
        config(**kw)


def test_uda_data_validation():
    d = tiny_data()
    assert d.size == SIZE and d.num_keypoints == K
    with pytest.raises(ValueError, match="target_images"):
        UDAData(d.source_images, d.source_keypoints, d.source_visible, d.target_images[:, :, :16])
    with pytest.raises(TypeError, match="source_visible"):
        UDAData(d.source_images, d.source_keypoints, d.source_visible.float(), d.target_images)
    with pytest.raises(TypeError, match="target_images"):
        UDAData(d.source_images, d.source_keypoints, d.source_visible, d.target_images.float())
    with pytest.raises(ValueError, match="source_keypoints"):
        UDAData(d.source_images, d.source_keypoints[:2], d.source_visible, d.target_images)


# ------------------------------------------------------------------------------------------ train


EVAL_KEYS = {"target/response", "target/pck@0.05", "target/pck@0.1"}
RECORD_KEYS = (STEP_KEYS | EVAL_KEYS | {"iteration", "lr", "fluctuation", "step_rms", "loss_std", "diverged"})


def spy_steps(monkeypatch, before=None, after=None):
    """Wrap ``hamipose_step`` as ``train_hamipose`` calls it: record each step's values and the RMS of
    the student's parameter increment; ``before(call, student)`` / ``after(call, student)`` may tamper."""
    real, calls = hp.hamipose_step, []

    def step(student, *args, **kwargs):
        if before is not None:
            before(len(calls), student)
        flat = torch.cat([p.detach().reshape(-1) for p in student.parameters()])
        out = real(student, *args, **kwargs)
        if after is not None:
            after(len(calls), student)
        new = torch.cat([p.detach().reshape(-1) for p in student.parameters()])
        calls.append({**out, "rms": float((new - flat).pow(2).mean().sqrt())})
        return out

    monkeypatch.setattr(hp, "hamipose_step", step)
    return calls


def test_train_hamipose_records_and_reproducibility(monkeypatch):
    data = tiny_data()
    evals = {"target": (data.source_images[:3], data.source_keypoints[:3], data.source_visible[:3])}
    runs, calls = [], spy_steps(monkeypatch)
    for _ in range(2):
        student, teacher, history = train_hamipose(tiny_net(), data, config(), eval_sets=evals, device="cpu",
                                                   seed=3, progress=False)
        runs.append((student, history))
    history = runs[0][1]
    assert len(calls) == 8
    assert [r["iteration"] for r in history.records] == [0, 2, 4]
    assert set(history.records[0]) == EVAL_KEYS | {"iteration", "lr", "gamma", "diverged"}
    assert all(set(r) == RECORD_KEYS for r in history.records[1:])
    assert all(r["diverged"] == 0.0 for r in history.records)
    # window means, the loss's sample standard deviation and the mean RMS increment of each window
    for record, window in zip(history.records[1:], (calls[:2], calls[2:4])):
        assert record["loss"] == pytest.approx(statistics.fmean(c["loss"] for c in window))
        assert record["negative_factor"] == pytest.approx(statistics.fmean(c["negative_factor"] for c in window))
        assert record["loss_std"] == pytest.approx(statistics.stdev(c["loss"] for c in window))
        assert record["step_rms"] == pytest.approx(statistics.fmean(c["rms"] for c in window), rel=1e-5)
        assert record["step_rms"] > 0 and 0.0 <= record["confidence"] <= 1.0
    # lr: warm-up (1 step of 4) then cosine from step 1 to 0 at step 4; a record shows its last step's lr
    last_lr = 1e-3 * 0.5 * (1 + math.cos(2 * math.pi / 3))
    assert [r["lr"] for r in history.records] == pytest.approx([1e-3, 1e-3, last_lr])
    assert 0.0 <= history.records[2]["fluctuation"] <= 2.0
    assert not student.training and not teacher.training
    assert history.records == runs[1][1].records
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("mode, optimizer", [("unified", "adam"), ("none", "sgd")])
def test_train_hamipose_other_modes_and_optimizers(mode, optimizer):
    net = tiny_net()
    cfg = config(decomposition=mode, optimizer=optimizer, iterations=3, log_every=2, source_aug=NONE)
    student, teacher, history = train_hamipose(net, tiny_data(), cfg, device="cpu", progress=False)
    last = history.last
    assert last["iteration"] == 3 and math.isfinite(last["loss"]) and math.isfinite(last["fluctuation"])
    assert math.isnan(last["loss_std"]) and math.isfinite(history.records[1]["loss_std"])  # windows of 2, then 1
    assert any(not torch.equal(p, q) for p, q in zip(student.parameters(), net.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(teacher.parameters(), net.parameters()))


def test_hamiltonian_mass_uses_the_metric_decay_and_eps(monkeypatch):
    built = []
    real = O.build_optimizer

    def build(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(O, "build_optimizer", build)
    cfg = config(iterations=1, metric_decay=0.9, metric_eps=1e-6, friction=0.2)
    train_hamipose(tiny_net(), tiny_data(), cfg, device="cpu", progress=False)
    assert isinstance(built[0], O.Hamiltonian)
    assert {k: built[0].defaults[k] for k in ("mass_decay", "mass_eps", "friction")} == \
        {"mass_decay": 0.9, "mass_eps": 1e-6, "friction": 0.2}
    train_hamipose(tiny_net(), tiny_data(), config(iterations=1, optimizer="adam"), device="cpu", progress=False)
    assert isinstance(built[1], torch.optim.Adam)


@pytest.mark.parametrize("when, overrides", [
    ("before", {}),  # the NaN step itself: NaN loss and statistics
    ("after", {"decomposition": "none", "optimizer": "adam"}),  # finite loss, NaN parameters afterwards
    ("before", {"target_weight": 0.0, "optimizer": "sgd"}),  # source only
])
def test_train_hamipose_stops_a_diverging_run_without_raising(monkeypatch, when, overrides):
    def poison(call, student):
        if call == 2:  # the third step (iteration 2): its window ends at the record of iteration 4
            with torch.no_grad():
                student.final.weight.fill_(math.nan)

    calls = spy_steps(monkeypatch, **{when: poison})
    data = tiny_data()
    evals = {"target": (data.source_images[:3], data.source_keypoints[:3], data.source_visible[:3])}
    cfg = config(iterations=7, log_every=2, **overrides)
    student, teacher, history = train_hamipose(tiny_net(), data, cfg, eval_sets=evals, device="cpu", progress=False)
    assert len(calls) == 3  # stopped after the step that diverged
    records = history.records
    assert [r["iteration"] for r in records] == [0, 2, 4, 6, 7]  # those of a run that did not diverge
    assert all(set(r) == RECORD_KEYS for r in records[1:])
    assert [r["diverged"] for r in records] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert math.isfinite(records[1]["loss"]) and math.isfinite(records[1]["target/pck@0.05"])
    window = records[2]  # the steps taken (one here), values as they are
    assert math.isnan(window["step_rms"]) and all(math.isnan(window[k]) for k in EVAL_KEYS)
    assert math.isnan(window["loss"]) == (when == "before")
    assert math.isfinite(window["lr"]) and math.isfinite(window["gamma"])
    assert math.isnan(window["loss_std"])  # a window of one step
    for record in records[3:]:
        assert all(math.isnan(v) for k, v in record.items() if k not in ("iteration", "diverged"))
    assert not torch.isfinite(student.final.weight).all() and not student.training


def test_source_only_and_adaptation_runs_draw_the_same_source_batches(monkeypatch):
    """Separate generators: a run that draws no target views (lambda = 0) sees the same source batches
    and augmentations as a keypoint run of the same seed."""
    real = hp.supervised_targets
    seen = []

    def spy(images, keypoints, *args, **kwargs):
        out = real(images, keypoints, *args, **kwargs)
        seen[-1].append((images.clone(), keypoints.clone(), out[0].clone(), out[1].clone()))
        return out

    monkeypatch.setattr(hp, "supervised_targets", spy)
    data = tiny_data()
    for overrides in ({"target_weight": 0.0}, {"decomposition": "keypoint"}, {"decomposition": "none"}):
        seen.append([])
        train_hamipose(tiny_net(), data, config(iterations=3, **overrides), device="cpu", seed=5, progress=False)
    assert [len(s) for s in seen] == [3, 3, 3]
    for other in seen[1:]:
        for a, b in zip(seen[0], other):
            for x, y in zip(a, b):
                assert torch.equal(x, y)
    assert not torch.equal(seen[0][0][0], seen[0][1][0])  # different batches at different steps
    # the step-level argument: the target views come from target_generator, the source ones from generator
    student = tiny_net()
    source, target = step_inputs()
    outs = []
    for target_seed in (1, 1, 2):
        net = copy.deepcopy(student)
        outs.append(hamipose_step(net, copy.deepcopy(net), torch.optim.SGD(net.parameters(), lr=0.1),
                                  KeypointMetric(net.final), source, target, config(), 0,
                                  torch.Generator().manual_seed(0),
                                  target_generator=torch.Generator().manual_seed(target_seed)))
    # (loss_s differs too: BatchNorm's batch statistics mix the source rows with the target views)
    assert outs[0] == outs[1] and outs[0]["loss_t"] != outs[2]["loss_t"]


def test_train_hamipose_errors():
    with pytest.raises(TypeError, match="UDAData"):
        train_hamipose(tiny_net(), (1, 2), config(), progress=False)
    with pytest.raises(ValueError, match="keypoints"):
        train_hamipose(tiny_net(k=5), tiny_data(), config(), progress=False)
    with pytest.raises(ValueError, match="eval_sets"):
        train_hamipose(tiny_net(), tiny_data(), config(), eval_sets={"x": (1, 2)}, progress=False)


# ------------------------------------------------------------------------------------------- CUDA


@CUDA
def test_cuda_matches_cpu():
    gs, gt, fs, ft, inv_metric, confidence = conflicting_case()
    cpu = combine_gradients(gs, gt, fs, ft, inv_metric, confidence, 1.5, 0.7, "keypoint")
    dev = torch.device("cuda")
    gpu = combine_gradients(*(x.to(dev) for x in (gs, gt, fs, ft, inv_metric, confidence)), 1.5, 0.7, "keypoint")
    torch.testing.assert_close(gpu.gradients.cpu(), cpu.gradients)
    data = tiny_data()
    cfg = config(iterations=1, log_every=1)
    _, _, h_cpu = train_hamipose(tiny_net(), data, cfg, device="cpu", progress=False)
    _, _, h_gpu = train_hamipose(tiny_net(), data, cfg, device="cuda", progress=False)
    # the first step sees the same weights and augmentations; TF32 convolutions allow small differences
    assert h_gpu.last["loss_s"] == pytest.approx(h_cpu.last["loss_s"], rel=1e-2)
    assert h_gpu.last["loss_t"] == pytest.approx(h_cpu.last["loss_t"], rel=5e-2, abs=1e-6)


def test_source_only_step_leaves_target_images_out():
    # lambda = 0 must be plain supervised training: the target batch cannot change the result.
    net = tiny_net()
    results = []
    for target_seed in (1, 2):
        student = copy.deepcopy(net).train()
        teacher = copy.deepcopy(net).eval().requires_grad_(False)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        source, _ = step_inputs()
        target = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(target_seed))
        out = hamipose_step(student, teacher, optimizer, KeypointMetric(student.final), source, target,
                            config(target_weight=0.0), 0, torch.Generator().manual_seed(0))
        results.append(torch.cat([p.detach().reshape(-1) for p in student.parameters()]))
        assert out["loss_t"] == 0.0 and math.isnan(out["conflict_ratio"]) and out["loss"] == out["loss_s"]
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_target_batchnorm_control_mixes_batchnorm_without_a_target_loss():
    # The control: the target views share the forward pass (and BatchNorm's statistics) but carry no loss.
    net = tiny_net()
    source, target = step_inputs()
    cfg = config(target_weight=0.0, target_batchnorm=True)
    student, teacher = copy.deepcopy(net).train(), copy.deepcopy(net).eval().requires_grad_(False)
    out = hamipose_step(student, teacher, torch.optim.SGD(student.parameters(), lr=0.1), KeypointMetric(student.final),
                        source, target, cfg, 0, torch.Generator().manual_seed(0),
                        target_generator=torch.Generator().manual_seed(3))
    assert out["loss_t"] == 0.0 and math.isnan(out["conflict_ratio"]) and out["loss"] == out["loss_s"]
    # by hand: the same source targets, the student's view of an adaptation run (teacher view drawn first)
    x_s, y_s, vis_s = hp.supervised_targets(*source, cfg.source_aug, cfg.sigma, 4, (SIZE // 4, SIZE // 4),
                                            torch.Generator().manual_seed(0))
    views = torch.Generator().manual_seed(3)
    hp.augment(target, None, cfg.teacher_aug, views)
    u_h = hp.augment(target, None, cfg.student_aug, views)[0]
    manual = copy.deepcopy(net).train()
    optimizer = torch.optim.SGD(manual.parameters(), lr=0.1)
    loss_s = joints_mse_loss(manual(torch.cat([x_s, u_h]))[:3], y_s, vis_s)
    loss_s.backward()
    optimizer.step()
    assert out["loss_s"] == pytest.approx(loss_s.item(), rel=1e-6)
    for a, b in zip(student.state_dict().values(), manual.state_dict().values()):  # running statistics too
        torch.testing.assert_close(a, b)
    plain = copy.deepcopy(net).train()
    hamipose_step(plain, copy.deepcopy(teacher), torch.optim.SGD(plain.parameters(), lr=0.1),
                  KeypointMetric(plain.final), source, target, config(target_weight=0.0), 0,
                  torch.Generator().manual_seed(0))
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    name = next(n for n, m in net.named_modules() if m is bn)
    assert not torch.equal(dict(student.named_modules())[name].running_mean,
                           dict(plain.named_modules())[name].running_mean)


def test_keypoint_cosines_measure_without_changing_the_networks():
    from poselab.methods.hamipose import keypoint_cosines

    student, data = tiny_net(), tiny_data()
    teacher = copy.deepcopy(student).eval()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = config()
    rho = keypoint_cosines(student, teacher, data, cfg, batches=3, seed=5)
    assert rho.shape == (3, K) and bool(((rho >= -1 - 1e-6) & (rho <= 1 + 1e-6)).all())
    assert len(set(rho[:, 0].tolist())) > 1  # different batches, different cosines
    for k, v in student.state_dict().items():  # parameters and BatchNorm statistics untouched
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    torch.testing.assert_close(keypoint_cosines(student, teacher, data, cfg, batches=3, seed=5), rho)
    with pytest.raises(ValueError, match="batches"):
        keypoint_cosines(student, teacher, data, cfg, batches=0)


@pytest.mark.parametrize("optimizer", ["hamiltonian", "adam"])
def test_train_hamipose_resumes_bitwise_after_an_interruption(tmp_path, monkeypatch, optimizer):
    """Interrupted after its first record and resumed, a run equals an uninterrupted one: student,
    teacher, optimiser (the Hamiltonian's masses), schedule, keypoint metric and streams are restored."""
    data = tiny_data()
    evals = {"target": (data.source_images[:3], data.source_keypoints[:3], data.source_visible[:3])}
    kw = dict(eval_sets=evals, device="cpu", seed=3, progress=False)
    cfg = config(iterations=6, optimizer=optimizer)
    full_student, full_teacher, full = train_hamipose(tiny_net(), data, cfg, **kw)
    real, calls = hp.hamipose_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # after the record at step 2 was checkpointed
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(hp, "hamipose_step", interrupted)
    path = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train_hamipose(tiny_net(), data, cfg, checkpoint_path=path, **kw)
    monkeypatch.setattr(hp, "hamipose_step", real)
    with pytest.raises(ValueError, match="initial: .* in the checkpoint vs .* now"):  # another starting network
        train_hamipose(tiny_net(seed=9), data, cfg, checkpoint_path=path, **kw)
    student, teacher, history = train_hamipose(tiny_net(), data, cfg, checkpoint_path=path, **kw)
    assert history.records == full.records
    for a, b in ((student, full_student), (teacher, full_teacher)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match=r"config/lr: None in the checkpoint vs 0\.002 now.*--fresh"):
        train_hamipose(tiny_net(), data, config(iterations=6, optimizer=optimizer, lr=2e-3), checkpoint_path=path, **kw)
