"""Which layers the compression methods act on, and BatchNorm folding.

``layer_weights`` holds the one rule for which weights are compressed. ``fold_batchnorm`` folds
every BatchNorm that directly follows a convolution into that convolution, as the conversion
chain would (onnxsim, onnx2tf and the TFLite converter all fold it), so that weight sharing and
the int8 grid are applied to the weights TFLite will store.

Conv -> BN pairs are found with ``torch.fx``: the BN must be the only user of the conv's output,
and each module must be called once. A module that does not trace (SegNet's and DeepLab's size
checks call ``int()`` on a shape) is split into its children, each traced on its own; an
``nn.Sequential`` that does not trace gives its adjacent (Conv2d, BatchNorm) children. A BN found
no other way is left in place (``remaining_batchnorm`` names it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from seg2tflite.errors import UserError

COMPRESSIBLE = (nn.Conv2d, nn.Linear)


def check_divisible(x: torch.Tensor, divisor: int, model: str) -> None:
    """Refuse an input whose height or width the model cannot take, naming the nearest size that works."""
    if torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy):  # a trace has one fixed size, or none
        return
    h, w, d = int(x.shape[-2]), int(x.shape[-1]), divisor
    if h % d or w % d:
        fit = [max(d, round(v / d) * d) for v in (h, w)]
        raise UserError(f"input size {h}x{w}: {model} needs height and width divisible by {d}; resize to e.g. {fit[0]}x{fit[1]}")


def layer_weights(model: nn.Module, min_params: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every Conv2d and Linear holding at least ``min_params`` weights."""
    for name, module in model.named_modules():
        if isinstance(module, COMPRESSIBLE) and module.weight.numel() >= min_params:
            yield name, module


def remaining_batchnorm(model: nn.Module) -> list[str]:
    """Names of the BatchNorm modules still in ``model`` (those ``fold_batchnorm`` could not fold)."""
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


class FoldedBatchNorm(nn.Identity):
    """What a BatchNorm2d leaves behind once folded into its conv: the identity.

    It keeps neutral BatchNorm tensors (scale 1, shift 0, mean 0, variance 1 - eps) because a
    deploy form may read them (SegFormer's decoder runs ``F.batch_norm`` on its BN's tensors);
    with them that batch norm computes the identity too, and the converter folds it as a factor
    of exactly 1.
    """

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        n, factory = bn.num_features, {"dtype": bn.running_mean.dtype, "device": bn.running_mean.device}
        self.eps = bn.eps
        self.register_buffer("weight", torch.ones(n, **factory), persistent=False)
        self.register_buffer("bias", torch.zeros(n, **factory), persistent=False)
        self.register_buffer("running_mean", torch.zeros(n, **factory), persistent=False)
        self.register_buffer("running_var", torch.full((n,), 1.0 - bn.eps, **factory), persistent=False)


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` (eval mode) with each BN that follows a conv folded into it.

    The conv gets the BN's scale in its weights and its shift in its bias; the BN becomes a
    ``FoldedBatchNorm`` (a timm ``BatchNormAct2d`` becomes its dropout and activation). Each pair
    is checked on a random input; with ``example`` the whole model is checked too: the outputs
    of the original and the folded model, both in float64 so that float32 rounding (which moves
    SegNet's unpooling ties) does not hide or fake a difference, must agree to 1e-4 relative.
    """
    pairs = _conv_bn_pairs(copy.deepcopy(model))  # tracing can leave proxies in a model's hooks
    folded = copy.deepcopy(model).eval()
    _fold_pairs(folded, pairs)
    if example is not None:
        reference = copy.deepcopy(model).double().eval()
        candidate = _fold_pairs(copy.deepcopy(model).double().eval(), pairs)
        with torch.no_grad():
            x = example.double().to(next(reference.parameters()).device)
            want, got = reference(x), candidate(x)
        drift = (want - got).abs().max().item()
        if drift > 1e-4 * max(want.abs().max().item(), 1e-12):
            raise RuntimeError(f"fold_batchnorm changed the outputs of {type(model).__name__} by {drift:.3g}")
    return folded


def _fold_pairs(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        replacement = _replacement(bn)
        if replacement is None or not _fold_checked(conv, bn, replacement):
            continue
        model.set_submodule(bn_name, replacement)
    return model


def _replacement(bn: _BatchNorm) -> nn.Module | None:
    if bn.running_mean is None or bn.running_var is None:
        return None  # batch statistics only: nothing fixed to fold
    if type(bn) is nn.BatchNorm2d:
        return FoldedBatchNorm(bn)
    if isinstance(getattr(bn, "act", None), nn.Module):  # timm's BatchNormAct2d: BN, dropout, activation
        return nn.Sequential(getattr(bn, "drop", nn.Identity()), bn.act)
    return None


@torch.no_grad()
def _fold_checked(conv: nn.Conv2d, bn: _BatchNorm, replacement: nn.Module) -> bool:
    """Fold ``bn`` into ``conv`` in place when the pair computes the same on a random input."""
    was_training = conv.training, bn.training
    conv.eval(), bn.eval()
    generator = torch.Generator().manual_seed(0)
    size = [d * (k - 1) + 2 * s + 1 for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation)]
    x = torch.randn(2, conv.in_channels, *size, generator=generator, dtype=torch.float64)
    x = x.to(conv.weight.device, conv.weight.dtype)
    want = bn(conv(x))
    weight, bias = conv.weight.clone(), None if conv.bias is None else conv.bias.clone()
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype))
    else:
        conv.bias.copy_(shift.to(conv.bias.dtype))
    got = replacement(conv(x))
    conv.train(was_training[0]), bn.train(was_training[1])
    if (want - got).abs().max() <= 1e-4 * want.abs().max().clamp(min=1e-12):
        return True
    conv.weight.copy_(weight)  # not a plain conv + BN (e.g. a weight-standardised conv): undo
    if bias is None:
        conv.bias = None
    else:
        conv.bias.copy_(bias)
    return False


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*COMPRESSIBLE, _BatchNorm)) or super().is_leaf_module(m, qualname)


def _conv_bn_pairs(module: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    """(conv name, BN name) for every BN whose input is a conv output used by nothing else."""
    if isinstance(module, (*COMPRESSIBLE, _BatchNorm)):
        return []
    try:
        graph = _Tracer().trace(module)
    except Exception:  # untraceable here: look inside
        graph = None
    if graph is not None:
        return [(prefix + c, prefix + b) for c, b in _pairs_in_graph(graph, module)]
    if isinstance(module, nn.Sequential):
        children = list(module.named_children())
        adjacent = [
            (prefix + a_name, prefix + b_name)
            for (a_name, a), (b_name, b) in zip(children, children[1:])
            if isinstance(a, nn.Conv2d) and isinstance(b, _BatchNorm)
        ]
    else:
        adjacent = []
    nested = [p for name, child in module.named_children() for p in _conv_bn_pairs(child, f"{prefix}{name}.")]
    return adjacent + nested


def _pairs_in_graph(graph: fx.Graph, root: nn.Module) -> list[tuple[str, str]]:
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(root.get_submodule(node.target), _BatchNorm):
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(root.get_submodule(source.target), nn.Conv2d)
            and len(source.users) == 1
            and len(node.args) == 1
            and not node.kwargs
            and calls[source.target] == calls[node.target] == 1
        ):
            pairs.append((source.target, node.target))
    return pairs
