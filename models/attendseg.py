"""AttendSeg: a tiny attention-condenser network for semantic segmentation on the edge.

Wen, Famouri, Hryniowski, Wong, "AttendSeg: A Tiny Attention Condenser Neural Network for
Semantic Segmentation on the Edge", arXiv 2104.14623, CVPR workshops 2021.

From the paper (and the TinySpeech, arXiv 2008.04245, and AttendNets, arXiv 2009.14385, papers
whose block it reuses):

- A low-precision, highly compact network (8-bit weights) built from light-weight **attention
  condensers** mixed with depthwise and pointwise convolutions, its macro-architecture found by
  machine-driven design exploration; about 1.19M parameters, shown on CamVid (11 classes,
  360x480) against RefineNet.
- The attention condenser: a condensation layer ``Q = C(V)`` to a reduced size, an embedding
  structure ``K = E(Q)`` characterising joint local and cross-channel activation relationships
  there, an expansion layer ``A = X(K)`` back to the size of ``V``, and selective attention
  ``V' = F(V, A, S)``: the sigmoid of ``A`` scales ``V`` element by element, with a scale ``S``.

Chosen here (the published text gives no layer list):

- The condenser's layers, read from those descriptions: ``C`` a 2x2/stride-2 max pool, ``E`` a
  grouped 3x3 conv to half the width + ReLU then a pointwise conv back to the width of ``V``,
  ``X`` nearest 2x upsampling, ``F(V, A, S) = V * sigmoid(A) * S`` with ``S`` one learned scalar
  per condenser starting at 1. At an odd size the last row/column is repeated before the pool and
  the upsampled map cropped back, which equals a ceil-mode pool (CamVid's 360x480 is 45x60 at
  stride 8).
- ``AttendBlock``: attention condenser, then a 3x3 depthwise conv (dilated in the deepest stage)
  + BN + ReLU and a pointwise conv + BN, with a residual when the width is kept, then ReLU.
- The macro-architecture: a stride-2 3x3 stem; one block at stride 2, two at stride 4 and eight
  at stride 8 (dilations 1, 2, 4, 8 twice) behind depthwise-separable stride-2 downsampling;
  a decoder that upsamples bilinearly, concatenates the stride-4 and stride-2 features, fuses
  them with a pointwise conv and an ``AttendBlock`` each, and a pointwise classifier at stride 2
  upsampled bilinearly to the input. The widths (16/32/64/224 encoder, 96/48 decoder) put it at
  1,189,672 parameters with 11 classes (2.7 GMACs at 360x480); H and W must be multiples of 8.
- Input normalisation: the registry's default (ImageNet mean/std); the paper does not say.

Deploy form: every op reaches a TFLite builtin as written (MAX_POOL_2D, CONV_2D,
DEPTHWISE_CONV_2D, RESIZE_NEAREST_NEIGHBOR, LOGISTIC, MUL, CONCATENATION, RESIZE_BILINEAR, and
STRIDED_SLICE at odd sizes), but onnx2tf computes the decoder's concatenations in NCHW, with
TRANSPOSE ops around them (and the stride-2 skip kept transposed), which made the float32 file
slower than litert-torch's. ``to_deploy()`` fuses without concatenating: the 1x1 projection of
``cat([up(deep), skip])`` is the sum of its two halves, and the deep half runs before the
upsampling (a 1x1 convolution and a bilinear resize commute), the same function with no
CONCATENATION or TRANSPOSE and fewer MACs. In the full-int8 file XNNPACK (LiteRT 2.3.0) takes
every op but RESIZE_NEAREST_NEIGHBOR, so the gating path is split: the condensed map is expanded
on LiteRT's builtin kernel, LOGISTIC and the MULs run in XNNPACK; both paths agree with PyTorch's
float output to within two int8 steps (tests/test_attendseg.py).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.models.layers import check_divisible
from seg2tflite.models.registry import ModelConfig, register_model

SIZE_DIVISOR = 8  # three stride-2 steps; 360x480 (CamVid) is a multiple of 8, not of 16


def _odd(n) -> bool:
    """Whether a size is odd. Export traces one fixed input size, so under tracing this branch is
    a constant of the traced graph on purpose (the tracer's warning about it says nothing here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return bool(n % 2)


def _even_sized(v: torch.Tensor) -> torch.Tensor:
    """``v`` with an odd last row/column repeated once."""
    if _odd(v.shape[-2]):
        v = torch.cat([v, v[..., -1:, :]], dim=-2)
    if _odd(v.shape[-1]):
        v = torch.cat([v, v[..., -1:]], dim=-1)
    return v


def _cropped_like(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``a`` (twice the size of ``like``'s half, rounded up) cropped to ``like``'s size."""
    if _odd(like.shape[-2]):
        a = a[..., :-1, :]
    if _odd(like.shape[-1]):
        a = a[..., :-1]
    return a


# a symbolic trace (torch.fx, as AIMET's model preparer runs) has no sizes: these run as whole calls
torch.fx.wrap("_even_sized")
torch.fx.wrap("_cropped_like")


class AttentionCondenser(nn.Module):
    """``V' = V * sigmoid(X(E(C(V)))) * S``: condense, embed, expand, selective attention."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        mid = channels // 2
        self.embed = nn.Sequential(
            nn.Conv2d(channels, mid, 3, padding=1, groups=groups),  # joint local + cross-channel, grouped
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1),  # pointwise, back to the width of V
        )
        self.scale = nn.Parameter(torch.ones(()))  # S

    @staticmethod
    def condense(v: torch.Tensor) -> torch.Tensor:
        """2x2/stride-2 max pool; an odd last row/column is repeated first (= a ceil-mode pool)."""
        return F.max_pool2d(_even_sized(v), 2)

    @staticmethod
    def expand(k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Nearest 2x upsampling, cropped to the size of ``like`` where that is odd."""
        return _cropped_like(F.interpolate(k, scale_factor=2.0, mode="nearest"), like)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        a = self.expand(self.embed(self.condense(v)), v)
        return v * torch.sigmoid(a) * self.scale


class AttendBlock(nn.Module):
    """Attention condenser, depthwise 3x3 + BN + ReLU, pointwise + BN (+ residual), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1, groups: int = 4):
        super().__init__()
        self.attend = AttentionCondenser(in_ch, groups)
        self.depthwise = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
        )
        self.pointwise = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.residual = in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(self.attend(x)))
        return F.relu(x + y if self.residual else y)


