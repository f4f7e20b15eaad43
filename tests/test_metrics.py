"""Known-answer, invariance and bad-input tests for poselab.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from poselab import metrics as M

F64 = torch.float64


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_poses(seed: int, n: int = 4, j: int = 17) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(n, j, 3, generator=gen, dtype=F64)


# ----------------------------------------------------------------------------- MPJPE / PVE


def test_mpjpe_two_joints_by_hand():
    target = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
                           [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]], dtype=F64)
    pred = torch.tensor([[[0.0, 0.0, 0.3], [1.0, 0.4, 0.0]],      # errors 0.3, 0.4
                         [[0.3, 0.4, 0.0], [1.0, 0.0, 0.0]]], dtype=F64)  # errors 0.5, 0
    assert M.mpjpe(pred, target).item() == pytest.approx(0.3)
    torch.testing.assert_close(M.mpjpe(pred, target, reduction="none"), torch.tensor([0.35, 0.25], dtype=F64))
    torch.testing.assert_close(M.mpjpe(pred, target, reduction="joint"), torch.tensor([0.4, 0.2], dtype=F64))


def test_mpjpe_single_pose_gives_scalar_per_sample():
    t = torch.zeros(3, 3, dtype=F64)
    p = t.clone()
    p[1, 2] = 0.6
    assert M.mpjpe(p, t, reduction="none").shape == ()
    assert M.mpjpe(p, t).item() == pytest.approx(0.2)


def test_pve_is_mean_vertex_distance():
    t = torch.zeros(2, 5, 3, dtype=F64)
    p = t.clone()
    p[0, :, 0] = 0.01
    p[1, 0, 1] = 0.05
    torch.testing.assert_close(M.pve(p, t, reduction="none"), torch.tensor([0.01, 0.01], dtype=F64))
    assert M.pve(p, t, reduction="joint").shape == (5,)


# ----------------------------------------------------------------------------- P-MPJPE


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_p_mpjpe_zero_for_similarity_copy(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    target = random_poses(seed)
    rot = torch.stack([random_rotation(gen) for _ in range(target.shape[0])])
    scale = 0.5 + torch.rand(target.shape[0], 1, 1, generator=gen, dtype=F64)
    shift = torch.randn(target.shape[0], 1, 3, generator=gen, dtype=F64)
    pred = scale * target @ rot.transpose(-1, -2) + shift
    assert M.mpjpe(pred, target).item() > 0.05
    torch.testing.assert_close(M.p_mpjpe(pred, target, reduction="none"), torch.zeros(4, dtype=F64),
                               atol=1e-10, rtol=0)
    torch.testing.assert_close(M.procrustes_align(pred, target), target, atol=1e-10, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p_mpjpe_reflection_is_not_aligned(seed):
    target = random_poses(seed)
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0], dtype=F64)  # a reflection, det = -1
    err = M.p_mpjpe(mirrored, target, reduction="none")
    assert (err > 0.02).all()
    # the fitted transform is a proper rotation: the aligned pose is not the mirror image
    aligned = M.procrustes_align(mirrored, target)
    c_a = aligned - aligned.mean(-2, keepdim=True)
    c_m = mirrored - mirrored.mean(-2, keepdim=True)
    # orientation of a chiral triple (joints 0, 1, 2) is preserved by rotations + positive scale
    vol = lambda x: torch.linalg.det(x[:, :3] - x[:, 3:4])  # noqa: E731
    assert (torch.sign(vol(c_a)) == torch.sign(vol(c_m))).all()


def test_p_mpjpe_collinear_by_hand():
    # 1-D problem along x: best scale s = <p0, t0> / |p0|^2 after centring, no rotation needed
    target = torch.tensor([[-1.0, 0, 0], [0.0, 0, 0], [1.0, 0, 0]], dtype=F64)
    pred = torch.tensor([[-1.0, 0, 0], [0.3, 0, 0], [1.0, 0, 0]], dtype=F64)
    p0 = np.array([-1.1, 0.2, 0.9])
    t0 = np.array([-1.0, 0.0, 1.0])
    s = p0 @ t0 / (p0 @ p0)
    expected = np.abs(s * p0 - t0).mean()
    assert M.p_mpjpe(pred, target).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_alignment_inequalities_in_rms(seed):
    """Least-squares alignments: RMS(P) <= RMS(N) <= RMS(root-aligned)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    target = random_poses(seed, n=8)
    pred = 1.1 * target + 0.05 * torch.randn(target.shape, generator=gen, dtype=F64) + 0.2
    def rms(x, y):
        return torch.sqrt((torch.linalg.vector_norm(x - y, dim=-1) ** 2).mean(-1))
    p_al = M.procrustes_align(pred, target)
    n_al = M.scale_align(pred, target, root=0)
    r_al = pred - pred[:, :1] + target[:, :1]
    tol = 1e-12
    assert (rms(p_al, target) <= rms(n_al, target) + tol).all()
    assert (rms(n_al, target) <= rms(r_al, target) + tol).all()
    # on noisy-but-reasonable predictions the reported means follow the same order
    assert M.p_mpjpe(pred, target) <= M.n_mpjpe(pred, target) <= M.mpjpe(r_al, target)


