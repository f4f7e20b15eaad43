"""Tests for poselab.data.cameras: projection, look_at, rigs, normalisation and 2D noise."""

import math

import pytest
import torch

from poselab.data.cameras import (
    RIGS,
    STUDIO_FOCAL_PX,
    WILD_IMAGE_SIZES,
    Cameras,
    backproject,
    detector_noise,
    gaussian_noise,
    look_at,
    make_rig,
    normalized_to_pixels,
    pixels_to_normalized,
    project_points,
)

# A standing person (H36M17 order), metres, world frame (+Y up), facing +Z, at the origin.
STANDING = torch.tensor(
    [
        [0.00, 0.95, 0.00],  # 0 hip
        [-0.12, 0.93, 0.00],  # 1 right hip
        [-0.13, 0.50, 0.02],  # 2 right knee
        [-0.14, 0.08, 0.00],  # 3 right foot
        [0.12, 0.93, 0.00],  # 4 left hip
        [0.13, 0.50, 0.02],  # 5 left knee
        [0.14, 0.08, 0.00],  # 6 left foot
        [0.00, 1.20, 0.00],  # 7 spine
        [0.00, 1.45, 0.00],  # 8 thorax
        [0.00, 1.58, 0.05],  # 9 neck/nose
        [0.00, 1.78, 0.00],  # 10 head top
        [0.19, 1.43, 0.00],  # 11 left shoulder
        [0.22, 1.15, 0.00],  # 12 left elbow
        [0.24, 0.90, 0.05],  # 13 left wrist
        [-0.19, 1.43, 0.00],  # 14 right shoulder
        [-0.22, 1.15, 0.00],  # 15 right elbow
        [-0.24, 0.90, 0.05],  # 16 right wrist
    ]
)


def _inside(pixels, size):
    """(..., C, J, 2) pixels, (C, 2) size -> (..., C, J) bool."""
    return ((pixels >= 0) & (pixels <= size[:, None, :])).all(-1)


def _one_camera(eye, target, roll=0.0, f=(1000.0, 1000.0), c=(320.0, 240.0), size=(640.0, 480.0)):
    R, t = look_at(torch.tensor([eye], dtype=torch.float64), torch.tensor([target], dtype=torch.float64), roll=roll)
    as2 = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return Cameras(R, t, as2(f), as2(c), as2(size))


# --- projection ----------------------------------------------------------------------------


def test_point_on_optical_axis_projects_to_principal_point():
    px = project_points(torch.tensor([0.0, 0.0, 5.0]), torch.tensor([800.0, 900.0]), torch.tensor([321.0, 239.0]))
    assert torch.allclose(px, torch.tensor([321.0, 239.0]))


def test_project_points_known_answer():
    # u = 1000 * 1 / 4 + 320 = 570 ; v = 800 * (-0.5) / 4 + 240 = 140
    px = project_points(torch.tensor([1.0, -0.5, 4.0]), torch.tensor([1000.0, 800.0]), torch.tensor([320.0, 240.0]))
    assert torch.allclose(px, torch.tensor([570.0, 140.0]))


def test_project_points_broadcasts_cameras():
    pts = torch.tensor([[[0.0, 0.0, 2.0], [1.0, 1.0, 2.0]]])  # (1, 2, 3)
    focal = torch.tensor([[[100.0, 100.0]], [[200.0, 200.0]]])  # (2, 1, 2)
    px = project_points(pts, focal, torch.zeros(2))
    assert px.shape == (2, 2, 2)
    assert torch.allclose(px[1, 1], torch.tensor([100.0, 100.0]))


def test_backproject_round_trip_world_camera_world():
    g = torch.Generator().manual_seed(1)
    cams = make_rig("wild", num_cameras=6, generator=g, dtype=torch.float64)
    pts = torch.rand(6, 17, 3, generator=g, dtype=torch.float64) + torch.tensor([-0.5, 0.3, -0.5], dtype=torch.float64)
    cam = cams.world_to_camera_paired(pts)
    px = cams.project_paired(pts)
    back = backproject(px, cam[..., 2], cams.focal[:, None], cams.center[:, None])
    assert torch.allclose(back, cam, atol=1e-10)
    world = torch.einsum("nba,njb->nja", cams.R, back - cams.t[:, None])  # R^T (x - t)
    assert torch.allclose(world, pts, atol=1e-10)


