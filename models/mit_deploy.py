"""The MiT encoder's deploy form: the same weights and function in ops onnx2tf carries to TFLite builtins.

Only 4-D NCHW tensors: 1x1 convs for the linears, LayerNorm over channels from 1x1-conv averages,
and an erf-free GELU (onnx2tf 1.29.24 at opset 17 exports GELU as Erf, which the TFLite converter
cannot translate). ``MixVisionTransformer.to_deploy()`` builds it from a trained encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --- Deploy form: the same weights and function, in ops onnx2tf carries to TFLite builtins. ---
#
# Measured with onnx2tf 1.29.24: LayerNormalization over (B, N, C) tokens crashes the converter, Erf
# (GELU at opset 17) crashes it, and a channel LayerNorm written with ReduceMean or as
# permute -> LayerNorm -> permute converts wrongly. So every tensor stays a 4-D NCHW map (which
# onnx2tf turns into NHWC), linears are 1x1 convs, the LayerNorm mean and variance are 1x1 convs
# with weights 1/C (a norm's affine folded into the convs that read it, where they read no
# padding), attention is reshapes, two batched matmuls and a last-axis softmax, and GELU uses an
# erf approximation built from exp. The deploy modules hold the training modules'
# Parameters (not copies, not the modules), so they follow the weights and ignore train/eval mode.


def conv1x1(x: torch.Tensor, linear: nn.Module) -> torch.Tensor:
    """``linear`` applied to the channels of an NCHW map."""
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


class LinearAsConv(nn.Module):
    """A shared ``nn.Linear`` applied as a 1x1 conv over NCHW."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1x1(x, self)


class SharedConv(nn.Module):
    """A shared ``nn.Conv2d`` (same Parameters, same stride, padding and groups)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.groups = conv.stride, conv.padding, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map; mean and variance are 1x1 convs of weight 1/C."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        (channels,) = norm.normalized_shape
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps
        self.register_buffer("average", torch.full((1, channels, 1, 1), 1.0 / channels), persistent=False)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """The norm without its affine (for a conv that takes the affine into its weights: ``folded``)."""
        centred = x - F.conv2d(x, self.average)
        var = F.conv2d(centred * centred, self.average)
        return centred * torch.rsqrt(var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalized(x) * self.weight[:, None, None] + self.bias[:, None, None]


def folded(norm: ChannelLayerNorm, conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` (a 1x1 linear or an unpadded conv) reading ``norm.normalized(x)``
    to give what it gives reading ``norm(x)``: ``W' = W * gamma`` per input channel, ``b' = b +
    sum(W * beta)``. Exact where no padding is read; it saves the norm's MUL and ADD, two int8
    requantizations each, per norm."""
    weight = conv.weight if conv.weight.dim() == 4 else conv.weight[:, :, None, None]
    if getattr(conv, "padding", (0, 0)) not in ((0, 0), 0, "valid"):
        raise ValueError("a norm's affine folds only into a conv without padding")
    bias = (weight * norm.bias[None, :, None, None]).sum(dim=(1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias
    return weight * norm.weight[None, :, None, None], bias


# Abramowitz & Stegun 7.1.26: erfc(z) ~ t * poly(t) * exp(-z^2), t = 1 / (1 + p z), z >= 0,
# absolute error below 1.5e-7. With it GELU(x) = x * (1 + erf(x / sqrt 2)) / 2 becomes
# relu(x) - |x| * erfc(|x| / sqrt 2) / 2, which needs no Erf and no Sign.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def gelu_erf_free(x: torch.Tensor) -> torch.Tensor:
    """Exact-erf GELU to within 1e-7 * |x|, from abs, exp, mul, add and div only."""
    a = x.abs()
    z = a * (1.0 / math.sqrt(2.0))
    t = 1.0 / (1.0 + _AS_P * z)
    poly = t * (_AS_A[0] + t * (_AS_A[1] + t * (_AS_A[2] + t * (_AS_A[3] + t * _AS_A[4]))))
    return F.relu(x) - 0.5 * a * poly * torch.exp(-z * z)


class DeployAttention(nn.Module):
    """``EfficientSelfAttention`` on NCHW maps: per head, ``v @ softmax(q^T k)^T``."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.q, self.k, self.v, self.proj = (LinearAsConv(m) for m in (attn.q, attn.k, attn.v, attn.proj))
        self.sr = SharedConv(attn.sr) if attn.sr_ratio > 1 else None
        self.norm = ChannelLayerNorm(attn.norm) if attn.sr_ratio > 1 else None

    def forward(self, normalized: torch.Tensor, norm: ChannelLayerNorm) -> torch.Tensor:
        """Attention on ``norm(x)``, given ``norm.normalized(x)``: the affine is in the convs that read it."""
        b, c, h, w = normalized.shape
        heads, dim = self.num_heads, self.head_dim
        q = (F.conv2d(normalized, *folded(norm, self.q)) * self.scale).reshape(b, heads, dim, h * w).transpose(2, 3)
        if self.sr is not None:  # (B, heads, N, d) above; keys and values from the reduced map
            reduced = F.conv2d(normalized, *folded(norm, self.sr), self.sr.stride)
            normalized, norm = self.norm.normalized(reduced), self.norm
        m = normalized.shape[2] * normalized.shape[3]
        k = F.conv2d(normalized, *folded(norm, self.k)).reshape(b, heads, dim, m)  # (B, heads, d, M)
        v = F.conv2d(normalized, *folded(norm, self.v)).reshape(b, heads, dim, m)
        attn = torch.matmul(q, k).softmax(dim=-1)  # (B, heads, N, M)
        out = torch.matmul(v, attn.transpose(2, 3))  # (B, heads, d, N): channels stay first
        return self.proj(out.reshape(b, c, h, w))


class DeployBlock(nn.Module):
    def __init__(self, block: nn.Module, native_gelu: bool = False):
        super().__init__()
        self.gelu = F.gelu if native_gelu else gelu_erf_free
        self.norm1, self.attn = ChannelLayerNorm(block.norm1), DeployAttention(block.attn)
        self.norm2 = ChannelLayerNorm(block.norm2)
        self.fc1, self.dwconv, self.fc2 = LinearAsConv(block.mlp.fc1), SharedConv(block.mlp.dwconv), LinearAsConv(block.mlp.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1.normalized(x), self.norm1)
        hidden = F.conv2d(self.norm2.normalized(x), *folded(self.norm2, self.fc1))
        return x + self.fc2(self.gelu(self.dwconv(hidden)))


class DeployStage(nn.Module):
    def __init__(self, stage: nn.Module, native_gelu: bool = False):
        super().__init__()
        self.proj, self.embed_norm = SharedConv(stage.patch_embed.proj), ChannelLayerNorm(stage.patch_embed.norm)
        self.blocks = nn.ModuleList(DeployBlock(b, native_gelu) for b in stage.blocks)
        self.norm = ChannelLayerNorm(stage.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.proj(x))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class MixVisionTransformerDeploy(nn.Module):
    """The deploy form of the encoder: image -> the four stage maps (NCHW)."""

    def __init__(self, encoder: nn.Module, native_gelu: bool = False):
        super().__init__()
        self.stages = nn.ModuleList(DeployStage(s, native_gelu) for s in encoder.stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
