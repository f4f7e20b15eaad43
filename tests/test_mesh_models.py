"""Tests for poselab.models.mesh: 6D rotations, crop cameras, pose parameters, the HMR-style regressor."""

import pytest
import roma
import torch
import torch.nn as nn
from torch.func import functional_call, grad, vmap

from poselab.checks import seed_everything
from poselab.data.cameras import project_points
from poselab.models.mesh import (
    BACKBONE_STRIDE,
    INITIAL_SCALE,
    MESH_REGRESSORS,
    NUM_PARAMS,
    MeshPrediction,
    MeshRegressor,
    build_mesh_regressor,
    camera_translation,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
    to_pose_parameters,
    translation_to_camera,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
TINY = dict(widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), hidden=16, num_groups=2, input_size=32, iterations=2)
"""A test-sized regressor: 32x32 inputs (a 2x2 map after the encoder), about 9 k parameters."""


def make(name, seed=0, **kwargs):
    seed_everything(seed)
    return build_mesh_regressor(name, **kwargs)


def make_tiny(seed=0, dtype=torch.float32, last_std=0.05):
    """The tiny regressor with a random (not zero) last layer, so that every weight matters."""
    seed_everything(seed)
    model = MeshRegressor(**TINY).to(dtype)
    if last_std:
        with torch.no_grad():
            model.head[-1].weight.normal_(0.0, last_std)
            model.head[-1].bias.normal_(0.0, last_std)
    return model


def images(batch, size=64, seed=1, dtype=torch.float32):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rotations(*shape, seed=0, dtype=torch.float32):
    return roma.random_rotmat(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def assert_rotations(R, atol=1e-5):
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, atol=atol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=atol, rtol=0)


def test_constants():
    assert MESH_REGRESSORS == ("mesh_tiny", "mesh_small")
    assert NUM_PARAMS == 31 * 6 + 6 + 3 == 195
    assert BACKBONE_STRIDE == 16 and INITIAL_SCALE == 1.0


# ----------------------------------------------------------------------------- 6D rotations


@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
def test_rotation_6d_round_trip(shape):
    R = rotations(*shape, dtype=torch.float64)
    x = matrix_to_rotation_6d(R)
    assert x.shape == (*shape, 6)
    torch.testing.assert_close(rotation_6d_to_matrix(x), R, atol=1e-12, rtol=0)
    # Convention: the first two columns, concatenated.
    torch.testing.assert_close(x[..., :3], R[..., :, 0])
    torch.testing.assert_close(x[..., 3:], R[..., :, 1])


def test_rotation_6d_known_answers():
    eye = torch.eye(3)
    torch.testing.assert_close(matrix_to_rotation_6d(eye), torch.tensor([1.0, 0, 0, 0, 1, 0]))
    # Gram-Schmidt: a1 is normalised, a2 loses its a1 component and is normalised.
    torch.testing.assert_close(rotation_6d_to_matrix(torch.tensor([2.0, 0, 0, 3, 5, 0])), eye)
    # Columns (0, 1, 0) and (-1, 0, 0): a 90-degree turn about z; the third column is their cross product.
    rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    torch.testing.assert_close(rotation_6d_to_matrix(torch.tensor([0.0, 1, 0, -1, 0, 0])), rz)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_6d_orthonormal_and_differentiable(dtype):
    x = torch.randn(4, 31, 6, generator=torch.Generator().manual_seed(0), dtype=dtype, requires_grad=True)
    R = rotation_6d_to_matrix(x)
    assert R.shape == (4, 31, 3, 3) and R.dtype == dtype
    assert_rotations(R.detach())
    (R * torch.randn_like(R)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # Degenerate input (zero vector) stays finite thanks to the Gram-Schmidt norm floor.
    assert torch.isfinite(rotation_6d_to_matrix(torch.zeros(6, dtype=dtype))).all()


def test_rotation_6d_gradcheck():
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (x,))


