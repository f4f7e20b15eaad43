"""Tests for poselab.methods.meta_tto: targets, losses, vectorised inner steps, meta-loss, TTO, evaluation."""

import copy
import math

import pytest
import roma
import torch

from poselab.checks import seed_everything
from poselab.data.body import body_model
from poselab.data.images import render_image_set
from poselab.methods import meta_tto as mt  # imported as a module: pytest would collect mt.test_loss
from poselab.methods.meta_tto import training as mt_training
from poselab.methods.meta_tto import (DetectorNoise, LossWeights, MeshTargets, MetaTTOConfig, evaluate_mesh,
                                      inner_step, inner_step_loop, mesh_targets, meta_loss, meta_loss_loop,
                                      meta_step, norm_parameter_names, predict_stacked, targets_as_prediction,
                                      training_loss, training_terms)
from poselab.models.mesh import MeshPrediction, MeshRegressor, rotation_6d_to_matrix

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
F64 = torch.float64
TINY = dict(widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), hidden=16, num_groups=2, input_size=64, iterations=2)
"""A test-sized regressor for 64x64 crops (about 11 k parameters)."""
LR = 0.05  # inner learning rate: large enough that the adapted weights (and second-order terms) matter


def make_net(seed=0, dtype=F64, last_std=0.05):
    """The tiny regressor with a random (not zero) last layer, so that every weight matters."""
    seed_everything(seed)
    net = MeshRegressor(**TINY).to(dtype)
    with torch.no_grad():
        net.head[-1].weight.normal_(0.0, last_std)
        net.head[-1].bias.normal_(0.0, last_std)
    return net


@pytest.fixture(scope="module")
def data():
    return render_image_set("train", "synthetic", 8, 64, seed=0, progress=False)


@pytest.fixture(scope="module")
def body():
    return body_model("cpu", F64)


@pytest.fixture(scope="module")
def targets(data, body):
    return mesh_targets(data, body)


@pytest.fixture(scope="module")
def images(data):
    return data.float_images().to(F64)


def small(targets, images, n=3):
    return targets.subset(slice(0, n)), images[:n]


def inner_loss(targets, body, aux=None, aux_weight=0.0):
    """The LossFn of the inner steps, as meta_loss builds it."""
    def loss_fn(pred, index):
        t = targets.subset(index)
        a = None if aux is None else MeshPrediction(*(x[index] for x in aux))
        return mt.test_loss(pred, t.detected, t.focal, t.center, t.size, body, aux=a, aux_weight=aux_weight,
                            visible=t.visible)
    return loss_fn


def grads_of(loss, *networks):
    params = [p for n in networks for p in n.parameters()]
    return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)


def assert_all_close(a, b, atol=1e-9, rtol=1e-5):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol, msg=f"tensor {i}")


# ----------------------------------------------------------------------------- targets


def test_mesh_targets_match_the_rendered_labels(data, targets):
    assert len(targets) == 8 and targets.size == 64 and targets.pose.dtype == F64
    # Recomputed by forward kinematics in float64; the labels were skinned in float32.
    torch.testing.assert_close(targets.joints_cam.float(), data.joints_cam, atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.joints2d.float(), data.joints, atol=1e-3, rtol=0)
    R = targets.rotations
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=F64).expand_as(R), atol=1e-12, rtol=0)
    # The root block places the pelvis (H36M joint 0) in the camera frame, in front of the camera.
    torch.testing.assert_close(targets.translation, targets.joints_cam[:, 0], atol=1e-12, rtol=0)
    assert bool((targets.translation[:, 2] > 1).all())


def test_detections_are_seeded_noisy_and_never_drop_the_pelvis(data, body, targets):
    again = mesh_targets(data, body, seed=0)
    other = mesh_targets(data, body, seed=1)
    torch.testing.assert_close(again.detected, targets.detected, atol=0, rtol=0)
    assert not torch.equal(other.detected, targets.detected)
    assert bool(targets.visible[:, 0].all())
    clean = mesh_targets(data, body, noise=DetectorNoise(0.0, 0.0, 0.0, 0.0))
    torch.testing.assert_close(clean.detected, clean.joints2d, atol=0, rtol=0)
    assert bool(clean.visible.all())


def test_detector_jitter_has_the_documented_scale(data, body):
    noisy = mesh_targets(data, body, noise=DetectorNoise(sigma=0.05, outlier_prob=0.0, dropout_prob=0.0))
    std = float((noisy.detected - noisy.joints2d).std())
    assert std == pytest.approx(0.05 * 64, rel=0.15)  # 272 draws: the estimate is within ~5 %


def test_subset(targets):
    sub = targets.subset(torch.tensor([2, 5]))
    assert len(sub) == 2 and sub.size == targets.size
    torch.testing.assert_close(sub.detected, targets.detected[[2, 5]], atol=0, rtol=0)


# ----------------------------------------------------------------------------- losses


def test_losses_vanish_at_the_ground_truth(targets, body):
    oracle = targets_as_prediction(targets)
    assert float(training_loss(oracle, targets, body).max()) < 1e-20
    t = targets
    assert float(mt.test_loss(oracle, t.joints2d, t.focal, t.center, t.size, body).max()) < 1e-20
    # The auxiliary term vanishes when the pseudo targets are the prediction itself.
    assert float(mt.test_loss(oracle, t.joints2d, t.focal, t.center, t.size, body, oracle, 1.0).max()) < 1e-20


