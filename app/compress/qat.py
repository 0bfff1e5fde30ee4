"""Quantization-aware training on the PyTorch side, for the TFLite int8 models built after it.

Every BatchNorm that follows a conv is folded into it first (``fold_batchnorm``), so the weights
trained here are the ones the TFLite converter quantizes. While fine-tuning:

- the weights of every Conv2d and Linear are fake-quantized per output channel, symmetric int8,
  scale = max|w| / 127 over the channel (straight-through gradient): the grid the TFLite
  converter uses for its per-channel int8 weights;
- the outputs of those layers are fake-quantized per tensor, asymmetric int8, with ranges kept
  as a moving average of the batch min/max (``torch.ao`` ``FakeQuantize`` with a
  ``MovingAverageMinMaxObserver``).

At the end the activation fake-quantization is removed and the weights are baked, snapped to
their int8 grid: a plain float model whose weights TFLite quantizes without error.

The honest limit: only the weights carry over. The learned activation ranges are not written
into the model, and the TFLite converter calibrates its own from the representative dataset
(they are in the report for comparison). The model has learned to tolerate int8 activations,
which helps, but the ranges TFLite uses are not the trained ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
from torch.nn.utils import parametrize

from seg2tflite.app.compress.finetune import FinetuneConfig, example_input, finetune, validate
from seg2tflite.data import SegmentationDataset
from seg2tflite.errors import UserError, setting
from seg2tflite.models.layers import fold_batchnorm, layer_weights, remaining_batchnorm


@dataclass(frozen=True)
class QATConfig:
    activations: bool = True  # also fake-quantize the outputs of every Conv2d and Linear
    averaging_constant: float = 0.01  # weight of each new batch in the moving min/max of activations

    def __post_init__(self) -> None:
        if not 0.0 < self.averaging_constant <= 1.0:
            raise UserError(f"{setting('averaging_constant')}: {self.averaging_constant!r} is outside (0, 1]; pass e.g. 0.01")


def int8_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 scale, max|w| / 127, shaped to broadcast over ``weight``."""
    scale = weight.detach().abs().flatten(1).amax(1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero on any grid
    return scale.view(-1, *([1] * (weight.dim() - 1)))


def snap_to_int8_grid(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to its per-channel symmetric int8 grid (the values TFLite dequantizes to)."""
    scale = int8_scale(weight)
    return torch.clamp(torch.round(weight / scale), -127, 127) * scale


class _FakeQuantWeight(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (snap_to_int8_grid(weight) - weight).detach()


def qat_model(
    model: nn.Module,
    dataset: SegmentationDataset,
    qat_config: QATConfig,
    finetune_config: FinetuneConfig,
    progress: bool = True,
    *,
    val_dataset: SegmentationDataset | None = None,
) -> tuple[nn.Module, dict]:
    """A BN-folded, quantization-aware fine-tuned copy of ``model`` (eval mode) and its report."""
    device = next(model.parameters()).device
    trained = fold_batchnorm(model, example_input(model, dataset, finetune_config).to(device))
    layers = list(layer_weights(trained))
    observers, handles = {}, []
    for name, module in layers:
        parametrize.register_parametrization(module, "weight", _FakeQuantWeight())
        if qat_config.activations:
            observers[name] = FakeQuantize(
                observer=MovingAverageMinMaxObserver,
                quant_min=-128,
                quant_max=127,
                dtype=torch.qint8,
                qscheme=torch.per_tensor_affine,
                averaging_constant=qat_config.averaging_constant,
            ).to(device)
            handles.append(module.register_forward_hook(lambda _m, _i, out, fq=observers[name]: fq(out)))
    try:
        stats = finetune(trained, dataset, finetune_config, progress=progress, desc="qat")
    finally:
        for handle in handles:
            handle.remove()
    for _, module in layers:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    if val_dataset is not None:  # measured on the baked model, without activation fake-quantization
        stats = {**stats, "val": validate(trained, val_dataset, finetune_config)}
    report = {
        "layers": {
            name: {
                "params": m.weight.numel(),
                "max_abs_error": float((m.weight.detach() - snap_to_int8_grid(m.weight.detach())).abs().max()),
            }
            for name, m in layers
        },
        "activation_ranges": {
            name: [float(fq.activation_post_process.min_val), float(fq.activation_post_process.max_val)]
            for name, fq in observers.items()
        },
        "unfolded_batchnorm": remaining_batchnorm(trained),
        "steps": stats["steps"],
        "config": asdict(qat_config),
        "finetune": stats,
    }
    return trained.eval(), report