def test_backproject_known_answer_and_depth_shape():
    out = backproject(torch.tensor([570.0, 140.0]), torch.tensor(4.0), torch.tensor([1000.0, 800.0]), torch.tensor([320.0, 240.0]))
    assert torch.allclose(out, torch.tensor([1.0, -0.5, 4.0]))
    with pytest.raises(ValueError, match="depth"):
        backproject(torch.zeros(5, 2), torch.ones(4), torch.ones(2), torch.zeros(2))


# --- look_at ------------------------------------------------------------------------------


def test_look_at_known_answer():
    # From +Z looking back at the origin: camera x = world +X, camera y = world -Y, z = -Z.
    R, t = look_at(torch.tensor([[0.0, 0.0, 5.0]]), torch.zeros(1, 3))
    assert torch.allclose(R[0], torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    assert torch.allclose(t[0], torch.tensor([0.0, 0.0, 5.0]))


@pytest.mark.parametrize("roll", [0.0, 0.3, -0.35])
def test_look_at_target_projects_to_centre_and_rotation_is_proper(roll):
    cam = _one_camera((3.0, 2.0, -4.0), (0.2, 1.0, 0.1), roll=roll)
    px = cam.project(torch.tensor([[0.2, 1.0, 0.1]], dtype=torch.float64))
    assert torch.allclose(px[0, 0], cam.center[0], atol=1e-9)
    R = cam.R[0]
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.linalg.det(R).item() == pytest.approx(1.0)
    assert torch.allclose(cam.position[0], torch.tensor([3.0, 2.0, -4.0], dtype=torch.float64))


def test_look_at_roll_direction():
    target = (0.0, 1.0, 0.0)
    above = torch.tensor([[0.0, 1.5, 0.0]], dtype=torch.float64)
    flat = _one_camera((0.0, 1.0, 5.0), target).project(above)[0, 0]
    assert flat[0].item() == pytest.approx(320.0) and flat[1].item() < 240.0  # up = up the image
    rolled = _one_camera((0.0, 1.0, 5.0), target, roll=math.radians(20)).project(above)[0, 0]
    assert rolled[0].item() < 320.0 and rolled[1].item() < 240.0  # positive roll: up turns left
    angle = math.degrees(math.atan2(320.0 - rolled[0].item(), 240.0 - rolled[1].item()))
    assert angle == pytest.approx(20.0, abs=1e-6)


def test_look_at_bad_input():
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([[0.0, 5.0, 0.0]]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="coincide"):
        look_at(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="eye"):
        look_at(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="roll"):
        look_at(torch.ones(2, 3), torch.zeros(3), roll=torch.zeros(3))


# --- normalisation ------------------------------------------------------------------------


def test_pixels_to_normalized_videopose3d_formula():
    # w = 1000, h = 500: x = 250/1000*2 - 1 = -0.5 ; y = 400/1000*2 - 500/1000 = 0.3
    out = pixels_to_normalized(torch.tensor([250.0, 400.0]), torch.tensor([1000.0, 500.0]))
    assert torch.allclose(out, torch.tensor([-0.5, 0.3]))
    # image corners map to (-1, -h/w) and (1, h/w)
    corners = pixels_to_normalized(torch.tensor([[0.0, 0.0], [1080.0, 1920.0]]), torch.tensor([1080.0, 1920.0]))
    assert torch.allclose(corners, torch.tensor([[-1.0, -1920 / 1080], [1.0, 1920 / 1080]]))


def test_normalisation_round_trip():
    g = torch.Generator().manual_seed(0)
    px = torch.rand(5, 17, 2, generator=g, dtype=torch.float64) * 2000
    size = torch.tensor([[1920.0, 1080.0], [1080.0, 1920.0], [1000.0, 1000.0], [640.0, 480.0], [2048.0, 2048.0]], dtype=torch.float64)
    back = normalized_to_pixels(pixels_to_normalized(px, size[:, None]), size[:, None])
    assert torch.allclose(back, px, atol=1e-9)


def test_normalisation_bad_input():
    with pytest.raises(ValueError, match="pixels"):
        pixels_to_normalized(torch.zeros(3, 3), torch.ones(2))
    with pytest.raises(ValueError, match="size"):
        pixels_to_normalized(torch.zeros(3, 2), torch.tensor([0.0, 10.0]))
    with pytest.raises(TypeError, match="pixels"):
        pixels_to_normalized([[1.0, 2.0]], torch.ones(2))


# --- Cameras batch ------------------------------------------------------------------------


def test_cameras_batch_operations():
    rig = make_rig("studio")
    assert len(rig) == 4 and len(rig[1]) == 1 and len(rig[1:3]) == 2 and len(rig[-1]) == 1
    assert torch.equal(rig[-1].R, rig.R[3:])
    assert len(Cameras.cat([rig, rig[0]])) == 5
    moved = rig.to("cpu", dtype=torch.float64)
    assert moved.R.dtype == torch.float64 and moved.R.device.type == "cpu"
    poses = STANDING.expand(3, 17, 3)  # (B, J, 3)
    assert rig.world_to_camera(poses).shape == (3, 4, 17, 3)
    assert rig.project(poses).shape == (3, 4, 17, 2)
    assert rig.project(STANDING).shape == (4, 17, 2)
    with pytest.raises(IndexError):
        rig[4]


def test_project_paired_is_the_diagonal_of_project():
    g = torch.Generator().manual_seed(3)
    cams = make_rig("wild", num_cameras=5, generator=g)
    poses = STANDING + 0.1 * torch.randn(5, 17, 3, generator=g)
    full = cams.project(poses)  # (5, 5, 17, 2)
    paired = cams.project_paired(poses)
    assert torch.allclose(paired, full[torch.arange(5), torch.arange(5)], atol=1e-4)
    with pytest.raises(ValueError, match="points"):
        cams.project_paired(poses[:4])


def test_cameras_bad_construction():
    with pytest.raises(ValueError, match="Cameras.t"):
        Cameras(torch.eye(3).expand(2, 3, 3), torch.zeros(3, 3), torch.ones(2, 2), torch.zeros(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="focal"):
        Cameras(torch.eye(3)[None], torch.zeros(1, 3), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="points"):
        make_rig("studio").project(torch.zeros(17, 2))


# --- rigs ---------------------------------------------------------------------------------


def test_studio_rig_geometry():
    rig = make_rig("studio")
    pos = rig.position
    assert len(rig) == 4
    assert ((pos[:, 1] >= 1.2) & (pos[:, 1] <= 1.6)).all()
    horizontal = pos[:, [0, 2]].norm(dim=-1)
    assert ((horizontal >= 4.0) & (horizontal <= 6.0)).all()
    azimuth = torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2])) % 360
    assert torch.allclose(azimuth, torch.tensor([45.0, 135.0, 225.0, 315.0]), atol=1e-3)
    assert torch.allclose(rig.focal, torch.full((4, 2), STUDIO_FOCAL_PX))
    assert torch.allclose(rig.size, torch.full((4, 2), 1000.0))
    # all cameras aim at (0, 1, 0), without roll: camera x axes are horizontal
    assert torch.allclose(rig.project(torch.tensor([[0.0, 1.0, 0.0]]))[:, 0], rig.center, atol=1e-3)
    assert rig.R[:, 0, 1].abs().max() < 1e-6
    # a standing person is fully visible, and reasonably large (H36M: roughly 350-550 px tall)
    px = rig.project(STANDING)
    assert _inside(px, rig.size).all()
    height = px[..., 1].amax(-1) - px[..., 1].amin(-1)
    assert ((height > 300) & (height < 600)).all()