@pytest.mark.parametrize("angle", [0.1, 1.0, math.pi])
def test_rotation_term_known_answer(targets, body, angle):
    # ||Rz(a) R - R||_F^2 = ||Rz(a) - I||_F^2 = 4 (1 - cos a), for one bone of 31, over 9 entries each.
    oracle = targets_as_prediction(targets)
    rz = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, angle], dtype=F64))
    rotations = oracle.rotations.clone()
    rotations[:, 7] = rz @ rotations[:, 7]
    terms = training_terms(oracle._replace(rotations=rotations), targets, body)
    expected = torch.full((len(targets),), 4 * (1 - math.cos(angle)) / (31 * 9), dtype=F64)
    torch.testing.assert_close(terms["rotations"], expected, atol=1e-12, rtol=0)
    assert float(terms["joints3d"].min()) > 0  # the joints below that bone moved


def test_phenotype_term_and_camera_invariance(targets, body):
    oracle = targets_as_prediction(targets)
    shifted = training_terms(oracle._replace(phenotypes=oracle.phenotypes * 0.5 + 0.1), targets, body)
    expected = ((oracle.phenotypes * 0.5 + 0.1 - targets.phenotypes) ** 2).mean(dim=1)
    torch.testing.assert_close(shifted["phenotypes"], expected, atol=1e-15, rtol=0)
    # Another camera moves the body: only the 2D term sees it (the 3D joints are root-relative).
    camera = oracle.camera * torch.tensor([0.8, 1.0, 1.0], dtype=F64) + torch.tensor([0.0, 0.1, -0.05], dtype=F64)
    moved = training_terms(oracle._replace(camera=camera), targets, body)
    for name in ("rotations", "phenotypes", "joints3d"):
        assert float(moved[name].max()) < 1e-20, name
    assert float(moved["joints2d"].min()) > 1e-4
    weights = LossWeights(rotations=2.0, phenotypes=3.0, joints3d=0.0, joints2d=0.5)
    torch.testing.assert_close(training_loss(oracle._replace(camera=camera), targets, body, weights),
                               0.5 * moved["joints2d"], atol=1e-15, rtol=0)


def test_test_loss_known_answers(targets, body):
    t, oracle = targets, targets_as_prediction(targets)
    # A constant offset (dx, dy) px on every detection: mean over joints and coordinates of (d / S)^2.
    offset = torch.tensor([3.0, -4.0], dtype=F64)
    loss = mt.test_loss(oracle, t.joints2d + offset, t.focal, t.center, t.size, body)
    torch.testing.assert_close(loss, torch.full((8,), 25.0 / (2 * 64**2), dtype=F64), atol=1e-15, rtol=0)
    # Offsets on hidden keypoints only are ignored.
    visible = torch.ones(8, 17, dtype=torch.bool)
    visible[:, 5:9] = False
    detected = t.joints2d.clone()
    detected[:, 5:9] += 10.0
    loss = mt.test_loss(oracle, detected, t.focal, t.center, t.size, body, visible=visible)
    assert float(loss.max()) < 1e-20
    # Auxiliary term: lambda times the mean squared difference of the 195 numbers (camera shifted by c).
    aux = oracle._replace(camera=oracle.camera + 0.2)
    loss = mt.test_loss(oracle, t.joints2d, t.focal, t.center, t.size, body, aux=aux, aux_weight=0.5)
    torch.testing.assert_close(loss, torch.full((8,), 0.5 * 3 * 0.04 / 195, dtype=F64), atol=1e-15, rtol=0)


