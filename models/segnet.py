"""SegNet with a VGG16-BN encoder (Badrinarayanan et al., arXiv 1511.00561).

Five encoder stages of 3x3 conv + BN + ReLU (2, 2, 3, 3, 3 convs of 64, 128, 256, 512, 512
channels: the 13 convolutions of VGG16, 14.7M parameters), each followed by a 2x2 max-pool whose
argmax positions are kept. The decoder mirrors the encoder: each stage unpools with the kept
positions (a sparse map holding every value at the position its encoder maximum came from), then
runs the mirrored convolutions; the last one maps 64 channels to the classes without BN or ReLU.

Deploy form: ``max_unpool2d`` does not export with the TorchScript ONNX exporter, and litert-torch
lowers max-pool indices to zeros. ``SegNetDeploy`` recomputes the positions from the pre-pool
encoder map instead: a value goes where the input equals the window maximum, and on ties (several
equal maxima in one window, common after ReLU zeros) only to the first of them in row-major window
order, which is the position PyTorch's max-pool records. Every op reaches a TFLite builtin:
STRIDED_SLICE, EQUAL, logical ops, SELECT_V2, CONCATENATION and DEPTH_TO_SPACE.

Integer form (``to_deploy(integer=True, calibration=images)``, ``SegNetEqualized``): in int8 a
pre-pool map has one scale for all its channels, so a channel that reaches a tenth of the map's
maximum gets a tenth of the 256 levels; values of a window within one level tie and the unpooled
value moves to the first of them (16 pixels at 1/16 scale). The integer form scales each channel
to the map's maximum over the calibration images (its last BN's affine) and divides the next
conv's input channel by the same factor. ReLU and max-pooling commute with a positive scale and
the unpooling reads only positions, so it is the same function in float.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.models.layers import check_divisible
from seg2tflite.models.registry import ModelConfig, register_model

# (convs, out channels) per encoder stage: VGG16's 13 convolutions.
VGG16_STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
SIZE_DIVISOR = 2 ** len(VGG16_STAGES)


class ConvBNReLU(nn.Sequential):
    """3x3 convolution, batch norm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),  # VGG16 convs keep their bias (14.7M encoder)
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class _DepthToSpace(torch.autograd.Function):
    """ONNX ``DepthToSpace(mode="DCR")``, which onnx2tf maps straight to TFLite DEPTH_TO_SPACE.

    Input channel ``(i * r + j) * C + c`` goes to channel ``c`` at offset ``(i, j)`` of each
    ``r x r`` output block. (``F.pixel_shuffle`` has the CRD channel order, which exports as
    ``DepthToSpace(mode="CRD")`` and onnx2tf lowers to a 6-D reshape and transpose.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, r: int) -> torch.Tensor:
        b, rrc, h, w = x.shape
        c = rrc // (r * r)
        return x.reshape(b, r, r, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, h * r, w * r)

    @staticmethod
    def symbolic(g, x, r: int):
        return g.op("DepthToSpace", x, blocksize_i=r, mode_s="DCR")


def depth_to_space(x: torch.Tensor, r: int) -> torch.Tensor:
    """``(B, r*r*C, h, w) -> (B, C, r*h, r*w)``, block offset major (TensorFlow's order)."""
    return _DepthToSpace.apply(x, r)


def unpool_first_max(values: torch.Tensor, pooled: torch.Tensor, before_pool: torch.Tensor) -> torch.Tensor:
    """``max_unpool2d(values, indices)`` for a 2x2/stride-2 pool, computed without indices.

    ``pooled`` is ``max_pool2d(before_pool, 2, 2)``. Each value goes to the first position of its
    window, in row-major order, where ``before_pool`` equals the window maximum: the position
    PyTorch's max-pool records when several positions tie.
    """
    # Window positions (0,0), (0,1), (1,0); position (1,1) is implied.
    corners = [before_pool[:, :, i::2, j::2] for i, j in ((0, 0), (0, 1), (1, 0))]
    taken = corners[0] == pooled
    masks = [taken]
    for corner in corners[1:3]:
        hit = corner == pooled
        masks.append(hit & ~taken)
        taken = taken | hit
    masks.append(~taken)  # the maximum is in the window, so the last position holds it if no other did
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return depth_to_space(torch.cat([torch.where(m, values, zero) for m in masks], dim=1), 2)


class SegNet(nn.Module):
    """SegNet: VGG16-BN encoder, pooling-index decoder; logits at input resolution."""

    def __init__(self, num_classes: int = 11, in_chans: int = 3, stages=VGG16_STAGES):
        super().__init__()
        self.num_classes = num_classes
        self.size_divisor = 2 ** len(stages)
        self.encoder = nn.ModuleList()
        ch = in_chans
        for n_convs, out_ch in stages:
            self.encoder.append(nn.Sequential(*[ConvBNReLU(ch if k == 0 else out_ch, out_ch) for k in range(n_convs)]))
            ch = out_ch
        # Decoder stage s mirrors encoder stage s: same conv count, channels reduced on its last
        # conv to the previous stage's width. Listed deepest first, the order they run in.
        self.decoder = nn.ModuleList()
        widths = [out for _, out in stages]
        for s in reversed(range(len(stages))):
            n_convs, out_ch = stages[s]
            convs = [ConvBNReLU(out_ch, out_ch) for _ in range(n_convs - 1)]
            if s > 0:
                convs.append(ConvBNReLU(out_ch, widths[s - 1]))
            else:
                convs.append(nn.Conv2d(out_ch, num_classes, 3, padding=1))
            self.decoder.append(nn.Sequential(*convs))

    def check_size(self, x: torch.Tensor) -> None:
        check_divisible(x, self.size_divisor, "SegNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x)
        kept = []
        for stage in self.encoder:
            x = stage(x)
            kept.append(self._pool_context(x))
            x = kept[-1][0]
        for stage, context in zip(self.decoder, reversed(kept)):
            x = stage(self._unpool(x, context))
        return x

    # Pooling and unpooling are the only difference between training and deploy form. The pool
    # context starts with the pooled map; the rest is what the matching unpool needs.
    def _pool_context(self, x: torch.Tensor):
        pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        return pooled, indices, x.shape[-2:]

    def _unpool(self, x: torch.Tensor, context) -> torch.Tensor:
        _, indices, size = context
        return F.max_unpool2d(x, indices, 2, 2, output_size=size)

    def to_deploy(self, integer: bool = False, calibration: torch.Tensor | None = None) -> SegNetDeploy:
        if integer and calibration is not None:
            return SegNetEqualized(self, calibration)
        return SegNetDeploy(self)


class SegNetDeploy(SegNet):
    """SegNet with index-free unpooling; shares the modules (and weights) of the model it wraps."""

    def __init__(self, model: SegNet):
        nn.Module.__init__(self)
        self.num_classes = model.num_classes
        self.size_divisor = model.size_divisor
        self.encoder = model.encoder
        self.decoder = model.decoder
        if hasattr(model, "model_config"):
            self.model_config = model.model_config
        self.train(model.training)

    def _pool_context(self, x: torch.Tensor):
        return F.max_pool2d(x, 2, 2), x

    def _unpool(self, x: torch.Tensor, context) -> torch.Tensor:
        pooled, before_pool = context
        return unpool_first_max(x, pooled, before_pool)

    def to_deploy(self, integer: bool = False, calibration: torch.Tensor | None = None) -> SegNetDeploy:
        return SegNetEqualized(self, calibration) if integer and calibration is not None else self


# A channel that stays at zero on the calibration images is scaled as if it reached this share of
# the map's maximum: enough to resolve it, and its next-conv weights stay on their int8 grid.
SMALLEST_CHANNEL_SHARE = 1e-3


def pre_pool_maxima(model: SegNet, images: torch.Tensor, batch: int = 8) -> list[torch.Tensor]:
    """Per encoder stage, each channel's largest value of the map it pools, over ``images``."""
    maxima: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            for s, stage in enumerate(model.encoder):
                x = stage(x)
                peak = x.amax((0, 2, 3))
                if s == len(maxima):
                    maxima.append(peak)
                else:
                    maxima[s] = torch.maximum(maxima[s], peak)
                x = F.max_pool2d(x, 2, 2)
    return maxima


def _first_conv(stage: nn.Sequential) -> nn.Conv2d:
    first = stage[0]
    return first[0] if isinstance(first, ConvBNReLU) else first


class SegNetEqualized(SegNetDeploy):
    """SegNet's integer form: the deploy form of a copy whose pre-pool channels share one range."""

    def __init__(self, model: SegNet, calibration: torch.Tensor):
        super().__init__(copy.deepcopy(model).eval())
        maxima = pre_pool_maxima(self, torch.as_tensor(calibration, dtype=torch.float32))
        # what each pooled map feeds: the next encoder stage, and for the last the first decoder stage
        followers = [_first_conv(stage) for stage in self.encoder[1:]] + [_first_conv(self.decoder[0])]
        with torch.no_grad():
            for stage, follower, peak in zip(self.encoder, followers, maxima):
                top = peak.max().clamp_min(torch.finfo(peak.dtype).tiny)
                scale = top / peak.clamp_min(top * SMALLEST_CHANNEL_SHARE)
                norm = stage[-1][1]
                norm.weight.mul_(scale)
                norm.bias.mul_(scale)
                follower.weight.div_(scale.view(1, -1, 1, 1))
        self.train(model.training)

    def to_deploy(self, integer: bool = False, calibration: torch.Tensor | None = None) -> SegNetDeploy:
        return self


@register_model(
    ModelConfig(
        name="segnet_vgg16",
        family="segnet",
        # The paper trains on CamVid at 360x480; 360 is not a multiple of 32 (five 2x2 pools), so
        # the nearest size that is: 352x480 (2% aspect change; 384x480 would be 7%).
        input_size=(352, 480),
        num_classes=11,  # CamVid's 11 classes; its "void" label is ignored (IGNORE_INDEX), not a class
        size_divisor=SIZE_DIVISOR,
        paper="SegNet, Badrinarayanan et al., arXiv 1511.00561",
    )
)
def segnet_vgg16(num_classes: int = 11, **kwargs) -> SegNet:
    return SegNet(num_classes=num_classes, **kwargs)
