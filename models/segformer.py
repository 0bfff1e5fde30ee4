"""SegFormer B0..B5: a Mix Transformer encoder and the all-MLP decoder (Xie et al. 2021).

arXiv 2105.15203. The decoder projects each of the four encoder stages to ``C`` channels with a
linear (C = 256 for B0/B1, 768 for B2-B5), upsamples them to 1/4 of the input, concatenates them
(deepest first, as the authors), fuses with a 1x1 conv + BatchNorm + ReLU, applies dropout 0.1 and
a 1x1 classifier. This model then upsamples the logits bilinearly to the input resolution.

Weights load from this project's checkpoints, Hugging Face folders (``seg2tflite.models.hf_segformer``) and
the authors' mmseg checkpoints (``backbone.*`` / ``decode_head.linear_c4`` ...). An encoder-only
checkpoint (ImageNet MiT weights: timm format, the authors' ``mit_b*.pth`` or HF ``nvidia/mit-b*``)
loads only through the builder's ``encoder_checkpoint=``; the decoder then starts untrained.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from seg2tflite.errors import UserError
from seg2tflite.models import hf_segformer
from seg2tflite.models.mit import MIT_ARCHS, MixVisionTransformer, checkpoint_filter_fn
from seg2tflite.models.mit_deploy import LinearAsConv, SharedConv
from seg2tflite.models.registry import ModelConfig, register_model

PAPER = "Xie et al. 2021, SegFormer, arXiv 2105.15203"


class SegFormerHead(nn.Module):
    """The all-MLP decoder: per-stage linear, upsample to 1/4, concat, fuse, classify (at 1/4)."""

    def __init__(self, in_channels: tuple[int, ...], embed_dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_channels)
        self.linear_fuse = nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        outs = []
        for i, (x, linear) in enumerate(zip(features, self.linear_c)):
            b, _, h, w = x.shape
            x = linear(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
            if i > 0:  # stage 1 is already at 1/4
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            outs.append(x)
        x = self.linear_fuse(torch.cat(outs[::-1], dim=1))
        return self.classifier(self.dropout(self.act(self.bn(x))))


class SegFormer(nn.Module):
    """MiT encoder + all-MLP decoder; logits at input resolution."""

    def __init__(
        self,
        variant: str,
        num_classes: int,
        decoder_dim: int,
        drop_path_rate: float = 0.1,
        dropout: float = 0.1,
        **encoder_kwargs,
    ):
        super().__init__()
        embed_dims, depths = MIT_ARCHS[variant]
        self.variant = variant
        self.encoder = MixVisionTransformer(
            num_classes=0, embed_dims=embed_dims, depths=depths, drop_path_rate=drop_path_rate, **encoder_kwargs
        )
        self.decode_head = SegFormerHead(embed_dims, decoder_dim, num_classes, dropout)

    def forward_quarter(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at 1/4 of the input resolution (what Hugging Face's model returns)."""
        return self.decode_head(self.encoder.forward_stages(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.forward_quarter(x), size=x.shape[2:], mode="bilinear", align_corners=False)

    def convert_foreign_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """Map Hugging Face or mmseg key names to ours; this project's keys pass through."""
        if hf_segformer.is_hf_state_dict(state):
            state, unmapped = hf_segformer.map_hf_state_dict(state)
            if unmapped:
                raise UserError(
                    f"{source}: {len(unmapped)} Hugging Face keys have no SegFormer counterpart "
                    f"({', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''}); is it a SegFormer checkpoint?"
                )
        elif any(k.startswith("backbone.") for k in state):
            state = _map_mmseg_state_dict(state)
        if not any(k.startswith("decode_head.") for k in state) and _looks_like_encoder(state):
            raise UserError(
                f"{source}: holds only encoder (ImageNet MiT) weights, no decoder; load it with "
                f"encoder_checkpoint= (the decoder then starts untrained), or pass a full SegFormer checkpoint"
            )
        bn_count = "decode_head.bn.num_batches_tracked"
        if bn_count not in state and "decode_head.bn.running_mean" in state:
            state = {**state, bn_count: torch.tensor(0)}  # some exports leave it out; eval never reads it
        return state

    def to_deploy(self, native_gelu: bool = False) -> nn.Module:
        """Same weights, same logits, ops onnx2tf carries to TFLite builtins at any opset.

        ``native_gelu=True`` exports ``F.gelu`` as is: use it only at ONNX opset >= 20 (see ``seg2tflite.models.mit``).
        """
        return SegFormerDeploy(self, native_gelu)


class SegFormerHeadDeploy(nn.Module):
    """The decoder in converter-friendly ops, without the concatenation and the 1024-channel fuse.

    ``fuse(concat(up(linear_i(x_i))))`` is ``sum_i up(fuse_i(linear_i(x_i)))``: the fuse conv split
    by the channels each stage contributes, and a 1x1 conv commutes with bilinear upsampling (its
    weights sum to one, so the bias too). So each stage's linear, its block of the fuse conv and the
    inference BatchNorm become one 1x1 conv at that stage's own resolution, and the four maps are
    upsampled and added: the same logits, without the fuse conv over 4 x 256 channels at 1/4 of the
    input (SegFormer-B0 at 512x512: 4.3 of its 8 GMACs).
    """

    def __init__(self, head: SegFormerHead):
        super().__init__()
        self.linear_c = nn.ModuleList(LinearAsConv(m) for m in head.linear_c)
        self.linear_fuse, self.classifier = SharedConv(head.linear_fuse), SharedConv(head.classifier)
        bn = head.bn
        self.bn_weight, self.bn_bias, self.bn_eps = bn.weight, bn.bias, bn.eps
        self.register_buffer("bn_mean", bn.running_mean, persistent=False)  # the same tensors
        self.register_buffer("bn_var", bn.running_var, persistent=False)

    def stage_convs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per stage, the 1x1 conv (weight, bias) that is its linear, its block of the fuse conv and the BatchNorm."""
        scale = self.bn_weight * torch.rsqrt(self.bn_var + self.bn_eps)
        fuse = self.linear_fuse.weight[:, :, 0, 0] * scale[:, None]
        embed, stages = fuse.shape[0], len(self.linear_c)
        convs = []
        for i, linear in enumerate(self.linear_c):
            block = fuse[:, (stages - 1 - i) * embed : (stages - i) * embed]  # concatenated deepest first
            convs.append(((block @ linear.weight)[:, :, None, None], block @ linear.bias))
        weight, bias = convs[0]
        convs[0] = (weight, bias + self.bn_bias - self.bn_mean * scale)  # the BatchNorm's shift, once
        return convs

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        x = None
        for i, (feature, (weight, bias)) in enumerate(zip(features, self.stage_convs())):
            y = F.conv2d(feature, weight, bias)
            if i > 0:  # stage 1 is already at 1/4
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            x = y if x is None else x + y
        return self.classifier(F.relu(x))


class SegFormerDeploy(nn.Module):
    """``SegFormer`` as onnx2tf + TFLite builtins can carry it: same weights, same logits.

    Every tensor is a 4-D NCHW map; see ``seg2tflite.models.mit`` for what the converter refuses and why.
    It holds the training model's Parameters, so it needs no copy and no train/eval switch.
    """

    def __init__(self, model: SegFormer, native_gelu: bool = False):
        super().__init__()
        self.encoder = model.encoder.to_deploy(native_gelu)
        self.decode_head = SegFormerHeadDeploy(model.decode_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.encoder(x))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def _looks_like_encoder(state: dict[str, torch.Tensor]) -> bool:
    return any(re.match(r"^(encoder\.)?(stages\.\d+\.|patch_embed\d\.|block\d\.)", k) for k in state)


def _map_mmseg_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' (NVlabs, mmseg 0.x) checkpoints: ``backbone.*``, ``decode_head.linear_c4`` ...

    Their ``decode_head.conv_seg`` is created by mmseg's base class and never used (``linear_pred``
    classifies), so it is dropped. mmseg 1.x's own SegFormer port names and builds things
    differently and is not mapped: its keys come back as unexpected.
    """
    backbone = checkpoint_filter_fn({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    out = {"encoder." + k: v for k, v in backbone.items()}
    for key, value in state.items():
        if key.startswith(("backbone.", "decode_head.conv_seg.")):
            continue
        m = re.match(r"^decode_head\.linear_c(\d)\.proj\.(weight|bias)$", key)
        if m:
            out[f"decode_head.linear_c.{int(m[1]) - 1}.{m[2]}"] = value
        elif key.startswith("decode_head.linear_fuse.conv."):
            out["decode_head.linear_fuse." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("decode_head.linear_fuse.bn."):
            out["decode_head.bn." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("decode_head.linear_pred."):
            out["decode_head.classifier." + key.rsplit(".", 1)[1]] = value
        else:
            out[key] = value  # left for the strict loader to name as unexpected
    return out


def encoder_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder part of a checkpoint, as keys of ``MixVisionTransformer`` (no ImageNet head).

    Takes an ImageNet MiT (timm format, the authors' ``mit_b*.pth``, HF ``nvidia/mit-b*``) or the
    encoder of a full SegFormer checkpoint (this project's, HF's, the authors'), e.g. to fine-tune
    ADE20K weights with a new number of classes.
    """
    if hf_segformer.is_hf_state_dict(state):
        state, unmapped = hf_segformer.map_hf_state_dict(state)
        if unmapped:
            raise UserError(
                f"encoder_checkpoint: {len(unmapped)} Hugging Face keys have no SegFormer counterpart "
                f"({', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''}); is it a SegFormer checkpoint?"
            )
    elif any(k.startswith("backbone.") for k in state):
        state = _map_mmseg_state_dict(state)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    else:
        state = checkpoint_filter_fn(state)
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def load_encoder_checkpoint(model: SegFormer, path: str) -> None:
    from seg2tflite.models.checkpoint import load_state_dict_strict, read_state_dict

    state = encoder_state_dict(read_state_dict(path))
    load_state_dict_strict(model.encoder, state, f"encoder_checkpoint {path}")


def _segformer(variant: str, num_classes: int, decoder_dim: int, encoder_checkpoint: str | None = None, **kwargs) -> SegFormer:
    model = SegFormer(variant, num_classes, decoder_dim, **kwargs)
    if encoder_checkpoint is not None:
        load_encoder_checkpoint(model, str(encoder_checkpoint))
    return model


def _config(i: int) -> ModelConfig:
    return ModelConfig(
        f"segformer_b{i}",
        family="segformer",
        input_size=(512, 512),
        num_classes=150,
        size_divisor=32,
        paper=PAPER,
        variant_of="segformer_b0" if i else "",
    )


@register_model(_config(0))
def segformer_b0(num_classes: int = 150, **kwargs) -> SegFormer:
    return _segformer("mit_b0", num_classes, 256, **kwargs)


@register_model(_config(1))
def segformer_b1(num_classes: int = 150, **kwargs) -> SegFormer:
    return _segformer("mit_b1", num_classes, 256, **kwargs)


@register_model(_config(2))
def segformer_b2(num_classes: int = 150, **kwargs) -> SegFormer:
    return _segformer("mit_b2", num_classes, 768, **kwargs)


@register_model(_config(3))
def segformer_b3(num_classes: int = 150, **kwargs) -> SegFormer:
    return _segformer("mit_b3", num_classes, 768, **kwargs)


@register_model(_config(4))
def segformer_b4(num_classes: int = 150, **kwargs) -> SegFormer:
    return _segformer("mit_b4", num_classes, 768, **kwargs)


@register_model(_config(5))
def segformer_b5(num_classes: int = 150, **kwargs) -> SegFormer:
    return _segformer("mit_b5", num_classes, 768, **kwargs)