def test_losses_gradcheck(targets, body):
    t = targets.subset(slice(0, 1))
    oracle = targets_as_prediction(t)
    g = torch.Generator().manual_seed(0)
    r6 = (oracle.rotation6d + 0.1 * torch.randn(1, 31, 6, generator=g, dtype=F64)).requires_grad_()
    camera = (oracle.camera + 0.05).requires_grad_()

    def f(r6, camera):
        pred = MeshPrediction(r6, rotation_6d_to_matrix(r6), oracle.phenotypes, camera)
        return training_loss(pred, t, body) + mt.test_loss(pred, t.detected, t.focal, t.center, t.size, body,
                                                           aux=oracle, aux_weight=0.3, visible=t.visible)

    assert torch.autograd.gradcheck(f, (r6, camera), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- inner steps


def test_norm_parameter_names():
    net = make_net()
    names = norm_parameter_names(net)
    groupnorms = sum(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert len(names) == 2 * groupnorms and "encoder.0.1.weight" in names and "encoder.0.1.bias" in names
    assert all("head" not in n for n in names)


def test_predict_stacked_with_shared_weights_is_the_network(images):
    net = make_net()
    stacked = predict_stacked(net, dict(net.named_parameters()), images[:3])
    for a, b in zip(stacked, net(images[:3])):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("frozen", [(), "norm"])
def test_inner_step_matches_the_loop(targets, images, body, first_order, frozen):
    t, x = small(targets, images)
    net = make_net()
    params = dict(net.named_parameters())
    loss_fn = inner_loss(t, body)
    fast = inner_step(net, params, x, loss_fn, LR, first_order, frozen)
    slow = inner_step_loop(net, params, x, loss_fn, LR, first_order, frozen)
    assert fast.keys() == params.keys()
    assert_all_close(list(fast.values()), list(slow.values()))
    # Outer gradients through the step (with respect to the shared weights) agree too.
    outer_fast = training_loss(predict_stacked(net, fast, x), t, body).sum()
    outer_slow = training_loss(predict_stacked(net, slow, x), t, body).sum()
    torch.testing.assert_close(outer_fast, outer_slow, atol=1e-12, rtol=1e-10)
    assert_all_close(grads_of(outer_fast, net), grads_of(outer_slow, net))
    # Each sample moved its own way; frozen parameters kept their shared values.
    w = fast["head.2.weight"].detach()
    assert float((w[0] - w[1]).abs().max()) > 1e-6
    for name in norm_parameter_names(net):
        moved = float((fast[name] - params[name]).detach().abs().max())
        assert (moved == 0) == (frozen == "norm"), name


def test_two_inner_steps_from_stacked_weights_match_the_loop(targets, images, body):
    t, x = small(targets, images)
    net = make_net()
    loss_fn = inner_loss(t, body)
    fast = slow = dict(net.named_parameters())
    for _ in range(2):
        fast = inner_step(net, fast, x, loss_fn, LR, frozen="norm")
        slow = inner_step_loop(net, slow, x, loss_fn, LR, frozen="norm")
    assert_all_close(list(fast.values()), list(slow.values()))
    outer = [training_loss(predict_stacked(net, p, x), t, body).sum() for p in (fast, slow)]
    assert_all_close(grads_of(outer[0], net), grads_of(outer[1], net))


def test_inner_step_under_no_grad_still_steps(targets, images, body):
    # A meta-loss evaluated without a graph (e.g. a validation pass) must still adapt the weights.
    t, x = small(targets, images, 2)
    net = make_net()
    cfg = config(use_aux=False)
    with torch.no_grad():
        quiet = meta_loss(net, None, x, t, body, cfg)
        adapted = inner_step(net, dict(net.named_parameters()), x, inner_loss(t, body), LR)
    torch.testing.assert_close(quiet, meta_loss(net, None, x, t, body, cfg).detach(), atol=1e-14, rtol=1e-12)
    assert not adapted["head.4.weight"].requires_grad
    assert float((adapted["head.4.weight"][0] - net.head[4].weight.detach()).abs().max()) > 1e-6
    assert quiet != training_loss(net(x), t, body).mean()


def test_inner_step_is_one_sgd_step_per_sample(targets, images, body):
    # Sample b's adapted weights = its own SGD step on a copy of the network.
    t, x = small(targets, images, 2)
    net = make_net()
    adapted = inner_step(net, dict(net.named_parameters()), x, inner_loss(t, body), LR, first_order=True)
    for b in range(2):
        ref = copy.deepcopy(net)
        opt = torch.optim.SGD(ref.parameters(), lr=LR)
        sub = t.subset(slice(b, b + 1))
        mt.test_loss(ref(x[b : b + 1]), sub.detected, sub.focal, sub.center, sub.size, body,
                     visible=sub.visible).sum().backward()
        opt.step()
        for k, p in ref.named_parameters():
            torch.testing.assert_close(adapted[k][b], p, atol=1e-12, rtol=1e-10, msg=k)


# ----------------------------------------------------------------------------- meta-loss


def config(**kw):
    base = dict(inner_lr=LR, aux_weight=0.5, use_aux=True)
    base.update(kw)
    return MetaTTOConfig(**base)


@pytest.mark.parametrize("kw", [dict(first_order=False), dict(first_order=True),
                                dict(first_order=False, inner_steps=2), dict(use_aux=False)])
def test_meta_loss_matches_the_loop(targets, images, body, kw):
    t, x = small(targets, images)
    net, aux = make_net(0), make_net(1)
    cfg = config(**kw)
    fast = meta_loss(net, aux, x, t, body, cfg)
    slow = meta_loss_loop(net, aux, x, t, body, cfg)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-10)
    networks = (net, aux) if cfg.use_aux else (net,)
    assert_all_close(grads_of(fast, *networks), grads_of(slow, *networks), atol=1e-5, rtol=1e-5)


def test_meta_loss_second_order_gradient_matches_finite_differences(targets, images, body):
    t, x = small(targets, images, 2)
    net, aux = make_net(0), make_net(1)
    cfg = config()
    checks = [(net, "head.0.weight", (2, 3)), (net, "encoder.1.0.conv1.weight", (1, 0, 1, 2)),
              (aux, "head.4.bias", 40)]
    grads = {}
    loss = meta_loss(net, aux, x, t, body, cfg)
    all_grads = dict(zip([f"{i}.{k}" for i, n in enumerate((net, aux)) for k, _ in n.named_parameters()],
                         grads_of(loss, net, aux)))
    for which, name, index in checks:
        grads[name] = float(all_grads[f"{0 if which is net else 1}.{name}"][index])
        param = dict(which.named_parameters())[name]
        values = []
        for delta in (1e-6, -1e-6):
            with torch.no_grad():
                param[index] += delta
            with torch.no_grad():
                values.append(float(meta_loss(net, aux, x, t, body, cfg)))
            with torch.no_grad():
                param[index] -= delta
        numeric = (values[0] - values[1]) / 2e-6
        assert grads[name] == pytest.approx(numeric, rel=1e-5, abs=1e-9), name


def test_first_order_keeps_the_loss_but_drops_the_second_order_term(targets, images, body):
    t, x = small(targets, images)
    net, aux = make_net(0), make_net(1)
    second = meta_loss(net, aux, x, t, body, config(first_order=False))
    first = meta_loss(net, aux, x, t, body, config(first_order=True))
    torch.testing.assert_close(first, second, atol=0, rtol=0)  # same forward
    g2, g1 = grads_of(second, net, aux), grads_of(first, net, aux)
    n_net = len(list(net.parameters()))
    diff = max(float((a - b).abs().max()) for a, b in zip(g1[:n_net], g2[:n_net]))
    assert diff > 1e-4 * max(float(a.abs().max()) for a in g2[:n_net])

    # First order w.r.t. w: the mean over samples of the training-loss gradient at the adapted weights.
    with torch.no_grad():
        pseudo = aux(x)
    adapted = inner_step(net, dict(net.named_parameters()), x, inner_loss(t, body, pseudo, 0.5), LR,
                         first_order=True, frozen="norm")
    leaves = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    outer = training_loss(predict_stacked(net, leaves, x), t, body).mean()
    fomaml = torch.autograd.grad(outer, list(leaves.values()))
    for a, b in zip(g1[:n_net], fomaml):
        torch.testing.assert_close(a, b.sum(dim=0), atol=1e-10, rtol=1e-6)

    # First order w.r.t. u: only the auxiliary network's own training loss (the inner path is cut);
    # second order adds the path through the inner step's pseudo targets.
    own = grads_of(training_loss(aux(x), t, body).mean(), aux)
    assert_all_close(g1[n_net:], own, atol=1e-12, rtol=1e-8)
    assert max(float((a - b).abs().max()) for a, b in zip(g2[n_net:], own)) > 1e-8


def test_without_meta_learning_the_loss_is_plain_regression(targets, images, body):
    t, x = small(targets, images)
    net, aux = make_net(0), make_net(1)
    got = meta_loss(net, aux, x, t, body, config(use_meta=False))
    expected = training_loss(net(x), t, body).mean() + training_loss(aux(x), t, body).mean()
    torch.testing.assert_close(got, expected, atol=1e-14, rtol=1e-12)
    got = meta_loss(net, None, x, t, body, config(use_meta=False, use_aux=False))
    torch.testing.assert_close(got, training_loss(net(x), t, body).mean(), atol=1e-14, rtol=1e-12)


def test_meta_steps_reduce_the_loss(targets, images, body):
    t, x = small(targets, images, 4)
    net, aux = make_net(0), make_net(1)
    cfg = config(lr=3e-3)
    opt = torch.optim.Adam([*net.parameters(), *aux.parameters()], lr=cfg.lr)
    losses = [meta_step(net, aux, opt, x, t, body, cfg) for _ in range(6)]
    final = float(meta_loss(net, aux, x, t, body, cfg).detach())
    assert all(math.isfinite(v) for v in losses)
    assert final < 0.8 * losses[0]


# ----------------------------------------------------------------------------- test-time optimisation


def tto(net, t, x, body, **kw):
    kw.setdefault("visible", t.visible)
    return mt.test_time_optimise(net, x, t.detected, t.focal, t.center, body, **kw)


def test_tto_leaves_the_network_unchanged_and_starts_from_its_prediction(targets, images, body):
    t, x = small(targets, images)
    net, aux = make_net(0), make_net(1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    aux_before = {k: v.clone() for k, v in aux.state_dict().items()}
    preds = tto(net, t, x, body, steps=3, lr=LR, optimizer="adam", aux_network=aux, aux_weight=0.5)
    assert len(preds) == 4
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0, msg=k)
    for k, v in aux.state_dict().items():
        torch.testing.assert_close(v, aux_before[k], atol=0, rtol=0, msg=k)
    assert all(p.grad is None for p in net.parameters())
    only = tto(net, t, x, body, steps=0, lr=LR)
    assert len(only) == 1
    with torch.no_grad():
        for a, b, c in zip(only[0], net(x), preds[0]):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
            torch.testing.assert_close(c, b, atol=1e-12, rtol=1e-10)
    assert not any(p.requires_grad for p in preds[-1])


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.3), ("adam", 1e-3)])
def test_tto_decreases_the_test_loss(targets, images, body, optimizer, lr):
    t, x = small(targets, images)
    net = make_net()
    preds = tto(net, t, x, body, steps=5, lr=lr, optimizer=optimizer)
    losses = [float(mt.test_loss(p, t.detected, t.focal, t.center, t.size, body, visible=t.visible).mean())
              for p in preds]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_tto_matches_torch_optim_on_each_image(targets, images, body, optimizer):
    # The reference: one deep copy of the network per image, norm layers frozen, torch.optim.
    t, x = small(targets, images, 2)
    net, aux = make_net(0), make_net(1)
    lr = 0.5 if optimizer == "sgd" else 1e-3
    preds = tto(net, t, x, body, steps=3, lr=lr, optimizer=optimizer, aux_network=aux, aux_weight=0.2)
    frozen = set(norm_parameter_names(net))
    for b in range(2):
        sub, xb = t.subset(slice(b, b + 1)), x[b : b + 1]
        ref = copy.deepcopy(net)
        trainable = [p for k, p in ref.named_parameters() if k not in frozen]
        opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(trainable, lr=lr)
        with torch.no_grad():
            pseudo = aux(xb)
        for _ in range(3):
            opt.zero_grad()
            mt.test_loss(ref(xb), sub.detected, sub.focal, sub.center, sub.size, body, aux=pseudo, aux_weight=0.2,
                         visible=sub.visible).sum().backward()
            opt.step()
        with torch.no_grad():
            for got, expected in zip(preds[-1], ref(xb)):
                torch.testing.assert_close(got[b : b + 1], expected, atol=1e-9, rtol=1e-7)


