"""The MediaTek low-power UNet (Liao, Wang, Lin, Chen, NYCU 2022).

A small UNet for 6-class traffic-scene segmentation on MediaTek Dimensity phones, from the NYCU
"MediaTek Low-power Semantic Segmentation" final project and its public code
(https://github.com/Jia-Wei-Liao/Low-Power-Segmentation, ``train.py``).

From the paper and its code:

- Input 192x320 (the 720x1280 frames resized inside the graph), pixels divided by 255 and nothing
  else (registry mean 0, std 1), 6 classes.
- A stem conv3x3 + BatchNorm + ReLU to ``c`` channels (``c`` = 8 in the code, the table's
  "Channel" column: 5, 8 or 12).
- Five encoder stages of two conv3x3 + BN + ReLU with ``2c, 4c, 8c, 16c, 32c`` channels
  (16/32/64/128/256 at ``c`` = 8), a 2x2 average pool after each of the first four (so H and W
  must be multiples of 16).
- A decoder of five steps: nearest-neighbour 2x upsampling (not before the first), a conv3x3 to
  ``16c, 8c, 4c, 2c, c`` channels, an ADDITIVE skip (the encoder tensor entering the matching
  stage: the stem output, then each pooled stage output), then BN and ReLU. The skip is added to
  the conv output before the BN, as in the code.
- A final conv3x3 to the classes. Every conv has a bias (``tf.layers.conv2d``'s default); BN has
  a scale and a shift.
- The table's best row: residual encoder blocks, ``c`` = 12, average pooling, BN (val mIoU
  0.612, against 0.606 for the code's ``c`` = 8 plain row). The paper shows the residual block only
  as a figure ("Figure 4: Residual block", after ResNet).

Choices made here (the paper does not give them):

- The residual stage is ResNet's basic block: conv-BN-ReLU-conv-BN plus a projection shortcut
  (conv1x1 + BN, since every stage changes the width), then ReLU. Stem and decoder are the same as
  in the plain model.
- The table's other rows (5/8 channels, strided-conv downsampling, no BN) are reachable through
  ``channels`` but not registered.
- The deployed graph of the paper ended in an argmax at full frame size and was quantized with a
  representative set of raw frames; here the model returns logits at the input size like every
  registered model, and what the deployed file ends with is the converter's business.

Deploy form: average pooling, nearest upsampling and additions convert to TFLite builtins as
written (AVERAGE_POOL_2D, RESIZE_NEAREST_NEIGHBOR, ADD). The decoder's BatchNorm does not: it
follows an addition, so no conv absorbs it, and onnx2tf 1.29.24 converts such a standalone
BatchNormalization SILENTLY WRONG whenever the channel count equals the tensor's width (measured:
the residual UNet at 32x48 has 24 channels at 16x24 in its fourth decoder step; 69% of the logit
range off, half the argmaxes changed). ``to_deploy()`` writes each decoder BN as the depthwise 1x1
convolution it computes in eval mode (scale and shift from the BN's tensors), which onnx2tf
converts at any shape; the rest of the model is shared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.models.layers import check_divisible
from seg2tflite.models.registry import ModelConfig, register_model

DEPTH = 5  # encoder stages; a 2x2 pool after each but the last
SIZE_DIVISOR = 2 ** (DEPTH - 1)


def conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1)  # TensorFlow "same" at stride 1, with a bias


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (with bias), batch norm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(conv3x3(in_ch, out_ch), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class PlainStage(nn.Sequential):
    """Two conv3x3 + BN + ReLU (the code's encoder stage)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class ResidualStage(nn.Module):
    """ResNet basic block with a projection shortcut (this file's reading of the paper's Figure 4)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNReLU(in_ch, out_ch), conv3x3(out_ch, out_ch), nn.BatchNorm2d(out_ch))
        self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class DecoderStep(nn.Module):
    """conv3x3, plus the encoder skip, then BN and ReLU (upsampling happens before)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv3x3(in_ch, out_ch)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x) + skip))


