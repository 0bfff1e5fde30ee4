"""Every registered model is tested by being registered: shapes, backward, deploy form, round trip."""

import dataclasses

import pytest
import torch

from seg2tflite.models import create_model, deploy_form, get_model_config, list_models
from seg2tflite.models.checkpoint import save_checkpoint
from seg2tflite.models.registry import load_model

from model_helpers import carried_models, randomise_batchnorm

NUM_CLASSES = 5
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
    from seg2tflite.demo_config import DEFAULT_TRAIN_STEPS, DEMO_MODELS

    families = {get_model_config(name).family for name in DEMO_MODELS}
    assert families == {get_model_config(name).family for name in carried_models()}
    assert set(DEFAULT_TRAIN_STEPS) == set(DEMO_MODELS)


def test_unknown_model_names_the_choices():
    with pytest.raises(KeyError, match="segformer_b0"):
        create_model("no_such_model")


@pytest.fixture(scope="module", params=carried_models())
def model_name(request):
    return request.param


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_forward_gives_logits_at_input_resolution(model_name, size):
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, NUM_CLASSES, *size)
    assert torch.isfinite(logits).all()


def test_backward_reaches_every_parameter(model_name):
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=NUM_CLASSES).train()
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_deploy_form_equals_training_form(model_name, size):
    """The same function, computed in float64: a deploy form may sum in another order (AttendSeg's
    split projection), which float32 rounds differently at the size of the logits (4,000 with
    randomised BatchNorm), so float32 would test the summation order, not the function; float32
    end to end is the conversion's parity gates' job."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=NUM_CLASSES).eval()
    randomise_batchnorm(model)
    deployed = deploy_form(model).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        difference = (model.double()(x.double()) - deployed.double()(x.double())).abs().max().item()
    assert difference < 1e-5


def test_checkpoint_round_trip(model_name, tmp_path):
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=NUM_CLASSES).eval()
    randomise_batchnorm(model)
    model.model_config = dataclasses.replace(model.model_config, input_size=(64, 96))  # as after training at 64x96
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    restored = load_model(path).eval()
    assert restored.model_config == model.model_config
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