def test_p_mpjpe_mean_distance_can_exceed_root_mpjpe():
    """One wild joint: the least-squares fit spreads its error, so the *mean distance* rises
    although the RMS falls. This is why the guaranteed inequality above is stated in RMS."""
    target = torch.tensor([[-2.3104, -0.3733, -1.0608], [0.9995, -0.8840, -1.2755], [-0.6232, -0.8664, -1.2956],
                           [1.5236, 0.3237, 2.0177], [1.1357, -1.2269, 0.0714]], dtype=F64)
    pred = target.clone()
    pred[1] += torch.tensor([3.6833, -0.5574, -1.5182], dtype=F64)
    assert M.p_mpjpe(pred, target) > M.mpjpe(pred, target)
    rms = lambda x: torch.sqrt((torch.linalg.vector_norm(x - target, dim=-1) ** 2).mean())  # noqa: E731
    assert rms(M.procrustes_align(pred, target)) < rms(pred)


# ----------------------------------------------------------------------------- N-MPJPE


def test_n_mpjpe_by_hand():
    target = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0]], dtype=F64)
    pred = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [0.0, 1, 0]], dtype=F64)
    # s = <p, t> / <p, p> = 3 / 5; aligned (0,0,0), (1.2,0,0), (0,0.6,0); errors 0, 0.2, 0.4
    assert M.n_mpjpe(pred, target).item() == pytest.approx(0.2)
    torch.testing.assert_close(M.n_mpjpe(pred, target, reduction="joint"), torch.tensor([0.0, 0.2, 0.4], dtype=F64))
    torch.testing.assert_close(M.scale_align(pred, target), torch.tensor([[0.0, 0, 0], [1.2, 0, 0], [0, 0.6, 0]],
                                                                         dtype=F64))


def test_n_mpjpe_root_centring():
    target = random_poses(5)
    pred = 2.0 * (target - target[:, :1])
    assert M.n_mpjpe(pred + 3.0, target - 1.0).item() == pytest.approx(0.0, abs=1e-12)
    # without centring the translation is not removed
    assert M.n_mpjpe(pred + 3.0, target - 1.0, root=None).item() > 0.1
    with pytest.raises(ValueError, match="root"):
        M.n_mpjpe(pred, target, root=17)


# ----------------------------------------------------------------------------- PCK / AUC


def _errors_pose(errors):
    target = torch.zeros(1, len(errors), 3, dtype=F64)
    pred = target.clone()
    pred[0, :, 0] = torch.tensor(errors, dtype=F64)
    return pred, target


def test_pck3d_by_hand():
    pred, target = _errors_pose([0.1, 0.2])
    assert M.pck3d(pred, target).item() == pytest.approx(0.5)
    assert M.pck3d(pred, target, threshold=0.25).item() == pytest.approx(1.0)
    torch.testing.assert_close(M.pck3d(pred, target, reduction="joint"), torch.tensor([1.0, 0.0], dtype=F64))