def test_studio_rig_more_cameras_and_determinism():
    rig8 = make_rig("studio", num_cameras=8)
    assert len(rig8) == 8
    assert torch.allclose(make_rig("studio").R, make_rig("studio", generator=torch.Generator().manual_seed(5)).R)


def test_wild_rig_ranges():
    n = 3000
    rig = make_rig("wild", num_cameras=n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pos, R = rig.position, rig.R
    forward = R[:, 2]
    elevation = torch.rad2deg(-torch.asin(forward[:, 1]))
    assert elevation.min() >= -10 - 1e-6 and elevation.max() <= 60 + 1e-6
    assert elevation.min() < 0 and elevation.max() > 50  # the whole range is used
    roll = torch.rad2deg(torch.atan2(-R[:, 0, 1], -R[:, 1, 1]))
    assert roll.abs().max() <= 20 + 1e-6 and roll.min() < -15 and roll.max() > 15
    fov = torch.rad2deg(2 * torch.atan(rig.size.min(-1).values / 2 / rig.focal[:, 0]))
    assert fov.min() >= 40 - 1e-6 and fov.max() <= 90 + 1e-6
    # distance along the optical axis to the nominal look-at point (0, 1, 0), within the jitter
    dist = ((torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) - pos) * forward).sum(-1)
    assert dist.min() >= 2.5 - 0.5 and dist.max() <= 9.0 + 0.5
    assert pos[:, 1].min() >= 0.3 - 1e-9  # above the floor
    azimuth = torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2])) % 360
    assert torch.histc(azimuth, bins=8, min=0, max=360).min() > n / 8 * 0.7  # uniform-ish
    assert {tuple(s) for s in rig.size.tolist()} == set(WILD_IMAGE_SIZES)
    assert torch.allclose(rig.center, rig.size / 2)
    # a standing person is (almost always) fully inside the image
    assert _inside(rig.project(STANDING.double()), rig.size).all(-1).double().mean() > 0.95


