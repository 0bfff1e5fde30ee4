"""``seg2tflite convert --module FILE.py:FUNCTION [--weights FILE.safetensors]``: a model of one's own.

The refusals come before anything is built or written; one conversion (float32 only, 32x32)
shows the weights are loaded: the manifest names the module and the ONNX graph computes what the
model with those weights computes.
"""

import json
import textwrap

import numpy as np
import pytest
import torch

from seg2tflite.app.cli import main

MODEL_FILE = """
import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return {"out": self.head(torch.relu(self.conv(x)))}


def build():
    torch.manual_seed(1)
    return Net()


def broken():
    raise RuntimeError("no GPU here")


def not_a_model():
    return 3
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(MODEL_FILE))
    return path


def _convert(spec, out, *extra):
    return main(["convert", "--module", spec, "--input-size", "32", "32", "--calib-data", "synthetic:size=32,train=8,val=4",
                 "--calib-size", "8", "--parity-images", "2", "--variants", "float32", "--out", str(out), *extra])  # fmt: skip


@pytest.mark.parametrize(
    "suffix, says",
    [
        (":nope", "defines no function 'nope'"),
        (":broken", "broken() failed: RuntimeError: no GPU here"),
        (":not_a_model", "not_a_model() returned a int; it must return a torch.nn.Module"),
        ("", "expected FILE.py:FUNCTION"),
    ],
)
def test_module_refusals(capsys, tmp_path, model_file, suffix, says):
    assert _convert(f"{model_file}{suffix}", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_module_needs_an_input_size_and_weights_need_a_module(capsys, tmp_path, model_file):
    base = ["convert", "--calib-data", "synthetic:size=32,train=8,val=4", "--out", str(tmp_path / "o")]
    assert main([*base, "--module", f"{model_file}:build"]) == 2
    assert "pass --input-size H W" in capsys.readouterr().err
    assert main([*base, "--model", "segformer_b0", "--weights", "w.safetensors"]) == 2
    assert "--weights: applies to --module" in capsys.readouterr().err


def test_weights_of_another_model_are_refused(capsys, tmp_path, model_file):
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, str(tmp_path / "other.safetensors"))
    assert _convert(f"{model_file}:build", tmp_path / "out", "--weights", str(tmp_path / "other.safetensors")) == 2
    err = capsys.readouterr().err
    assert "does not fit the model: 3 keys missing (first: conv.bias); 1 keys of another shape (first: conv.weight)" in err


@pytest.mark.chain
def test_module_with_weights_converts(capsys, tmp_path, model_file):
    import importlib.util

    from safetensors.torch import save_file

    from seg2tflite.converters.runtimes import OnnxRunner

    spec = importlib.util.spec_from_file_location("user_model_for_test", model_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(7)
    trained = module.Net()  # other weights than build()'s seed gives
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "out"
    assert _convert(f"{model_file}:build", out, "--weights", str(tmp_path / "w.safetensors")) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["module"] == f"{model_file}:build"
    assert manifest["model"]["output"]["selected"] == "dict['out']"
    assert manifest["config"]["trained"] is True
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = trained.eval()(torch.from_numpy(x))["out"].numpy()
    assert np.abs(OnnxRunner(out / "model.onnx")(x) - ref).max() < 1e-4