def test_pck3d_threshold_is_strict():
    pred, target = _errors_pose([0.125, 0.0])
    assert M.pck3d(pred, target, threshold=0.125).item() == pytest.approx(0.5)


def test_auc3d_by_hand():
    pred, target = _errors_pose([0.1025, 0.2])
    # default thresholds 0, 0.005, ..., 0.150: 10 of the 31 exceed 0.1025, none exceeds 0.2
    assert M.auc3d(pred, target).item() == pytest.approx(5 / 31)
    pred, target = _errors_pose([0.07, 0.2])
    assert M.auc3d(pred, target, thresholds=[0.05, 0.1, 0.3]).item() == pytest.approx(0.5)
    torch.testing.assert_close(M.auc3d(pred, target, thresholds=np.array([0.05, 0.1, 0.3]), reduction="joint"),
                               torch.tensor([2 / 3, 1 / 3], dtype=F64))


def test_auc3d_bad_thresholds():
    pred, target = _errors_pose([0.1])
    with pytest.raises(ValueError, match="thresholds"):
        M.auc3d(pred, target, thresholds=[])
    with pytest.raises(ValueError, match="thresholds"):
        M.auc3d(pred, target, thresholds=[-0.1, 0.1])


def test_pck2d_with_visibility_by_hand():
    target = torch.zeros(2, 3, 2, dtype=F64)
    pred = target.clone()
    pred[0, :, 0] = torch.tensor([1.0, 5.0, 20.0])  # ref 100, alpha 0.1 -> 10 px: T, T, F
    pred[1, :, 1] = torch.tensor([1.0, 3.0, 0.0])   # ref 20 -> 2 px: T, F, T
    ref = torch.tensor([100.0, 20.0], dtype=F64)
    visible = torch.tensor([[True, True, False], [True, True, True]])
    assert M.pck2d(pred, target, 0.1, ref, visible).item() == pytest.approx(4 / 5)
    torch.testing.assert_close(M.pck2d(pred, target, 0.1, ref, visible, reduction="none"),
                               torch.tensor([1.0, 2 / 3], dtype=F64))
    torch.testing.assert_close(M.pck2d(pred, target, 0.1, ref, visible, reduction="joint"),
                               torch.tensor([1.0, 0.5, 1.0], dtype=F64))
    assert M.pck2d(pred, target, 0.1, ref).item() == pytest.approx(4 / 6)
    assert M.pck2d(pred, target, 0.1, 100.0).item() == pytest.approx(5 / 6)  # one size for all


def test_pck2d_no_visible_joint_is_nan():
    target = torch.zeros(2, 2, 2, dtype=F64)
    visible = torch.tensor([[False, False], [True, False]])
    out = M.pck2d(target, target, 0.2, torch.ones(2, dtype=F64), visible, reduction="none")
    assert math.isnan(out[0].item()) and out[1].item() == 1.0


def test_pck2d_bad_inputs():
    target = torch.zeros(2, 3, 2, dtype=F64)
    with pytest.raises(ValueError, match="ref_size"):
        M.pck2d(target, target, 0.1, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="ref_size"):
        M.pck2d(target, target, 0.1, torch.tensor([1.0, 0.0], dtype=F64))
    with pytest.raises(TypeError, match="visible"):
        M.pck2d(target, target, 0.1, 1.0, visible=torch.ones(2, 3))
    with pytest.raises(ValueError, match="visible"):
        M.pck2d(target, target, 0.1, 1.0, visible=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="alpha"):
        M.pck2d(target, target, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., J, 2\)"):
        M.pck2d(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3), 0.1, 1.0)


# ----------------------------------------------------------------------------- structure

# A toy skeleton: 0 root, 1 left hand, 2 right hand, 3 head (spine segment 0-3).
TOY_LIMBS = ((0, 1), (0, 2), (0, 3))
TOY_SYMMETRIC = (((0, 1), (0, 2)),)


def _toy(left: float, right: float, head: float = 0.5) -> torch.Tensor:
    return torch.tensor([[0.0, 0, 0], [left, 0, 0], [-right, 0, 0], [0, head, 0]], dtype=F64)


