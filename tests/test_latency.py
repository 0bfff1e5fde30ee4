"""`seg2tflite latency`: each model converted at its deploy size and timed in one run, rendered by the report."""

import json

import pytest

from seg2tflite.eval.record import DEPLOY_LATENCY_FILE
from seg2tflite.eval.report import render_deploy_latency_md
from seg2tflite.latency import LatencyConfig, run_latency

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
    md = render_deploy_latency_md(tmp_path)
    assert f"| `{NAME}` | 32x48 | {ms['pytorch']:.1f} | {ms['float32']:.1f} | {ms['full_int8']:.1f} |" in md


def test_unknown_model_is_one_line(tmp_path):
    from seg2tflite.errors import UserError

    with pytest.raises(UserError, match="^models no_such_model: unknown"):
        run_latency(LatencyConfig(run=str(tmp_path), models=("no_such_model",)))