class SeparableDown(nn.Sequential):
    """Stride-2 depthwise 3x3 + BN + ReLU, pointwise + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, stride=2, padding=1, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class Fuse(nn.Module):
    """Upsample the deeper map 2x (bilinear), concatenate the skip, pointwise + BN + ReLU, a block."""

    def __init__(self, deep_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(deep_ch + skip_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
        )
        self.block = AttendBlock(out_ch, out_ch)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(self.project(torch.cat([deep, skip], dim=1)))

    def forward_without_concat(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``forward`` with the projection split by input channels, its deep half before the upsampling."""
        conv, *rest = self.project
        k = deep.shape[1]
        deep = F.interpolate(F.conv2d(deep, conv.weight[:, :k]), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        y = deep + F.conv2d(skip, conv.weight[:, k:], conv.bias)
        for module in rest:  # BatchNorm (or Identity once folded), ReLU
            y = module(y)
        return self.block(y)


class AttendSeg(nn.Module):
    """Attention condensers with depthwise/pointwise convs, output stride 8; logits at input size."""

    def __init__(
        self,
        num_classes: int = 11,
        widths: tuple[int, int, int, int] = (16, 32, 64, 224),  # stem, stride 2, stride 4, stride 8
        decoder_widths: tuple[int, int] = (96, 48),  # stride 4, stride 2
        dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8),  # one AttendBlock each at stride 8
        in_chans: int = 3,
    ):
        super().__init__()
        stem, c2, c4, c8 = widths
        d4, d2 = decoder_widths
        self.num_classes = num_classes
        self.size_divisor = SIZE_DIVISOR
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)
        )
        self.stage2 = AttendBlock(stem, c2)
        self.stage4 = nn.Sequential(SeparableDown(c2, c4), AttendBlock(c4, c4), AttendBlock(c4, c4))
        self.stage8 = nn.Sequential(SeparableDown(c4, c8), *[AttendBlock(c8, c8, dilation=d) for d in dilations])
        self.fuse4 = Fuse(c8, c4, d4)
        self.fuse2 = Fuse(d4, c2, d2)
        self.classifier = nn.Conv2d(d2, num_classes, 1)

    def check_size(self, x: torch.Tensor) -> None:
        check_divisible(x, self.size_divisor, "AttendSeg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x)
        f2 = self.stage2(self.stem(x))
        f4 = self.stage4(f2)
        f8 = self.stage8(f4)
        y = self._fuse(self.fuse2, self._fuse(self.fuse4, f8, f4), f2)
        return F.interpolate(self.classifier(y), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def _fuse(self, fuse: Fuse, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return fuse(deep, skip)

    def to_deploy(self) -> AttendSegDeploy:
        return AttendSegDeploy(self)


class AttendSegDeploy(AttendSeg):
    """AttendSeg fusing without concatenation; shares the modules (and weights) of the model it wraps."""

    def __init__(self, model: AttendSeg):
        nn.Module.__init__(self)
        self.num_classes, self.size_divisor = model.num_classes, model.size_divisor
        for name, module in model.named_children():
            setattr(self, name, module)
        if hasattr(model, "model_config"):
            self.model_config = model.model_config
        self.train(model.training)

    def _fuse(self, fuse: Fuse, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return fuse.forward_without_concat(deep, skip)

    def to_deploy(self) -> AttendSegDeploy:
        return self


@register_model(
    ModelConfig(
        name="attendseg",
        family="attendseg",
        input_size=(360, 480),  # CamVid, as in the paper
        num_classes=11,  # CamVid's 11 classes
        size_divisor=SIZE_DIVISOR,
        paper="AttendSeg, Wen et al., arXiv 2104.14623 (CVPR workshops 2021)",
    )
)
def attendseg(num_classes: int = 11, **kwargs) -> AttendSeg:
    return AttendSeg(num_classes=num_classes, **kwargs)
