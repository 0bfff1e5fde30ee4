"""DeepLabv3+ on any timm encoder (Chen et al. 2018, arXiv 1802.02611).

The encoder is a timm model built with ``features_only=True`` at output stride 16 (or 8), never
downloaded. ASPP on the deepest features: a 1x1 branch, three 3x3 atrous branches (rates 6, 12, 18
at stride 16, doubled at 8) and an image-pooling branch (global average -> 1x1 conv -> BN -> ReLU
-> broadcast back), concatenated and projected to 256 channels with dropout. The decoder projects
the stride-4 features to 48 channels, upsamples the ASPP output to meet them, concatenates, runs
two 3x3 convs of 256 and a 1x1 classifier, then upsamples bilinearly to the input size. As in the
paper, the Xception variant uses depthwise-separable convs in ASPP and decoder.

Everything exports through ONNX to TFLite builtins as written (global average pool as a mean over
H and W, its 1x1 result broadcast back with a bilinear resize). ``to_deploy()`` returns the model
itself when its decoder is separable (Xception-65); a dense decoder (MobileNetV2) is exported with
its first conv's taps on the ASPP map mixed before the upsampling (``decode_taps_first``) for the
float files, and with that conv split in two instead of reading a concatenation
(``decode_split``) for the integer ones (``to_deploy(integer=True)``).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.errors import UserError
from seg2tflite.models.checkpoint import read_state_dict
from seg2tflite.models.layers import check_divisible
from seg2tflite.models.registry import ModelConfig, register_model


class ConvBNReLU(nn.Sequential):
    """k x k convolution (no bias), batch norm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU (DeepLab's form)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__(
            nn.Conv2d(
                in_ch, in_ch, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, groups=in_ch, bias=False
            ),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            ConvBNReLU(in_ch, out_ch, 1),
        )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average, 1x1 conv + BN + ReLU, back to the input size."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean(dim=(2, 3), keepdim=True))
        # Bilinear from a 1x1 map is a broadcast; it converts to one RESIZE_BILINEAR builtin.
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, projected to ``out_ch`` channels."""

    def __init__(self, in_ch: int, out_ch: int = 256, rates=(6, 12, 18), separable: bool = False, dropout: float = 0.1):
        super().__init__()
        atrous = SeparableConvBNReLU if separable else ConvBNReLU
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_ch, out_ch, 1)] + [atrous(in_ch, out_ch, 3, dilation=r) for r in rates] + [ImagePooling(in_ch, out_ch)]
        )
        self.project = nn.Sequential(ConvBNReLU(out_ch * len(self.branches), out_ch, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class Decoder(nn.Module):
    """DeepLabv3+ decoder: fuse upsampled ASPP output with projected stride-4 features."""

    def __init__(self, low_ch: int, aspp_ch: int = 256, low_proj_ch: int = 48, ch: int = 256, separable: bool = False):
        super().__init__()
        conv = SeparableConvBNReLU if separable else ConvBNReLU
        self.low_proj = ConvBNReLU(low_ch, low_proj_ch, 1)
        self.fuse = nn.Sequential(conv(aspp_ch + low_proj_ch, ch, 3), conv(ch, ch, 3))

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([high, self.low_proj(low)], dim=1))


def _first_conv_folded(decoder: Decoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's first conv with its BatchNorm folded in (running statistics): weight, bias."""
    conv, bn, _ = decoder.fuse[0]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


