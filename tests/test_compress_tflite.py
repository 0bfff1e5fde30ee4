"""Compression on the TFLite side and `seg2tflite compress` end to end, on small models.

Mixed precision (the deny lists really keep ops in float, the search stops at full int8 when
it is within budget and records every trial), the calibration study (every size, strategy and
weight-scale row), and the whole command on a tiny run folder: pruning through conversion into
the record, the compression table and plot.
"""

import json
from dataclasses import replace

import numpy as np
import pytest

from seg2tflite.app.compress_config import Method
from seg2tflite.app.flags import flag_wording
from seg2tflite.calibration.representative import build_calibration_set
from seg2tflite.calibration.select import select_calibration, select_random
from seg2tflite.converters.int8_mixed import (
    MIXED_FILE,
    REPORT_FILE,
    MixedPrecisionConfig,
    calibrate,
    format_mixed_precision,
    quantizable_nodes,
    quantize,
    search_mixed_precision,
    undelegated_op_types,
    write_mixed_precision,
)
from seg2tflite.converters.int8_study import CalibrationStudyConfig, render_calibration_study_md, run_calibration_study
from seg2tflite.converters.ops import op_report
from seg2tflite.data.preprocess import Preprocess
from seg2tflite.errors import UserError
from seg2tflite.eval.profile import latency_ms

from small_chain import SIZE, BlobDataset, K, registered_small

pytestmark = pytest.mark.chain

