"""Every registered model is tested by being registered: the registry's contents, and ``ModelTester``
(tests/models_base.py) over every carried model."""

import pytest

from seg2tflite.models import create_model, get_model_config, list_models

from model_helpers import carried_models
from models_base import ModelTester

ALL_MODELS = list_models()


def test_registry_holds_the_six_families():
    families = {get_model_config(name).family for name in ALL_MODELS}
    assert {"segformer", "segnet", "deeplabv3plus", "unet", "attendseg"} <= families
    for name in (
        "segformer_b0", "segnet_vgg16", "deeplabv3plus_mobilenetv2", "deeplabv3plus_xception65",
        "unet_mediatek", "unet_mediatek_res12", "attendseg",
    ):  # fmt: skip
        assert name in ALL_MODELS


def test_the_demo_carries_every_family():
    from seg2tflite.app.demo_config import DEFAULT_TRAIN_STEPS, DEMO_MODELS

    families = {get_model_config(name).family for name in DEMO_MODELS}
    assert families == {get_model_config(name).family for name in carried_models()}
    assert set(DEFAULT_TRAIN_STEPS) == set(DEMO_MODELS)


def test_unknown_model_names_the_choices():
    with pytest.raises(KeyError, match="segformer_b0"):
        create_model("no_such_model")


class TestEveryModel(ModelTester):
    pass
