"""Shared test helpers for model tests."""

import time

import torch

from seg2tflite.models import get_model_config, list_models


def carried_models() -> list[str]:
    """The registered models every model test carries: each architecture once (its larger
    variants share its code and are only counted), test models left out."""
    return [n for n in list_models() if not get_model_config(n).variant_of and get_model_config(n).family != "test"]


def randomise_batchnorm(model: torch.nn.Module, size=(64, 64), seed: int = 0) -> torch.nn.Module:
    """BN statistics measured on random images (at random init they would let the signal fade out
    with depth, leaving near-constant logits), then random BN scales and shifts; eval mode."""
    g = torch.Generator().manual_seed(seed)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in batchnorms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, *size, generator=g))
    for m in batchnorms:
        m.momentum = 0.1
        m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def batchnorm_from_images(model: torch.nn.Module, images, seed: int = 0) -> torch.nn.Module:
    """Seeded BN scales and shifts, then BN statistics re-estimated on ``images`` ((N, 3, H, W),
    normalised) in one batch, as after training on them: a randomly initialised foreign model
    otherwise outputs one class everywhere and no gate says anything. Eval mode."""
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in batchnorms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batch
        if m.affine:
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.ascontiguousarray(images, np.float32)))
    for m in batchnorms:
        m.momentum = 0.1
    return model.eval()


def convert_keeping_failures(convert):
    """``convert()`` timed; a broken gate (ParityError, VariantError) still gives its result, whose
    files are written, with the error beside it for the tests to say what broke."""
    from seg2tflite.converters import ParityError

    start = time.perf_counter()
    try:
        result, error = convert(), None
    except ParityError as e:
        result, error = e.result, e
    return result, error, time.perf_counter() - start