def decode_taps_first(decoder: Decoder, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``decoder(high, low)`` for a dense decoder, with less work: its first 3x3 conv reads the
    upsampled ASPP map, and ``conv3x3(up(high)) = sum over taps t of shift_t(up(W_t high))``
    (the bilinear upsampling is linear and per channel, so each tap's channel mixing ``W_t``
    commutes with it). The mixing then runs at 1/16 of the input instead of 1/4, 16x fewer MACs
    (MobileNetV2 at 512x512: 9.7 of its 26.3 GMACs); what stays at 1/4 is nine upsamplings, eight
    shifts (one-hot depthwise 3x3 convs; the centre tap needs none) and the sum. The conv's
    BatchNorm is folded in with its running statistics: an eval-mode form, for export."""
    weight, bias = _first_conv_folded(decoder)
    channels, split, size = weight.shape[0], high.shape[1], low.shape[-2:]
    out = F.conv2d(decoder.low_proj(low), weight[:, split:], bias, padding=1)
    for ky in range(3):
        for kx in range(3):
            mixed = F.conv2d(high, weight[:, :split, ky, kx, None, None])
            tap = F.interpolate(mixed, size=size, mode="bilinear", align_corners=False)
            if (ky, kx) != (1, 1):  # tap (ky, kx) reads pixel (y + ky - 1, x + kx - 1), zero outside
                shift = torch.zeros(channels, 1, 3, 3, dtype=tap.dtype, device=tap.device)
                shift[:, :, ky, kx] = 1.0
                tap = F.conv2d(tap, shift, padding=1, groups=channels)
            out = out + tap
    return decoder.fuse[1](F.relu(out))


def decode_split(decoder: Decoder, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``decoder(high, low)`` for a dense decoder without the concatenation: its first 3x3 conv as
    the sum of two, one on the upsampled ASPP map, one on the projected low-level features. In int8
    a concatenation's inputs share the output's scale, so the 48 low-level channels would take
    the ASPP map's; as two convs each keeps its own. The conv's BatchNorm is folded in with its
    running statistics: an eval-mode form, for export."""
    weight, bias = _first_conv_folded(decoder)
    split = high.shape[1]
    high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
    out = F.conv2d(high, weight[:, :split], padding=1) + F.conv2d(decoder.low_proj(low), weight[:, split:], bias, padding=1)
    return decoder.fuse[1](F.relu(out))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ with a timm ``features_only`` encoder; logits at input resolution."""

    def __init__(
        self,
        encoder_name: str,
        num_classes: int = 21,
        output_stride: int = 16,
        separable: bool = False,
        aspp_rates: tuple[int, ...] = (6, 12, 18),  # at output stride 16; doubled at 8
        dropout: float = 0.1,
        encoder_checkpoint: str | Path | None = None,
        **encoder_kwargs,
    ):
        super().__init__()
        if output_stride not in (8, 16):
            raise UserError(f"output_stride={output_stride}: DeepLabv3+ supports 8 or 16; use 16 (default) or 8")
        self.encoder_name = encoder_name
        self.encoder_kwargs = {"output_stride": output_stride, **encoder_kwargs}
        self.encoder = timm.create_model(encoder_name, pretrained=False, features_only=True, **self.encoder_kwargs)
        reductions = self.encoder.feature_info.reduction()
        channels = self.encoder.feature_info.channels()
        if 4 not in reductions:
            raise UserError(f"encoder {encoder_name!r}: has no stride-4 features for the decoder; pick another timm encoder")
        self.low_index = reductions.index(4)
        self.output_stride = output_stride
        self.size_divisor = output_stride
        rates = tuple(r * 16 // output_stride for r in aspp_rates)
        self.aspp = ASPP(channels[-1], 256, rates, separable=separable, dropout=dropout)
        self.decoder = Decoder(channels[self.low_index], separable=separable)
        self.classifier = nn.Conv2d(256, num_classes, 1)
        if encoder_checkpoint is not None:
            self.load_encoder_checkpoint(encoder_checkpoint)

    def check_size(self, x: torch.Tensor) -> None:
        check_divisible(x, self.size_divisor, f"DeepLabv3+ at output stride {self.output_stride}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x)
        features = self.encoder(x)
        y = self._decode(self.aspp(features[-1]), features[self.low_index])
        return F.interpolate(self.classifier(y), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def _decode(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.decoder(high, low)

    def to_deploy(self, integer: bool = False) -> DeepLabV3Plus:
        # Checked with onnx2tf: mean-pool, 1x1-map resize and dilated convs all reach builtins.
        # In int8 the 3x3 conv after the upsampling is the cheaper decoder: decode_taps_first's nine
        # resizes, eight shifts and eight adds at 1/4 scale cost more than the MACs they save.
        if isinstance(self.decoder.fuse[0], SeparableConvBNReLU):
            return self
        return DeepLabV3PlusInt8Deploy(self) if integer else DeepLabV3PlusDeploy(self)

    def load_encoder_checkpoint(self, path: str | Path) -> None:
        """Load timm-format ImageNet weights (the classification model's state dict) into the encoder.

        The classifier head's keys are dropped; every encoder key must be present with its shape.
        """
        state = read_state_dict(path)
        own = self.encoder.state_dict()
        with torch.device("meta"):  # key names only: no memory, no weights
            full_keys = set(timm.create_model(self.encoder_name, pretrained=False, **self.encoder_kwargs).state_dict())
        to_own = _feature_key_map(set(own), full_keys)
        mapped, unexpected = {}, []
        for key, value in state.items():
            if key in own:
                mapped[key] = value
            elif key in to_own:
                mapped[to_own[key]] = value
            elif key not in full_keys:
                unexpected.append(key)
        # BN batch counters are not weights; timm's published checkpoints often omit them.
        missing = sorted(k for k in own if k not in mapped and not k.endswith("num_batches_tracked"))
        mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items() if v.shape != own[k].shape]
        problems = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", sorted(unexpected)),
            ("shape mismatches", mismatched),
        ):
            if items:
                problems.append(f"{len(items)} {label} ({', '.join(items[:3])}{' ...' if len(items) > 3 else ''})")
        if problems:
            raise UserError(
                f"{path}: not timm weights for encoder {self.encoder_name!r}: {'; '.join(problems)}; "
                f"pass the state dict of timm.create_model({self.encoder_name!r})"
            )
        self.encoder.load_state_dict(mapped, strict=False)


class DeepLabV3PlusDeploy(DeepLabV3Plus):
    """DeepLabv3+ with a dense decoder, exported through ``decode_taps_first``; shares the modules
    (and weights) of the model it wraps."""

    def __init__(self, model: DeepLabV3Plus):
        _share_modules(self, model)

    def _decode(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return decode_taps_first(self.decoder, high, low)

    def to_deploy(self, integer: bool = False) -> DeepLabV3Plus:
        return DeepLabV3PlusInt8Deploy(self) if integer else self


class DeepLabV3PlusInt8Deploy(DeepLabV3PlusDeploy):
    """The integer files' form of a dense decoder, exported through ``decode_split``."""

    def _decode(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return decode_split(self.decoder, high, low)

    def to_deploy(self, integer: bool = False) -> DeepLabV3Plus:
        return self if integer else DeepLabV3PlusDeploy(self)


def _share_modules(new: DeepLabV3Plus, model: DeepLabV3Plus) -> None:
    """Make ``new`` (not yet initialised) a model with the modules, weights and settings of ``model``."""
    nn.Module.__init__(new)
    for name, value in vars(model).items():
        if not name.startswith("_") and name != "training":  # encoder_name, size_divisor, model_config, ...
            setattr(new, name, value)
    for name, module in model.named_children():
        setattr(new, name, module)
    new.train(model.training)


def _feature_key_map(own_keys: set[str], full_keys: set[str]) -> dict[str, str]:
    """Full-model key -> features_only key. timm's hook-based feature wrappers flatten the first
    level of nested modules, so ``blocks.0.conv.weight`` becomes ``blocks_0.conv.weight``."""
    mapping = {}
    for key in full_keys:
        parts = key.split(".")
        if key in own_keys:
            mapping[key] = key
        elif len(parts) > 2 and (flat := f"{parts[0]}_{parts[1]}.{'.'.join(parts[2:])}") in own_keys:
            mapping[key] = flat
    return mapping


def _deeplabv3plus(encoder_name: str, num_classes: int, **kwargs) -> DeepLabV3Plus:
    return DeepLabV3Plus(encoder_name, num_classes=num_classes, **kwargs)


_PAPER = "DeepLabv3+, Chen et al. 2018, arXiv 1802.02611"


@register_model(
    ModelConfig(
        name="deeplabv3plus_mobilenetv2",
        family="deeplabv3plus",
        input_size=(512, 512),
        num_classes=21,  # PASCAL VOC: 20 classes + background
        size_divisor=16,  # output stride 16
        paper=_PAPER,
    )
)
def deeplabv3plus_mobilenetv2(num_classes: int = 21, **kwargs) -> DeepLabV3Plus:
    return _deeplabv3plus("mobilenetv2_100", num_classes, **kwargs)


@register_model(
    ModelConfig(
        name="deeplabv3plus_xception65",
        family="deeplabv3plus",
        input_size=(512, 512),
        num_classes=21,
        size_divisor=16,
        paper=_PAPER,
        kwargs={"separable": True},  # separable ASPP and decoder convs, as the paper pairs with Xception
    )
)
def deeplabv3plus_xception65(num_classes: int = 21, **kwargs) -> DeepLabV3Plus:
    # timm's xception65 is the aligned Xception-65 of the TensorFlow DeepLab repository.
    return _deeplabv3plus("xception65", num_classes, **kwargs)
