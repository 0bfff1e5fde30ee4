"""Segmentation models: SegFormer, SegNet, DeepLabv3+, the MediaTek UNet and AttendSeg, reached through one registry."""

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
    "list_models",
    "load_model",
    "register_model",
]