def test_lse_symmetric_pose_is_zero():
    assert M.lse(_toy(0.3, 0.3), TOY_SYMMETRIC).item() == 0.0


def test_lse_by_hand_and_scale_free():
    # |0.3 - 0.2| / (0.3 + 0.2) = 0.2 (the paper's form, without the factor 1/2)
    assert M.lse(_toy(0.3, 0.2), TOY_SYMMETRIC).item() == pytest.approx(0.2)
    assert M.lse(7.0 * _toy(0.3, 0.2), TOY_SYMMETRIC).item() == pytest.approx(0.2)
    poses = torch.stack([_toy(0.3, 0.2), _toy(0.1, 0.3)])
    torch.testing.assert_close(M.lse(poses, TOY_SYMMETRIC, reduction="none"), torch.tensor([[0.2], [0.5]], dtype=F64))
    assert M.lse(_toy(0.0, 0.0), TOY_SYMMETRIC).item() == 0.0  # both limbs collapsed: defined as 0


def test_bsle_and_lle_by_hand():
    target = _toy(0.3, 0.2, head=0.5)
    pred = _toy(0.33, 0.1, head=0.4)
    # relative length errors: left 0.03/0.3 = 0.1, right 0.1/0.2 = 0.5, spine 0.1/0.5 = 0.2
    torch.testing.assert_close(M.bsle(pred, target, TOY_LIMBS, reduction="none"),
                               torch.tensor([0.1, 0.5, 0.2], dtype=F64))
    assert M.bsle(pred, target, TOY_LIMBS).item() == pytest.approx(0.8 / 3)
    # LLE: only the left/right limbs, ordered left_0, right_0
    torch.testing.assert_close(M.lle(pred, target, TOY_SYMMETRIC, reduction="none"),
                               torch.tensor([0.1, 0.5], dtype=F64))
    assert M.lle(pred, target, TOY_SYMMETRIC).item() == pytest.approx(0.3)


def test_bsle_invariant_to_rigid_motion_of_pred():
    gen = torch.Generator().manual_seed(3)
    target = _toy(0.3, 0.2)
    pred = target @ random_rotation(gen).T + 1.0
    assert M.bsle(pred, target, TOY_LIMBS).item() == pytest.approx(0.0, abs=1e-12)


def test_bsle_zero_length_target_segment():
    with pytest.raises(ValueError, match="length 0"):
        M.bsle(_toy(0.3, 0.2), _toy(0.0, 0.2), TOY_LIMBS)


def test_structural_bad_limbs():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        M.bsle(_toy(0.3, 0.2), _toy(0.3, 0.2), [(0, 4)])
    with pytest.raises(ValueError, match="symmetric_limbs"):
        M.lse(_toy(0.3, 0.2), [(0, 1), (0, 2)])  # flat pairs instead of left/right pairs
    with pytest.raises(ValueError, match="symmetric_limbs"):
        M.lle(_toy(0.3, 0.2), _toy(0.3, 0.2), [(0, 1)])
    with pytest.raises(ValueError, match="limbs"):
        M.bsle(_toy(0.3, 0.2), _toy(0.3, 0.2), [])