def test_wild_rig_reproducible_with_seed():
    a = make_rig("wild", 10, generator=torch.Generator().manual_seed(7))
    b = make_rig("wild", 10, generator=torch.Generator().manual_seed(7))
    c = make_rig("wild", 10, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.R, b.R) and torch.equal(a.focal, b.focal)
    assert not torch.allclose(a.R, c.R)


def test_make_rig_bad_input():
    with pytest.raises(ValueError, match="'studio', 'wild'"):
        make_rig("outdoor")
    with pytest.raises(ValueError, match="num_cameras"):
        make_rig("studio", num_cameras=0)
    with pytest.raises(ValueError, match="num_cameras"):
        make_rig("wild", num_cameras=2.5)
    assert RIGS == ("studio", "wild")


# --- noise ----------------------------------------------------------------------------------


def test_gaussian_noise_zero_sigma_is_identity():
    kp = torch.rand(4, 17, 2)
    out = gaussian_noise(kp, 0.0)
    assert torch.equal(out, kp) and out is not kp


def test_gaussian_noise_reproducible_and_std():
    kp = torch.zeros(2000, 17, 2)
    a = gaussian_noise(kp, 5.0, torch.Generator().manual_seed(0))
    b = gaussian_noise(kp, 5.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.std().item() == pytest.approx(5.0, rel=0.02)
    assert a.mean().abs().item() < 0.05


def test_gaussian_noise_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        gaussian_noise(torch.zeros(17, 2), -1.0)
    with pytest.raises(ValueError, match="keypoints"):
        gaussian_noise(torch.zeros(17, 3), 1.0)


def test_detector_noise_zero_is_identity():
    kp = torch.rand(3, 17, 2)
    noisy, visible = detector_noise(kp, 0.0, 0.0, 50.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, kp)
    assert visible.shape == (3, 17) and visible.dtype == torch.bool and visible.all()


def test_detector_noise_rates_and_dropout_fill():
    n = 4000
    kp = torch.rand(n, 17, 2) * 1000
    noisy, visible = detector_noise(kp, 0.0, 0.1, 200.0, 0.2, torch.Generator().manual_seed(1))
    dropped = ~visible
    assert not dropped[:, 0].any()  # the fill joint (root) never drops
    assert dropped[:, 1:].float().mean().item() == pytest.approx(0.2, abs=0.01)
    # dropped keypoints sit on the root's position
    root = noisy[:, 0:1, :].expand_as(noisy)
    assert torch.equal(noisy[dropped], root[dropped])
    # outliers: visible keypoints that moved (sigma = 0, so any motion is an outlier jump)
    moved = (noisy - kp).norm(dim=-1) > 1e-3
    assert moved[visible].float().mean().item() == pytest.approx(0.1, abs=0.01)
    jump = (noisy - kp)[moved & visible]
    assert jump.std().item() == pytest.approx(200.0, rel=0.1)


def test_detector_noise_reproducible_and_jitter_std():
    kp = torch.zeros(3000, 17, 2)
    a = detector_noise(kp, 3.0, 0.0, 0.0, 0.0, torch.Generator().manual_seed(4))
    b = detector_noise(kp, 3.0, 0.0, 0.0, 0.0, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].std().item() == pytest.approx(3.0, rel=0.02)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma=-1.0), "sigma"),
        (dict(outlier_sigma=-2.0), "outlier_sigma"),
        (dict(outlier_prob=1.5), "outlier_prob"),
        (dict(dropout_prob=-0.1), "dropout_prob"),
        (dict(fill_joint=17), "fill_joint"),
    ],
)
def test_detector_noise_bad_input(kwargs, match):
    args = dict(sigma=1.0, outlier_prob=0.1, outlier_sigma=50.0, dropout_prob=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        detector_noise(torch.zeros(2, 17, 2), **args)