def test_tto_of_a_batch_equals_tto_of_each_image_alone(targets, images, body):
    t, x = small(targets, images)
    net = make_net()
    batch = tto(net, t, x, body, steps=2, lr=1e-3, optimizer="adam")
    for b in range(3):
        sub = t.subset(slice(b, b + 1))
        alone = tto(net, sub, x[b : b + 1], body, steps=2, lr=1e-3, optimizer="adam")
        for step in range(3):
            for got, expected in zip(batch[step], alone[step]):
                torch.testing.assert_close(got[b : b + 1], expected, atol=1e-12, rtol=1e-9)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_mesh_known_answers(targets, body):
    oracle = targets_as_prediction(targets)
    perfect = evaluate_mesh(oracle, targets, body, vertices=True)
    assert set(perfect) == {"mpjpe_mm", "pa_mpjpe_mm", "pve_mm"}
    assert all(v < 1e-6 for v in perfect.values()), perfect
    # A wrong camera only moves the body: root-relative errors stay 0.
    moved = evaluate_mesh(oracle._replace(camera=oracle.camera * 1.3 + 0.1), targets, body, vertices=True)
    assert all(v < 1e-6 for v in moved.values()), moved
    # A rotated body: MPJPE > 0, PA-MPJPE = 0 (a rotation is removed by the alignment).
    rx = roma.rotvec_to_rotmat(torch.tensor([0.3, 0.0, 0.0], dtype=F64))
    rotations = oracle.rotations.clone()
    rotations[:, 0] = rx @ rotations[:, 0]
    turned = evaluate_mesh(oracle._replace(rotations=rotations), targets, body)
    assert turned["mpjpe_mm"] > 50 and turned["pa_mpjpe_mm"] < 1e-6
    # A body shape change: both errors > 0; the result is a dict of floats.
    other = evaluate_mesh(oracle._replace(phenotypes=oracle.phenotypes.flip(0)), targets, body)
    assert other["pa_mpjpe_mm"] > 1 and all(isinstance(v, float) for v in other.values())