def test_above_threshold_ratio_by_hand():
    values = torch.tensor([[0.05, 0.15, 0.25], [0.1, 0.2, 0.3]], dtype=F64)
    assert M.above_threshold_ratio(values, 0.1).item() == pytest.approx(4 / 6)  # strictly above
    assert M.above_threshold_ratio(values, 0.2).item() == pytest.approx(2 / 6)
    torch.testing.assert_close(M.above_threshold_ratio(values, 0.1, reduction="none"),
                               torch.tensor([0.0, 1.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="threshold"):
        M.above_threshold_ratio(values, -0.1)


def test_structural_defaults_to_h36m17():
    skeleton = pytest.importorskip("poselab.data.skeleton")
    pose = random_poses(7, n=3)
    torch.testing.assert_close(M.lse(pose), M.lse(pose, skeleton.H36M17))
    torch.testing.assert_close(M.bsle(pose, pose + 0.01 * pose), M.bsle(pose, pose + 0.01 * pose, skeleton.H36M17))
    assert M.bsle(pose, pose, reduction="none").shape == (3, len(skeleton.H36M17.limbs))
    assert M.lle(pose, pose, reduction="none").shape == (3, 2 * len(skeleton.H36M17.symmetric_limbs))


# ----------------------------------------------------------------------------- heatmaps


def test_heatmap_response_by_hand():
    h = np.zeros((2, 2, 2, 2))
    h[0, 0, 1, 0], h[0, 1, 0, 1] = 0.8, 0.4
    h[1, 0, 0, 0], h[1, 0, 1, 1] = 0.2, 0.1
    assert M.heatmap_response(h) == pytest.approx(0.35)
    np.testing.assert_allclose(M.heatmap_response(h, reduction="none"), [0.6, 0.1])
    np.testing.assert_allclose(M.heatmap_response(h, reduction="joint"), [0.5, 0.2])
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        M.heatmap_response(np.zeros((4, 4)))


# ----------------------------------------------------------------------------- array kinds


CALLS = {
    "mpjpe": lambda p, t: M.mpjpe(p, t),
    "p_mpjpe": lambda p, t: M.p_mpjpe(p, t),
    "n_mpjpe": lambda p, t: M.n_mpjpe(p, t),
    "pck3d": lambda p, t: M.pck3d(p, t),
    "auc3d": lambda p, t: M.auc3d(p, t),
    "pve": lambda p, t: M.pve(p, t),
    "lse": lambda p, t: M.lse(p, TOY_SYMMETRIC),
    "bsle": lambda p, t: M.bsle(p, t, TOY_LIMBS),
    "lle": lambda p, t: M.lle(p, t, TOY_SYMMETRIC),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_numpy_in_numpy_out_matches_torch(name):
    target = torch.stack([_toy(0.3, 0.2), _toy(0.25, 0.25)])
    pred = target + 0.03 * random_poses(1, n=2, j=4)
    out_t = CALLS[name](pred, target)
    out_n = CALLS[name](pred.numpy(), target.numpy())
    assert isinstance(out_t, torch.Tensor)
    assert isinstance(out_n, np.floating) and out_n.dtype == np.float64
    assert float(out_n) == pytest.approx(out_t.item(), abs=1e-12)
    out32 = CALLS[name](pred.numpy().astype(np.float32), target.numpy().astype(np.float32))
    assert out32.dtype == np.float32


def test_numpy_none_reduction_is_ndarray():
    t = random_poses(2).numpy()
    out = M.p_mpjpe(t + 0.01, t, reduction="none")
    assert isinstance(out, np.ndarray) and out.shape == (4,)


# ----------------------------------------------------------------------------- gradients


def test_mpjpe_gradient_by_hand():
    target = torch.zeros(1, 2, 3, dtype=F64)
    pred = torch.tensor([[[0.3, 0.0, 0.0], [0.0, 0.0, -0.2]]], dtype=F64, requires_grad=True)
    M.mpjpe(pred, target).backward()
    # d mean|e_j| / d pred_j = unit(e_j) / J
    torch.testing.assert_close(pred.grad, torch.tensor([[[0.5, 0, 0], [0, 0, -0.5]]], dtype=F64))
    exact = torch.zeros(1, 2, 3, dtype=F64, requires_grad=True)
    M.mpjpe(exact, target).backward()
    assert torch.isfinite(exact.grad).all()


def test_procrustes_gradcheck():
    target = random_poses(11, n=2, j=5).requires_grad_()
    pred = (target.detach() * 1.2 + 0.05 * random_poses(12, n=2, j=5)).requires_grad_()
    assert torch.autograd.gradcheck(M.procrustes_align, (pred, target))


@pytest.mark.parametrize("case", ["collinear", "identical", "symmetric", "collapsed"])
def test_p_mpjpe_gradient_finite_for_degenerate_input(case):
    line = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], dtype=F64)
    square = torch.tensor([[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]], dtype=F64)  # equal singular values
    target, pred = {
        "collinear": (line, 1.5 * line + 0.2),
        "identical": (square, square.clone()),
        "symmetric": (square, square @ torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=F64) + 0.01),
        "collapsed": (square, torch.zeros(4, 3, dtype=F64)),
    }[case]
    pred = pred.clone().requires_grad_()
    err = M.p_mpjpe(pred, target)
    err.backward()
    assert torch.isfinite(err) and torch.isfinite(pred.grad).all()


