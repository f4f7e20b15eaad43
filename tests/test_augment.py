"""Tests for poselab.data.augment: affine warps and their pixel convention, colour ops, Joint Cutout, presets."""

import math

import pytest
import torch

from poselab.data.augment import (
    AUGMENT_PAIRS,
    EASY,
    EXTRA_OPS,
    HARD,
    NONE,
    RANDAUGMENT_OPS,
    SAME,
    AugmentConfig,
    augment,
    autocontrast,
    brightness,
    colour,
    compose_affine,
    contrast,
    equalize,
    gaussian_blur,
    gaussian_noise,
    heatmap_affine,
    invert_affine,
    joint_cutout,
    make_affine,
    posterize,
    rand_augment,
    random_affine,
    relative_affine,
    sharpness,
    solarize,
    transform_points,
    warp_heatmaps,
    warp_images,
    warp_valid_mask,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
]


def eye(b, dtype=torch.float32):
    return torch.eye(2, 3, dtype=dtype).expand(b, 2, 3).clone()


def centroid(maps):
    """(B, K, H, W) non-negative maps -> (B, K, 2) intensity-weighted mean pixel (u, v)."""
    h, w = maps.shape[-2:]
    v, u = torch.meshgrid(torch.arange(h, dtype=maps.dtype), torch.arange(w, dtype=maps.dtype), indexing="ij")
    total = maps.sum(dim=(-2, -1))
    return torch.stack([(maps * u).sum(dim=(-2, -1)) / total, (maps * v).sum(dim=(-2, -1)) / total], -1)


