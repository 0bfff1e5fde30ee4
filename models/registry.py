"""The model registry: the one way to build a segmentation model in this project.

Every architecture file registers its public builders with ``@register_model(ModelConfig(...))``.
A builder takes ``num_classes`` (and optional keyword arguments) and returns an ``nn.Module``
whose ``forward(x)`` maps a normalised image batch ``(B, 3, H, W)`` to logits ``(B, K, H, W)`` at
the input resolution, and whose ``to_deploy()`` returns the same function written with operations
that reach TFLite builtins (see ``seg2tflite.models.deploy_form``); ``to_deploy(integer=True)``,
where a model takes it, the form its integer files are built from (``integer_form``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from seg2tflite.errors import UserError, setting
from seg2tflite.models.checkpoint import (
    load_state_dict_strict,
    load_weights_into,
    read_checkpoint_config,
    read_state_dict,
    resolve_weights_file,
)
from seg2tflite.models.layers import fold_batchnorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """What a registered name carries besides its code."""

    name: str
    family: str  # "segformer", "segnet", "deeplabv3plus"
    input_size: tuple[int, int] = (512, 512)  # (H, W) the model is trained and converted at
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel mean on a 0..1 image
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 150  # default head size (ADE20K)
    size_divisor: int = 32  # H and W must be multiples of this
    paper: str = ""
    variant_of: str = ""  # a larger size of this registered model, same code (tests carry that one)
    kwargs: dict = field(default_factory=dict)  # defaults passed to the builder


WEIGHT_SOURCE_ARGUMENTS = ("encoder_checkpoint",)

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_CONFIGS: dict[str, ModelConfig] = {}


def register_model(config: ModelConfig):
    """Decorator: register ``builder(num_classes, **kwargs) -> nn.Module`` under ``config.name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if config.name in _BUILDERS:
            raise ValueError(f"model {config.name!r} is registered twice")
        _BUILDERS[config.name] = builder
        _CONFIGS[config.name] = config
        return builder

    return wrap


def unregister_model(name: str) -> None:
    """Remove a registered name (for models registered for a while, e.g. in tests)."""
    _BUILDERS.pop(name, None)
    _CONFIGS.pop(name, None)


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def get_model_config(name: str) -> ModelConfig:
    if name not in _CONFIGS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _CONFIGS[name]


def check_input_size(name: str, size) -> tuple[int, int]:
    """``size`` as (H, W) when the model takes it; else a UserError naming the nearest sizes that work."""
    divisor = get_model_config(name).size_divisor
    h, w = (int(s) for s in size)
    if h % divisor == 0 and w % divisor == 0 and h > 0 and w > 0:
        return h, w

    def near(v: int) -> str:
        low, high = max(divisor, v // divisor * divisor), (v // divisor + 1) * divisor
        return str(low) if low == high or v - low <= high - v else str(high)

    raise UserError(
        f"{setting('input_size')} {h} {w}: {name} needs H and W that are multiples of {divisor}; "
        f"the nearest is {near(h)} {near(w)}"
    )


def create_model(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model, optionally loading weights from a local checkpoint.

    ``checkpoint`` may be this project's checkpoint (``.safetensors`` with its ``.json``, or the
    folder holding them), a Hugging Face model folder (``config.json`` + weights) for the families
    that map HF keys, or a plain state-dict file (``.safetensors``, or ``.pt``/``.pth``/``.bin``
    read with ``weights_only=True``).
    """
    config = get_model_config(name)
    num_classes = config.num_classes if num_classes is None else int(num_classes)
    arguments = {**config.kwargs, **kwargs}
    check_arguments(name, arguments)
    model = _BUILDERS[name](num_classes=num_classes, **arguments)
    # Record the architecture arguments (not where weights came from) so a checkpoint rebuilds it.
    architecture = {k: v for k, v in arguments.items() if k not in WEIGHT_SOURCE_ARGUMENTS}
    model.model_config = replace(config, num_classes=num_classes, kwargs=architecture)
    if checkpoint is not None:
        load_weights_into(model, checkpoint)
    return model


def check_arguments(name: str, arguments: dict) -> None:
    """Refuse keyword arguments ``name``'s builder does not take (a ``UserError`` listing those it does)."""
    import inspect

    try:
        parameters = inspect.signature(_BUILDERS[name]).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(arguments) - set(parameters))
    if unknown:
        known = ", ".join(p for p in parameters if p != "num_classes") or "none"
        raise UserError(f"{name}: unknown keyword arguments {', '.join(unknown)} (it takes: {known})")


