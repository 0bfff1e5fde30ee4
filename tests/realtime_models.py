"""Small models, written here, each reproducing one class of issue 30 (real-time networks people
deploy): the patterns those networks use, not their code.

- ``UnpoolNet``: max-pool with indices and ``nn.MaxUnpool2d`` (ENet, SegNet-style decoders).
- ``ContextNet``: residual blocks, then a global context block (mean over the map with keepdims,
  BatchNorm, ReLU, added back), as BiSeNetV2's context embedding.
- ``GateNet``: ``p + (1 - s) * i`` with ``s = sigmoid(d)`` between transposes (PIDNet's
  boundary-attention fusion).
- ``QKVNet``: single-head attention on (B, N, C) tokens with separate q/k/v linears (fused by
  onnxsim into one MatMul and a ``Split(axis=-1)``), MobileViT-style.
- ``TinyEpsNet``: tokens with a zero class token and LayerNorm epsilon 1e-12 (DPT, BEiT).
- ``PadValueNet``: ``F.pad(x, (0, 1), value=1.0)`` (EfficientViT's linear attention pads its values with ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

K = 8


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _up(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class UnpoolNet(nn.Module):
    """conv -> max-pool (indices) -> conv -> max-unpool with those indices -> conv head."""

    def __init__(self, num_classes: int = K):
        super().__init__()
        self.stem = _cbr(3, 8)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.mid = _cbr(8, 8)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.head = nn.Conv2d(8, num_classes, 3, padding=1)

    def forward(self, x):
        y = self.stem(x)
        pooled, indices = self.pool(y)
        z = self.unpool(self.mid(pooled), indices, output_size=y.shape[-2:])
        return self.head(z + y)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _cbr(channels, channels)
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.relu(x + self.conv2(self.conv1(x)))


class ContextBlock(nn.Module):
    """Global context: mean over the map (keepdims) -> BatchNorm -> ReLU -> 1x1 conv -> added back -> 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.gap = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.last = _cbr(channels, channels)

    def forward(self, x):
        g = torch.relu(self.bn(x.mean(dim=(2, 3), keepdim=True)))
        return self.last(x + self.gap(g))


class ContextNet(nn.Module):
    def __init__(self, num_classes: int = K, channels: int = 16, downsamplings: int = 4):
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, channels, 2), *(_cbr(channels, channels, 2) for _ in range(downsamplings - 1)))
        self.blocks = nn.Sequential(ResidualBlock(channels), ResidualBlock(channels))
        self.context = ContextBlock(channels)
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        return _up(self.head(self.context(self.blocks(self.stem(x)))), x)


class Bag(nn.Module):
    """Boundary-guided fusion: the sigmoid of a boundary map weighs two branches; the gate is
    computed on the map's transpose (H and W swapped), so ``1 - s`` sits between two transposes."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _cbr(channels, channels)

    def forward(self, p, i, d):
        s = torch.sigmoid(d.transpose(2, 3))
        return self.conv(p + (1 - s).transpose(2, 3) * i)


class GateNet(nn.Module):
    def __init__(self, num_classes: int = K, channels: int = 16):
        super().__init__()
        self.stem = _cbr(3, channels, 2)
        self.p = _cbr(channels, channels)
        self.i = _cbr(channels, channels)
        self.d = nn.Conv2d(channels, channels, 3, 1, 1)
        self.bag = Bag(channels)
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        y = self.stem(x)
        return _up(self.head(self.bag(self.p(y), self.i(y), self.d(y))), x)


class Attention(nn.Module):
    """Single-head attention with separate q, k and v projections of (B, N, C) tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = dim**-0.5

    def forward(self, t):
        a = torch.softmax((self.q(t) @ self.k(t).transpose(1, 2)) * self.scale, dim=-1)
        return self.proj(a @ self.v(t))


class QKVNet(nn.Module):
    """conv stem -> 2x2 patches unfolded into (4B, N, C) tokens (each of the four pixel positions
    of a patch attends across patches) -> LayerNorm -> attention (residual) -> folded back -> head."""

    def __init__(self, num_classes: int = K, dim: int = 16):
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, dim, 2), _cbr(dim, dim, 2))
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.head = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x):
        y = self.stem(x)
        b, c, h, w = y.shape
        t = y.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 2, 4, 1).reshape(b * 4, (h // 2) * (w // 2), c)
        t = t + self.attn(self.norm(t))
        y = t.reshape(b, 2, 2, h // 2, w // 2, c).permute(0, 5, 3, 1, 4, 2).reshape(b, c, h, w)
        return _up(self.head(y), x)


class TinyEpsNet(nn.Module):
    """Patch tokens plus a zero class token, a pre-norm MLP block with LayerNorm(eps=1e-12); the
    class token's features are all equal, so its variance is 0 and only epsilon keeps 0/0 away."""

    def __init__(self, num_classes: int = K, dim: int = 16, eps: float = 1e-12):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.head = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x):
        y = self.patch(x)
        b, c, h, w = y.shape
        t = torch.cat([self.cls.expand(b, -1, -1), y.flatten(2).transpose(1, 2)], dim=1)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return _up(self.head(t[:, 1:].transpose(1, 2).reshape(b, c, h, w)), x)


class PadValueNet(nn.Module):
    """A map padded with ones on the right, then a (1, 2) conv back to the input width."""

    def __init__(self, num_classes: int = K, channels: int = 8):
        super().__init__()
        self.stem = _cbr(3, channels)
        self.mix = nn.Conv2d(channels, channels, (1, 2))
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        y = F.pad(self.stem(x), (0, 1), value=1.0)
        return self.head(torch.relu(self.mix(y)))
