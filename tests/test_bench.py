"""Benchmarks return well-formed figures for every runtime, and memory is measured per artifact.

No timing thresholds here: latency depends on the machine; only the shape of the result is checked.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

from seg2tflite.converters.manifest import artifact_hashes
from seg2tflite.errors import UserError
from seg2tflite.eval.bench import BenchResult, benchmark_artifact, benchmark_artifacts, benchmark_in_turns
from seg2tflite.models.checkpoint import save_checkpoint
from seg2tflite.models.registry import create_model

from small_chain import registered_small

SIZE = (16, 16)
NAME = "tiny_bench_cnn"


class WideDense(nn.Module):
    """About 46 MB of float32 weights but little arithmetic: for the per-artifact memory check."""

    def __init__(self, num_classes: int = 4, hidden: int = 16384):
        super().__init__()
        self.num_classes = num_classes
        self.fc1 = nn.Linear(3 * SIZE[0] * SIZE[1], hidden)
        self.fc2 = nn.Linear(hidden, num_classes * SIZE[0] * SIZE[1])

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1)))).reshape(x.shape[0], self.num_classes, *SIZE)


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    with registered_small(NAME, input_size=SIZE, num_classes=4, size_divisor=1):
        yield


def _export(model, path):
    torch.onnx.export(
        model.eval(),
        torch.zeros(1, 3, *SIZE),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
    )


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = create_model(NAME, num_classes=4).eval()
    save_checkpoint(model, d / "model.safetensors")
    _export(model, d / "model.onnx")
    wide = d / "wide"
    wide.mkdir()
    _export(WideDense(), wide / "model.onnx")
    recorded = artifact_hashes(wide, ["model.onnx"])  # a manifest describes only the files it records
    (wide / "manifest.json").write_text(json.dumps({"input_size": list(SIZE), "artifacts": recorded}))

    import tensorflow as tf

    w = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)])
    def segment(x):
        return tf.nn.conv2d(x, w, 1, "SAME")

    converter = tf.lite.TFLiteConverter.from_concrete_functions([segment.get_concrete_function()], segment)
    (d / "model_float32.tflite").write_bytes(converter.convert())
    return d


def _well_formed(r: BenchResult, runtime: str, threads: int, runs: int) -> None:
    assert r.runtime == runtime
    assert (r.threads, r.runs, r.input_size) == (threads, runs, SIZE)
    assert 0 < r.min_ms <= r.median_ms <= r.p90_ms
    assert r.min_ms <= r.mean_ms
    assert r.load_seconds >= 0
    assert 0 < r.baseline_rss_mb <= r.peak_rss_mb
    assert BenchResult.from_dict(json.loads(json.dumps(r.as_dict()))) == r


def test_onnx_and_tflite_in_fresh_processes(artifacts):
    onnx = benchmark_artifact(artifacts / "model.onnx", threads=1, warmup=1, runs=5)  # size from model.json
    _well_formed(onnx, "onnxruntime", 1, 5)
    tflite = benchmark_artifact(artifacts / "model_float32.tflite", SIZE, threads=2, warmup=1, runs=4)
    _well_formed(tflite, "litert", 2, 4)
    assert onnx.invoke_median_ms is None and tflite.invoke_median_ms > 0  # the file alone, without the runner's NumPy work
    assert tflite.kind == "tflite" and tflite.artifact == str(artifacts / "model_float32.tflite")


def test_checkpoint_in_this_process(artifacts):
    r = benchmark_artifact(artifacts / "model.safetensors", threads=1, warmup=1, runs=3, isolate=False)
    _well_formed(r, "pytorch", 1, 3)


def test_memory_belongs_to_the_artifact(artifacts):
    small, wide = benchmark_artifacts(
        [artifacts / "model.onnx", artifacts / "wide" / "model.onnx"], progress=False, warmup=1, runs=2
    )
    small_growth = small.peak_rss_mb - small.baseline_rss_mb
    wide_growth = wide.peak_rss_mb - wide.baseline_rss_mb
    assert wide_growth - small_growth > 30  # the wide model holds ~46 MB of weights


def test_bad_settings_are_user_errors(artifacts, tmp_path):
    with pytest.raises(UserError, match="runs >= 1"):
        benchmark_artifact(artifacts / "model.onnx", runs=0)
    (tmp_path / "bare.tflite").write_bytes((artifacts / "model_float32.tflite").read_bytes())
    with pytest.raises(UserError, match="pass input_size"):  # worded for Python: the caller's argument
        benchmark_artifact(tmp_path / "bare.tflite")


def test_files_timed_in_turns_in_one_fresh_process(artifacts):
    tflite = artifacts / "model_float32.tflite"
    turns = benchmark_in_turns([tflite, tflite], SIZE, threads=1, turns=3, block_ms=1.0)
    assert len(turns) == 2 and all(len(ms) == 3 and min(ms) > 0 for ms in turns)
    with pytest.raises(UserError, match="not a .tflite"):
        benchmark_in_turns([tflite, artifacts / "model.onnx"], SIZE, turns=1)