def test_evaluate_mesh_pve_in_chunks(targets, body):
    oracle = targets_as_prediction(targets)
    pred = oracle._replace(phenotypes=oracle.phenotypes.flip(0))
    whole = evaluate_mesh(pred, targets, body, vertices=True)
    chunked = evaluate_mesh(pred, targets, body, vertices=True, chunk_size=3)
    assert chunked["pve_mm"] == pytest.approx(whole["pve_mm"], rel=1e-10)
    assert whole["pve_mm"] > 1


def test_mesh_vertices_of_the_oracle_are_the_true_camera_frame_mesh(targets, body):
    oracle = targets_as_prediction(targets)
    vertices = mt.mesh_vertices(oracle, targets.focal, targets.center, targets.size, body)
    expected = body.forward(targets.pose, targets.phenotypes).vertices
    assert vertices.shape == (len(targets), 13718, 3) and not vertices.requires_grad
    torch.testing.assert_close(vertices, expected, atol=1e-9, rtol=0)
    chunked = mt.mesh_vertices(oracle, targets.focal, targets.center, targets.size, body, chunk_size=2)
    torch.testing.assert_close(chunked, vertices, atol=1e-12, rtol=0)
    # In front of the camera, and a larger s (closer, bigger in the crop) moves the mesh nearer.
    assert bool((vertices[..., 2] > 0).all())
    near = mt.mesh_vertices(oracle._replace(camera=oracle.camera * torch.tensor([1.5, 1.0, 1.0], dtype=F64)),
                            targets.focal, targets.center, targets.size, body)
    assert bool((near[..., 2].mean(1) < vertices[..., 2].mean(1)).all())


def test_mesh_vertices_rejects_mismatched_inputs(targets, body):
    oracle = targets_as_prediction(targets)
    with pytest.raises(ValueError, match="focal"):
        mt.mesh_vertices(oracle, targets.focal[:1], targets.center, targets.size, body)
    with pytest.raises(ValueError, match="chunk_size"):
        mt.mesh_vertices(oracle, targets.focal, targets.center, targets.size, body, chunk_size=0)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("kw, error, match", [
    (dict(lr=0.0), ValueError, "lr"),
    (dict(inner_steps=0), ValueError, "inner_steps"),
    (dict(tto_steps=-1), ValueError, "tto_steps"),
    (dict(tto_optimizer="lbfgs"), ValueError, "tto_optimizer"),
    (dict(first_order=1), TypeError, "first_order"),
    (dict(aux_weight=-1.0), ValueError, "aux_weight"),
    (dict(weights={"rotations": 1.0}), TypeError, "weights"),
])
def test_bad_config(kw, error, match):
    with pytest.raises(error, match=match):
        MetaTTOConfig(**kw)


