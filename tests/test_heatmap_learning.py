"""Tests for poselab.heatmap_learning: losses, targets and evaluation shared by the heatmap methods."""

import pytest
import torch
from torch import nn

from poselab.data.augment import NONE, make_affine, transform_points
from poselab.data.heatmaps import gaussian_heatmaps, to_heatmap_pixels
from poselab.heatmap_learning import (evaluate_heatmaps, joints_mse_loss, masked_mse_loss, supervised_targets,
                                      teacher_targets)

SIZE, K = 32, 3


# ------------------------------------------------------------------------------------------ losses


def test_joints_mse_loss_known_answer():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 1.0  # joint 0: one pixel off by 1 -> mean 1/4
    target[0, 1] = 2.0  # joint 1: every pixel off by 2 -> mean 4
    assert joints_mse_loss(pred, target).item() == pytest.approx((0.25 + 4.0) / 2)
    visible = torch.tensor([[True, False]])
    assert joints_mse_loss(pred, target, visible).item() == pytest.approx(0.25)
    assert joints_mse_loss(pred, target, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


def test_masked_mse_loss_ignores_invalid_pixels():
    pred = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])
    valid = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    assert masked_mse_loss(pred, target, valid).item() == pytest.approx(1.0 / 3.0)
    # The collapsed solution (everything background) satisfies consistency exactly.
    assert masked_mse_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.ones(2, 1, 4, 4)).item() == 0.0


def test_loss_bad_inputs():
    with pytest.raises(ValueError, match="target"):
        joints_mse_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 3))
    with pytest.raises(ValueError, match="visible"):
        joints_mse_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="target"):
        masked_mse_loss(torch.zeros(1, 2, 4, 4), torch.zeros(2, 2, 4, 4), torch.ones(1, 1, 4, 4))


# ------------------------------------------------------------------------------------- targets


def test_teacher_targets_identity_is_exact():
    heatmaps = torch.rand(2, K, 8, 8)
    eye = make_affine(torch.zeros(2), torch.ones(2), torch.zeros(2, 2), (SIZE, SIZE))
    target, valid = teacher_targets(heatmaps, eye, eye, stride=4)
    torch.testing.assert_close(target, heatmaps)
    assert valid.shape == (2, 1, 8, 8) and bool((valid == 1).all())


def test_teacher_targets_move_peaks_with_the_relative_affine():
    stride, hm = 2, SIZE // 2
    points = torch.tensor([[[12.0, 10.0], [20.0, 16.0], [9.0, 22.0]]])  # image pixels, original frame
    a_easy = make_affine(torch.tensor([20.0]), torch.tensor([1.1]), torch.tensor([[1.0, -2.0]]), (SIZE, SIZE))
    a_hard = make_affine(torch.tensor([-35.0]), torch.tensor([0.9]), torch.tensor([[-2.0, 1.5]]), (SIZE, SIZE))
    easy = gaussian_heatmaps(to_heatmap_pixels(transform_points(points, a_easy), stride), (hm, hm), 1.5)
    target, valid = teacher_targets(easy, a_easy, a_hard, stride)
    expected = to_heatmap_pixels(transform_points(points, a_hard), stride)
    flat = target.flatten(2).argmax(-1)
    peak = torch.stack([flat % hm, flat // hm], -1).float()
    assert (peak - expected).abs().max() <= 0.75  # the integer peak of a sub-pixel blob
    assert 0 < valid.mean() < 1  # rotated views: the corners come from outside the easy view


def test_supervised_targets_mark_keypoints_pushed_out_invisible():
    images = torch.rand(2, 3, SIZE, SIZE)
    keypoints = torch.tensor([[[16.0, 16.0], [-30.0, 5.0], [10.0, 10.0]]]).expand(2, -1, -1).clone()
    visible = torch.ones(2, K, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    aug, targets, vis = supervised_targets(images, keypoints, visible, NONE, 1.5, 2, (16, 16), g)
    torch.testing.assert_close(aug, images)  # NONE: identity warp
    assert vis.tolist() == [[True, False, True]] * 2
    assert targets[:, 1].abs().max() == 0 and targets[:, 0].max() > 0.9


# ------------------------------------------------------------------------------------ evaluation


class _Oracle(nn.Module):
    """Returns fixed heatmaps (the targets of the images it is shown, in order)."""

    output_stride = 2

    def __init__(self, heatmaps):
        super().__init__()
        self.heatmaps = heatmaps
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x):
        out = self.heatmaps[self.calls: self.calls + x.shape[0]]
        self.calls += x.shape[0]
        return out + 0 * self.weight


def test_evaluate_heatmaps_known_answers():
    keypoints = torch.tensor([[[4.0, 6.0], [20.0, 12.0], [9.0, 27.0]]]).repeat(3, 1, 1)
    visible = torch.ones(3, K, dtype=torch.bool)
    heatmaps = gaussian_heatmaps(to_heatmap_pixels(keypoints, 2), (16, 16), 1.5)
    images = torch.zeros(3, 3, SIZE, SIZE)
    oracle = _Oracle(heatmaps).train()
    result = evaluate_heatmaps(oracle, images, keypoints, visible, batch_size=2)
    assert result["pck@0.05"] == 1.0 and result["pck@0.1"] == 1.0
    peak = heatmaps.amax(dim=(-2, -1)).mean().item()  # below 1: the keypoints fall between pixel centres
    assert result["response"] == pytest.approx(peak, rel=1e-6)
    assert oracle.training  # mode restored
    assert set(evaluate_heatmaps(_Oracle(heatmaps * 0.5), images)) == {"response"}
    assert evaluate_heatmaps(_Oracle(heatmaps * 0.5), images)["response"] == pytest.approx(0.5 * peak, rel=1e-6)
    with pytest.raises(ValueError, match="both or neither"):
        evaluate_heatmaps(oracle, images, keypoints)