def test_p_mpjpe_works_under_vmap_grad():
    from torch.func import grad, vmap

    target = random_poses(4)
    pred = target + 0.05 * random_poses(5)
    g = vmap(grad(M.p_mpjpe))(pred, target)
    pred_ = pred.clone().requires_grad_()
    M.p_mpjpe(pred_, target, reduction="none").sum().backward()
    torch.testing.assert_close(g, pred_.grad)


# ----------------------------------------------------------------------------- bad input


def test_mismatched_shapes_names_both():
    with pytest.raises(ValueError, match=r"pred \(2, 17, 3\).*target \(2, 16, 3\)"):
        M.mpjpe(torch.zeros(2, 17, 3), torch.zeros(2, 16, 3))


@pytest.mark.parametrize("fn", [M.mpjpe, M.p_mpjpe, M.n_mpjpe, M.pck3d, M.auc3d])
def test_wrong_last_dim_and_too_few_dims(fn):
    with pytest.raises(ValueError, match=r"pred: expected shape \(\.\.\., J, 3\), got \(2, 17, 2\)"):
        fn(torch.zeros(2, 17, 2), torch.zeros(2, 17, 2))
    with pytest.raises(ValueError, match=r"expected shape \(\.\.\., J, 3\), got \(3,\)"):
        fn(torch.zeros(3), torch.zeros(3))


