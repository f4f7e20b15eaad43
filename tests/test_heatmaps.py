"""Tests for poselab.data.heatmaps: Gaussian targets, decoding, pixel conventions, class imbalance."""

import math

import pytest
import torch
import torch.nn.functional as F

from poselab.data.heatmaps import (
    DECODE_METHODS,
    decode_heatmaps,
    foreground_ratio,
    gaussian_heatmaps,
    to_heatmap_pixels,
    to_image_pixels,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


def random_keypoints(n, k, low, high, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(n, k, 2, generator=g, dtype=torch.float64)).to(dtype)


# ----------------------------------------------------------------------------- gaussian_heatmaps


def test_gaussian_peak_value_and_location_known_answer():
    kp = torch.tensor([[[3.0, 2.0]]])  # (u, v) = column 3, row 2
    hm = gaussian_heatmaps(kp, (6, 8), sigma=1.0)
    assert hm.shape == (1, 1, 6, 8) and hm.dtype == torch.float32
    assert hm[0, 0, 2, 3] == 1.0  # exactly 1 on the pixel centre
    assert int(hm[0, 0].argmax()) == 2 * 8 + 3
    torch.testing.assert_close(hm[0, 0, 2, 4], torch.tensor(math.exp(-0.5)))  # one pixel to the right
    torch.testing.assert_close(hm[0, 0, 3, 4], torch.tensor(math.exp(-1.0)))  # diagonal: d^2 = 2
    torch.testing.assert_close(hm[0, 0, 0, 0], torch.tensor(math.exp(-(9 + 4) / 2)))
    assert (hm <= 1).all() and (hm > 0).all()  # untruncated, unnormalised


def test_gaussian_sub_pixel_centre_and_sigma():
    kp = torch.tensor([[[2.5, 1.0]]], dtype=torch.float64)
    hm = gaussian_heatmaps(kp, (3, 6), sigma=2.0)[0, 0]
    # Halfway between columns 2 and 3: both equal, below 1, symmetric around u = 2.5.
    assert hm[1, 2] == hm[1, 3]
    torch.testing.assert_close(hm[1, 2], torch.tensor(math.exp(-0.25 / 8), dtype=torch.float64))
    torch.testing.assert_close(hm[:, :3], hm[:, 3:].flip(-1))
    torch.testing.assert_close(hm[0], hm[2])  # symmetric around v = 1
    # The values follow the formula everywhere.
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(6.0), indexing="ij")
    expected = torch.exp(-((xs - 2.5) ** 2 + (ys - 1.0) ** 2) / 8).double()
    torch.testing.assert_close(hm, expected)


def test_gaussian_is_vectorised_over_batch_and_keypoints():
    kp = random_keypoints(3, 4, -2, 10)
    hm = gaussian_heatmaps(kp, (9, 7), sigma=1.5)
    ys, xs = torch.meshgrid(torch.arange(9.0), torch.arange(7.0), indexing="ij")
    for b in range(3):
        for k in range(4):
            u, v = kp[b, k]
            expected = torch.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * 1.5**2)).double()
            torch.testing.assert_close(hm[b, k], expected)


def test_invisible_keypoints_give_zero_maps_and_may_be_nan():
    kp = torch.tensor([[[1.0, 1.0], [float("nan"), float("nan")], [2.0, 0.0]]])
    visible = torch.tensor([[True, False, True]])
    hm = gaussian_heatmaps(kp, (4, 4), 1.0, visible)
    assert torch.isfinite(hm).all()
    assert (hm[0, 1] == 0).all()
    assert hm[0, 0, 1, 1] == 1 and hm[0, 2, 0, 2] == 1
    with pytest.raises(ValueError, match="visible keypoints must be finite"):
        gaussian_heatmaps(kp, (4, 4), 1.0)


def test_gaussian_is_differentiable_in_the_keypoints():
    kp = random_keypoints(2, 2, 1, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: gaussian_heatmaps(p, (5, 5), 1.0), (kp,))


