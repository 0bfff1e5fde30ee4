"""Refusals name the setting as the caller gave it: a Python argument from Python, a flag on the command line."""

from __future__ import annotations

import pytest

from seg2tflite.app.flags import flag_wording
from seg2tflite.app.train import check_train_settings
from seg2tflite.app.train_config import TrainConfig
from seg2tflite.errors import UserError
from seg2tflite.eval.bench import benchmark_artifact
from seg2tflite.models import check_input_size


def refusal(call) -> str:
    with pytest.raises(UserError) as e:
        call()
    return str(e.value)


@pytest.mark.parametrize(
    "call, python, flag",
    [
        (lambda: check_input_size("segformer_b0", (95, 96)), "input_size 95 96: segformer_b0", "--input-size 95 96:"),
        (lambda: check_train_settings(TrainConfig("segformer_b0", lr=-1.0), (64, 64), 8, 8), "lr -1.0:", "--lr -1.0:"),
        (
            lambda: check_train_settings(TrainConfig("segformer_b0", num_classes=3), (64, 64), 3, 8),
            "pass num_classes 8 or drop it",
            "pass --num-classes 8 or drop it",
        ),
        (
            lambda: check_train_settings(TrainConfig("segformer_b0", workers=-1), (64, 64), 8, 8),
            "workers -1 / warmup_steps 50",
            "--workers -1 / --warmup-steps 50",
        ),
    ],
    ids=["input_size", "lr", "num_classes", "workers"],
)
def test_python_callers_read_their_argument_names(call, python, flag):
    from_python = refusal(call)
    assert python in from_python and "--" not in from_python, from_python
    with flag_wording():
        assert flag in refusal(call)


def test_bench_without_a_size_names_input_size(tmp_path):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"")  # no manifest or checkpoint config beside it: the size is found nowhere
    assert refusal(lambda: benchmark_artifact(onnx_file)).endswith("pass input_size")
    with flag_wording():
        assert refusal(lambda: benchmark_artifact(onnx_file)).endswith("pass --input-size H W")
