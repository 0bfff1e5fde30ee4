"""``OUT/demo.json`` names the run's models, not only the last demo's ``--models``."""

import json

from seg2tflite.app.demo import run_summary
from seg2tflite.app.demo_config import DemoConfig

DATA = "synthetic:size=64,train=32,val=16,test=8"


def _trained(out, name):
    checkpoint = out / "models" / name / "train" / "best.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")


def test_a_later_demo_keeps_the_models_an_earlier_one_trained_there(tmp_path):
    first = DemoConfig(out=str(tmp_path), models=("segformer_b0", "unet_mediatek"), data=DATA)
    _trained(tmp_path, "segformer_b0")  # unet_mediatek's training never finished: not the run's
    (tmp_path / "demo.json").write_text(json.dumps(run_summary(tmp_path, first, {"segformer_b0": {"train": 5.0}})))

    second = DemoConfig(out=str(tmp_path), models=("attendseg",), data=DATA)
    summary = run_summary(tmp_path, second, {"attendseg": {"train": 2.0}})
    assert summary["config"]["models"] == ["segformer_b0", "attendseg"]
    assert summary["seconds"] == {"segformer_b0": {"train": 5.0}, "attendseg": {"train": 2.0}}

    other_data = DemoConfig(out=str(tmp_path), models=("attendseg",), data=DATA.replace("size=64", "size=96"))
    assert run_summary(tmp_path, other_data, {})["config"]["models"] == ["attendseg"]


def test_an_unreadable_earlier_summary_is_replaced(tmp_path):
    (tmp_path / "demo.json").write_text('{"config": ')
    config = DemoConfig(out=str(tmp_path), models=("attendseg",), data=DATA)
    assert run_summary(tmp_path, config, {})["config"]["models"] == ["attendseg"]
