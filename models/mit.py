"""Mix Transformer (MiT-B0..B5), the SegFormer encoder, registered in timm's model registry.

Xie et al. 2021, "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", arXiv 2105.15203. Four stages, each an overlapping patch embedding (7x7 stride 4,
then 3x3 stride 2), a stack of blocks of efficient self-attention (keys and values from a map
shrunk by a strided conv, reduction ratios 8, 4, 2, 1) and a Mix-FFN (a 3x3 depthwise conv between
the two linears, GELU), then a LayerNorm. Normalisation constants follow the authors' code
(NVlabs/SegFormer): LayerNorm eps 1e-6 in the blocks and at the end of each stage, PyTorch's default
1e-5 in the patch embedding and the key/value reduction. Hugging Face's port uses 1e-5 everywhere;
``norm_eps`` and ``embed_eps`` choose.

``timm.create_model('mit_b0')`` builds the ImageNet classifier; ``features_only=True`` gives the
four stage maps (strides 4, 8, 16, 32). Nothing is downloaded: local ImageNet weights load with
``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`` (timm-format keys, or the authors'
``mit_b*.pth`` keys, which :func:`checkpoint_filter_fn` maps).

``MixVisionTransformer.to_deploy()`` gives the converter-friendly form (``mit_deploy``).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["MixVisionTransformer", "checkpoint_filter_fn"]


class OverlapPatchEmbed(nn.Module):
    """Strided conv whose kernel overlaps its neighbours, then LayerNorm over channels."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a map shrunk ``sr_ratio`` times."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, sr_eps: float, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=sr_eps)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            kv = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            kv = self.norm(kv)
        else:
            kv = x
        k = self.k(kv).reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(kv).reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class MixFFN(nn.Module):
    """Linear, 3x3 depthwise conv (the positional cue), GELU, linear."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """Pre-norm transformer block: efficient attention, then Mix-FFN, each with a residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        eps: float,
        sr_eps: float,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, sr_eps, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MitStage(nn.Module):
    """Patch embedding, blocks, LayerNorm: an NCHW map in, an NCHW map out."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        stride: int,
        sr_ratio: int,
        mlp_ratio: float,
        eps: float,
        embed_eps: float,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
    ):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_chans, dim, patch_size, stride, embed_eps)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, sr_ratio, eps, embed_eps, drop, attn_drop, drop_path[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class MixVisionTransformer(nn.Module):
    """MiT encoder with an ImageNet head (global average pool + linear) for timm."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: tuple[int, ...] = (32, 64, 160, 256),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,  # blocks and stage ends (authors' code)
        embed_eps: float = 1e-5,  # patch embeddings and key/value reduction (authors' code)
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear decay rule
        stages, self.feature_info, prev, cur = [], [], in_chans, 0
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            stages.append(
                MitStage(
                    prev,
                    dim,
                    depth,
                    num_heads[i],
                    patch,
                    stride,
                    sr_ratios[i],
                    mlp_ratio,
                    norm_eps,
                    embed_eps,
                    drop_rate,
                    attn_drop_rate,
                    dpr[cur : cur + depth],
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
            prev, cur = dim, cur + depth
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage maps, NCHW, at strides 4, 8, 16, 32."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def to_deploy(self, native_gelu: bool = False) -> nn.Module:
        """The stage maps of :meth:`forward_stages` in converter-friendly ops (no head).

        ``native_gelu=True`` keeps ``F.gelu``: ONNX ``Gelu`` at opset >= 20, which onnx2tf maps to
        TFLite's GELU builtin, but ``Erf`` at opset 17, which onnx2tf cannot convert.
        """
        from seg2tflite.models.mit_deploy import MixVisionTransformerDeploy

        return MixVisionTransformerDeploy(self, native_gelu)


def _init_weights(m: nn.Module) -> None:
    # As the authors: truncated normal linears, fan-out normal convs, unit LayerNorms.
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


_AUTHORS_KEYS = [
    # (pattern on the authors' mit_b*.pth keys, replacement in ours)
    (r"^patch_embed(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.patch_embed."),
    (r"^block(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks."),
    (r"^norm(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.norm."),
]


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Map the authors' MiT keys (``block1.0.attn.kv`` ...) to ours; timm-format keys pass through.

    The authors compute keys and values with one linear ``kv`` of ``2 * dim`` outputs, keys first;
    here they are two linears, so its rows are split in half.
    """
    state_dict = state_dict.get("state_dict", state_dict)
    if not any(re.match(r"^(patch_embed|block|norm)\d", k) for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        new = key.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")
        for pattern, repl in _AUTHORS_KEYS:
            new, count = re.subn(pattern, repl, new)
            if count:
                break
        if new.endswith((".attn.kv.weight", ".attn.kv.bias")):
            k, v = value.chunk(2, dim=0)
            out[new.replace(".attn.kv.", ".attn.k.")] = k
            out[new.replace(".attn.kv.", ".attn.v.")] = v
        else:
            out[new] = value
    if model is not None and getattr(model, "num_classes", 0) == 0:
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    return out


def _create_mit(variant: str, pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return build_model_with_cfg(
        MixVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


def _cfg(**kwargs) -> dict:
    # No url or hub id: this project never downloads. Local weights: pretrained_cfg_overlay=dict(file=...).
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stages.0.patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2105.15203",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"mit_b{i}": _cfg() for i in range(6)})

MIT_ARCHS = {
    # name: (embed_dims, depths), Table 6 of the paper; heads (1, 2, 5, 8), sr (8, 4, 2, 1), mlp 4.
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}


def _mit(variant: str, pretrained: bool, **kwargs) -> MixVisionTransformer:
    embed_dims, depths = MIT_ARCHS[variant]
    return _create_mit(variant, pretrained, **dict(embed_dims=embed_dims, depths=depths, **kwargs))


@register_model
def mit_b0(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _mit("mit_b0", pretrained, **kwargs)


@register_model
def mit_b1(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _mit("mit_b1", pretrained, **kwargs)


@register_model
def mit_b2(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _mit("mit_b2", pretrained, **kwargs)


@register_model
def mit_b3(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _mit("mit_b3", pretrained, **kwargs)


@register_model
def mit_b4(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _mit("mit_b4", pretrained, **kwargs)


@register_model
def mit_b5(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _mit("mit_b5", pretrained, **kwargs)
