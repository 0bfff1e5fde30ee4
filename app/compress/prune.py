"""Magnitude pruning with fine-tuning, done on the PyTorch model before export.

Each Conv2d and Linear with at least ``min_params`` weights gets a mask (a parametrization:
weight = original * mask). Every ``frequency`` steps from step 0 to ``end_step`` (``end_fraction``
of the fine-tuning steps) the mask of every layer is recomputed at the sparsity of
tensorflow-model-optimization's ``PolynomialDecay`` schedule, zeroing that layer's smallest
weights by magnitude (weights already pruned stay pruned); after ``end_step`` the masks stay
fixed and fine-tuning goes on. At the end the masks are baked in: plain weights with exact zeros,
no parametrization left, which ONNX, BatchNorm folding (zero times a per-channel factor) and
TFLite carry unchanged. Layers with fewer than ``min_params`` weights (an RGB stem, a small
classifier) are left dense: they save little and cost the most accuracy when pruned.

The zeros are stored as zeros: a pruned ``.tflite`` is as large as before and shrinks when
compressed (zip), as with tensorflow-model-optimization.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from seg2tflite.app.compress.finetune import FinetuneConfig, finetune
from seg2tflite.data import SegmentationDataset
from seg2tflite.errors import UserError, setting
from seg2tflite.models.layers import layer_weights


@dataclass(frozen=True)
class PruneConfig:
    sparsity: float = 0.5  # fraction of each pruned layer's weights that end as zeros
    initial_sparsity: float = 0.0  # sparsity at step 0
    frequency: int = 10  # steps between mask updates
    end_fraction: float = 0.7  # share of the fine-tuning steps at which the target is reached
    power: int = 3  # exponent of the polynomial schedule (3, as tfmot)
    min_params: int = 1024  # layers with fewer weights stay dense

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise UserError(f"{setting('sparsity')}: {self.sparsity!r} is outside [0, 1); pass a fraction such as 0.5")
        if not 0.0 <= self.initial_sparsity <= self.sparsity:
            raise UserError(
                f"{setting('initial_sparsity')}: {self.initial_sparsity!r} must be in [0, {setting('sparsity')} {self.sparsity}]"
            )
        if not isinstance(self.frequency, int) or self.frequency < 1:
            raise UserError(f"{setting('frequency')}: {self.frequency!r} must be a whole number of steps, at least 1")
        if not 0.0 < self.end_fraction <= 1.0:
            raise UserError(f"{setting('end_fraction')}: {self.end_fraction!r} is outside (0, 1]; pass e.g. 0.7")
        if not isinstance(self.power, int) or self.power < 1:
            raise UserError(f"{setting('power')}: {self.power!r} must be a whole number of at least 1")
        if not isinstance(self.min_params, int) or self.min_params < 0:
            raise UserError(f"{setting('min_params')}: {self.min_params!r} must be a whole number, 0 or more")


def polynomial_sparsity(step: int, initial: float, final: float, begin_step: int, end_step: int, power: int = 3) -> float:
    """tfmot's PolynomialDecay: s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power, t clamped."""
    if end_step <= begin_step:
        return final
    progress = min(max(step - begin_step, 0), end_step - begin_step) / (end_step - begin_step)
    return final + (initial - final) * (1.0 - progress) ** power


def end_step(config: PruneConfig, steps: int) -> int:
    """The fine-tuning step at which the target sparsity is reached (at least one step follows it)."""
    return min(steps - 1, round(config.end_fraction * steps))


class _Mask(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


@torch.no_grad()
def _update_mask(module: nn.Module, sparsity: float) -> None:
    weights = module.parametrizations.weight.original
    mask = module.parametrizations.weight[0].mask
    score = torch.where(mask, weights.abs(), torch.full_like(weights, -1.0)).flatten()
    pruned = torch.argsort(score, stable=True)[: round(sparsity * score.numel())]
    new = torch.ones(score.numel(), dtype=torch.bool, device=mask.device)
    new[pruned] = False
    mask.copy_(new.view_as(mask))


def prune_model(
    model: nn.Module,
    dataset: SegmentationDataset,
    prune_config: PruneConfig,
    finetune_config: FinetuneConfig,
    progress: bool = True,
    *,
    val_dataset: SegmentationDataset | None = None,
) -> tuple[nn.Module, dict]:
    """A pruned, fine-tuned copy of ``model`` (eval mode) and its report; ``model`` is untouched."""
    pruned = copy.deepcopy(model)
    layers = list(layer_weights(pruned, prune_config.min_params))
    if not layers:
        raise UserError(
            f"{setting('min_params')}: no Conv2d or Linear layer has {prune_config.min_params} weights or more; lower it"
        )
    for _, module in layers:
        parametrize.register_parametrization(module, "weight", _Mask(module.weight))
    steps, last = finetune_config.steps, end_step(prune_config, finetune_config.steps)

    def schedule(step: int) -> None:
        if step <= last and (step % prune_config.frequency == 0 or step == last):
            sparsity = polynomial_sparsity(
                step, prune_config.initial_sparsity, prune_config.sparsity, 0, last, prune_config.power
            )
            for _, module in layers:
                _update_mask(module, sparsity)

    stats = finetune(
        pruned, dataset, finetune_config, step_hook=schedule, progress=progress, val_dataset=val_dataset, desc="prune"
    )
    for _, module in layers:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    report = sparsity_report(pruned, [name for name, _ in layers])
    return pruned.eval(), {**report, "end_step": last, "steps": steps, "config": asdict(prune_config), "finetune": stats}


def sparsity_report(model: nn.Module, names: list[str]) -> dict:
    """Zeros per named layer, over those layers, and over every parameter of ``model``."""
    layers = {}
    for name in names:
        weight = model.get_submodule(name).weight
        n, zeros = weight.numel(), int((weight == 0).sum())
        layers[name] = {"params": n, "zeros": zeros, "sparsity": zeros / n}
    total = sum(v["params"] for v in layers.values())
    all_params = sum(p.numel() for p in model.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    return {
        "layers": layers,
        "sparsity": sum(v["zeros"] for v in layers.values()) / max(total, 1),
        "sparsity_all_parameters": all_zeros / max(all_params, 1),
    }