def blobs(points, size, sigma):
    """Gaussian blobs (B, K, h, w) with peak 1 at (B, K, 2) heatmap-pixel centres."""
    h, w = size
    v, u = torch.meshgrid(torch.arange(h, dtype=points.dtype), torch.arange(w, dtype=points.dtype), indexing="ij")
    d2 = (u - points[..., 0, None, None]) ** 2 + (v - points[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def to_heatmap_px(p, stride):
    return (p + 0.5) / stride - 0.5


# ---------------------------------------------------------------------------------------------
# affine algebra and warping


def test_identity_affine_leaves_images_unchanged():
    x = torch.rand(3, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(warp_images(x, eye(3)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(warp_images(x, eye(3), mode="nearest"), x)


@pytest.mark.parametrize("n", [4, 5])
@pytest.mark.parametrize("angle,k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_about_centre_equals_rot90(n, angle, k):
    x = torch.rand(2, 3, n, n, generator=torch.Generator().manual_seed(1))
    a = make_affine(torch.full((2,), angle), torch.ones(2), torch.zeros(2, 2), ((n - 1) / 2, (n - 1) / 2))
    torch.testing.assert_close(warp_images(x, a), torch.rot90(x, k, dims=(2, 3)), atol=1e-5, rtol=0)


def test_make_affine_known_answer():
    # 90 deg counter-clockwise on screen about (0, 0) then shift (10, 20): (1, 0) -> (0, -1) -> (10, 19)
    a = make_affine(torch.tensor([90.0]), torch.tensor([2.0]), torch.tensor([[10.0, 20.0]]), (0.0, 0.0))
    p = transform_points(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), a)
    torch.testing.assert_close(p, torch.tensor([[[10.0, 18.0], [12.0, 20.0]]]), atol=1e-5, rtol=0)
    # the rotation centre stays put under a pure rotation
    c = make_affine(torch.tensor([33.0]), torch.tensor([1.7]), torch.zeros(1, 2), (4.5, 2.0))
    torch.testing.assert_close(transform_points(torch.tensor([[[4.5, 2.0]]]), c), torch.tensor([[[4.5, 2.0]]]))


def test_invert_and_compose_are_consistent():
    g = torch.Generator().manual_seed(2)
    a = random_affine(6, (32, 24), 60.0, (0.6, 1.4), 0.2, generator=g, dtype=torch.float64)
    b = random_affine(6, (32, 24), 60.0, (0.6, 1.4), 0.2, generator=g, dtype=torch.float64)
    i = eye(6, torch.float64)
    torch.testing.assert_close(compose_affine(invert_affine(a), a), i)
    torch.testing.assert_close(compose_affine(a, invert_affine(a)), i)
    torch.testing.assert_close(invert_affine(compose_affine(a, b)), compose_affine(invert_affine(b), invert_affine(a)))
    torch.testing.assert_close(relative_affine(a, a), i)
    torch.testing.assert_close(compose_affine(relative_affine(a, b), a), b)
    p = torch.rand(6, 5, 2, generator=g, dtype=torch.float64) * 30
    torch.testing.assert_close(transform_points(p, compose_affine(a, b)), transform_points(transform_points(p, b), a))


def test_random_affine_ranges_and_centre():
    g = torch.Generator().manual_seed(3)
    a = random_affine(500, (40, 30), 30.0, (0.75, 1.25), 0.0, generator=g)
    scale = torch.linalg.det(a[:, :, :2]).sqrt()
    angle = torch.rad2deg(torch.atan2(a[:, 0, 1], a[:, 0, 0]))  # positive = counter-clockwise on screen
    assert scale.min() >= 0.75 - 1e-5 and scale.max() <= 1.25 + 1e-5
    assert angle.abs().max() <= 30.0 + 1e-4 and angle.min() < -20 and angle.max() > 20
    centre = torch.tensor([[[14.5, 19.5]]]).expand(500, 1, 2)
    torch.testing.assert_close(transform_points(centre, a), centre, atol=1e-4, rtol=0)
    shifted = random_affine(500, (40, 30), 0.0, (1.0, 1.0), 0.1, generator=g)
    t = shifted[:, :, 2]
    assert t[:, 0].abs().max() <= 3.0 + 1e-5 and t[:, 1].abs().max() <= 4.0 + 1e-5 and t[:, 1].abs().max() > 3.0


def test_transform_points_matches_warp_of_one_hot_pixel():
    """A single bright pixel, warped, lands where transform_points says (sub-pixel)."""
    h, w = 40, 36
    src = torch.tensor([[[13.0, 21.0]], [[20.0, 15.0]], [[17.0, 19.0]]])  # (B, 1, 2) (u, v)
    x = torch.zeros(3, 1, h, w)
    x[torch.arange(3), 0, src[:, 0, 1].long(), src[:, 0, 0].long()] = 1.0
    a = make_affine(
        torch.tensor([37.0, -71.0, 0.0]),
        torch.tensor([1.3, 1.0, 1.0]),
        torch.tensor([[2.25, -1.5], [-3.0, 0.7], [0.3, -0.6]]),
        ((w - 1) / 2, (h - 1) / 2),
    )
    y = warp_images(x, a)
    expected = transform_points(src, a)
    # rotated/scaled bilinear footprints sampled on the pixel grid: centroid within 0.15 px
    # (0.11 px was the worst of 500 random maps); a pure sub-pixel shift is exact
    torch.testing.assert_close(centroid(y[:2]), expected[:2], atol=0.15, rtol=0)
    torch.testing.assert_close(centroid(y[2:]), expected[2:], atol=1e-4, rtol=0)
    # and the bright spot is at the nearest output pixel
    flat = y.flatten(1).argmax(1)
    torch.testing.assert_close(torch.stack([flat % w, flat // w], -1).float(), expected[:, 0].round())


def test_warp_to_other_output_size():
    # scaling by 2 about pixel-centre-aware origin: a (H, W) image -> (2H, 2W) with map u' = 2u + 0.5
    x = torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(4))
    a = torch.tensor([[[2.0, 0.0, 0.5], [0.0, 2.0, 0.5]]])
    y = warp_images(x, a, out_size=(10, 12), mode="nearest")
    torch.testing.assert_close(y, x.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_warp_valid_mask():
    a = torch.tensor([[[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]]])  # shift right 3, up 2
    m = warp_valid_mask(a, (8, 10))
    assert m.shape == (1, 8, 10)
    assert not m[0, :, :3].any() and m[0, :6, 3:].all() and not m[0, 6:, :].any()


def test_heatmap_affine_commutes_with_pixel_conversion():
    g = torch.Generator().manual_seed(5)
    a = random_affine(4, (64, 48), 60.0, (0.6, 1.4), 0.1, generator=g, dtype=torch.float64)
    p = torch.rand(4, 7, 2, generator=g, dtype=torch.float64) * 60
    for stride in (1, 4, 2.5):
        lhs = to_heatmap_px(transform_points(p, a), stride)
        rhs = transform_points(to_heatmap_px(p, stride), heatmap_affine(a, stride))
        torch.testing.assert_close(lhs, rhs)
    # stride 4: a 4-pixel image shift is a 1-pixel heatmap shift
    t = torch.tensor([[[1.0, 0.0, 4.0], [0.0, 1.0, -8.0]]])
    torch.testing.assert_close(heatmap_affine(t, 4), torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, -2.0]]]))


def test_relative_affine_maps_easy_heatmaps_to_hard_heatmaps():
    """Heatmaps of the easy view, warped by relative_affine(A_e, A_h), peak where the hard view's do."""
    size, stride, sigma = (64, 48), 4, 1.5
    hm_size = (16, 12)
    g = torch.Generator().manual_seed(6)
    b, k = 8, 6
    kp = torch.tensor([23.5, 31.5]) + (torch.rand(b, k, 2, generator=g) - 0.5) * torch.tensor([16.0, 24.0])
    a_e = random_affine(b, size, EASY.rotation_deg, EASY.scale_range, EASY.translate_frac, generator=g)
    a_h = random_affine(b, size, HARD.rotation_deg, HARD.scale_range, HARD.translate_frac, generator=g)
    p_e = to_heatmap_px(transform_points(kp, a_e), stride)
    p_h = to_heatmap_px(transform_points(kp, a_h), stride)
    warped = warp_heatmaps(blobs(p_e, hm_size, sigma), relative_affine(a_e, a_h), stride)
    assert warped.shape == (b, k, *hm_size)
    # keep joints whose blob lies well inside both heatmaps (margin 3 sigma)
    def inside(p):
        return ((p >= 3 * sigma) & (p <= torch.tensor([hm_size[1], hm_size[0]]) - 1 - 3 * sigma)).all(-1)

    keep = inside(p_e) & inside(p_h)
    assert keep.sum() >= 10
    err = (centroid(warped) - p_h).norm(dim=-1)[keep]
    assert err.max() < 0.1, err.max()  # well inside the 0.5 heatmap-pixel budget
    # the peak value also sits at the right pixel
    target = blobs(p_h, hm_size, sigma)
    flat_w, flat_t = warped.flatten(2).argmax(-1), target.flatten(2).argmax(-1)
    peaks_w = torch.stack([flat_w % hm_size[1], flat_w // hm_size[1]], -1)
    peaks_t = torch.stack([flat_t % hm_size[1], flat_t // hm_size[1]], -1)
    assert (peaks_w - peaks_t).abs().max(-1).values[keep].max() <= 1


def test_warp_gradients():
    x = torch.rand(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    a = make_affine(torch.tensor([20.0], dtype=torch.float64), torch.tensor([1.1], dtype=torch.float64),
                    torch.tensor([[0.3, -0.2]], dtype=torch.float64), (2.0, 1.5)).requires_grad_()
    assert torch.autograd.gradcheck(lambda img, aff: warp_images(img, aff), (x, a))
    p = torch.rand(1, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda pts, aff: transform_points(pts, invert_affine(aff)), (p, a))


def test_dtype_follows_input():
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    out, a = augment(x, torch.rand(2, 4, 2, dtype=torch.float64) * 6, HARD, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64 and a.dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# photometric ops


def test_photometric_ops_keep_shape_and_range():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(4, 3, 12, 10, generator=g)
    f = torch.tensor([0.0, 0.5, 1.7, 3.0])
    for y in (
        autocontrast(x), equalize(x), brightness(x, f), contrast(x, f), colour(x, f), sharpness(x, f),
        posterize(x, 3), solarize(x, 0.4), gaussian_blur(x, 1.5), gaussian_noise(x, 0.3, g),
        rand_augment(x, 3, 30.0, g, ops=RANDAUGMENT_OPS + EXTRA_OPS),
    ):
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.min() >= 0.0 and y.max() <= 1.0


def test_factor_one_and_magnitude_zero_are_identity():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    for op in (brightness, contrast, colour, sharpness):
        torch.testing.assert_close(op(x, 1.0), x)
    torch.testing.assert_close(posterize(x, 8), x)
    torch.testing.assert_close(gaussian_blur(x, 0.0), x)
    torch.testing.assert_close(gaussian_noise(x, 0.0), x)
    ops = ("identity", "brightness", "contrast", "colour", "sharpness", "posterize", "blur", "noise")
    torch.testing.assert_close(rand_augment(x, 3, 0.0, torch.Generator().manual_seed(0), ops=ops), x)
    torch.testing.assert_close(rand_augment(x, 0, 30.0), x)


def test_brightness_contrast_colour_known_answers():
    x = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    torch.testing.assert_close(brightness(x, 1.5), torch.tensor([0.3, 0.75, 1.0]).view(1, 3, 1, 1).expand_as(x))
    torch.testing.assert_close(brightness(x, 0.0), torch.zeros_like(x))
    grey = 0.2989 * 0.2 + 0.587 * 0.5 + 0.114 * 0.8
    torch.testing.assert_close(colour(x, 0.0), torch.full_like(x, grey))
    torch.testing.assert_close(contrast(x, 0.0), torch.full_like(x, grey))
    # per-image factors
    y = brightness(torch.full((2, 3, 2, 2), 0.4), torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(y[:, 0, 0, 0], torch.tensor([0.2, 0.8]))


def test_solarize_known_answer():
    x = torch.tensor([0.2, 0.5, 0.7, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    expected = torch.tensor([0.2, 0.5, 0.3, 0.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    torch.testing.assert_close(solarize(x, 0.5), expected)
    torch.testing.assert_close(solarize(x, 0.0), 1 - x)


def test_posterize_known_answer():
    x = torch.tensor([200, 255, 15, 16, 0]).float().div(255).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    torch.testing.assert_close(posterize(x, 4)[0, 0, 0] * 255, torch.tensor([192.0, 240.0, 0.0, 16.0, 0.0]))
    torch.testing.assert_close(posterize(x, 1)[0, 0, 0] * 255, torch.tensor([128.0, 128.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(posterize(x, 0), torch.zeros_like(x))
    y = posterize(x.expand(2, 3, 1, 5), torch.tensor([4, 8]))
    torch.testing.assert_close(y[1], x[0])


def test_autocontrast_known_answer():
    x = torch.tensor([0.2, 0.4, 0.6]).view(1, 1, 1, 3).repeat(1, 3, 2, 1)
    x[:, 2] = 0.5  # constant channel stays
    y = autocontrast(x)
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(y[0, 2], x[0, 2])


def test_equalize_of_a_ramp_is_uniform():
    # 64 distinct grey levels squeezed into [64, 127] / 255, each on 64 pixels of a 64x64 image
    levels = torch.arange(64, 128).float() / 255
    x = levels.repeat_interleave(64).view(1, 1, 64, 64).expand(1, 3, 64, 64).contiguous()
    y = equalize(x)
    values = y[0, 0].flatten().sort().values
    uniform = (torch.arange(4096).float() + 0.5) / 4096
    # PIL's rule clips the top few levels to white, hence the tolerance on the worst pixel
    assert (values - uniform).abs().max() < 0.08 and (values - uniform).abs().mean() < 0.03
    assert y.min() == 0.0 and y.max() == 1.0
    # an uneven ramp (quadratic) is flattened too: equal-count quartiles
    ramp = (torch.linspace(0, 1, 4096) ** 3).view(1, 1, 64, 64).expand(1, 3, 64, 64).contiguous()
    q = equalize(ramp)[0, 0].flatten().quantile(torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(q, torch.tensor([0.25, 0.5, 0.75]), atol=0.06, rtol=0)
    # a constant image is left alone
    c = torch.full((1, 3, 4, 4), 0.3)
    torch.testing.assert_close(equalize(c), c)


def test_sharpness_and_blur_known_answers():
    x = torch.zeros(1, 3, 5, 5)
    x[:, :, 2, 2] = 1.0
    smooth = sharpness(x, 0.0)
    torch.testing.assert_close(smooth[0, 0, 2, 2], torch.tensor(5 / 13))
    torch.testing.assert_close(smooth[0, 0, 1, 1], torch.tensor(1 / 13))
    blurred = gaussian_blur(x, 1.0)
    torch.testing.assert_close(blurred.sum(dim=(2, 3)), torch.ones(1, 3), atol=0.02, rtol=0)
    torch.testing.assert_close(blurred[0, 0], blurred[0, 0].T)
    c = torch.full((2, 3, 6, 6), 0.7)
    torch.testing.assert_close(gaussian_blur(c, torch.tensor([0.5, 2.0])), c)


def test_rand_augment_chooses_ops_per_image():
    x = torch.rand(32, 3, 4, 4, generator=torch.Generator().manual_seed(9)) * 0.9 + 0.05
    y = rand_augment(x, 1, 30.0, torch.Generator().manual_seed(1), ops=("identity", "solarize"))  # threshold 0
    same = (y == x).flatten(1).all(1)
    inverted = torch.isclose(y, 1 - x).flatten(1).all(1)
    assert (same | inverted).all() and same.any() and inverted.any()


def test_rand_augment_reproducible():
    x = torch.rand(8, 3, 10, 10, generator=torch.Generator().manual_seed(10))
    ops = RANDAUGMENT_OPS + EXTRA_OPS
    y1 = rand_augment(x, 2, 12.0, torch.Generator().manual_seed(3), ops=ops)
    y2 = rand_augment(x, 2, 12.0, torch.Generator().manual_seed(3), ops=ops)
    y3 = rand_augment(x, 2, 12.0, torch.Generator().manual_seed(4), ops=ops)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    assert not torch.equal(y1, y3)


# ---------------------------------------------------------------------------------------------
# Joint Cutout


def square(centre, size, half):
    h, w = size
    v, u = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return ((u - centre[0]).abs() < half) & ((v - centre[1]).abs() < half)


def test_joint_cutout_hand_made_example():
    x = torch.full((1, 2, 10, 12), 0.5)
    kp = torch.tensor([[[2.0, 2.0], [8.0, 7.0], [5.5, 1.0]]])
    # side 0.3 * 10 = 3 px -> |d| < 1.5: a 3x3 block around (2, 2) and around (8, 7)
    y, mask = joint_cutout(x, kp, 2, 0.3, torch.Generator().manual_seed(0),
                           visible=torch.tensor([[True, True, False]]), fill=0.0, return_mask=True)
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[1:4, 1:4] = True
    expected[6:9, 7:10] = True
    assert torch.equal(mask[0], expected)
    assert torch.equal(y[0, :, expected], torch.zeros(2, 18))
    assert torch.equal(y[0, :, ~expected], torch.full((2, 120 - 18), 0.5))
    # sub-pixel centre and even side: (5.5, 1.0), side 4 -> u in {4, 5, 6, 7}, v in {0, 1, 2}
    _, m2 = joint_cutout(x, kp, 1, 0.4, visible=torch.tensor([[False, False, True]]), fill=0.0, return_mask=True)
    e2 = torch.zeros(10, 12, dtype=torch.bool)
    e2[0:3, 4:8] = True
    assert torch.equal(m2[0], e2)
    # fewer visible joints than k: only the visible one is cut; none visible: nothing
    _, m3 = joint_cutout(x, kp, 3, 0.4, visible=torch.tensor([[False, False, True]]), return_mask=True)
    assert torch.equal(m3[0], e2)
    y4 = joint_cutout(x, kp, 3, 0.4, visible=torch.zeros(1, 3, dtype=torch.bool))
    assert torch.equal(y4, x)


def test_joint_cutout_picks_k_distinct_visible_joints():
    g = torch.Generator().manual_seed(11)
    b, k_joints, size = 16, 8, (32, 32)
    kp = torch.rand(b, k_joints, 2, generator=g) * 31
    visible = torch.rand(b, k_joints, generator=g) < 0.6
    x = torch.rand(b, 3, *size, generator=g)
    y, mask = joint_cutout(x, kp, 3, 0.1, g, visible=visible, fill="mean", return_mask=True)
    half = 0.5 * 0.1 * 32
    squares = torch.stack([torch.stack([square(kp[i, j], size, half) for j in range(k_joints)]) for i in range(b)])
    allowed = (squares & visible[..., None, None]).any(1)
    assert not (mask & ~allowed).any()  # nothing cut away from visible joints
    fully_cut = (squares & ~mask[:, None]).flatten(2).any(-1).logical_not() & visible  # (B, K)
    assert (fully_cut.sum(1) >= visible.sum(1).clamp(max=3)).all()
    mean = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    m = mask[:, None].expand_as(x)
    torch.testing.assert_close(y[m], mean[m])
    assert torch.equal(y[~m], x[~m])


def test_joint_cutout_noise_fill_is_random_and_reproducible():
    x = torch.zeros(2, 3, 16, 16)
    kp = torch.tensor([[[8.0, 8.0]], [[3.0, 12.0]]])
    y1, mask = joint_cutout(x, kp, 1, 0.5, torch.Generator().manual_seed(0), return_mask=True)
    y2 = joint_cutout(x, kp, 1, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(y1, y2)
    assert y1[mask[:, None].expand_as(y1)].std() > 0.2 and y1.max() <= 1.0
    assert torch.equal(y1[~mask[:, None].expand_as(y1)], x[~mask[:, None].expand_as(x)])


# ---------------------------------------------------------------------------------------------
# presets and augment()


def test_presets():
    assert EASY.rotation_deg == 30.0 and EASY.scale_range == (0.75, 1.25) and EASY.joint_cutout_k == 0
    assert HARD.rotation_deg == 60.0 and HARD.scale_range == (0.6, 1.4)
    assert HARD.rand_augment_num_ops == 2 and HARD.rand_augment_magnitude == 10.0 and HARD.joint_cutout_k == 5
    assert SAME == EASY and AUGMENT_PAIRS["same"] == (EASY, EASY) and AUGMENT_PAIRS["easy_hard"] == (EASY, HARD)


def test_augment_none_is_identity():
    x = torch.rand(2, 3, 8, 8)
    y, a = augment(x, None, NONE, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, eye(2))
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_augment_cuts_out_at_transformed_keypoints():
    x = torch.ones(4, 3, 32, 32)
    kp = torch.tensor([[[16.0, 16.0], [2.0, 30.0]]]).expand(4, 2, 2)
    config = AugmentConfig(translate_frac=0.25, joint_cutout_k=1, joint_cutout_size_frac=0.1, joint_cutout_fill=0.5)
    y, a = augment(x, kp, config, torch.Generator().manual_seed(12), visible=torch.tensor([[True, False]] * 4))
    moved = transform_points(kp, a)
    assert (moved[:, 0] - kp[:, 0]).abs().max() > 2.0  # the warp really moved the joint
    for i in range(4):
        expected = square(moved[i, 0], (32, 32), 1.6)
        assert torch.equal(y[i, 0] == 0.5, expected)


def test_augment_reproducible_and_seed_dependent():
    g = torch.Generator().manual_seed(13)
    x = torch.rand(4, 3, 24, 20, generator=g)
    kp = torch.rand(4, 17, 2, generator=g) * 20
    y1, a1 = augment(x, kp, HARD, torch.Generator().manual_seed(0))
    y2, a2 = augment(x, kp, HARD, torch.Generator().manual_seed(0))
    y3, a3 = augment(x, kp, HARD, torch.Generator().manual_seed(1))
    assert torch.equal(y1, y2) and torch.equal(a1, a2)
    assert not torch.equal(a1, a3) and not torch.equal(y1, y3)
    assert y1.shape == x.shape and a1.shape == (4, 2, 3) and 0 <= y1.min() and y1.max() <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_devices_agree_with_cpu(device):
    g = torch.Generator().manual_seed(14)
    x = torch.rand(3, 3, 16, 16, generator=g)
    kp = torch.rand(3, 5, 2, generator=g) * 15
    y_cpu, a_cpu = augment(x, kp, HARD, torch.Generator().manual_seed(5))
    y, a = augment(x.to(device), kp.to(device), HARD, torch.Generator().manual_seed(5))
    assert y.device.type == device and a.device.type == device
    torch.testing.assert_close(a.cpu(), a_cpu, atol=1e-5, rtol=1e-5)
    # posterize/equalize/solarize are threshold ops: allow a few pixels to flip across devices
    assert ((y.cpu() - y_cpu).abs() > 1e-3).float().mean() < 0.01
    h = warp_heatmaps(torch.rand(3, 5, 4, 4, device=device), relative_affine(a, a.flip(0)), 4)
    assert h.shape == (3, 5, 4, 4) and h.device.type == device


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_raise_clear_errors():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="affine"):
        warp_images(x, torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="affine"):
        warp_images(x, eye(3))
    with pytest.raises(TypeError, match="images"):
        warp_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), eye(2))
    with pytest.raises(ValueError, match="out_size"):
        warp_images(x, eye(2), out_size=(0, 4))
    with pytest.raises(ValueError, match="mode"):
        warp_images(x, eye(2), mode="bicubic")
    with pytest.raises(ValueError, match="singular"):
        invert_affine(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="scale_range"):
        random_affine(2, (8, 8), 10.0, (1.2, 0.8), 0.0)
    with pytest.raises(ValueError, match="rotation_deg"):
        random_affine(2, (8, 8), -5.0, (1.0, 1.0), 0.0)
    with pytest.raises(TypeError, match="generator"):
        random_affine(2, (8, 8), 5.0, (1.0, 1.0), 0.0, generator=0)
    with pytest.raises(ValueError, match="stride"):
        warp_heatmaps(x, eye(2), 0)
    with pytest.raises(ValueError, match="images"):
        brightness(torch.rand(2, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="factor"):
        contrast(x, -1.0)
    with pytest.raises(ValueError, match="factor"):
        colour(x, torch.ones(3))
    with pytest.raises(ValueError, match="bits"):
        posterize(x, 9)
    with pytest.raises(ValueError, match="magnitude"):
        rand_augment(x, 2, 31.0)
    with pytest.raises(ValueError, match="ops"):
        rand_augment(x, 2, 5.0, ops=("rotate",))
    with pytest.raises(ValueError, match="num_ops"):
        rand_augment(x, -1, 5.0)
    kp = torch.rand(2, 4, 2) * 8
    with pytest.raises(ValueError, match="k"):
        joint_cutout(x, kp, 5, 0.1)
    with pytest.raises(ValueError, match="keypoints"):
        joint_cutout(x, torch.rand(3, 4, 2), 1, 0.1)
    with pytest.raises(TypeError, match="visible"):
        joint_cutout(x, kp, 1, 0.1, visible=torch.ones(2, 4))
    with pytest.raises(ValueError, match="fill"):
        joint_cutout(x, kp, 1, 0.1, fill="zeros")
    with pytest.raises(ValueError, match="size_frac"):
        joint_cutout(x, kp, 1, 0.0)
    with pytest.raises(ValueError, match="rotation_deg"):
        AugmentConfig(rotation_deg=-1.0)
    with pytest.raises(ValueError, match="rand_augment_ops"):
        AugmentConfig(rand_augment_ops=("shear",))
    with pytest.raises(ValueError, match="keypoints"):
        augment(x, None, HARD)
    with pytest.raises(TypeError, match="config"):
        augment(x, kp, "hard")
    with pytest.raises(ValueError, match="visible"):
        augment(x, kp, HARD, visible=torch.ones(2, 3, dtype=torch.bool))
    assert math.isclose(HARD.joint_cutout_size_frac, 0.15)
