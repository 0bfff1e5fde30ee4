"""`seg2tflite latency`: each model converted at its deploy size and timed in one run, rendered by the report."""

import json

import pytest

from seg2tflite.app.latency import LatencyConfig, run_latency
from seg2tflite.eval.record import DEPLOY_LATENCY_FILE
from seg2tflite.eval.report import render_deploy_latency_md

from small_chain import registered_small

pytestmark = pytest.mark.chain
NAME, DEPLOY_SIZE = "tiny_latency_cnn", (32, 48)


def test_models_are_timed_at_their_deploy_size_and_rendered(tmp_path):
    with registered_small(NAME, input_size=DEPLOY_SIZE, num_classes=8):
        config = LatencyConfig(run=str(tmp_path), models=(NAME,), threads=1, warmup=1, runs=3, isolate=False, progress=False)
        path = run_latency(config)
    assert path == tmp_path / DEPLOY_LATENCY_FILE
    (row,) = json.loads(path.read_text())["rows"]
    assert row["model"] == NAME and row["input_size"] == list(DEPLOY_SIZE)
    ms = row["median_ms"]
    assert set(ms) == {"pytorch", "float32", "full_int8"} and all(v > 0 for v in ms.values())
    assert row["int8_over_float32"] == pytest.approx(ms["full_int8"] / ms["float32"])
    assert row["float32_over_pytorch"] == pytest.approx(ms["float32"] / ms["pytorch"])
    assert (tmp_path / "deploy" / NAME / "model_full_int8.tflite").is_file()
    assert set(row["delegation"]) == {"float32", "full_int8"}
    assert json.loads(path.read_text())["timing"] == "turns"  # PyTorch and both files side by side, in turns
    md = render_deploy_latency_md(tmp_path)
    assert "over 3 turns: a model's artifacts loaded side by side in one fresh process, each about 0.25 s a turn" in md
    assert f"| `{NAME}` | 32x48 | {ms['pytorch']:.1f} | {ms['float32']:.1f} | {ms['full_int8']:.1f} | - |" in md


def test_the_demo_sizes_mixed_choice_is_applied_at_the_deploy_size(tmp_path):
    """A run whose compress chose float ops for a model: latency builds that mixed file at the
    deploy size from the deploy-size SavedModel and times it beside the others."""
    choice = tmp_path / "models" / NAME / "convert" / "mixed_precision.json"
    choice.parent.mkdir(parents=True)
    choice.write_text(json.dumps({"float_op_types": ["CONV_2D"], "float_nodes": ["no/such/node"]}))
    with registered_small(NAME, input_size=DEPLOY_SIZE, num_classes=8):
        config = LatencyConfig(run=str(tmp_path), models=(NAME,), threads=1, warmup=1, runs=3, isolate=False, progress=False)
        (row,) = json.loads(run_latency(config).read_text())["rows"]
    mixed = tmp_path / "deploy" / NAME / "model_mixed_int8.tflite"
    assert mixed.is_file() and row["median_ms"]["mixed_int8"] > 0
    assert row["mixed_int8"] == {"float_op_types": ["CONV_2D"], "float_nodes": [], "float_nodes_missing": 1}
    from seg2tflite.converters.ops import op_report

    assert any(op.startswith("CONV_2D") for op in op_report(mixed.read_bytes()).float_ops)
    assert set(row["delegation"]) == {"float32", "full_int8", "mixed_int8"}
    assert f"| {row['median_ms']['mixed_int8']:.1f} |" in render_deploy_latency_md(tmp_path)


def test_unknown_model_is_one_line(tmp_path):
    from seg2tflite.errors import UserError

    with pytest.raises(UserError, match="^models no_such_model: unknown"):
        run_latency(LatencyConfig(run=str(tmp_path), models=("no_such_model",)))