PREPROCESS = Preprocess(SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _arrays(split, n):
    pairs = [PREPROCESS(*BlobDataset(split)[i]) for i in range(n)]
    return np.stack([p[0] for p in pairs]).astype(np.float32), np.stack([p[1] for p in pairs])


@pytest.fixture(scope="module")
def calibrated(offline_result):
    calib = build_calibration_set(BlobDataset("train"), PREPROCESS, size=8, progress=False)
    return offline_result[0].out_dir, calib, calibrate(offline_result[0].out_dir / "saved_model", calib)


def test_deny_lists_keep_ops_in_float(calibrated):
    _, _, model = calibrated
    nodes = quantizable_nodes(model)
    assert "CONV_2D" in nodes and len(nodes["CONV_2D"]) >= 3
    full = op_report(quantize(model))
    assert not any(op.startswith("CONV_2D") for op in full.float_ops)
    by_type = op_report(quantize(model, float_ops=["CONV_2D"]))
    assert sum(op.startswith("CONV_2D") for op in by_type.float_ops) == len(nodes["CONV_2D"])
    one = nodes["CONV_2D"][0]
    by_node = op_report(quantize(model, float_nodes=[one]))
    assert [op for op in by_node.float_ops if op.startswith("CONV_2D")] == [f"CONV_2D -> {one}"]


def test_search_stops_at_full_int8_within_budget(calibrated, tmp_path):
    out, calib, model = calibrated
    images, masks = _arrays("val", 6)
    found = search_mixed_precision(
        out / "saved_model", out / "model_float32.tflite", calib, images, masks, K,
        MixedPrecisionConfig(max_miou_drop=100.0, prefer_speed=False), log=lambda _: None, progress=False,
    )  # fmt: skip
    assert found.within_budget and found.float_op_types == [] and found.float_nodes == []
    assert len(found.trials) == 1 and found.miou == found.full_int8_miou
    assert found.model == quantize(model)
    assert 0 <= found.full_int8_builtin_kernels_miou <= 100
    model_path, report_path = write_mixed_precision(tmp_path, found, {"settings": {"x": 1}})
    assert model_path.name == MIXED_FILE and model_path.read_bytes() == found.model
    record = json.loads(report_path.read_text())
    assert report_path.name == REPORT_FILE and record["settings"] == {"x": 1} and record["ops"]["ops"]["CONV_2D"] >= 3
    assert record["size_vs_float32"] == pytest.approx(len(found.model) / (out / "model_float32.tflite").stat().st_size)


@pytest.fixture(scope="module")
def nearest_net(tmp_path_factory):
    """A conv, then nearest-neighbour resizes down and up, as a SavedModel and its float32 file:
    XNNPACK takes RESIZE_NEAREST_NEIGHBOR neither in int8 nor in float32."""
    import tensorflow as tf

    d = tmp_path_factory.mktemp("nearest_net")
    w = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 3, K)).astype(np.float32))

    def segment(x):
        y = tf.image.resize(tf.nn.conv2d(x, w, 1, "SAME"), (SIZE[0] // 2, SIZE[1] // 2), "nearest")
        return tf.image.resize(y, SIZE, "nearest")

    module = tf.Module()
    module.segment = tf.function(segment, input_signature=[tf.TensorSpec([1, *SIZE, 3], tf.float32)])
    tf.saved_model.save(module, str(d / "saved_model"), signatures=module.segment)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(d / "saved_model"))
    (d / "model_float32.tflite").write_bytes(converter.convert())
    return d


def test_speed_step_times_the_undelegated_op_types_in_float_and_keeps_the_faster(nearest_net, calibrated):
    """Step 4: the op types XNNPACK leaves to the builtin kernels go to float; the file chosen is
    the one measured faster (both are within this budget)."""
    _, calib, small = calibrated
    images, masks = _arrays("val", 6)
    run = lambda d: search_mixed_precision(  # noqa: E731
        d / "saved_model", d / "model_float32.tflite", calib, images, masks, K, MixedPrecisionConfig(max_miou_drop=100.0),
        log=lambda _: None, progress=False, latency=latency_ms,
    )  # fmt: skip
    found = run(nearest_net)
    candidates = found.speed["candidates"]
    assert candidates["accuracy"]["undelegated"] == ["RESIZE_NEAREST_NEIGHBOR"]
    assert candidates["undelegated_in_float"]["float_op_types"] == ["RESIZE_NEAREST_NEIGHBOR"]
    assert candidates["undelegated_in_float"]["undelegated"] == ["RESIZE_NEAREST_NEIGHBOR"]  # no kernel in either
    faster = min(candidates, key=lambda name: candidates[name]["median_ms"])
    assert found.speed["chosen"] == faster
    assert found.float_op_types == candidates[faster]["float_op_types"] and found.within_budget
    assert "speed: accuracy" in format_mixed_precision(found)
    assert undelegated_op_types(quantize(small), None) == []  # the small CNN: nothing to win
    assert run(calibrated[0]).speed == {"chosen": "accuracy", "note": "XNNPACK already takes every op"}


def test_search_with_no_budget_tries_op_types_and_keeps_the_best(calibrated):
    out, calib, _ = calibrated
    images, masks = _arrays("val", 6)
    found = search_mixed_precision(
        out / "saved_model", out / "model_float32.tflite", calib, images, masks, K, MixedPrecisionConfig(max_miou_drop=0.0),
        log=lambda _: None, progress=False, latency=latency_ms,
    )  # fmt: skip
    if found.full_int8_miou >= found.float32_miou:  # int8 happened to match float on these images
        assert len(found.trials) == 1
        return
    tried = [tuple(t["float_ops"]) for t in found.trials[1:]]
    assert ("CONV_2D",) in tried  # every op type was tried alone
    assert found.within_budget == (found.miou >= found.float32_miou)
    assert found.miou in [t["miou"] for t in found.trials]
    assert found.float_op_types or found.float_nodes or not found.within_budget


def test_mixed_precision_config_refuses_bad_values():
    """Named as the caller gave it: the Python argument, or the flag on the command line."""
    with pytest.raises(UserError, match="^max_miou_drop: -1 must be >= 0 points$"):
        MixedPrecisionConfig(max_miou_drop=-1)
    with flag_wording(), pytest.raises(UserError, match="^--max-miou-drop: -1 must be >= 0 points$"):
        MixedPrecisionConfig(max_miou_drop=-1)


def test_calibration_study_rows(offline_result):
    out = offline_result[0].out_dir
    images, masks = _arrays("test", 6)
    config = CalibrationStudyConfig(sizes=(2, 8), seed=0)
    rows = run_calibration_study(out / "saved_model", BlobDataset("train"), PREPROCESS, images, masks, K, config, progress=False)
    assert [(r["size"], r["strategy"], r["weights"]) for r in rows] == [
        (2, "stratified", "per-channel"), (2, "random", "per-channel"),
        (8, "stratified", "per-channel"), (8, "random", "per-channel"), (8, "stratified", "per-tensor"),
    ]  # fmt: skip
    assert all(0 <= r["miou"] <= 100 and 0 <= r["miou_builtin_kernels"] <= 100 and r["file_bytes"] > 0 for r in rows)
    text = render_calibration_study_md({"small": {"data": "blobs test", "float32_miou": 50.0, "rows": rows}})
    assert "| 8 | stratified | per-tensor |" in text
    with pytest.raises(UserError, match="^sizes: 8 images asked for, the calibration split has 4"):
        run_calibration_study(
            out / "saved_model", BlobDataset("train", n=4), PREPROCESS, images, masks, K, config, progress=False
        )


def test_random_and_stratified_selection_differ():
    data = BlobDataset("train", n=16)
    assert select_random(data, 8, seed=0) == select_random(data, 8, seed=0)
    assert select_random(data, 8, seed=0) != select_random(data, 8, seed=1)
    assert len(set(select_calibration(data, 8, progress=False))) == 8


@pytest.mark.parametrize(
    "text, tag",
    [
        ("prune:0.5", "prune50"), ("prune:0.8", "prune80"), ("cluster:16", "cluster16"), ("qat", "qat"), ("mixed", "mixed"),
        ("cluster:16+mixed", "cluster16"), ("qat+mixed", "qat"),
    ],
)  # fmt: skip
def test_method_parsing(text, tag):
    method = Method.parse(text)
    assert method.tag == tag and method.then_mixed == text.endswith("+mixed")


@pytest.mark.parametrize(
    "text", ["prune", "prune:x", "cluster:1.5", "qat:3", "distill", "mixed+mixed", "cluster:16+prune", "calibration+mixed"]
)
def test_method_parsing_refuses(text):
    with pytest.raises(UserError, match="--methods"):
        Method.parse(text)


def test_compress_command_end_to_end(tmp_path, monkeypatch):
    """A tiny run folder (what `seg2tflite demo` leaves), then pruning, mixed precision and the
    calibration study through `run_compress`: rows in the record, the tables and the plots."""
    with registered_small("tiny_compress_cnn", input_size=(32, 32), num_classes=8) as name:
        _compress_end_to_end(tmp_path, name, monkeypatch)


def _compress_end_to_end(tmp_path, name, monkeypatch):
    import torch

    from seg2tflite.app.compress.pipeline import run_compress
    from seg2tflite.app.compress_config import CompressConfig
    from seg2tflite.converters import ConvertConfig, convert_registered
    from seg2tflite.converters.int8_range_rules import RULES_REVISION
    from seg2tflite.data import SyntheticDataset, load_dataset, write_folder_dataset
    from seg2tflite.data.spec import parse_synthetic_spec
    from seg2tflite.eval.measure import measure_conversion
    from seg2tflite.eval.record import load_record, record_results
    from seg2tflite.eval.report import build_report
    from seg2tflite.models.checkpoint import save_checkpoint
    from seg2tflite.models.registry import create_model

    run = tmp_path / "run"
    synthetic = parse_synthetic_spec("synthetic:train=16,val=4,test=4,size=32")
    splits = {s: SyntheticDataset(s, synthetic) for s in ("train", "val", "test")}
    write_folder_dataset(splits, run / "data", progress=False, source=synthetic.to_spec())
    data = f"folder:{run / 'data'}"
    (run / "demo.json").write_text(json.dumps({"config": {"data": data, "models": [name], "calib_size": 8, "parity_images": 4}}))
    torch.manual_seed(0)
    model_dir = run / "models" / name
    checkpoint = save_checkpoint(create_model(name, num_classes=8), model_dir / "train" / "best.safetensors")
    convert_registered(
        name, model_dir / "convert", ConvertConfig(input_size=(32, 32), calib_size=8, parity_images=4),
        load_dataset(data, "train"), load_dataset(data, "val"), checkpoint=checkpoint, log=None, progress=False,
    )  # fmt: skip
    rows, sample = measure_conversion(model_dir / "convert", data, model=name, bench=False, run_dir=run, progress=False)
    record_results(run, rows, sample)
    build_report(run)

    config = CompressConfig(
        run=str(run), methods=("prune:0.5+mixed", "mixed", "calibration"), finetune_steps=4, batch_size=2, max_miou_drop=100.0,
        val_images=4, calib_sizes=(2, 4), bench_runs=0, threads=1, progress=False,
    )  # fmt: skip
    assert run_compress(config) == 0

    record = {r.key: r for r in load_record(run).rows}
    pruned = f"{name}+prune50"
    for stage in ("pytorch", "float32", "full_int8"):
        row = record[(pruned, stage)]
        assert row.base_model == name and row.compression == "magnitude pruning to 50% sparsity" and row.miou is not None
    assert record[(name, "mixed_int8")].compression == "mixed precision"
    # +mixed: the search ran on the pruned model, its budget and size against the uncompressed float32 file
    assert record[(pruned, "mixed_int8")].compression == "magnitude pruning to 50% sparsity"
    pruned_mixed = json.loads((model_dir / "compress" / "prune50" / "convert" / "mixed_precision.json").read_text())
    assert pruned_mixed["float32_size_bytes"] == (model_dir / "convert" / "model_float32.tflite").stat().st_size
    assert record[(name, "pytorch")].compression is None
    report = json.loads((model_dir / "compress" / "prune50" / "compress.json").read_text())["report"]
    assert report["layers"] and all(layer["sparsity"] == pytest.approx(0.5, abs=0.01) for layer in report["layers"].values())
    folder = run / "report"
    compression = (folder / "compression.md").read_text()
    assert "magnitude pruning to 50% sparsity" in compression and "TFLite mixed int8" in compression
    assert "| 4 | random | per-channel |" in (folder / "calibration_study.md").read_text()
    assert f"## `{pruned}`" in (folder / "compression_layers.md").read_text()
    for plot in ("compression.png", "calibration_study.png", "tradeoff.png"):
        assert (folder / plot).read_bytes().startswith(b"\x89PNG")

    # a re-run with the same settings fine-tunes, searches and measures nothing again
    assert run_compress(replace(config, methods=("prune:0.5+mixed", "mixed"))) == 0
    assert {r.key: r for r in load_record(run).rows} == record

    # a compressed model's full-int8 file built again (newer range rules) is measured again: the
    # record does not keep the row of the file it replaced (made recognisable here)
    stored = json.loads((run / "record.json").read_text())
    for row in stored["rows"]:
        if (row["model"], row["stage"]) == (pruned, "full_int8"):
            row["miou"] = 0.123
    (run / "record.json").write_text(json.dumps(stored))
    monkeypatch.setattr("seg2tflite.converters.chain.RULES_REVISION", RULES_REVISION + 1)
    assert run_compress(replace(config, methods=("prune:0.5",))) == 0
    assert {r.key: r for r in load_record(run).rows}[(pruned, "full_int8")].miou == record[(pruned, "full_int8")].miou

    with pytest.raises(UserError, match="--models"):
        run_compress(CompressConfig(run=str(run), models=("segformer_b0",), progress=False))
    with pytest.raises(UserError, match="no demo.json"):
        run_compress(CompressConfig(run=str(tmp_path), progress=False))