def deploy_form(model: nn.Module, opset: int = 17, integer: bool = False, calibration: torch.Tensor | None = None) -> nn.Module:
    """The converter-friendly form of ``model`` for export at ONNX ``opset``: same weights, same
    function, builtins only. From opset 20 GELU exports as one ``Gelu`` op (TFLite's GELU builtin:
    one op that XNNPACK runs in float32, where the erf-free form needs 21, and of which an int8
    file keeps one LUT op instead of the ABS and RELU XNNPACK leaves to the builtin kernels), so
    a model with ``to_deploy(native_gelu=...)`` keeps it there. ``integer``: the form for the
    integer files (full int8, int16x8), for a model whose ``to_deploy(integer=...)`` trades float
    work for ops that cost more in int8 than they save (DeepLabv3+'s dense decoder).
    ``calibration``: the preprocessed calibration images (N, 3, H, W), for a model whose
    ``to_deploy(calibration=...)`` fits its integer form to them (SegNet's channel ranges)."""
    if not hasattr(model, "to_deploy"):
        return model
    parameters = inspect.signature(model.to_deploy).parameters
    options = {"native_gelu": opset >= 20, "integer": integer, "calibration": calibration}
    return model.to_deploy(**{name: value for name, value in options.items() if name in parameters})


def integer_form(model: nn.Module, opset: int = 17, calibration: torch.Tensor | None = None) -> nn.Module | None:
    """``deploy_form(model, opset, integer=True, calibration=calibration)`` when it is another
    form than the float files', else None."""
    if "integer" not in inspect.signature(getattr(model, "to_deploy", lambda: None)).parameters:
        return None
    form = deploy_form(model, opset, integer=True, calibration=calibration)
    return None if type(form) is type(deploy_form(model, opset)) else form


def load_model(checkpoint: str | Path) -> nn.Module:
    """Rebuild a model from this project's checkpoint (weights + JSON config)."""
    config = read_checkpoint_config(checkpoint)
    if "name" not in config:
        raise UserError(f"{checkpoint}: the checkpoint config names no model")
    weights = str(resolve_weights_file(checkpoint))
    source = Path(weights).with_suffix(".json")
    if config["name"] not in _BUILDERS:
        raise UserError(
            f"{source}: names model {config['name']!r}, which is not registered here; choose one of "
            f"{', '.join(list_models())} (fix 'name' in the file, or use the seg2tflite version that saved it)"
        )
    try:
        check_arguments(config["name"], {**get_model_config(config["name"]).kwargs, **(config.get("kwargs") or {})})
    except UserError as e:
        raise UserError(f"{source}: {e}; fix 'kwargs' in the file") from None
    folded = bool(config.get("batchnorm_folded"))  # saved by `seg2tflite compress` after folding BN into convs
    kwargs = config.get("kwargs") or {}
    try:
        model = create_model(
            config["name"], num_classes=config.get("num_classes"), checkpoint=None if folded else weights, **kwargs
        )
    except TypeError as e:  # a builder that passes **kwargs on: the class it reaches refused them
        if not kwargs:
            raise
        raise UserError(
            f"{source}: 'kwargs' {sorted(kwargs)} do not fit {config['name']} ({e}); fix 'kwargs' in the file"
        ) from None
    if folded:
        model = fold_batchnorm(model)
        load_state_dict_strict(model, read_state_dict(weights), weights)
    if config.get("input_size"):  # the size it was trained at, which later steps default to
        model.model_config = replace(model.model_config, input_size=tuple(config["input_size"]))
    return model


def registered_model(name, record, option: str | None = None) -> str:
    """A model name read from ``record``: a registered one (names become folders), else refused."""
    if isinstance(name, str) and name in list_models():
        return name
    advice = f"; pass {option} with registered names" if option else ""
    raise UserError(
        f"{record}: model {name!r} is not a registered model name (see `seg2tflite models`){advice}; "
        "the record was edited or comes from elsewhere: delete it and run the command again"
    )
