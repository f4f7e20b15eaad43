"""SimpleBaseline-style 2D heatmap networks: a small ResNet, deconvolutions, one heatmap per keypoint.

Xiao, Wu and Wei 2018, "Simple Baselines for Human Pose Estimation and Tracking": a ResNet
backbone (stride 32), three ``4x4`` stride-2 deconvolutions (256 channels, BN, ReLU) and a
``1x1`` convolution to K heatmaps at output stride 4, trained with an MSE loss to Gaussian
targets. Here, scaled down for 64x64 person crops and CPU training in minutes:

* **Backbone**: stem ``conv3x3(3 -> w1, stride 2) -> BN -> ReLU`` (no max-pool), then four
  stages of BasicBlocks (two ``3x3`` convs with BN and an identity / ``1x1``-projection
  shortcut) with widths ``w1..w4`` and strides 1, 2, 2, 2: backbone stride 16 (a 4x4
  feature map for a 64x64 input, like SimpleBaseline's 8x6 for 256x192).
* **Head**: ``log2(16 / output_stride)`` deconvolutions ``ConvTranspose2d(4x4, stride 2,
  padding 1) -> BN -> ReLU`` — 2 for output stride 4, 3 for output stride 2 — then a ``1x1``
  convolution to K heatmaps.

Networks (``HEATMAP_NETS``), parameter counts for K = 17 (output stride 4 drops the last
deconvolution):

=================  ================  ===========  ===========  ===========  ===========
name               widths            blocks       deconv ch.   params s=2   params s=4
=================  ================  ===========  ===========  ===========  ===========
``"resnet_tiny"``  16, 32, 64, 128   1 per stage  32           406,593      390,145
``"resnet_small"`` 32, 64, 128, 256  2 per stage  64           3,189,745    3,124,081
=================  ================  ===========  ===========  ===========  ===========

``"resnet_small"`` is the ResNet-18 layout at half width (ResNet-18: widths 64..512, 11 M
parameters; SimpleBaseline-R50: 34 M). A training step (Adam, MSE, batch 32 of 64x64 images,
output stride 2) took about 0.06 s (tiny) and 0.23 s (small) on 2 CPU threads of the
development machine, so a few thousand steps fit in minutes.

Default output stride 2: a 64x64 crop gives 32x32 heatmaps (sigma 2 there is a Gaussian of
4 image pixels), fine enough that the quarter-offset decoding error (0.25 heatmap px = 0.5
image px) stays well below the PCK@0.05 threshold of 3.2 px; stride 4 (16x16 heatmaps)
saves one deconvolution (a training step about 40 % cheaper for tiny, 15 % for small) but is
coarse for such small crops.

Initialisation: He (fan-out, ReLU) for convolutions and deconvolutions, BN weight 1 and bias
0, and SimpleBaseline's ``N(0, 0.001)`` weights with zero bias for the final ``1x1`` layer, so
the initial heatmaps are close to 0. Deviation: SimpleBaseline also draws the deconvolution
weights from ``N(0, 0.001)``; as BN follows them, their scale does not change the function,
only their effective learning rate (inversely), so they get the He init of the backbone
instead — which, unlike SimpleBaseline's ImageNet-pre-trained ResNet, is trained from scratch.

Units: images ``(B, 3, H, W)`` in [0, 1]; heatmaps ``(B, K, H/s, W/s)``; keypoints in image
pixels with the pixel-centre convention of :mod:`poselab.data.heatmaps`. Inputs must have the
model's dtype and device (``model.double()`` for float64); a mismatch is an error, never a
silent cast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from poselab.checks import check_choice, check_int, check_like_model, check_positive
from poselab.data.heatmaps import DECODE_METHODS, decode_heatmaps, to_image_pixels
from poselab.metrics import pck2d

__all__ = [
    "HEATMAP_NETS",
    "BACKBONE_STRIDE",
    "BasicBlock",
    "HeatmapNet",
    "build_heatmap_net",
    "predict_keypoints",
    "keypoint_pck",
]

HEATMAP_NETS = ("resnet_tiny", "resnet_small")
"""Names accepted by :func:`build_heatmap_net`."""

BACKBONE_STRIDE = 16
"""Stem (2) x stages (1, 2, 2, 2): input size / backbone feature size."""

_CONFIGS = {
    "resnet_tiny": {"widths": (16, 32, 64, 128), "blocks": (1, 1, 1, 1), "deconv_channels": 32},
    "resnet_small": {"widths": (32, 64, 128, 256), "blocks": (2, 2, 2, 2), "deconv_channels": 64},
}
_STAGE_STRIDES = (1, 2, 2, 2)
_OUTPUT_STRIDES = (2, 4)
_FINAL_STD = 0.001


class BasicBlock(nn.Module):
    """ResNet BasicBlock: ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``.

    The shortcut is the identity, or ``conv1x1(stride) -> BN`` where the width or the
    resolution changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _deconv(c_in: int, c_out: int) -> nn.Sequential:
    """``ConvTranspose2d(4x4, stride 2, padding 1)`` (exactly doubles H and W) -> BN -> ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _check_input_size(input_size) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        size = (input_size, input_size)
    elif (
        isinstance(input_size, Sequence)
        and len(input_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in input_size)
    ):
        size = (int(input_size[0]), int(input_size[1]))
    else:
        raise ValueError(f"input_size: expected an int or (H, W) ints, got {input_size!r}")
    if min(size) < BACKBONE_STRIDE or any(s % BACKBONE_STRIDE for s in size):
        raise ValueError(
            f"input_size: expected sizes that are positive multiples of the backbone stride {BACKBONE_STRIDE} "
            f"(e.g. 64 or (64, 48)), got {input_size!r}"
        )
    return size


class HeatmapNet(nn.Module):
    """ResNet (BasicBlocks) + deconvolution head + ``1x1`` conv: images -> K heatmaps.

    See the module docstring for the architecture; build the named networks with
    :func:`build_heatmap_net`.

    Args:
        widths: four stage widths ``(w1, w2, w3, w4)``.
        blocks: BasicBlocks per stage (four ints >= 1).
        deconv_channels: width of every deconvolution layer.
        num_keypoints: K.
        input_size: ``(H, W)`` (or one int for square inputs), multiples of 16; ``forward``
            accepts exactly this size.
        output_stride: 2 or 4 (3 or 2 deconvolutions).

    Attributes:
        num_keypoints, input_size ``(H, W)``, output_stride, heatmap_size ``(H/s, W/s)``,
        backbone (stem + stages), deconv (the deconvolution layers), final (the ``1x1`` conv).
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        deconv_channels: int,
        num_keypoints: int = 17,
        input_size: int | tuple[int, int] = 64,
        output_stride: int = 2,
    ):
        super().__init__()
        widths, blocks = tuple(widths), tuple(blocks)
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"widths, blocks: expected four stages each, got {widths!r} and {blocks!r}")
        for i, (c, n) in enumerate(zip(widths, blocks)):
            check_int(f"widths[{i}]", c)
            check_int(f"blocks[{i}]", n)
        check_int("deconv_channels", deconv_channels)
        self.num_keypoints = check_int("num_keypoints", num_keypoints)
        if output_stride not in _OUTPUT_STRIDES or isinstance(output_stride, bool):
            raise ValueError(f"output_stride: expected one of {_OUTPUT_STRIDES}, got {output_stride!r}")
        self.output_stride = int(output_stride)
        self.input_size = _check_input_size(input_size)
        self.heatmap_size = (self.input_size[0] // self.output_stride, self.input_size[1] // self.output_stride)

        stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, c_in = [], widths[0]
        for c, n, s in zip(widths, blocks, _STAGE_STRIDES):
            stages.append(nn.Sequential(*[BasicBlock(c_in if i == 0 else c, c, s if i == 0 else 1) for i in range(n)]))
            c_in = c
        self.backbone = nn.Sequential(stem, *stages)
        num_deconv = int(math.log2(BACKBONE_STRIDE // self.output_stride))
        self.deconv = nn.Sequential(
            *[_deconv(c_in if i == 0 else deconv_channels, deconv_channels) for i in range(num_deconv)]
        )
        self.final = nn.Conv2d(deconv_channels, self.num_keypoints, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.final.weight, std=_FINAL_STD)
        nn.init.zeros_(self.final.bias)

    def check_images(self, images: torch.Tensor, arg: str = "images") -> None:
        """Raise unless ``images`` is ``(B, 3, H, W)`` of the model's input size, dtype and device."""
        h, w = self.input_size
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{arg}: expected a torch.Tensor of shape (B, 3, {h}, {w}), got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"{arg}: expected floating-point images in [0, 1], got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{arg}: expected RGB images of shape (B, 3, {h}, {w}), got {tuple(images.shape)}")
        if tuple(images.shape[2:]) != (h, w):
            raise ValueError(
                f"{arg}: expected images of the model's input size (B, 3, {h}, {w}), got {tuple(images.shape)}; "
                "resize the images or build the network with input_size=(H, W)"
            )
        if images.shape[0] == 0:
            raise ValueError(f"{arg}: expected at least one image, got {tuple(images.shape)}")
        check_like_model(arg, images, self.final.weight, arg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``(B, 3, H, W)`` in [0, 1] -> heatmaps ``(B, K, H / s, W / s)``."""
        return self.forward_with_features(images)[0]

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps and the features they are read from, in one pass.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1], the model's dtype and device.

        Returns:
            ``(heatmaps (B, K, H / s, W / s), features (B, C, H / s, W / s))``: ``features`` is
            the input of the final ``1x1`` convolution (``C = deconv_channels``), so
            ``heatmaps = final(features)``. Methods that work on the last layer's per-keypoint
            parameters (:mod:`poselab.methods.hamipose`) need it; both share one autograd graph.
        """
        self.check_images(images)
        features = self.deconv(self.backbone(images))
        return self.final(features), features

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_heatmap_net(
    name: str, num_keypoints: int = 17, input_size: int | tuple[int, int] = 64, output_stride: int = 2
) -> HeatmapNet:
    """Build the heatmap network ``name`` (one of ``HEATMAP_NETS``).

    Args:
        name: ``"resnet_tiny"`` or ``"resnet_small"`` (sizes in the module docstring).
        num_keypoints: K heatmaps (17 for COCO-17 / Human3.6M-17).
        input_size: image size ``(H, W)`` or one int for square crops; multiples of 16.
        output_stride: 2 (default, 3 deconvolutions) or 4 (2 deconvolutions).

    Returns:
        A freshly initialised :class:`HeatmapNet` (seed torch's global generator first for
        reproducible weights, e.g. with ``poselab.checks.seed_everything``).
    """
    check_choice("heatmap net name", name, HEATMAP_NETS)
    return HeatmapNet(**_CONFIGS[name], num_keypoints=num_keypoints, input_size=input_size, output_stride=output_stride)


def predict_keypoints(
    model: HeatmapNet, images: torch.Tensor, method: str = "quarter"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints in image pixels from a heatmap network, without gradients.

    Runs ``model(images)`` under ``torch.no_grad()``, decodes the heatmaps with
    :func:`poselab.data.heatmaps.decode_heatmaps` and maps the coordinates to image pixels
    with the model's output stride. The module's mode is left as it is: call ``model.eval()``
    first for inference (in train mode BatchNorm uses batch statistics and updates its
    running averages).

    Args:
        model: a :class:`HeatmapNet` (anything with ``output_stride`` returning ``(B, K, h, w)``).
        images: ``(B, 3, H, W)`` in [0, 1], the model's dtype and device.
        method: ``"argmax"``, ``"quarter"`` (default, SimpleBaseline) or ``"taylor"`` (DARK).

    Returns:
        ``coords (B, K, 2)`` ``(u, v)`` in image pixels and ``scores (B, K)`` (heatmap maxima).
    """
    check_choice("method", method, DECODE_METHODS)
    stride = getattr(model, "output_stride", None)
    if not isinstance(model, nn.Module) or stride is None:
        raise TypeError(f"model: expected a HeatmapNet (an nn.Module with output_stride), got {type(model).__name__}")
    with torch.no_grad():
        heatmaps = model(images)
    coords, scores = decode_heatmaps(heatmaps, method)
    return to_image_pixels(coords, stride), scores


def keypoint_pck(
    pred: torch.Tensor,
    target: torch.Tensor,
    crop_size: float | torch.Tensor,
    alpha: float = 0.05,
    visible: torch.Tensor | None = None,
) -> float:
    """2D PCK on person crops: the fraction of visible keypoints within ``alpha * crop_size``.

    :func:`poselab.metrics.pck2d` with ``ref_size = crop_size`` (a keypoint is correct when
    its distance is strictly below the threshold). PCK@0.05 of a 64-pixel crop counts
    keypoints within 3.2 px (HamiPose reports PCK@0.05).

    Args:
        pred, target: ``(B, K, 2)`` image pixels; entries of invisible keypoints are ignored
            (and may be NaN).
        crop_size: side of the square crop in pixels (> 0), or ``(B,)`` per-image sizes.
        alpha: fraction of the crop size, > 0 (e.g. 0.05 or 0.1).
        visible: optional ``(B, K)`` bool mask; default all visible.

    Returns:
        PCK in [0, 1] as a Python float (NaN when no keypoint is visible).
    """
    for arg, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{arg}: expected a torch.Tensor of shape (B, K, 2), got {type(x).__name__}")
        if x.ndim != 3 or x.shape[-1] != 2:
            raise ValueError(f"{arg}: expected keypoints of shape (B, K, 2) in pixels, got {tuple(x.shape)}")
    if isinstance(crop_size, (int, float)) and not isinstance(crop_size, bool):
        check_positive("crop_size", crop_size)
        crop_size = float(crop_size)
    elif not isinstance(crop_size, torch.Tensor):
        raise TypeError(f"crop_size: expected a number > 0 or a (B,) tensor, got {type(crop_size).__name__}")
    if isinstance(visible, torch.Tensor) and visible.dtype == torch.bool and visible.shape == pred.shape[:2]:
        # Invisible entries do not count; zero them so that NaN placeholders pass pck2d's checks.
        mask = visible.to(pred.device).unsqueeze(-1)
        if pred.shape == target.shape and pred.is_floating_point() and target.is_floating_point():
            pred = torch.where(mask, pred, torch.zeros((), dtype=pred.dtype, device=pred.device))
            target = torch.where(mask, target, torch.zeros((), dtype=target.dtype, device=target.device))
    return float(pck2d(pred, target, alpha, crop_size, visible))
