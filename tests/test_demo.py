"""The main job end to end on a tiny budget: data, training, conversion, measurement, report."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from seg2tflite.app.demo import run_demo
from seg2tflite.app.demo_config import DemoConfig

from interrupt import kill_once_recorded

pytestmark = pytest.mark.chain


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
    assert stages == [  # MobileNetV2's integer files have a form of their own (saved_model_int8)
        "pytorch", "onnx", "saved_model", "saved_model_int8", "float32", "float16", "dynamic_int8", "full_int8", "int16x8",
    ]  # fmt: skip
    assert "deeplabv3plus_mobilenetv2" in (run / "report" / "results.md").read_text()

    trained = (run / "models" / "deeplabv3plus_mobilenetv2" / "train" / "best.safetensors").stat().st_mtime_ns
    assert run_demo(config) == 0  # a re-run finds every stage whole and only rebuilds the report
    assert (run / "models" / "deeplabv3plus_mobilenetv2" / "train" / "best.safetensors").stat().st_mtime_ns == trained
    assert "measure" not in json.loads((run / "demo.json").read_text())["seconds"]["deeplabv3plus_mobilenetv2"]

    # files converted anew (other calibration images) are measured anew, not reported with the old figures
    assert run_demo(dataclasses.replace(config, calib_size=12)) == 0
    assert "measure" in json.loads((run / "demo.json").read_text())["seconds"]["deeplabv3plus_mobilenetv2"]


NETWORK_GUARD = """
import os
import socket

_log = os.environ["SEG2TFLITE_TEST_NET_LOG"]
_connect = socket.socket.connect


def _refuse(address):
    with open(_log, "a") as f:
        f.write(f"{os.getpid()} {address!r}\\n")
    raise OSError("network forbidden in this test")


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(address)
    return _connect(self, address)


socket.socket.connect = connect
socket.create_connection = lambda address, *args, **kwargs: _refuse(address)
"""


def test_demo_killed_mid_conversion_resumes_offline_and_contained(tmp_path):
    """The real command in a subprocess whose every process refuses network connections (a
    sitecustomize on PYTHONPATH), with an empty HOME and working folder: SIGKILL it once the
    SavedModel is written, run it again, and check it finished, kept its work and wrote nowhere else."""
    guard, home, cwd, tmp = (tmp_path / name for name in ("guard", "home", "cwd", "tmp"))
    for folder in (guard, home, cwd, tmp):
        folder.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    net_log = tmp_path / "network.log"
    env = {
        **os.environ, "PYTHONPATH": str(guard), "HOME": str(home), "TMPDIR": str(tmp),
        "SEG2TFLITE_TEST_NET_LOG": str(net_log), "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    env.pop("MPLCONFIGDIR", None)
    command = [
        sys.executable, "-m", "seg2tflite.app", "demo", "--out", "run", "--models", "deeplabv3plus_mobilenetv2",
        "--data", "synthetic:size=64,train=32,val=16,test=8,colour_hint=0.9", "--input-size", "64", "64",
        "--train-steps", "4", "--batch-size", "4", "--calib-size", "8", "--workers", "1", "--bench-threads", "1",
    ]  # fmt: skip
    convert_dir = cwd / "run" / "models" / "deeplabv3plus_mobilenetv2" / "convert"
    kill_once_recorded(command, convert_dir, "saved_model", cwd=cwd, env=env)
    checkpoint = cwd / "run" / "models" / "deeplabv3plus_mobilenetv2" / "train" / "best.safetensors"
    trained = checkpoint.stat().st_mtime_ns

    rerun = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert "saved_model: unchanged since the last run" in rerun.stdout
    assert checkpoint.stat().st_mtime_ns == trained
    assert (cwd / "run" / "report" / "results.md").is_file()
    assert not net_log.exists(), net_log.read_text()
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]
    assert list(home.rglob("*")) == []
    assert not list((cwd / "run").rglob(".*.tmp"))
