"""Segmentation models: SegFormer, SegNet, DeepLabv3+, the MediaTek UNet and AttendSeg, reached through one registry."""

if __name__ != "seg2tflite.models":  # the checkout's root on sys.path would load this folder a second time
    raise ImportError(f"import seg2tflite.models, not {__name__}: the folders at the repository's top install under seg2tflite")

# Importing the architecture files fills the registry.
from seg2tflite.models import attendseg, deeplabv3plus, segformer, segnet, unet_mediatek  # noqa: E402,F401
from seg2tflite.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelConfig,
    check_input_size,
    create_model,
    deploy_form,
    get_model_config,
    integer_form,
    list_models,
    load_model,
    register_model,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelConfig",
    "check_input_size",
    "create_model",
    "deploy_form",
    "get_model_config",
    "integer_form",
    "list_models",
    "load_model",
    "register_model",
]