def test_bad_settings():
    with pytest.raises(ValueError, match="joints3d"):
        LossWeights(joints3d=-1.0)
    with pytest.raises(ValueError, match="dropout_prob"):
        DetectorNoise(dropout_prob=1.5)


def test_bad_targets(data, body, targets):
    with pytest.raises(TypeError, match="images: expected a PersonImages"):
        mesh_targets(data.images, body)
    with pytest.raises(TypeError, match="noise"):
        mesh_targets(data, body, noise=0.1)
    with pytest.raises(ValueError, match="device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'.*got 'meta'"):
        mesh_targets(data, body, device="meta")  # refused by resolve_device before any work
    assert len(mesh_targets(data.subset(slice(0, 2)), body, device="cpu")) == 2
    with pytest.raises(ValueError, match="MeshTargets.phenotypes"):
        MeshTargets(**{**{k: getattr(targets, k) for k in MeshTargets._TENSORS}, "phenotypes": targets.phenotypes[:3]},
                    size=64)
    with pytest.raises(TypeError, match="MeshTargets.visible"):
        MeshTargets(**{**{k: getattr(targets, k) for k in MeshTargets._TENSORS}, "visible": targets.visible.long()},
                    size=64)


def test_bad_loss_inputs(targets, body):
    t, oracle = targets, targets_as_prediction(targets)
    with pytest.raises(TypeError, match="pred: expected a poselab.models.mesh.MeshPrediction"):
        training_loss(tuple(oracle), t, body)
    with pytest.raises(ValueError, match=r"pred.phenotypes: expected shape \(8, 6\)"):
        training_loss(oracle._replace(phenotypes=oracle.phenotypes[:, :5]), t, body)
    with pytest.raises(ValueError, match="aux_weight"):
        mt.test_loss(oracle, t.detected, t.focal, t.center, t.size, body, aux_weight=1.0)
    with pytest.raises(ValueError, match=r"detected: expected shape \(8, 17, 2\)"):
        mt.test_loss(oracle, t.detected[:, :16], t.focal, t.center, t.size, body)
    with pytest.raises(TypeError, match="visible"):
        mt.test_loss(oracle, t.detected, t.focal, t.center, t.size, body, visible=t.visible.double())
    with pytest.raises(TypeError, match="pred: torch.float32 on cpu does not match the body model's torch.float64"):
        training_loss(MeshPrediction(*(x.float() for x in oracle)), t, body)


def test_bad_step_inputs(targets, images, body):
    t, x = small(targets, images, 2)
    net = make_net()
    params = dict(net.named_parameters())
    loss_fn = inner_loss(t, body)
    with pytest.raises(ValueError, match="not parameters of the network"):
        inner_step(net, params, x, loss_fn, LR, frozen=("nope",))
    with pytest.raises(ValueError, match="frozen"):
        inner_step(net, params, x, loss_fn, LR, frozen="all")
    with pytest.raises(ValueError, match="missing"):
        inner_step(net, {k: v for k, v in params.items() if k != "head.0.bias"}, x, loss_fn, LR)
    with pytest.raises(ValueError, match=r"params\['head.0.bias'\]"):
        inner_step(net, {**params, "head.0.bias": params["head.0.bias"].expand(3, -1)}, x, loss_fn, LR)
    with pytest.raises(ValueError, match="loss_fn: expected per-sample losses"):
        inner_step(net, params, x, lambda p, i: loss_fn(p, i).sum(), LR)
    with pytest.raises(ValueError, match="do not depend on the weights"):
        inner_step(net, params, x, lambda p, i: torch.zeros(len(i), dtype=F64), LR)
    with pytest.raises(ValueError, match="lr"):
        inner_step(net, params, x, loss_fn, 0.0)
    with pytest.raises(TypeError, match="loss_fn"):
        inner_step(net, params, x, None, LR)


def test_bad_meta_and_tto_inputs(targets, images, body):
    t, x = small(targets, images, 2)
    net = make_net()
    with pytest.raises(TypeError, match="aux_network"):
        meta_loss(net, None, x, t, body, config())
    with pytest.raises(ValueError, match="separate network"):
        meta_loss(net, net, x, t, body, config())
    with pytest.raises(ValueError, match="one per target"):
        meta_loss(net, None, images[:3], t, body, config(use_aux=False))
    with pytest.raises(TypeError, match="config"):
        meta_loss(net, None, x, t, body, {"use_aux": False})
    with pytest.raises(ValueError, match="optimizer"):
        tto(net, t, x, body, steps=1, lr=LR, optimizer="lbfgs")
    with pytest.raises(ValueError, match="steps"):
        tto(net, t, x, body, steps=-1, lr=LR)
    with pytest.raises(ValueError, match="aux_weight"):
        tto(net, t, x, body, steps=1, lr=LR, aux_weight=0.5)
    with pytest.raises(ValueError, match=r"detected: expected shape \(2, 17, 2\)"):
        mt.test_time_optimise(net, x, targets.detected, t.focal, t.center, body, 1, LR)
    with pytest.raises(ValueError, match=r"predictions.rotation6d: expected shape \(8, 31, 6\)"):
        evaluate_mesh(targets_as_prediction(t), targets, body)