class MediaTekUNet(nn.Module):
    """UNet with average-pool downsampling, nearest upsampling and additive skips."""

    def __init__(self, num_classes: int = 6, channels: int = 8, residual: bool = False, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.size_divisor = SIZE_DIVISOR
        widths = [channels * 2**d for d in range(DEPTH + 1)]  # c, 2c, ..., 32c
        stage = ResidualStage if residual else PlainStage
        self.stem = ConvBNReLU(in_chans, widths[0])
        self.encoder = nn.ModuleList(stage(widths[d], widths[d + 1]) for d in range(DEPTH))
        # Step d maps 32c/2^d channels to the width of the skip it meets: the input of stage 4-d.
        self.decoder = nn.ModuleList(DecoderStep(widths[DEPTH - d], widths[DEPTH - d - 1]) for d in range(DEPTH))
        self.head = conv3x3(widths[0], num_classes)

    def check_size(self, x: torch.Tensor) -> None:
        check_divisible(x, self.size_divisor, "the MediaTek UNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x)
        x = self.stem(x)
        skips = []
        for d, stage in enumerate(self.encoder):
            skips.append(x)
            x = stage(x)
            if d < DEPTH - 1:
                x = F.avg_pool2d(x, 2)
        for d, step in enumerate(self.decoder):
            if d > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = step(x, skips[DEPTH - 1 - d])
        return self.head(x)

    def to_deploy(self) -> MediaTekUNetDeploy:
        return MediaTekUNetDeploy(self)


def batchnorm_as_conv(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """What an eval-mode ``bn`` computes on ``x``, as a depthwise 1x1 conv (weight scale, bias shift)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return F.conv2d(x, scale.view(-1, 1, 1, 1), shift, groups=bn.running_mean.numel())


class DeployDecoderStep(DecoderStep):
    """``DecoderStep`` with its BN as a depthwise 1x1 conv; shares the step's conv and BN."""

    def __init__(self, step: DecoderStep):
        nn.Module.__init__(self)
        self.conv, self.bn = step.conv, step.bn

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return F.relu(batchnorm_as_conv(self.conv(x) + skip, self.bn))


class MediaTekUNetDeploy(MediaTekUNet):
    """The UNet with converter-safe decoder BNs; shares the modules (and weights) of the model it wraps."""

    def __init__(self, model: MediaTekUNet):
        nn.Module.__init__(self)
        self.num_classes = model.num_classes
        self.size_divisor = model.size_divisor
        self.stem, self.encoder, self.head = model.stem, model.encoder, model.head
        self.decoder = nn.ModuleList(DeployDecoderStep(step) for step in model.decoder)
        if hasattr(model, "model_config"):
            self.model_config = model.model_config
        self.train(model.training)

    def to_deploy(self) -> MediaTekUNetDeploy:
        return self


_PAPER = "MediaTek low-power UNet, Liao et al., NYCU 2022 (github.com/Jia-Wei-Liao/Low-Power-Segmentation)"


def _config(name: str, **kwargs) -> ModelConfig:
    return ModelConfig(
        name=name,
        family="unet",
        input_size=(192, 320),  # the 720x1280 frames resized to a multiple of 16 at about their aspect
        mean=(0.0, 0.0, 0.0),  # divide by 255 only
        std=(1.0, 1.0, 1.0),
        num_classes=6,
        size_divisor=SIZE_DIVISOR,
        paper=_PAPER,
        **kwargs,
    )


@register_model(_config("unet_mediatek"))
def unet_mediatek(num_classes: int = 6, **kwargs) -> MediaTekUNet:
    return MediaTekUNet(num_classes=num_classes, **{"channels": 8, "residual": False, **kwargs})


@register_model(_config("unet_mediatek_res12"))  # its own code (residual stages): carried by the tests
def unet_mediatek_res12(num_classes: int = 6, **kwargs) -> MediaTekUNet:
    return MediaTekUNet(num_classes=num_classes, **{"channels": 12, "residual": True, **kwargs})