def test_gaussian_bad_input():
    kp = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match=r"keypoints: expected shape \(B, K, 2\).*\(2, 2\)"):
        gaussian_heatmaps(torch.zeros(2, 2), (4, 4), 1.0)
    with pytest.raises(TypeError, match="keypoints: expected a floating-point"):
        gaussian_heatmaps(torch.zeros(1, 2, 2, dtype=torch.long), (4, 4), 1.0)
    with pytest.raises(TypeError, match="keypoints: expected a torch.Tensor"):
        gaussian_heatmaps([[[0.0, 0.0]]], (4, 4), 1.0)
    with pytest.raises(ValueError, match=r"size\[1\]: expected an int >= 1, got 0"):
        gaussian_heatmaps(kp, (4, 0), 1.0)
    with pytest.raises(ValueError, match="size: expected"):
        gaussian_heatmaps(kp, 4, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_heatmaps(kp, (4, 4), 0.0)
    with pytest.raises(TypeError, match="visible: expected a bool"):
        gaussian_heatmaps(kp, (4, 4), 1.0, torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"visible: expected shape \(1, 2\)"):
        gaussian_heatmaps(kp, (4, 4), 1.0, torch.ones(2, 1, dtype=torch.bool))


# ----------------------------------------------------------------------------- decode_heatmaps


def test_decode_recovers_integer_keypoints_exactly():
    kp = torch.tensor([[[3.0, 2.0], [0.0, 0.0], [7.0, 5.0], [5.0, 0.0]]])
    hm = gaussian_heatmaps(kp, (6, 8), 1.0)
    for method in DECODE_METHODS:
        coords, scores = decode_heatmaps(hm, method)
        assert coords.shape == (1, 4, 2) and scores.shape == (1, 4)
        torch.testing.assert_close(coords, kp, msg=method)  # quarter: equal neighbours -> no move
        torch.testing.assert_close(scores, torch.ones(1, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_sub_pixel_accuracy_on_gaussians(dtype):
    kp = random_keypoints(64, 17, 1.0, 30.0, dtype=dtype)  # not on the border pixels of a 32x32 map
    hm = gaussian_heatmaps(kp, (32, 32), sigma=2.0)
    err = {}
    for method in DECODE_METHODS:
        coords, scores = decode_heatmaps(hm, method)
        assert coords.dtype == dtype
        torch.testing.assert_close(scores, hm.amax(dim=(-2, -1)))
        err[method] = (coords - kp).abs()
    assert err["argmax"].max() <= 0.5 + 1e-6  # nearest pixel
    assert err["quarter"].max() <= 0.25 + 1e-6  # SimpleBaseline: never worse than a quarter pixel per axis
    assert err["quarter"].mean() < 0.6 * err["argmax"].mean()  # ~0.125 vs ~0.25
    assert err["taylor"].max() < 0.05  # DARK: exact for a Gaussian up to rounding
    for blur in (0.0, 2.0):
        coords, _ = decode_heatmaps(hm, "taylor", blur_sigma=blur)
        assert (coords - kp).abs().max() < 0.05


def test_quarter_offset_known_answer():
    hm = torch.zeros(1, 1, 3, 4)
    hm[0, 0, 1, 1] = 1.0
    hm[0, 0, 1, 2] = 0.6  # right neighbour higher -> +0.25 in u
    hm[0, 0, 0, 1] = 0.3  # upper neighbour higher than the lower one -> -0.25 in v
    coords, scores = decode_heatmaps(hm, "quarter")
    torch.testing.assert_close(coords, torch.tensor([[[1.25, 0.75]]]))
    torch.testing.assert_close(decode_heatmaps(hm, "argmax")[0], torch.tensor([[[1.0, 1.0]]]))
    assert scores.item() == 1.0
    # On the border only the other axis moves.
    hm = torch.zeros(1, 1, 3, 4)
    hm[0, 0, 0, 2], hm[0, 0, 0, 3], hm[0, 0, 1, 2] = 1.0, 0.5, 0.4
    torch.testing.assert_close(decode_heatmaps(hm, "quarter")[0], torch.tensor([[[2.25, 0.0]]]))


def test_taylor_on_a_border_row_refines_the_other_axis():
    kp = torch.tensor([[[10.3, 0.0], [0.0, 5.6], [0.0, 0.0]]], dtype=torch.float64)
    hm = gaussian_heatmaps(kp, (16, 16), 2.0)
    coords, _ = decode_heatmaps(hm, "taylor")
    torch.testing.assert_close(coords, kp, atol=1e-6, rtol=0)


def test_taylor_blur_helps_on_noisy_maps():
    kp = random_keypoints(500, 1, 6.0, 26.0, seed=3, dtype=torch.float32)
    hm = gaussian_heatmaps(kp, (32, 32), 2.0)
    noisy = hm + 0.03 * torch.randn(hm.shape, generator=torch.Generator().manual_seed(4))
    err = {
        name: (decode_heatmaps(noisy, m, blur_sigma=b)[0] - kp).norm(dim=-1).mean()
        for name, m, b in [("quarter", "quarter", 1.0), ("raw", "taylor", 0.0), ("dark", "taylor", 1.0)]
    }
    assert err["dark"] < err["raw"] < err["quarter"]


def test_decode_zero_maps_and_ties():
    hm = torch.zeros(2, 3, 4, 5)
    for method in DECODE_METHODS:
        coords, scores = decode_heatmaps(hm, method)
        assert (coords == 0).all() and (scores == 0).all()
    hm[0, 0, 2, 1] = hm[0, 0, 2, 3] = 1.0  # tie: the first in row-major order wins
    assert decode_heatmaps(hm, "argmax")[0][0, 0].tolist() == [1.0, 2.0]


def test_decode_bad_input():
    with pytest.raises(ValueError, match=r"heatmaps: expected a non-empty tensor of shape \(B, K, h, w\)"):
        decode_heatmaps(torch.zeros(3, 4, 5))
    with pytest.raises(TypeError, match="heatmaps: expected a floating-point"):
        decode_heatmaps(torch.zeros(1, 1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown method 'soft'.*'argmax', 'quarter', 'taylor'"):
        decode_heatmaps(torch.zeros(1, 1, 4, 5), "soft")
    with pytest.raises(ValueError, match="blur_sigma"):
        decode_heatmaps(torch.zeros(1, 1, 4, 5), "taylor", blur_sigma=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        decode_heatmaps(torch.full((1, 1, 4, 5), float("nan")))


# ----------------------------------------------------------------------------- pixel conventions


@pytest.mark.parametrize("stride", [2, 4])
def test_pixel_conversion_known_answers(stride):
    s = stride
    # The image pixels s*i .. s*i + s - 1 form heatmap pixel i: their mean maps to i exactly.
    block_centres = torch.tensor([[[s * i + (s - 1) / 2, s * i + (s - 1) / 2] for i in range(3)]])
    expected = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])
    torch.testing.assert_close(to_heatmap_pixels(block_centres, s), expected)
    # Image extent [-0.5, W - 0.5] maps onto heatmap extent [-0.5, W/s - 0.5].
    edges = torch.tensor([[-0.5, -0.5], [63.5, 63.5]])
    torch.testing.assert_close(to_heatmap_pixels(edges, s), torch.tensor([[-0.5, -0.5], [64 / s - 0.5] * 2]))
    # Heatmap pixel centres map back to the centres of their blocks.
    centres = to_image_pixels(torch.tensor([0.0, 1.0]), s)
    torch.testing.assert_close(centres, torch.tensor([(s - 1) / 2, s + (s - 1) / 2]))
    if s == 4:
        torch.testing.assert_close(to_heatmap_pixels(torch.tensor([0.0, 1.5]), 4), torch.tensor([-0.375, 0.0]))


@pytest.mark.parametrize("stride", [2, 4])
def test_pixel_conversion_matches_average_pooling(stride):
    # A single lit image pixel lands, after s x s average pooling, in the heatmap pixel
    # whose extent contains its converted position (within half a heatmap pixel of the centre).
    g = torch.Generator().manual_seed(0)
    uv = torch.randint(0, 32, (20, 2), generator=g)
    images = torch.zeros(20, 1, 32, 32)
    images[torch.arange(20), 0, uv[:, 1], uv[:, 0]] = 1.0
    pooled = F.avg_pool2d(images, stride)
    coords, _ = decode_heatmaps(pooled, "argmax")
    hm = to_heatmap_pixels(uv.float()[:, None], stride)
    assert ((hm - coords).abs() <= 0.5 - 0.5 / stride + 1e-6).all()


def test_pixel_conversion_round_trip():
    kp = random_keypoints(4, 17, -10, 80)
    for stride in (1, 2, 4, 3.5):
        torch.testing.assert_close(to_image_pixels(to_heatmap_pixels(kp, stride), stride), kp)
        torch.testing.assert_close(to_heatmap_pixels(to_image_pixels(kp, stride), stride), kp)
    assert to_heatmap_pixels(kp, 2).dtype == torch.float64


def test_pixel_conversion_bad_input():
    with pytest.raises(ValueError, match="stride"):
        to_heatmap_pixels(torch.zeros(1, 2), 0)
    with pytest.raises(ValueError, match=r"keypoints: expected pixel coordinates of shape \(..., 2\)"):
        to_heatmap_pixels(torch.zeros(1, 3), 2)
    with pytest.raises(TypeError, match="coords: expected a floating-point"):
        to_image_pixels(torch.zeros(1, 2, dtype=torch.long), 2)


# ----------------------------------------------------------------------------- foreground ratio


def test_foreground_ratio_hand_made():
    hm = torch.zeros(1, 2, 4, 5)
    hm[0, 0, 1, 1], hm[0, 0, 2, 3] = 1.0, 0.9  # two foreground pixels
    hm[0, 0, 0, 0] = 0.8  # exactly at the threshold: background
    assert foreground_ratio(hm[:, :1]) == 18 / 2
    assert foreground_ratio(hm) == 38 / 2  # the zero map of an invisible keypoint is background
    assert foreground_ratio(hm, threshold=0.5) == 37 / 3
    assert foreground_ratio(hm, threshold=0.95) == 39 / 1
    assert foreground_ratio(torch.zeros(1, 1, 2, 2)) == math.inf


def test_foreground_ratio_of_coco_sized_targets():
    # 64x48 heatmaps, sigma 2, keypoint on a pixel centre: 5 pixels above 0.8 (d^2 <= 1).
    hm = gaussian_heatmaps(torch.tensor([[[20.0, 30.0]]]), (64, 48), 2.0)
    assert foreground_ratio(hm) == (64 * 48 - 5) / 5
    # With 7 of 17 COCO keypoints unlabelled (zero maps) the imbalance is about 1000:1.
    visible = torch.tensor([[True] * 10 + [False] * 7])
    hm = gaussian_heatmaps(torch.full((1, 17, 2), 20.0), (64, 48), 2.0, visible)
    assert 950 < foreground_ratio(hm) < 1100


def test_foreground_ratio_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        foreground_ratio(torch.zeros(1, 1, 2, 2), float("nan"))
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        foreground_ratio(torch.zeros(2, 2))


# ----------------------------------------------------------------------------- devices


@CUDA
def test_cuda_follows_device():
    kp = random_keypoints(2, 5, 2, 14, dtype=torch.float32).cuda()
    hm = gaussian_heatmaps(kp, (16, 16), 2.0, torch.ones(2, 5, dtype=torch.bool, device="cuda"))
    assert hm.device.type == "cuda"
    for method in DECODE_METHODS:
        coords, scores = decode_heatmaps(hm, method)
        assert coords.device.type == "cuda" and scores.device.type == "cuda"
        cpu, _ = decode_heatmaps(hm.cpu(), method)
        torch.testing.assert_close(coords.cpu(), cpu, atol=1e-4, rtol=0)
    assert to_image_pixels(to_heatmap_pixels(kp, 4), 4).device.type == "cuda"
    assert foreground_ratio(hm) == foreground_ratio(hm.cpu())


def test_value_histogram_known_answer():
    from poselab.data.heatmaps import value_histogram

    maps = torch.tensor([[[[0.0, 0.19, 0.2, 0.5], [0.99, 1.0, -0.3, 1.4]]]])
    assert value_histogram(maps).tolist() == [3.0, 1.0, 1.0, 0.0, 3.0]
    assert value_histogram(maps, bins=1).tolist() == [8.0]
    g = gaussian_heatmaps(torch.tensor([[[7.0, 7.0]]]), (16, 16), 2.0)
    counts = value_histogram(g)
    # sigma 2: the 5 pixels within distance 1 of the peak exceed 0.8 (exp(-1/8) = 0.88, exp(-2/8) = 0.78).
    assert counts.sum() == 256 and counts[-1] == 5 and counts[0] > 40 * counts[-1]
    with pytest.raises(ValueError, match="bins"):
        value_histogram(maps, bins=0)
