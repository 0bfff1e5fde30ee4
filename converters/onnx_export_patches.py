"""What ``onnx_export.export_onnx`` patches into ``torch.nn.functional`` while tracing: ops
``torch.onnx.export`` refuses, rewritten into ones it takes, computing the same function.

- ``exact_adaptive_pools``: an adaptive average pool whose bins do not divide its input (PSPNet
  and UPerNet pyramids at small inputs) as row means then column means over PyTorch's own
  windows.
- ``unpooling_without_indices``: ``max_pool2d(..., return_indices=True)`` and ``max_unpool2d``
  in the index-free form this project's SegNet deploys (each value at its window's first
  maximum), exact for non-overlapping windows; any other unpool is refused.

Each patch notes what it rewrote, for the manifest.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from seg2tflite.errors import UserError


def _adaptive_bins(size: int, bins: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows: bin i covers [floor(i*size/bins), ceil((i+1)*size/bins))."""
    return [((i * size) // bins, -(-((i + 1) * size) // bins)) for i in range(bins)]


def _fixed_adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """adaptive_avg_pool2d for the traced (fixed) size as row means then column means over
    PyTorch's own windows: Slice/ReduceMean/Concat, which export for any size (the exporter
    refuses output sizes that do not divide the input's; a mean over a rectangle is the mean of
    its row means, so the result is the same)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        h, w = int(x.shape[-2]), int(x.shape[-1])
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    oh, ow = oh or h, ow or w
    rows = torch.cat([x[..., a:b, :].mean(dim=-2, keepdim=True) for a, b in _adaptive_bins(h, oh)], dim=-2)
    return torch.cat([rows[..., a:b].mean(dim=-1, keepdim=True) for a, b in _adaptive_bins(w, ow)], dim=-1)


@contextlib.contextmanager
def exact_adaptive_pools(notes: list[str] | None = None) -> Iterator[None]:
    """While exporting: ``F.adaptive_avg_pool2d`` whose bins do not divide the input (PSPNet and
    UPerNet pyramids at small inputs) computed by ``_fixed_adaptive_avg_pool2d``, each noted in
    ``notes``; the others as before."""
    import torch.nn.functional as F

    original = F.adaptive_avg_pool2d

    def pool(x, output_size):
        with warnings.catch_warnings():  # the sizes are fixed on purpose: the graph is for one input size
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            h, w = int(x.shape[-2]), int(x.shape[-1])
        oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
        if (oh is None or h % oh == 0) and (ow is None or w % ow == 0):
            return original(x, output_size)
        if notes is not None:
            notes.append(f"AdaptiveAvgPool2d {h}x{w} -> {oh}x{ow}: bins that do not divide the input exported as fixed windows")
        return _fixed_adaptive_avg_pool2d(x, output_size)

    F.adaptive_avg_pool2d = pool
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = original


@contextlib.contextmanager
def unpooling_without_indices(notes: list[str] | None = None) -> Iterator[None]:
    """While exporting: ``max_pool2d(..., return_indices=True)`` and ``max_unpool2d`` (which
    ``torch.onnx.export`` refuses: "cond must be a bool") in the index-free form this project's
    SegNet deploys (``models.segnet.unpool_first_max``, generalised to k x k windows): the pool
    returns its indices as usual, and the unpool that receives them puts each value where the
    pre-pool map equals its window's maximum, at the first such position in row-major order, the
    one PyTorch records. Exact for non-overlapping windows (kernel == stride, no padding, no
    dilation, floor mode); any other unpool is refused naming its module's op."""
    import torch.nn.functional as F

    pool, unpool = F.max_pool2d, F.max_unpool2d
    kept: dict[int, tuple] = {}  # id(indices) -> (pooled, pre-pool map, kernel)

    def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        result = pool(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=return_indices)
        if return_indices:
            k, st = _pair(kernel_size), _pair(stride or kernel_size)
            simple = k == st and _pair(padding) == (0, 0) and _pair(dilation) == (1, 1) and not ceil_mode and k[0] == k[1]
            pooled = pool(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)  # no indices in the graph
            kept[id(result[1])] = (pooled, x, k[0] if simple else None)
            return pooled, result[1]
        return result

    def max_unpool2d(values, indices, kernel_size, stride=None, padding=0, output_size=None):
        entry = kept.get(id(indices))
        if entry is None or entry[2] is None:
            raise UserError(
                "max_unpool2d converts only with the indices of a max_pool2d(return_indices=True) of the same forward "
                "whose kernel equals its stride (no padding, dilation or ceil_mode); rewrite the unpooling in the model"
            )
        pooled, before, k = entry
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            h, w = int(pooled.shape[-2]) * k, int(pooled.shape[-1]) * k
            full = (int(before.shape[-2]), int(before.shape[-1]))
        out = _unpool_first_max(values, pooled, before[..., :h, :w], k)
        if full != (h, w):  # floor pooling left rows/columns out: they receive nothing
            out = F.pad(out, (0, full[1] - w, 0, full[0] - h))
        if notes is not None:
            notes.append(f"MaxUnpool2d {k}x{k}: exported without indices (each value at its window's first maximum)")
        return out

    F.max_pool2d, F.max_unpool2d = max_pool2d, max_unpool2d
    try:
        yield
    finally:
        F.max_pool2d, F.max_unpool2d = pool, unpool


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


def _unpool_first_max(values: torch.Tensor, pooled: torch.Tensor, before: torch.Tensor, k: int) -> torch.Tensor:
    """``max_unpool2d`` of a k x k / stride-k pool without indices: each value to the first
    position of its window (row-major) where ``before`` equals the window maximum ``pooled``."""
    from seg2tflite.models.segnet import depth_to_space

    taken, masks = None, []
    positions = [(i, j) for i in range(k) for j in range(k)]
    for i, j in positions[:-1]:
        hit = before[:, :, i::k, j::k] == pooled
        masks.append(hit if taken is None else hit & ~taken)
        taken = hit if taken is None else taken | hit
    masks.append(~taken)  # the maximum is in the window: the last position holds it if no other did
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return depth_to_space(torch.cat([torch.where(m, values, zero) for m in masks], dim=1), k)
