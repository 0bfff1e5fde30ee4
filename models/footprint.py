"""What one forward pass of a registered model needs at a given input size, found for free.

The model is built and run on PyTorch's ``meta`` device, where tensors have shapes but no data:
no weights are allocated and no arithmetic is done, so even a 8192x8192 probe takes a fraction
of a second. It tells

- ``activation_bytes``: the sum of every layer's output (float32, batch 1) plus the parameters:
  what onnx2tf's shape inference and the TFLite calibrator hold at once, and what training keeps
  for the backward pass per image; callers compare it with ``seg2tflite.memory``;
- ``single_value_batchnorms``: BatchNorm layers that see one value per channel per image (a 1x1
  map, e.g. an image-pooling branch), which cannot train on a batch of one image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from seg2tflite.models.registry import create_model, get_model_config


@dataclass(frozen=True)
class Footprint:
    activation_bytes: int
    single_value_batchnorms: list[str] = field(default_factory=list)


def probe(name: str, size: tuple[int, int], num_classes: int | None = None, **kwargs) -> Footprint | None:
    """The footprint of ``name`` at ``size`` (batch 1); None when the model cannot run on the meta device."""
    get_model_config(name)  # an unknown name is the caller's error (KeyError)
    total = 0
    single: list[str] = []

    def count(_module, _inputs, output) -> None:
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * 4

    def batchnorm(module_name: str):
        def check(_module, inputs) -> None:
            x = inputs[0]
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and x[0, 0].numel() == 1:
                single.append(module_name)

        return check

    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes, **kwargs).eval()
        hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        hooks += [
            m.register_forward_pre_hook(batchnorm(n))
            for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        with torch.no_grad():
            model(torch.zeros(1, 3, *size, device="meta"))
        for hook in hooks:
            hook.remove()
    except Exception:  # noqa: BLE001 - an op without a meta kernel: no estimate, no refusal
        return None
    return Footprint(total + sum(p.numel() * 4 for p in model.parameters()), single)


def activation_bytes(name: str, size: tuple[int, int], num_classes: int | None = None, **kwargs) -> int | None:
    found = probe(name, size, num_classes, **kwargs)
    return None if found is None else found.activation_bytes
