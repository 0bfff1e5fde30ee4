"""The main job end to end on a tiny budget: data, training, conversion, measurement, report."""

import json

from seg2tflite.demo import run_demo
from seg2tflite.demo_config import DemoConfig


def test_demo_writes_the_report_and_resumes_without_redoing_work(tmp_path):
    config = DemoConfig(
        out=str(tmp_path / "run"),
        models=("deeplabv3plus_mobilenetv2",),
        data="synthetic:size=64,train=32,val=16,test=8,colour_hint=0.9",
        input_size=(64, 64),
        train_steps=4,
        batch_size=4,
        calib_size=8,
        workers=1,
        bench_threads=1,
        bench_runs=3,
        progress=False,
    )
    assert run_demo(config) == 0
    run = tmp_path / "run"
    assert (run / "data" / "test" / "images").is_dir()
    for name in ("results.md", "results.csv", "results.json", "per_class_iou.md", "tradeoff.png", "overlays.png"):
        assert (run / "report" / name).is_file(), name
    record = json.loads((run / "record.json").read_text())
    stages = [row["stage"] for row in record["rows"]]
    assert stages == ["pytorch", "onnx", "tf", "tflite_float32", "tflite_float16", "tflite_dynamic_int8", "tflite_full_int8", "tflite_int16x8"]
    assert "deeplabv3plus_mobilenetv2" in (run / "report" / "results.md").read_text()

    trained = (run / "models" / "deeplabv3plus_mobilenetv2" / "train" / "best.safetensors").stat().st_mtime_ns
    assert run_demo(config) == 0  # a re-run finds every stage whole and only rebuilds the report
    assert (run / "models" / "deeplabv3plus_mobilenetv2" / "train" / "best.safetensors").stat().st_mtime_ns == trained
    assert "measure" not in json.loads((run / "demo.json").read_text())["seconds"]["deeplabv3plus_mobilenetv2"]
