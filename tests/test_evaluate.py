"""Evaluating artifacts: PyTorch, ONNX and TFLite give the metrics a hand-written loop gives, worker
processes change nothing, and missing or wrong metadata is a clear UserError."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seg2tflite.app.flags import flag_wording
from seg2tflite.converters.manifest import artifact_hashes
from seg2tflite.data import Preprocess, load_dataset
from seg2tflite.errors import UserError
from seg2tflite.eval.artifacts import describe_artifact
from seg2tflite.eval.evaluate import argmax_agreement, compare_artifacts, evaluate_artifact, open_artifact
from seg2tflite.metrics import ConfusionMatrix
from seg2tflite.models.checkpoint import save_checkpoint
from seg2tflite.models.registry import create_model

from small_chain import registered_small

DATA = "synthetic:train=8,val=4,test=4,size=32"
SIZE = (32, 32)
NAME = "tiny_eval_cnn"
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    with registered_small(NAME, input_size=SIZE, mean=MEAN, std=STD, num_classes=8):
        yield


def _make_model(num_classes: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(NAME, num_classes=num_classes)
    for m in model.modules():  # non-trivial BN statistics, so folding them is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _export_onnx(model: nn.Module, path) -> None:
    torch.onnx.export(
        model, torch.zeros(1, 3, *SIZE), str(path), opset_version=17, dynamo=False,
        input_names=["input"], output_names=["logits"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A conversion-like folder: model.safetensors (+ model.json) and model.onnx."""
    d = tmp_path_factory.mktemp("artifacts")
    model = _make_model()
    save_checkpoint(model, d / "model.safetensors")
    _export_onnx(model, d / "model.onnx")
    return d


def _hand_loop(forward, data=DATA, split="test") -> tuple[dict, np.ndarray]:
    """The metrics and predictions, computed directly: no evaluate code involved."""
    dataset = load_dataset(data, split)
    pre = Preprocess(SIZE, MEAN, STD)
    matrix = ConfusionMatrix(dataset.info.num_classes)
    preds = []
    for i in range(len(dataset)):
        image, mask = dataset[i]
        x, y = pre(image, mask)
        pred = forward(x[None])[0].argmax(axis=0)
        matrix.update(pred, y)
        preds.append(pred)
    return matrix.compute().as_dict(dataset.info.class_names), np.stack(preds)


def test_pytorch_and_onnx_give_the_metrics_of_a_hand_written_loop(folder):
    model = _make_model()
    with torch.inference_mode():
        expected, expected_preds = _hand_loop(lambda x: model(torch.from_numpy(x)).numpy())
    pt = evaluate_artifact(folder / "model.safetensors", DATA, "test", keep_predictions=True, progress=False)
    onnx = evaluate_artifact(folder / "model.onnx", DATA, "test", keep_predictions=True, progress=False)
    assert pt.metrics == expected
    assert onnx.metrics == pt.metrics
    np.testing.assert_array_equal(pt.predictions, expected_preds)
    np.testing.assert_array_equal(onnx.predictions, pt.predictions)
    assert (pt.kind, onnx.kind) == ("pytorch", "onnx")
    assert pt.num_images == 4 and pt.predictions.shape == (4, *SIZE)
    assert list(pt.metrics["per_class_iou"]) == list(load_dataset(DATA, "test").info.class_names)
    assert 0.0 <= pt.miou <= 1.0
    assert argmax_agreement(onnx.predictions, pt.predictions) == 1.0


def test_worker_processes_give_the_single_process_result(folder):
    one = evaluate_artifact(folder / "model.onnx", DATA, "val", workers=1, keep_predictions=True, progress=False)
    two = evaluate_artifact(folder / "model.onnx", DATA, "val", workers=2, keep_predictions=True, progress=False)
    assert two.metrics == one.metrics
    np.testing.assert_array_equal(two.predictions, one.predictions)
    assert two.num_images == one.num_images == 4


def test_limit_evaluates_the_first_images_only(folder):
    some = evaluate_artifact(folder / "model.onnx", DATA, "test", limit=2, keep_predictions=True, progress=False)
    full = evaluate_artifact(folder / "model.onnx", DATA, "test", keep_predictions=True, progress=False)
    assert some.num_images == 2 and some.predictions.shape[0] == 2
    np.testing.assert_array_equal(some.predictions, full.predictions[:2])
    assert some.metrics["num_pixels"] == 2 * SIZE[0] * SIZE[1]


def test_onnx_logits_match_pytorch(folder):
    drift = compare_artifacts(folder / "model.onnx", folder / "model.safetensors", DATA, "test", limit=3)
    assert drift.num_images == 3
    assert drift.logit_range > 0
    assert drift.max_abs <= 1e-3 * drift.logit_range
    assert 0 <= drift.mean_abs <= drift.max_abs
    assert drift.argmax_agreement == 1.0


def test_the_reference_runs_once_for_all_the_stages_compared_with_it(folder, tmp_path, monkeypatch):
    """``measure`` compares every stage with PyTorch on the same images: the reference's logits are
    computed once, and again only when its file changes."""
    import seg2tflite.eval.evaluate as evaluate

    opened = []
    real_open = evaluate.open_artifact
    monkeypatch.setattr(
        evaluate, "open_artifact", lambda path, *a, **k: opened.append(Path(path).name) or real_open(path, *a, **k)
    )
    reference = tmp_path / "model.safetensors"
    shutil.copy(folder / "model.safetensors", reference)
    shutil.copy(folder / "model.json", tmp_path / "model.json")
    first = compare_artifacts(folder / "model.onnx", reference, DATA, "test", limit=3)
    again = compare_artifacts(folder / "model.onnx", reference, DATA, "test", limit=3)
    assert again == first and opened == ["model.safetensors", "model.onnx", "model.onnx"]
    save_checkpoint(_make_model(seed=1), reference)  # other weights at the same path
    changed = compare_artifacts(folder / "model.onnx", reference, DATA, "test", limit=3)
    assert opened[-2:] == ["model.safetensors", "model.onnx"] and changed.max_abs > first.max_abs


