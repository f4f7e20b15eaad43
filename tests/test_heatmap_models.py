"""Tests for poselab.models.heatmap: SimpleBaseline-style heatmap networks, prediction, PCK."""

import math

import pytest
import torch
import torch.nn as nn

from poselab.checks import seed_everything
from poselab.data.heatmaps import decode_heatmaps, gaussian_heatmaps, to_heatmap_pixels, to_image_pixels
from poselab.models.heatmap import (
    BACKBONE_STRIDE,
    HEATMAP_NETS,
    HeatmapNet,
    build_heatmap_net,
    keypoint_pck,
    predict_keypoints,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
SMALL = 32  # input size of most tests: the smallest multiple of 16 with several backbone pixels


def make(name, seed=0, **kwargs):
    seed_everything(seed)
    return build_heatmap_net(name, **kwargs)


def images(batch, size=SMALL, seed=1, dtype=torch.float32):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_heatmap_nets():
    assert HEATMAP_NETS == ("resnet_tiny", "resnet_small")
    assert BACKBONE_STRIDE == 16


# ----------------------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize("name", HEATMAP_NETS)
@pytest.mark.parametrize("stride, num_deconv", [(2, 3), (4, 2)])
def test_output_shape(name, stride, num_deconv):
    model = make(name, num_keypoints=5, input_size=(64, 48), output_stride=stride)
    assert isinstance(model, HeatmapNet)
    assert model.output_stride == stride and model.input_size == (64, 48)
    assert model.heatmap_size == (64 // stride, 48 // stride)
    assert len(model.deconv) == num_deconv
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == num_deconv
    out = model.train()(images(2, (64, 48)))
    assert out.shape == (2, 5, 64 // stride, 48 // stride) and out.dtype == torch.float32
    with torch.no_grad():
        assert model.eval()(images(1, (64, 48))).shape == (1, 5, 64 // stride, 48 // stride)


def test_defaults():
    model = make("resnet_tiny")
    assert model.num_keypoints == 17 and model.input_size == (64, 64) and model.output_stride == 2
    assert model.heatmap_size == (32, 32)
    backbone_out = model.backbone(images(1, 64))
    assert backbone_out.shape == (1, 128, 4, 4)  # stride 16


def test_parameter_counts_by_hand():
    def block(c_in, c_out):  # two 3x3 convs + 2 BN, plus a 1x1 projection + BN when the width changes
        return 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out + (c_in * c_out + 2 * c_out if c_in != c_out else 0)

    stem = 27 * 16 + 2 * 16
    backbone = stem + block(16, 16) + block(16, 32) + block(32, 64) + block(64, 128)
    deconv = (16 * 128 * 32 + 2 * 32) + 2 * (16 * 32 * 32 + 2 * 32)
    final = 32 * 17 + 17
    assert make("resnet_tiny").num_parameters == backbone + deconv + final == 406_593
    assert make("resnet_tiny", output_stride=4).num_parameters == 406_593 - (16 * 32 * 32 + 2 * 32) == 390_145
    assert make("resnet_small").num_parameters == 3_189_745
    assert make("resnet_small", output_stride=4).num_parameters == 3_124_081


@pytest.mark.parametrize("name", HEATMAP_NETS)
def test_initialisation(name):
    model = make(name)
    assert model.final.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert (model.final.bias == 0).all()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    with torch.no_grad():
        out = model.eval()(images(2, 64))
    assert out.abs().max() < 0.05  # initial heatmaps close to 0


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", HEATMAP_NETS)
def test_gradients_reach_every_parameter(name):
    model = make(name, num_keypoints=4, input_size=SMALL).train()
    kp = 2 + 12 * torch.rand(3, 4, 2, generator=torch.Generator().manual_seed(2))
    target = gaussian_heatmaps(kp, model.heatmap_size, 1.5)
    loss = (model(images(3)) - target).pow(2).mean()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", HEATMAP_NETS)
def test_overfits_a_tiny_batch(name):
    model = make(name, num_keypoints=3, input_size=SMALL).train()
    g = torch.Generator().manual_seed(5)
    kp = 4 + (SMALL - 8) * torch.rand(4, 3, 2, generator=g)  # image pixels
    x = torch.rand(4, 3, SMALL, SMALL, generator=g)
    target = gaussian_heatmaps(to_heatmap_pixels(kp, model.output_stride), model.heatmap_size, 1.5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = (model(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
    # The memorised heatmaps decode to the keypoints (train mode: the batch statistics it was fit with).
    coords, scores = predict_keypoints(model, x, "taylor")
    assert model.training
    assert (coords - kp).norm(dim=-1).mean() < 0.5
    assert scores.mean() > 0.5


@pytest.mark.parametrize("name", HEATMAP_NETS)
def test_deterministic_given_seed_and_per_sample_in_eval(name):
    a, b, c = (make(name, seed=s, input_size=SMALL) for s in (3, 3, 4))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert not torch.equal(a.final.weight, c.final.weight)
    x = images(4)
    with torch.no_grad():
        full = a.eval()(x)
        single = torch.cat([a(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(single, full, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- dtypes, devices, bad input


@pytest.mark.parametrize("name", HEATMAP_NETS)
def test_float64_needs_a_float64_model(name):
    model = make(name, input_size=SMALL).eval()
    with pytest.raises(TypeError, match="does not match the model's torch.float32"):
        model(images(2, dtype=torch.float64))
    model = model.double()
    out = model(images(2, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    coords, scores = predict_keypoints(model, images(2, dtype=torch.float64))
    assert coords.dtype == scores.dtype == torch.float64


@pytest.mark.parametrize("name", HEATMAP_NETS)
def test_bad_images(name):
    model = make(name, input_size=SMALL).eval()
    with pytest.raises(ValueError, match=r"expected RGB images of shape \(B, 3, 32, 32\), got \(2, 1, 32, 32\)"):
        model(torch.zeros(2, 1, SMALL, SMALL))
    with pytest.raises(ValueError, match=r"model's input size \(B, 3, 32, 32\), got \(2, 3, 64, 64\)"):
        model(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\), got \(3, 32, 32\)"):
        model(torch.zeros(3, SMALL, SMALL))
    with pytest.raises(TypeError, match="floating-point images.*torch.uint8"):
        model(torch.zeros(2, 3, SMALL, SMALL, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0]])
    with pytest.raises(ValueError, match="at least one image"):
        model(torch.zeros(0, 3, SMALL, SMALL))


def test_build_errors():
    with pytest.raises(ValueError, match="unknown heatmap net name 'resnet50'.*'resnet_tiny', 'resnet_small'"):
        build_heatmap_net("resnet50")
    with pytest.raises(ValueError, match="input_size: expected sizes that are positive multiples of .*16.*60"):
        build_heatmap_net("resnet_tiny", input_size=60)
    with pytest.raises(ValueError, match="input_size"):
        build_heatmap_net("resnet_tiny", input_size=(64, 40))
    with pytest.raises(ValueError, match="input_size"):
        build_heatmap_net("resnet_tiny", input_size=(64,))
    with pytest.raises(ValueError, match=r"output_stride: expected one of \(2, 4\), got 8"):
        build_heatmap_net("resnet_tiny", output_stride=8)
    with pytest.raises(ValueError, match="num_keypoints"):
        build_heatmap_net("resnet_tiny", num_keypoints=0)


# ----------------------------------------------------------------------------- prediction and PCK


class _FixedHeatmaps(nn.Module):
    """Stands in for a network: returns Gaussian heatmaps of known image keypoints."""

    output_stride = 4

    def __init__(self, keypoints_px, size):
        super().__init__()
        self.keypoints_px = keypoints_px
        self.size = size

    def forward(self, x):
        return gaussian_heatmaps(to_heatmap_pixels(self.keypoints_px, self.output_stride), self.size, 2.0)


def test_predict_keypoints_known_answer_in_image_pixels():
    kp = 10 + 40 * torch.rand(3, 5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = _FixedHeatmaps(kp, (16, 16))
    coords, scores = predict_keypoints(model, images(3, 64), "taylor")
    torch.testing.assert_close(coords, kp, atol=1e-4, rtol=0)
    coords, _ = predict_keypoints(model, images(3, 64), "quarter")
    assert ((coords - kp).abs() <= 0.25 * 4 + 1e-6).all()  # a quarter heatmap pixel
    assert scores.shape == (3, 5)


@pytest.mark.parametrize("name", HEATMAP_NETS)
def test_predict_keypoints_leaves_the_mode_and_takes_no_gradient(name):
    model = make(name, num_keypoints=4, input_size=SMALL, output_stride=4)
    x = images(2)
    for mode in (True, False):
        model.train(mode)
        coords, scores = predict_keypoints(model, x, "argmax")
        assert model.training is mode
        assert not coords.requires_grad and not scores.requires_grad
        assert coords.shape == (2, 4, 2) and scores.shape == (2, 4)
    model.eval()
    with torch.no_grad():
        expected, _ = decode_heatmaps(model(x), "argmax")
    torch.testing.assert_close(coords, to_image_pixels(expected, 4))
    with pytest.raises(ValueError, match="unknown method"):
        predict_keypoints(model, x, "soft")
    with pytest.raises(TypeError, match="model: expected a HeatmapNet"):
        predict_keypoints(lambda t: t, x)


def test_keypoint_pck_known_answer():
    target = torch.zeros(2, 3, 2)
    pred = target.clone()
    pred[:, :, 0] = torch.tensor([1.0, 3.0, 4.0])  # errors 1, 3, 4 px in both samples
    assert keypoint_pck(pred, target, 64) == pytest.approx(2 / 3)  # threshold 0.05 * 64 = 3.2 px
    assert keypoint_pck(pred, target, 64, alpha=0.1) == 1.0  # 6.4 px
    assert keypoint_pck(pred, target, 60) == pytest.approx(1 / 3)  # 3.0 px, strict
    per_image = torch.tensor([64.0, 100.0])  # 3.2 px and 5 px
    assert keypoint_pck(pred, target, per_image) == pytest.approx(5 / 6)
    visible = torch.tensor([[True, False, False], [True, True, True]])
    target_nan = target.clone()
    target_nan[0, 1:] = float("nan")  # invisible keypoints are ignored, even if NaN
    assert keypoint_pck(pred, target_nan, 64, visible=visible) == pytest.approx(3 / 4)
    assert math.isnan(keypoint_pck(pred, target, 64, visible=torch.zeros(2, 3, dtype=torch.bool)))
    assert isinstance(keypoint_pck(pred, target, 64), float)


def test_keypoint_pck_bad_input():
    p = torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match=r"pred: expected keypoints of shape \(B, K, 2\)"):
        keypoint_pck(torch.zeros(3, 2), p, 64)
    with pytest.raises(ValueError, match="crop_size"):
        keypoint_pck(p, p, 0)
    with pytest.raises(TypeError, match="crop_size"):
        keypoint_pck(p, p, "64")
    with pytest.raises(ValueError, match="alpha"):
        keypoint_pck(p, p, 64, alpha=0.0)
    with pytest.raises(TypeError, match="visible: expected a bool"):
        keypoint_pck(p, p, 64, visible=torch.ones(2, 3))
    with pytest.raises(ValueError, match="equal shape"):
        keypoint_pck(p, torch.zeros(2, 4, 2), 64)


# ----------------------------------------------------------------------------- CUDA


@CUDA
@pytest.mark.parametrize("name", HEATMAP_NETS)
def test_cuda(name):
    model = make(name, num_keypoints=4, input_size=SMALL).cuda().train()
    x = images(2).cuda()
    with pytest.raises(ValueError, match="on device cpu but the model is on cuda"):
        model(x.cpu())
    out = model(x)
    assert out.device.type == "cuda" and out.shape == (2, 4, 16, 16)
    out.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in model.parameters())
    model.eval()
    coords, scores = predict_keypoints(model, x, "taylor")
    assert coords.device.type == "cuda" and scores.device.type == "cuda"
    cpu_coords, _ = predict_keypoints(model.cpu(), x.cpu(), "argmax")
    assert cpu_coords.shape == coords.shape
    assert 0.0 <= keypoint_pck(coords, coords + 1.0, 32, alpha=0.1) <= 1.0
