"""The tests every registered model passes, written once.

``ModelTester`` runs over the registry's carried models (``carried_models()``: each architecture
once), so a new model is tested by being registered: logits at the input resolution at three sizes,
backward to every parameter, a torch.fx trace, the deploy form's function and weight sharing, the
refusal of a size off the divisor, the checkpoint round trip and the ONNX export. A family's own test module holds
only what is special to it (SegNet's unpooling ties, SegFormer's foreign keys, DeepLab's output
stride, AttendSeg's condensers, the UNet's decoder BatchNorm).

What differs between models is data here, not code: ``SLOW``, ``NOT_FX_TRACEABLE`` and
``ANY_INPUT_SIZE``.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from seg2tflite.errors import UserError
from seg2tflite.models import create_model, deploy_form, get_model_config
from seg2tflite.models.checkpoint import save_checkpoint
from seg2tflite.models.registry import load_model

from model_helpers import carried_models, randomise_batchnorm

NUM_CLASSES = 5
SIZES = {"square": (64, 64), "wide": (96, 128)}  # tiny: the fast lane runs every model at each

# Test -> models it runs for only in the slow lane (Xception-65's export: 41M parameters to trace).
SLOW = {"test_onnx_export_matches_pytorch": {"deeplabv3plus_xception65"}}
# Models torch.fx cannot trace symbolically, and why: AIMET's model preparer (benchmarks/vs_aimet.py)
# then quantizes only their modules' outputs, not their additions, concatenations and resizes.
NOT_FX_TRACEABLE = {"deeplabv3plus_xception65": "timm builds Xception-65's features_only encoder with forward hooks"}
# Families whose forward takes any input size: SegFormer's overlapping patch embeddings pad, and
# its logits are resized to the input; its size_divisor is what the converter asks of a size.
ANY_INPUT_SIZE = {"segformer"}


def smallest_size(name: str) -> tuple[int, int]:
    """The smallest input the model takes, made non-square: one divisor high, two wide."""
    d = get_model_config(name).size_divisor
    return d, 2 * d


def randomised(name: str, seed: int = 0) -> torch.nn.Module:
    """``name`` with seeded weights, every other 1-D parameter (LayerNorm scales and shifts, biases,
    AttendSeg's scale) moved off its initial value, so that a deploy form dropping one shows, then
    BatchNorm statistics measured on random images and random BN scales and shifts; eval mode."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=NUM_CLASSES)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                continue  # randomise_batchnorm's
            for p in module.parameters(recurse=False):
                if p.dim() == 1:
                    p.add_(0.2 * torch.randn(p.shape, generator=g))
    return randomise_batchnorm(model)


class ModelTester:
    """Every carried model: subclass it once (tests/test_models_registry.py) to run it."""

    def pytest_generate_tests(self, metafunc):
        """``name`` over the carried models, one class-wide value at a time (the model is built once
        per name), marked slow where ``SLOW`` says."""
        if "name" in metafunc.fixturenames:
            slow = SLOW.get(metafunc.function.__name__, set())
            names = [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in carried_models()]
            metafunc.parametrize("name", names, scope="class")

    @pytest.fixture(scope="class")
    def model(self, name) -> torch.nn.Module:
        """One randomised model per name; a test that changes it works on a copy."""
        return randomised(name)

    # ------------------------------------------------------------ forward and backward

    @pytest.mark.parametrize("size", [*SIZES, "smallest"])
    def test_forward_gives_logits_at_input_resolution(self, name, model, size):
        size = smallest_size(name) if size == "smallest" else SIZES[size]
        with torch.no_grad():
            logits = model(torch.randn(2, 3, *size))
        assert logits.shape == (2, NUM_CLASSES, *size)
        assert torch.isfinite(logits).all()

    def test_backward_reaches_every_parameter(self, name):
        torch.manual_seed(0)
        model = create_model(name, num_classes=NUM_CLASSES).train()
        model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"no gradient reached {missing[:5]}"
        nonfinite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not nonfinite, nonfinite[:5]

    def test_symbolic_trace_is_the_same_function(self, name, model):
        """torch.fx traces the model (no size check or size branch needs a concrete size), and the
        traced graph computes the model at another size than the trace, the smallest one too."""
        model = copy.deepcopy(model)  # a failed trace can leave proxies in a model's state (timm's hooks)
        if name in NOT_FX_TRACEABLE:
            with pytest.raises(Exception):  # noqa: B017 - the day it traces, this entry goes
                torch.fx.symbolic_trace(model)
            return
        traced = torch.fx.symbolic_trace(model)
        for size in (SIZES["wide"], smallest_size(name)):
            x = torch.randn(1, 3, *size)
            with torch.no_grad():
                assert torch.equal(traced(x), model(x)), size

    def test_size_off_the_divisor_is_refused_naming_the_nearest(self, name, model):
        """2d+1 x 3d-1: the message carries the size, the divisor and the nearest size, 2d x 3d."""
        d = get_model_config(name).size_divisor
        h, w = 2 * d + 1, 3 * d - 1
        x = torch.zeros(1, 3, h, w)
        if get_model_config(name).family in ANY_INPUT_SIZE:
            with torch.no_grad():
                assert model(x).shape == (1, NUM_CLASSES, h, w)
            return
        with pytest.raises(UserError) as info:
            model(x)
        message = str(info.value)
        for figure in (f"{h}x{w}", str(d), f"{2 * d}x{3 * d}"):
            assert figure in message, (figure, message)
        with pytest.raises(UserError):
            deploy_form(model)(x)

    # ------------------------------------------------------------ deploy form

    @pytest.mark.parametrize("size", SIZES)
    def test_deploy_form_equals_training_form(self, model, size):
        """The same function, computed in float64: a deploy form may sum in another order (AttendSeg's
        split projection), which float32 rounds differently at the size of the logits (4,000 with
        randomised BatchNorm), so float32 would test the summation order, not the function; float32
        end to end is the conversion's parity gates' job."""
        if deploy_form(model) is model:  # nothing rewritten (DeepLab's separable decoder): the same function
            return
        model = copy.deepcopy(model)
        deployed = deploy_form(model).eval()
        model.double(), deployed.double()  # after: a deploy form's own constants (SegFormer's 1/C averages) too
        x = torch.randn(1, 3, *SIZES[size], dtype=torch.float64)  # one image: float64 convs are slow on CPU
        with torch.no_grad():
            reference, got = model(x), deployed(x)
        assert got.shape == reference.shape
        assert float(reference.max() - reference.min()) > 0.1  # logits that vary, so a wrong formula shows
        assert (reference - got).abs().max().item() < 1e-5

    def test_deploy_form_shares_the_weights(self, name, model):
        """No copies: the deploy form holds the model's own parameters, follows weights and BatchNorm
        statistics loaded in place afterwards, and is its own deploy form."""
        model = copy.deepcopy(model)
        deployed = deploy_form(model)
        assert deploy_form(deployed) is deployed
        own = {p.data_ptr() for p in model.parameters()}
        assert all(p.data_ptr() in own for p in deployed.parameters())
        model.load_state_dict(randomised(name, seed=1).state_dict())  # in place: the deploy form must follow
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            reference = model(x)
            assert (deployed(x) - reference).abs().max() <= 1e-5 * (reference.max() - reference.min())

    # ------------------------------------------------------------ checkpoint and export

    def test_checkpoint_round_trip(self, name, model, tmp_path):
        """Through ``load_model`` (name, classes and training size from the JSON) and through
        ``create_model(checkpoint=...)``: the same logits, bit for bit, in both forms."""
        model = copy.deepcopy(model)
        model.model_config = dataclasses.replace(model.model_config, input_size=(64, 96))  # as after training at 64x96
        path = save_checkpoint(model, tmp_path / "model.safetensors")
        restored = load_model(path).eval()
        assert restored.model_config == model.model_config
        rebuilt = create_model(name, num_classes=NUM_CLASSES, checkpoint=str(path)).eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            for other in (restored, rebuilt):
                assert torch.equal(model(x), other(x))
                assert torch.equal(deploy_form(model)(x), deploy_form(other)(x))

    def test_onnx_export_matches_pytorch(self, name, model, tmp_path):
        """The deploy form at opset 17 (the converter's export), run by onnxruntime on two images:
        the training form's logits within 1e-4 of their range."""
        import onnxruntime as ort

        x = torch.randn(1, 3, 64, 96)
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(
            deploy_form(model), (x,), str(path), opset_version=17, dynamo=False, input_names=["input"], output_names=["logits"]
        )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for sample in (x, torch.randn(1, 3, 64, 96)):
            with torch.no_grad():
                reference = model(sample).numpy()
            (logits,) = session.run(None, {"input": sample.numpy()})
            assert logits.shape == reference.shape
            assert np.abs(logits - reference).max() <= 1e-4 * (reference.max() - reference.min())