def test_preprocessing_comes_from_the_checkpoint_config_or_the_manifest(folder, tmp_path):
    info = describe_artifact(folder / "model.onnx")  # from model.json beside it
    assert (info.kind, info.input_size, info.mean, info.std, info.model, info.num_classes) == (
        "onnx", SIZE, MEAN, STD, NAME, 8,
    )  # fmt: skip
    shutil.copy(folder / "model.onnx", tmp_path / "model.onnx")
    manifest = {
        "model": NAME,
        "config": {"input_size": [32, 32], "num_classes": 8},
        "preprocess": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]},
        "artifacts": artifact_hashes(tmp_path, ["model.onnx"]),  # a manifest describes only the files it records
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    info = describe_artifact(tmp_path / "model.onnx")
    assert (info.input_size, info.mean, info.std, info.model, info.num_classes) == (
        SIZE,
        (0.1, 0.2, 0.3),
        (1.0, 1.0, 1.0),
        NAME,
        8,
    )
    info = describe_artifact(tmp_path / "model.onnx", input_size=(64, 64), mean=MEAN)  # arguments win
    assert (info.input_size, info.mean) == ((64, 64), MEAN)
    del manifest["artifacts"]  # another file's manifest (issue 28): not taken, and the refusal says why
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not record this file"):
        describe_artifact(tmp_path / "model.onnx")


def test_missing_preprocessing_names_the_options_to_pass(folder, tmp_path):
    bare = tmp_path / "bare.onnx"
    shutil.copy(folder / "model.onnx", bare)
    with pytest.raises(UserError, match=r"pass input_size, mean, std$"):  # from Python: the arguments
        evaluate_artifact(bare, DATA, progress=False)
    with flag_wording(), pytest.raises(UserError, match=r"pass --input-size H W, --mean R G B, --std R G B$"):
        evaluate_artifact(bare, DATA, progress=False)
    result = evaluate_artifact(bare, DATA, input_size=SIZE, mean=MEAN, std=STD, progress=False)
    assert result.metrics == evaluate_artifact(folder / "model.onnx", DATA, progress=False).metrics


def test_bad_inputs_are_user_errors(folder, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="unknown artifact type"):
        evaluate_artifact(tmp_path / "notes.txt", DATA, progress=False)
    with pytest.raises(UserError, match="not found"):
        evaluate_artifact(tmp_path / "missing.onnx", DATA, progress=False)
    with pytest.raises(UserError, match="^workers 0: use 1 or more"):  # worded for Python
        evaluate_artifact(folder / "model.onnx", DATA, workers=0, progress=False)
    with pytest.raises(UserError, match="input size"):
        describe_artifact(folder / "model.onnx", input_size=(32,))
    five = tmp_path / "five"
    five.mkdir()
    model = _make_model(num_classes=5)
    save_checkpoint(model, five / "model.safetensors")
    _export_onnx(model, five / "model.onnx")
    with pytest.raises(UserError, match="predicts 5 classes but the dataset has 8"):
        evaluate_artifact(five / "model.onnx", DATA, progress=False)


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    """A .tflite made by the TF converter from a tiny NHWC TF function, with a manifest beside it,
    plus that TF function: enough to test the LiteRT plumbing (layout, workers)."""
    import tensorflow as tf

    d = tmp_path_factory.mktemp("tflite")
    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.normal(size=(3, 3, 3, 8)).astype(np.float32))
    w2 = tf.constant(rng.normal(size=(1, 1, 8, 8)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)])
    def segment(x):
        y = tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME"))
        y = tf.nn.conv2d(tf.nn.avg_pool2d(y, 2, 2, "VALID"), w2, 1, "SAME")
        return tf.image.resize(y, SIZE, "bilinear")

    converter = tf.lite.TFLiteConverter.from_concrete_functions([segment.get_concrete_function()], segment)
    (d / "model_float32.tflite").write_bytes(converter.convert())
    recorded = artifact_hashes(d, ["model_float32.tflite"])
    manifest = {"model": "tiny_tf", "input_size": list(SIZE), "mean": MEAN, "std": STD, "artifacts": recorded}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d / "model_float32.tflite", segment


def test_tflite_runs_in_nchw_and_workers_agree(tiny_tflite):
    path, segment = tiny_tflite
    expected, expected_preds = _hand_loop(lambda x: segment(x.transpose(0, 2, 3, 1)).numpy().transpose(0, 3, 1, 2))
    one = evaluate_artifact(path, DATA, "test", keep_predictions=True, progress=False)
    two = evaluate_artifact(path, DATA, "test", workers=2, keep_predictions=True, progress=False)
    assert one.kind == "tflite"
    assert one.metrics == expected
    np.testing.assert_array_equal(one.predictions, expected_preds)
    assert two.metrics == one.metrics
    np.testing.assert_array_equal(two.predictions, one.predictions)
    logits = open_artifact(path, threads=1)(np.zeros((2, 3, *SIZE), np.float32))
    assert logits.shape == (2, 8, *SIZE) and logits.dtype == np.float32