def test_non_finite_and_empty():
    t = torch.zeros(2, 4, 3)
    bad = t.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="target: contains NaN"):
        M.mpjpe(t, bad)
    with pytest.raises(ValueError, match="pred_vertices: contains NaN"):
        M.pve(np.full((1, 2, 3), np.inf), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        M.mpjpe(torch.zeros(0, 4, 3), torch.zeros(0, 4, 3))


def test_type_errors():
    with pytest.raises(TypeError, match="torch tensors or all numpy arrays, got pred torch, target numpy"):
        M.mpjpe(torch.zeros(1, 2, 3), np.zeros((1, 2, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        M.mpjpe(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="pred: expected a torch.Tensor or numpy.ndarray, got list"):
        M.mpjpe([[0.0, 0.0, 0.0]], np.zeros((1, 3)))


def test_bad_reduction_lists_choices():
    with pytest.raises(ValueError, match="'mean', 'none', 'joint'"):
        M.mpjpe(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), reduction="sum")
    with pytest.raises(ValueError, match="'mean', 'none'"):
        M.lse(_toy(0.3, 0.2), TOY_SYMMETRIC, reduction="joint")


# ----------------------------------------------------------------------------- NumPy / torch scalars

# One number in every spelling a caller may have it in: all must give the result of the plain float.
SCALARS = {
    "np.float32": lambda v: np.float32(v),
    "np.float64": lambda v: np.float64(v),
    "0-d array": lambda v: np.array(v),
    "0-d float32 array": lambda v: np.array(v, dtype=np.float32),
    "0-d tensor": lambda v: torch.tensor(v),
    "0-d float64 tensor": lambda v: torch.tensor(v, dtype=F64),
}
BOOLS = [True, np.bool_(True), np.array(True), torch.tensor(True)]


@pytest.mark.parametrize("spelling", sorted(SCALARS))
def test_float_scalars_accepted_wherever_a_number_is(spelling):
    as_ = SCALARS[spelling]
    pred, target = _errors_pose([0.1, 0.2])  # errors 0.1 and 0.2 m
    assert M.pck3d(pred, target, threshold=as_(0.15)).item() == 0.5
    assert M.pck3d(pred, target, threshold=as_(0.25)).item() == 1.0
    assert M.auc3d(pred, target, thresholds=[as_(0.05), as_(0.15), as_(0.25)]).item() == pytest.approx(0.5)
    values = torch.tensor([[0.05, 0.15, 0.25]], dtype=F64)
    assert M.above_threshold_ratio(values, as_(0.1)).item() == pytest.approx(2 / 3)
    assert M.above_threshold_ratio(values, as_(0.0)).item() == 1.0
    # pck2d: errors 1, 5 and 20 px; alpha * ref_size = 0.5 * 20 = 10 px -> 2 of 3 correct
    target2 = torch.zeros(1, 3, 2, dtype=F64)
    pred2 = target2.clone()
    pred2[0, :, 0] = torch.tensor([1.0, 5.0, 20.0])
    assert M.pck2d(pred2, target2, as_(0.5), 20.0).item() == pytest.approx(2 / 3)
    assert M.pck2d(pred2, target2, 0.5, as_(20.0)).item() == pytest.approx(2 / 3)
    assert M.pck2d(pred2.numpy(), target2.numpy(), as_(0.5), as_(20.0)) == pytest.approx(2 / 3)


def test_np_float32_threshold_means_its_own_value():
    # np.float32(0.1) is 0.100000001490116...: an error of exactly 0.1 (float64) lies below it.
    pred, target = _errors_pose([0.1])
    assert M.pck3d(pred, target, threshold=np.float32(0.1)).item() == 1.0
    assert M.pck3d(pred, target, threshold=0.1).item() == 0.0  # strict: 0.1 < 0.1 is false


@pytest.mark.parametrize("spelling", ["np.int64", "np.int32", "0-d int array", "0-d int tensor"])
def test_integer_scalars_accepted_for_numbers_and_root(spelling):
    as_ = {"np.int64": np.int64, "np.int32": np.int32, "0-d int array": np.array,
           "0-d int tensor": torch.tensor}[spelling]
    pred, target = _errors_pose([0.5, 2.5])
    assert M.pck3d(pred, target, threshold=as_(2)).item() == 0.5
    assert M.pck2d(torch.ones(1, 2, 2, dtype=F64), torch.zeros(1, 2, 2, dtype=F64), 0.5, as_(2)).item() == 0.0
    target = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0]], dtype=F64)
    pred = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [0.0, 1, 0]], dtype=F64)
    assert M.n_mpjpe(pred, target, root=as_(0)).item() == M.n_mpjpe(pred, target, root=0).item()
    torch.testing.assert_close(M.scale_align(pred, target, root=as_(1)), M.scale_align(pred, target, root=1))


@pytest.mark.parametrize("flag", BOOLS, ids=["bool", "np.bool_", "0-d bool array", "0-d bool tensor"])
def test_booleans_are_not_numbers(flag):
    pred, target = _errors_pose([0.1, 0.2])
    with pytest.raises(ValueError, match="threshold: expected a finite number > 0"):
        M.pck3d(pred, target, threshold=flag)
    with pytest.raises(ValueError, match="threshold: expected a finite number >= 0"):
        M.above_threshold_ratio(torch.tensor([[0.05, 0.15]], dtype=F64), flag)
    with pytest.raises(ValueError, match="alpha"):
        M.pck2d(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), flag, 1.0)
    with pytest.raises(ValueError, match="ref_size"):
        M.pck2d(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), 0.1, flag)
    with pytest.raises(ValueError, match=r"thresholds\[1\]: expected a number, got bool"):
        M.auc3d(pred, target, thresholds=[0.1, flag])
    with pytest.raises(ValueError, match="root"):
        M.n_mpjpe(pred, target, root=flag)