# ----------------------------------------------------------------------------- CUDA


@CUDA
def test_cuda_matches_cpu(data, targets, images):
    gpu_body = body_model("cuda", F64)
    t_cpu, x = small(targets, images, 2)
    t_gpu = mesh_targets(data, gpu_body).subset(slice(0, 2))
    torch.testing.assert_close(t_gpu.detected.cpu(), t_cpu.detected, atol=1e-9, rtol=0)
    net = make_net()
    gpu = copy.deepcopy(net).to("cuda")
    cfg = config()
    loss_cpu = meta_loss(net, make_net(1), x, t_cpu, body_model("cpu", F64), cfg)
    loss_gpu = meta_loss(gpu, make_net(1).to("cuda"), x.to("cuda"), t_gpu, gpu_body, cfg)
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, atol=1e-8, rtol=1e-6)
    preds = tto(gpu, t_gpu, x.to("cuda"), gpu_body, steps=2, lr=1e-3, optimizer="adam")
    assert preds[-1].camera.device.type == "cuda"


# ----------------------------------------------------------------------------- training loop


MODES = [dict(use_meta=False, use_aux=False), dict(use_meta=False, use_aux=True), dict(use_meta=True, use_aux=False),
         dict(use_meta=True, use_aux=True)]
TERMS = ["rotations", "phenotypes", "joints3d", "joints2d"]


def train_config(**kw):
    base = dict(iterations=5, batch=4, lr=3e-3, inner_lr=LR, log_every=2)
    base.update(kw)
    return MetaTTOConfig(**base)


def train(data, cfg, seed=0, eval_sets=None, nets=None, **kw):
    net, aux = nets or (make_net(0, torch.float32), make_net(1, torch.float32))
    return mt.train_mesh(net, data, cfg, aux_network=aux if cfg.use_aux else None, eval_sets=eval_sets, device="cpu",
                         seed=seed, progress=False, **kw)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"meta{int(m['use_meta'])}-aux{int(m['use_aux'])}")
def test_train_mesh_runs_in_each_mode(data, mode):
    from poselab.optim import warmup_cosine

    cfg = train_config(**mode)
    net, aux = make_net(0, torch.float32), make_net(1, torch.float32)
    before = [{k: v.clone() for k, v in n.state_dict().items()} for n in (net, aux)]
    out, out_aux, history = train(data, cfg, eval_sets={"val": data.subset(slice(4, 8))}, nets=(net, aux))
    for n, state in zip((net, aux), before):  # the inputs are not modified
        for k, v in n.state_dict().items():
            torch.testing.assert_close(v, state[k], atol=0, rtol=0, msg=k)
    assert out is not net and not out.training
    assert float((out.head[-1].weight - net.head[-1].weight).detach().abs().max()) > 0
    if cfg.use_aux:
        assert out_aux is not aux and not out_aux.training
        assert float((out_aux.head[-1].weight - aux.head[-1].weight).detach().abs().max()) > 0
    else:
        assert out_aux is None
    evals = {"val/mpjpe_mm", "val/pa_mpjpe_mm"}
    assert history.column("iteration") == [0, 2, 4, 5]
    assert set(history.records[0]) == {"iteration", "lr", "diverged"} | evals
    step_keys = {"iteration", "lr", "loss", *TERMS, "diverged"} | evals | ({"aux_loss"} if cfg.use_aux else set())
    for r in history.records[1:]:
        assert set(r) == step_keys
        assert r["lr"] == pytest.approx(cfg.lr * warmup_cosine(r["iteration"] - 1, 5, 0.05))
    values = [v for r in history.records for v in r.values()]
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    assert history.column("diverged") == [0.0] * 4 and history.records[0]["val/mpjpe_mm"] > 0


def test_train_mesh_is_seeded(data):
    cfg = train_config(iterations=3, log_every=1)
    first, _, h1 = train(data, cfg, seed=0)
    again, _, h2 = train(data, cfg, seed=0)
    other, _, h3 = train(data, cfg, seed=1)
    assert h1.records == h2.records
    for a, b in zip(first.parameters(), again.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert h3.records[1]["loss"] != h1.records[1]["loss"]


@pytest.mark.parametrize("use_meta", [False, True])
def test_train_mesh_overfits_four_images(data, use_meta):
    cfg = train_config(iterations=20, log_every=5, use_meta=use_meta, use_aux=False)
    _, _, history = train(data.subset(slice(0, 4)), cfg)
    losses = [r["loss"] for r in history.records[1:]]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"meta{int(m['use_meta'])}-aux{int(m['use_aux'])}")