def test_rotation_6d_bad_inputs():
    with pytest.raises(ValueError, match=r"x: expected 6D rotations of shape \(\.\.\., 6\), got \(4, 5\)"):
        rotation_6d_to_matrix(torch.zeros(4, 5))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        rotation_6d_to_matrix(torch.zeros(4, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        rotation_6d_to_matrix([1.0, 0, 0, 0, 1, 0])
    with pytest.raises(ValueError, match=r"R: expected rotation matrices of shape \(\.\.\., 3, 3\), got \(2, 3, 4\)"):
        matrix_to_rotation_6d(torch.zeros(2, 3, 4))


# ----------------------------------------------------------------------------- crop cameras


def test_camera_translation_known_answer():
    # S = 64, f = (100, 120), c = (30, 34), (s, tx, ty) = (0.5, 0.25, -0.5), by hand:
    # z = 2 * 100 / (64 * 0.5) = 6.25; p = 32 * (1.25, 0.5) - 0.5 = (39.5, 15.5);
    # x = (39.5 - 30) * 6.25 / 100 = 0.59375; y = (15.5 - 34) * 6.25 / 120 = -0.963541(6).
    camera = torch.tensor([[0.5, 0.25, -0.5]], dtype=torch.float64)
    focal = torch.tensor([[100.0, 120.0]], dtype=torch.float64)
    center = torch.tensor([[30.0, 34.0]], dtype=torch.float64)
    t = camera_translation(camera, focal, center, 64)
    torch.testing.assert_close(t, torch.tensor([[0.59375, -18.5 * 6.25 / 120, 6.25]], dtype=torch.float64))
    torch.testing.assert_close(project_points(t, focal, center), torch.tensor([[39.5, 15.5]], dtype=torch.float64))


@pytest.mark.parametrize("size", [32, 64, 128])
def test_camera_translation_projects_to_the_pixel(size):
    g = torch.Generator().manual_seed(size)
    camera = torch.cat([0.3 + torch.rand(8, 1, generator=g), 2 * torch.rand(8, 2, generator=g) - 1], dim=-1).double()
    focal = (50 + 200 * torch.rand(8, 2, generator=g)).double()
    center = (size * torch.rand(8, 2, generator=g)).double()  # the principal point need not be the crop centre
    t = camera_translation(camera, focal, center, size)
    assert t.shape == (8, 3) and (t[:, 2] > 0).all()
    expected = size / 2 * (1 + camera[:, 1:]) - 0.5
    torch.testing.assert_close(project_points(t, focal, center), expected)
    # Halving s doubles the depth (the pelvis stays on the same pixel, so x and y double too).
    half = camera * torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(camera_translation(half, focal, center, size), 2 * t)
    # The inverse.
    torch.testing.assert_close(translation_to_camera(t, focal, center, size), camera)


def test_camera_translation_crop_centre_and_edges():
    focal, center = torch.tensor([80.0, 80.0]), torch.tensor([10.0, 20.0])
    cams = torch.tensor([[1.0, 0.0, 0.0], [1.0, -1.0, 1.0]])
    pixels = project_points(camera_translation(cams, focal, center, 64), focal, center)
    # (0, 0) is the crop's centre pixel (S - 1) / 2; -1 and +1 its edges -0.5 and S - 0.5.
    torch.testing.assert_close(pixels, torch.tensor([[31.5, 31.5], [-0.5, 63.5]]))
    # s = 1: one metre spans half the crop (32 px) at the pelvis's depth: z = f / 32.
    assert camera_translation(cams, focal, center, 64)[0, 2].item() == pytest.approx(80 / 32)


def test_camera_translation_broadcasts():
    camera = torch.tensor([[[1.0, 0.1, 0.2], [2.0, -0.3, 0.0]]]).expand(3, 2, 3)
    t = camera_translation(camera, torch.tensor([100.0, 100.0]), torch.tensor([31.5, 31.5]), 64)
    assert t.shape == (3, 2, 3)
    torch.testing.assert_close(t[:, 1, 2], torch.full((3,), 100 / 64))


def test_camera_translation_bad_inputs():
    f, c = torch.ones(2, 2), torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"camera: expected weak-perspective cameras \(s, tx, ty\)"):
        camera_translation(torch.ones(2, 2), f, c, 64)
    with pytest.raises(TypeError, match="camera: expected a floating-point tensor"):
        camera_translation(torch.ones(2, 3, dtype=torch.long), f, c, 64)
    with pytest.raises(ValueError, match=r"focal: expected crop intrinsics of shape \(\.\.\., 2\)"):
        camera_translation(torch.ones(2, 3), torch.ones(2, 3), c, 64)
    with pytest.raises(TypeError, match="center: expected a torch.Tensor"):
        camera_translation(torch.ones(2, 3), f, (0.0, 0.0), 64)
    with pytest.raises(TypeError, match="size: expected an int"):
        camera_translation(torch.ones(2, 3), f, c, 64.0)
    with pytest.raises(ValueError, match="size: expected an int >= 1, got 0"):
        translation_to_camera(torch.ones(2, 3), f, c, 0)
    with pytest.raises(ValueError, match="translation: expected positions"):
        translation_to_camera(torch.ones(2, 2), f, c, 64)


# ----------------------------------------------------------------------------- pose parameters


def test_to_pose_parameters_layout():
    R = rotations(2, 31, dtype=torch.float64)
    pred = MeshPrediction(matrix_to_rotation_6d(R), R, torch.full((2, 6), 0.5), torch.ones(2, 3))
    t = torch.tensor([[0.1, -0.2, 4.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    P = to_pose_parameters(pred, t)
    assert P.shape == (2, 31, 4, 4) and P.dtype == torch.float64
    torch.testing.assert_close(P[..., :3, :3], R)
    torch.testing.assert_close(P[:, 0, :3, 3], t)
    assert (P[:, 1:, :3, 3] == 0).all()
    assert (P[..., 3, :] == torch.tensor([0.0, 0, 0, 1], dtype=torch.float64)).all()
    # A rigid transform per bone: the inverse of each block is the transposed rotation.
    torch.testing.assert_close(torch.linalg.inv(P[:, 0])[:, :3, 3], -(R[:, 0].transpose(-1, -2) @ t[..., None])[..., 0])


def test_to_pose_parameters_is_differentiable():
    R = rotation_6d_to_matrix(torch.randn(1, 31, 6, dtype=torch.float64))
    t = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    pred = MeshPrediction(None, R.requires_grad_(), None, None)
    to_pose_parameters(pred, t).sum().backward()
    torch.testing.assert_close(t.grad, torch.ones(1, 3, dtype=torch.float64))
    assert (R.grad == 1).all()


def test_to_pose_parameters_bad_inputs():
    R = torch.eye(3).expand(2, 31, 3, 3)
    pred = MeshPrediction(None, R, None, None)
    with pytest.raises(ValueError, match=r"translation: expected shape \(2, 3\)"):
        to_pose_parameters(pred, torch.zeros(3, 3))
    with pytest.raises(TypeError, match="translation: torch.float64 on cpu does not match"):
        to_pose_parameters(pred, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"prediction.rotations: expected shape \(B, 31, 3, 3\)"):
        to_pose_parameters(MeshPrediction(None, torch.eye(3).expand(2, 17, 3, 3), None, None), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="prediction.rotations: expected a torch.Tensor"):
        to_pose_parameters(torch.zeros(2, 31, 3, 3), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- the regressor


@pytest.mark.parametrize("name", MESH_REGRESSORS)
def test_output_shapes_and_ranges(name):
    model = make(name)
    assert isinstance(model, MeshRegressor) and model.num_bones == 31 and model.input_size == 64
    with torch.no_grad():
        nn.init.normal_(model.head[-1].weight, std=0.05)  # a trained-like head: outputs away from init
        pred = model(images(3))
    assert isinstance(pred, MeshPrediction)
    assert pred.rotation6d.shape == (3, 31, 6) and pred.rotations.shape == (3, 31, 3, 3)
    assert pred.phenotypes.shape == (3, 6) and pred.camera.shape == (3, 3)
    assert all(t.dtype == torch.float32 for t in pred)
    assert_rotations(pred.rotations)
    torch.testing.assert_close(pred.rotations, rotation_6d_to_matrix(pred.rotation6d))
    assert ((pred.phenotypes > 0) & (pred.phenotypes < 1)).all()
    assert (pred.camera[:, 0] > 0).all()
    assert not torch.allclose(pred.rotations, torch.eye(3).expand(3, 31, 3, 3), atol=1e-3)


@pytest.mark.parametrize("name", MESH_REGRESSORS)
def test_fresh_network_predicts_the_initial_parameters(name):
    model = make(name)
    assert (model.head[-1].weight == 0).all() and (model.head[-1].bias == 0).all()
    with torch.no_grad():
        pred = model(images(2))
    torch.testing.assert_close(pred.rotations, torch.eye(3).expand(2, 31, 3, 3), atol=0, rtol=0)
    torch.testing.assert_close(pred.rotation6d, torch.tensor([1.0, 0, 0, 0, 1, 0]).expand(2, 31, 6), atol=0, rtol=0)
    torch.testing.assert_close(pred.phenotypes, torch.full((2, 6), 0.5), atol=0, rtol=0)
    torch.testing.assert_close(pred.camera, torch.tensor([INITIAL_SCALE, 0.0, 0.0]).expand(2, 3), atol=0, rtol=0)


def test_parameter_counts_by_hand():
    def block(c_in, c_out):  # two 3x3 convs + 2 GN, plus a 1x1 projection + GN when the width changes
        return 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out + (c_in * c_out + 2 * c_out if c_in != c_out else 0)

    def head(feature, hidden):
        return (feature + 195) * hidden + hidden + hidden * hidden + hidden + hidden * 195 + 195

    encoder = 27 * 16 + 2 * 16 + block(16, 16) + block(16, 32) + block(32, 64) + block(64, 128)
    tiny = make("mesh_tiny")
    assert tiny.num_parameters == encoder + head(128, 192) == 444_435
    assert 300_000 <= tiny.num_parameters <= 500_000
    small = make("mesh_small")
    assert small.num_parameters == 2_208_483
    assert 1_500_000 <= small.num_parameters <= 3_000_000
    assert make("mesh_tiny", hidden=256).num_parameters == encoder + head(128, 256)


@pytest.mark.parametrize("name", MESH_REGRESSORS)
def test_gradients_reach_every_parameter(name):
    model = make(name, input_size=32)
    with torch.no_grad():
        nn.init.normal_(model.head[-1].weight, std=0.01)
    pred = model(images(2, 32))
    (pred.rotations.square().sum() + pred.phenotypes.sum() + pred.camera.square().sum()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    assert [n for n, _ in model.named_buffers()] == ["init_params"]


def test_images_are_processed_independently():
    # GroupNorm: no batch statistics, so an image's prediction does not depend on the others.
    model = make_tiny()
    x = images(4, 32)
    with torch.no_grad():
        full = model(x)
        single = [model(x[i : i + 1]) for i in range(4)]
    for field, value in zip(MeshPrediction._fields, full):
        torch.testing.assert_close(value, torch.cat([getattr(s, field) for s in single]), atol=1e-6, rtol=0)


def test_iterations_refine():
    model = make_tiny()
    x = images(2, 32)
    one = MeshRegressor(**{**TINY, "iterations": 1})
    one.load_state_dict(model.state_dict())
    with torch.no_grad():
        feature = model.encode(x)
        params = model.init_params.expand(2, -1)
        for _ in range(TINY["iterations"]):
            params = params + model.head(torch.cat([feature, params], dim=-1))
        torch.testing.assert_close(model(x).rotation6d, params[:, :186].reshape(2, 31, 6))
        torch.testing.assert_close(model(x).camera[:, 0], params[:, -3].exp())
        assert not torch.allclose(one(x).rotation6d, model(x).rotation6d)


def test_set_initial():
    model = make("mesh_tiny")
    R = rotations(31, seed=3)
    model.set_initial(rotations=R, phenotypes=torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.0]),
                      camera=torch.tensor([[2.0, 0.1, -0.2], [0.5, 0.3, 0.0]]))
    with torch.no_grad():
        pred = model(images(2))
    torch.testing.assert_close(pred.rotations, R.expand(2, 31, 3, 3), atol=1e-6, rtol=0)
    expected = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 1e-4])  # 0 is clamped to 1e-4 before the logit
    torch.testing.assert_close(pred.phenotypes, expected.expand(2, 6), atol=1e-6, rtol=0)
    torch.testing.assert_close(pred.camera, torch.tensor([1.0, 0.2, -0.1]).expand(2, 3))  # geometric mean of s
    # A batch of rotations: the chordal mean; for a rotation and its small perturbations, close to the rotation.
    Rs = R[None] @ roma.rotvec_to_rotmat(0.01 * torch.randn(5, 31, 3, generator=torch.Generator().manual_seed(0)))
    model.set_initial(rotations=Rs)
    with torch.no_grad():
        assert (model(images(1)).rotations - R).abs().max() < 0.02
    assert_rotations(rotation_6d_to_matrix(model.init_params[:186].reshape(31, 6)))


def test_set_initial_bad_inputs():
    model = make("mesh_tiny")
    before = model.init_params.clone()
    with pytest.raises(ValueError, match=r"rotations: expected shape \(31, 3, 3\) or \(N, 31, 3, 3\)"):
        model.set_initial(rotations=torch.eye(3))
    with pytest.raises(ValueError, match=r"phenotypes: expected values in \[0, 1\]"):
        model.set_initial(phenotypes=torch.full((6,), 1.5))
    with pytest.raises(ValueError, match="camera: expected scales s"):
        model.set_initial(camera=torch.tensor([0.0, 0.0, 0.0]))
    with pytest.raises(TypeError, match="camera: expected a floating-point tensor"):
        model.set_initial(camera=torch.tensor([1, 0, 0]))
    with pytest.raises(TypeError):
        model.set_initial(torch.eye(3).expand(31, 3, 3))  # keyword-only
    assert torch.equal(model.init_params, before)


@pytest.mark.parametrize("name", MESH_REGRESSORS)
def test_deterministic_given_seed(name):
    a, b, c = (make(name, seed=s, input_size=32) for s in (3, 3, 4))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert not torch.equal(a.encoder[0][0].weight, c.encoder[0][0].weight)
    for m in (a, b):
        with torch.no_grad():
            nn.init.normal_(m.head[-1].weight, std=0.05, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for pa, pb in zip(a(images(2, 32)), b(images(2, 32))):
            assert torch.equal(pa, pb)


class _Regress(nn.Module):
    """``forward`` = the regressor's head, so that ``functional_call`` can swap the head's weights."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return tuple(self.model.regress(features))


def test_regressor_head_gradcheck():
    # Through the iterations, Gram-Schmidt, sigmoid and exp, in the features and in a hidden weight.
    head = _Regress(make_tiny(dtype=torch.float64, last_std=0.2))
    features = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weight = head.model.head[2].weight.detach().clone().requires_grad_()

    def f(x, w):
        return functional_call(head, {"model.head.2.weight": w}, (x,))

    assert torch.autograd.gradcheck(f, (features, weight), fast_mode=True)


# ----------------------------------------------------------------------------- torch.func


def _loss(pred, target):
    """Sum of squared errors against ``target`` = (rotations, phenotypes, camera)."""
    rot, phen, cam = target
    return sum((p - t).square().sum() for p, t in ((pred.rotations, rot), (pred.phenotypes, phen), (pred.camera, cam)))


def _targets(batch, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (rotations(batch, 31, seed=seed, dtype=dtype), torch.rand(batch, 6, generator=g, dtype=dtype),
            torch.rand(batch, 3, generator=g, dtype=dtype) + torch.tensor([0.5, -0.5, -0.5], dtype=dtype))


def _unsqueeze(target):
    return tuple(t[:, None] for t in target)


def test_vmap_over_per_sample_weights_matches_a_loop():
    model, batch = make_tiny(), 3
    buffers = dict(model.named_buffers())
    g = torch.Generator().manual_seed(0)
    stacked = {k: v.detach().expand(batch, *v.shape) + 0.01 * torch.randn(batch, *v.shape, generator=g)
               for k, v in model.named_parameters()}
    x = images(batch, 32)

    def call(params, xi):
        return functional_call(model, (params, buffers), (xi,))

    out = vmap(call)(stacked, x[:, None])  # each sample: its own weights, a batch of one image
    assert isinstance(out, MeshPrediction) and out.rotations.shape == (batch, 1, 31, 3, 3)
    for b in range(batch):
        ref = call({k: v[b] for k, v in stacked.items()}, x[b : b + 1])
        for field, value, expected in zip(MeshPrediction._fields, out, ref):
            torch.testing.assert_close(value[b], expected, atol=1e-5, rtol=1e-5, msg=f"{field}, sample {b}")
    with torch.no_grad():
        shared = model(x)
    assert (out.camera[:, 0] - shared.camera).abs().max() > 1e-4  # the perturbed weights do change the outputs


def test_per_sample_gradients_match_a_loop():
    model, batch = make_tiny(), 3
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x, target = images(batch, 32), _targets(batch)

    def loss(p, xi, ti):
        return _loss(functional_call(model, (p, buffers), (xi,)), ti)

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x[:, None], _unsqueeze(target))
    for b in range(batch):
        model.zero_grad()
        _loss(model(x[b : b + 1]), tuple(t[b : b + 1] for t in target)).backward()
        for k, p in model.named_parameters():
            assert grads[k].shape == (batch, *p.shape)
            torch.testing.assert_close(grads[k][b], p.grad, atol=1e-5, rtol=1e-5, msg=f"{k}, sample {b}")
    # The samples' gradients differ (a vmap that broadcast one sample would pass the loop check only by luck).
    assert (grads["encoder.0.0.weight"][0] - grads["encoder.0.0.weight"][1]).abs().max() > 1e-6


ALPHA = 0.05  # inner learning rate of the MAML-style steps


def _maml_setup(batch=2):
    model = make_tiny(dtype=torch.float64, last_std=0.2)
    x = images(batch, 32, dtype=torch.float64)
    return model, x, _targets(batch, seed=1, dtype=torch.float64), _targets(batch, seed=2, dtype=torch.float64)


def _maml_outer_loss(model, params, x, inner_target, outer_target, second_order=True):
    """One inner SGD step on the weights (autograd, ``create_graph``), then the outer loss of the adapted weights."""
    buffers = dict(model.named_buffers())
    inner = _loss(functional_call(model, (params, buffers), (x,)), inner_target)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=second_order)
    adapted = {k: v - ALPHA * g for (k, v), g in zip(params.items(), grads)}
    return _loss(functional_call(model, (adapted, buffers), (x,)), outer_target)


@pytest.mark.parametrize("name, index", [("encoder.0.0.weight", (1, 2, 0, 1)), ("head.0.weight", (3, 5))])
def test_maml_second_order_step_matches_finite_differences(name, index):
    model, x, inner_target, outer_target = _maml_setup()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    _maml_outer_loss(model, params, x, inner_target, outer_target).backward()
    analytic = params[name].grad[index].item()

    def at(delta):
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        with torch.no_grad():
            p[name][index] += delta
        return _maml_outer_loss(model, p, x, inner_target, outer_target, second_order=False).item()

    eps = 1e-6
    numeric = (at(eps) - at(-eps)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7)
    # The second-order term matters here: the first-order approximation is off.
    first = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    _maml_outer_loss(model, first, x, inner_target, outer_target, second_order=False).backward()
    assert abs(first[name].grad[index].item() - numeric) > 1e-4 * abs(numeric)


def test_per_sample_maml_step_with_torch_func_matches_a_loop():
    # Each sample adapts its own copy of the weights (vmap over grad); the outer gradient flows back
    # through the inner step into the shared weights.
    model, x, inner_target, outer_target = _maml_setup(batch=3)
    buffers = dict(model.named_buffers())
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}

    def call(p, xi):
        return functional_call(model, (p, buffers), (xi,))

    def adapt(p, xi, ti):
        g = grad(lambda q: _loss(call(q, xi), ti))(p)
        return {k: p[k] - ALPHA * g[k] for k in p}

    adapted = vmap(adapt, in_dims=(None, 0, 0))(params, x[:, None], _unsqueeze(inner_target))
    outer = _loss(vmap(call)(adapted, x[:, None]), _unsqueeze(outer_target))
    vectorised = torch.autograd.grad(outer, list(params.values()))

    loop = [torch.zeros_like(v) for v in params.values()]
    for b in range(3):
        pick = lambda t: tuple(u[b : b + 1] for u in t)  # noqa: E731
        lb = _maml_outer_loss(model, params, x[b : b + 1], pick(inner_target), pick(outer_target))
        for acc, g in zip(loop, torch.autograd.grad(lb, list(params.values()))):
            acc += g
    for k, a, b in zip(params, vectorised, loop):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=k)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_images():
    model = make("mesh_tiny")
    with pytest.raises(ValueError, match=r"model's input size \(B, 3, 64, 64\), got \(2, 3, 48, 48\)"):
        model(images(2, 48))
    with pytest.raises(TypeError, match=r"images: expected floating-point images .* torch.uint8.*\.float\(\) / 255"):
        model(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expected RGB images of shape \(B, 3, 64, 64\), got \(2, 1, 64, 64\)"):
        model(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="expected RGB images"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="at least one image"):
        model(torch.zeros(0, 3, 64, 64))
    with pytest.raises(TypeError, match="images: expected a torch.Tensor"):
        model(images(1).numpy())
    with pytest.raises(TypeError, match="does not match the model's torch.float32"):
        model(images(1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"features: expected shape \(B, 128\), got \(2, 64\)"):
        model.regress(torch.zeros(2, 64))


def test_bad_construction():
    with pytest.raises(ValueError, match="unknown mesh regressor name 'mesh_huge'"):
        build_mesh_regressor("mesh_huge")
    with pytest.raises(TypeError, match=r"unknown arguments \['width'\]"):
        build_mesh_regressor("mesh_tiny", width=3)
    with pytest.raises(ValueError, match="input_size: expected a positive multiple of the encoder stride 16"):
        build_mesh_regressor("mesh_tiny", input_size=40)
    with pytest.raises(TypeError, match="input_size: expected an int"):
        build_mesh_regressor("mesh_tiny", input_size=64.0)
    with pytest.raises(ValueError, match=r"widths\[0\]: expected a multiple of num_groups=8"):
        build_mesh_regressor("mesh_tiny", widths=(12, 32, 64, 128))
    with pytest.raises(ValueError, match="iterations: expected an int >= 1, got 0"):
        build_mesh_regressor("mesh_tiny", iterations=0)
    with pytest.raises(ValueError, match="expected four stages each"):
        MeshRegressor(widths=(8, 8, 8), blocks=(1, 1, 1), hidden=8)


def test_other_input_size():
    model = make("mesh_tiny", input_size=96, iterations=1)
    assert model.input_size == 96 and model.iterations == 1
    with torch.no_grad():
        assert model(images(1, 96)).rotations.shape == (1, 31, 3, 3)


# ----------------------------------------------------------------------------- CUDA


@CUDA
@pytest.mark.parametrize("name", MESH_REGRESSORS)
def test_cuda(name):
    model = make(name).cuda()
    x = images(2).cuda()
    with pytest.raises(ValueError, match="on device cpu but the model is on cuda"):
        model(x.cpu())
    pred = model(x)
    assert all(t.device.type == "cuda" for t in pred)
    focal, center = torch.full((2, 2), 100.0, device="cuda"), torch.full((2, 2), 31.5, device="cuda")
    t = camera_translation(pred.camera, focal, center, 64)
    pose = to_pose_parameters(pred, t)
    assert pose.device.type == "cuda" and pose.shape == (2, 31, 4, 4)
    (pose.square().sum() + pred.phenotypes.sum()).backward()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in model.head.parameters())
    # Per-sample weights with torch.func on the GPU agree with the CPU.
    buffers = dict(model.named_buffers())
    stacked = {k: v.detach().expand(2, *v.shape) + 0.01 for k, v in model.named_parameters()}
    out = vmap(lambda p, xi: functional_call(model, (p, buffers), (xi,)))(stacked, x[:, None])
    cpu = model.cpu()
    ref = vmap(lambda p, xi: functional_call(cpu, (p, dict(cpu.named_buffers())), (xi,)))(
        {k: v.cpu() for k, v in stacked.items()}, x.cpu()[:, None])
    torch.testing.assert_close(out.camera.cpu(), ref.camera, atol=1e-4, rtol=1e-4)