def test_bool_and_non_scalar_numbers_refused():
    pred, target = _errors_pose([0.1, 0.2])
    with pytest.raises(ValueError, match=r"threshold: expected a finite number > 0 .*got ndarray array\(\[0.1, "):
        M.pck3d(pred, target, threshold=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="threshold: expected a finite number > 0"):
        M.pck3d(pred, target, threshold=torch.tensor(float("nan")))
    with pytest.raises(TypeError, match="thresholds: expected a numeric .* dtype torch.bool"):
        M.auc3d(pred, target, thresholds=torch.tensor([True, False]))
    with pytest.raises(TypeError, match="thresholds: expected a numeric .* dtype bool"):
        M.auc3d(pred, target, thresholds=np.array([True, False]))
    with pytest.raises(ValueError, match="root"):
        M.n_mpjpe(pred, target, root=np.float64(0.0))  # an index must be an integer


# ----------------------------------------------------------------------------- object arrays


def test_object_arrays_name_the_argument():
    good = np.zeros((1, 4, 3))
    boxed = np.array([[[0.0, 0, 0]] * 4], dtype=object)
    message = r"expected a numeric array .*got a numpy.ndarray of dtype object"
    with pytest.raises(TypeError, match="pred: " + message):
        M.mpjpe(boxed, good)
    with pytest.raises(TypeError, match="target: " + message):
        M.p_mpjpe(good, boxed)
    with pytest.raises(TypeError, match="pose: " + message):
        M.lse(boxed, TOY_SYMMETRIC)
    with pytest.raises(TypeError, match="values: " + message):
        M.above_threshold_ratio(np.array([[0.1, 0.2]], dtype=object), 0.1)
    with pytest.raises(TypeError, match="heatmaps: " + message):
        M.heatmap_response(np.zeros((1, 1, 2, 2), dtype=object))
    two = np.zeros((1, 3, 2))
    with pytest.raises(TypeError, match="ref_size: " + message):
        M.pck2d(two, two, 0.1, np.array([1.0], dtype=object))
    with pytest.raises(TypeError, match="visible: " + message):
        M.pck2d(two, two, 0.1, 1.0, visible=np.array([[True] * 3], dtype=object))
    with pytest.raises(TypeError, match="thresholds: expected a numeric .* dtype object"):
        M.auc3d(good, good, thresholds=np.array([0.1, 0.2], dtype=object))
    with pytest.raises(TypeError, match=r"pred: expected a numeric array .* dtype <U3"):
        M.mpjpe(np.array([[["0.1"] * 3] * 4]), good)
    with pytest.raises(ValueError, match="limbs: expected .* integer joint indices .* got dtype object"):
        M.bsle(good, good + 1.0, np.array([(0, 1), (0, 2)], dtype=object))


# ----------------------------------------------------------------------------- joint counts


def test_structural_metrics_refuse_poses_of_another_skeleton():
    skeleton = pytest.importorskip("poselab.data.skeleton")
    h36m, cmu = skeleton.H36M17, skeleton.CMU31
    poses31 = random_poses(3, n=2, j=31)
    poses16 = random_poses(3, n=2, j=16)
    # the default H36M17 with 31 joints: every index is < 31, so this used to pass silently
    with pytest.raises(ValueError, match=r"pose: expected 17 joints, the joint count of the default skeleton "
                                         r"'h36m17'.*got 31 joints \(shape \(2, 31, 3\)\)"):
        M.lse(poses31)
    with pytest.raises(ValueError, match=r"pred: expected 17 joints.*'h36m17'.*limbs.*got 31 joints"):
        M.bsle(poses31, poses31)
    with pytest.raises(ValueError, match=r"pred: expected 17 joints.*symmetric limbs.*got 16 joints"):
        M.lle(poses16, poses16)
    with pytest.raises(ValueError, match=r"pose: expected 31 joints, the joint count of skeleton 'cmu31'.*got 17"):
        M.lse(random_poses(3, n=2), cmu)
    with pytest.raises(ValueError, match=r"pred: expected 17 joints.*skeleton 'h36m17'.*got 16 joints"):
        M.bsle(poses16, poses16, h36m)
    # bare index pairs know no joint count: only the indices are checked against J
    with pytest.raises(ValueError, match=r"joint indices must lie in \[0, 16\) for poses with 16 joints"):
        M.lle(poses16, poses16, h36m.symmetric_limbs)
    assert M.lse(poses31, cmu, reduction="none").shape == (2, len(cmu.symmetric_limbs))