def test_train_step_is_the_meta_step_with_its_terms(targets, images, body, mode):
    # The training loop's step (which also reports the loss terms) takes the same step as meta_step.
    t, x = small(targets, images)
    cfg = config(**mode)
    nets = [make_net(0), make_net(1)] if cfg.use_aux else [make_net(0)]
    copies = [copy.deepcopy(n) for n in nets]
    stats = mt_training._mesh_step(*nets[:1], nets[1] if cfg.use_aux else None,
                          torch.optim.SGD([p for n in nets for p in n.parameters()], lr=0.1), x, t, body, cfg)
    with torch.no_grad():
        expected = meta_loss(*copies[:1], copies[1] if cfg.use_aux else None, x, t, body, cfg)
    loss = meta_step(*copies[:1], copies[1] if cfg.use_aux else None,
                     torch.optim.SGD([p for n in copies for p in n.parameters()], lr=0.1), x, t, body, cfg)
    torch.testing.assert_close(stats["loss"], expected, atol=1e-14, rtol=1e-12)
    assert float(stats["loss"]) == pytest.approx(loss, rel=1e-12)
    assert set(stats) == {"loss", *TERMS} | ({"aux_loss"} if cfg.use_aux else set())
    weighted = sum(getattr(cfg.weights, k) * stats[k] for k in TERMS)
    aux_loss = stats.get("aux_loss", 0.0)
    torch.testing.assert_close(weighted + aux_loss, stats["loss"], atol=1e-14, rtol=1e-12)
    for a, b in zip([p for n in nets for p in n.parameters()], [p for n in copies for p in n.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_train_mesh_records_divergence_as_nan(data):
    net = make_net(0, torch.float32)
    with torch.no_grad():
        net.head[-1].bias[0] = float("inf")  # every prediction is non-finite: the first step diverges
    _, _, history = train(data, train_config(use_aux=False), nets=(net, None))
    assert history.column("iteration") == [0, 2, 4, 5]
    assert history.column("diverged") == [0.0, 1.0, 1.0, 1.0]
    assert all(math.isnan(history.records[2][k]) for k in ("loss", "lr", "joints2d"))


def test_predict_images_matches_the_network_in_chunks(data):
    net = make_net(0, torch.float32)
    whole = mt.predict_images(net, data)
    chunked = mt.predict_images(net, data, chunk_size=3)
    with torch.no_grad():
        direct = net(data.float_images())
    for a, b, c in zip(whole, chunked, direct):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="images: expected a PersonImages"):
        mt.predict_images(net, data.images)


@pytest.mark.parametrize("change, error, match", [
    (dict(data="images"), TypeError, "data: expected a PersonImages"),
    (dict(config={"iterations": 2}), TypeError, "config: expected a MetaTTOConfig"),
    (dict(network=None), TypeError, "network: expected an nn.Module"),
    (dict(aux_network=None), TypeError, "aux_network: config.use_aux needs"),
    (dict(aux_network="same"), ValueError, "separate network"),
    (dict(config=train_config(use_aux=False)), ValueError, "aux_network: given but config.use_aux is False"),
    (dict(eval_sets={"val": "images"}), ValueError, r"eval_sets\['val'\]: expected a PersonImages"),
    (dict(eval_sets=["val"]), TypeError, "eval_sets: expected a dict"),
    (dict(warmup=1.0), ValueError, "warmup"),
    (dict(noise=0.1), TypeError, "noise"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(network="32px"), ValueError, "data: crops of 64 px, but the network takes 32 px"),
])
def test_train_mesh_bad_inputs(data, change, error, match):
    net = make_net(0, torch.float32)
    kw = dict(network=net, data=data, config=train_config(), aux_network=make_net(1, torch.float32))
    kw.update(change)
    if kw["data"] == "images":
        kw["data"] = data.images
    if kw["aux_network"] == "same":
        kw["aux_network"] = net
    if kw["network"] == "32px":
        kw["network"] = MeshRegressor(**{**TINY, "input_size": 32})
    with pytest.raises(error, match=match):
        mt.train_mesh(kw.pop("network"), kw.pop("data"), kw.pop("config"), device="cpu", progress=False, **kw)


@CUDA
def test_train_mesh_on_cuda(data):
    out, aux, history = mt.train_mesh(make_net(0, torch.float32), data, train_config(iterations=2), device="cuda",
                                      aux_network=make_net(1, torch.float32), eval_sets={"val": data},
                                      progress=False)
    assert next(out.parameters()).device.type == "cuda" and next(aux.parameters()).device.type == "cuda"
    assert all(math.isfinite(v) for r in history.records for v in r.values())


def test_train_mesh_resumes_bitwise_after_an_interruption(data, tmp_path, monkeypatch):
    cfg = train_config(iterations=4, log_every=2, use_meta=True, use_aux=True)
    full, full_aux, full_history = train(data, cfg, seed=0)
    real, calls = mt_training._mesh_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # after the record at step 2 was checkpointed
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    path = tmp_path / "mesh.safetensors"
    monkeypatch.setattr(mt_training, "_mesh_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(data, cfg, seed=0, checkpoint_path=path)
    monkeypatch.setattr(mt_training, "_mesh_step", real)
    resumed, resumed_aux, history = train(data, cfg, seed=0, checkpoint_path=path)
    assert history.records == full_history.records
    for a, b in ((resumed, full), (resumed_aux, full_aux)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
