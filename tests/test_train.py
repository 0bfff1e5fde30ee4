"""Native PyTorch training: checkpoints, determinism on CPU, and an exact --resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from seg2tflite.app.train import poly_lr_lambda, train
from seg2tflite.app.train_config import TrainConfig
from seg2tflite.data import load_dataset
from seg2tflite.errors import UserError

TINY_DATA = "synthetic:train=16,val=8,test=4,size=64"


def _config(out, **overrides):
    settings = dict(
        model="segformer_b0",
        data=TINY_DATA,
        out=str(out),
        steps=4,
        batch_size=4,
        warmup_steps=1,
        input_size=(64, 64),
        val_every=2,
        seed=3,
        progress=False,
    )
    return TrainConfig(**{**settings, **overrides})


def test_poly_schedule_warms_up_then_decays_to_zero():
    factor = poly_lr_lambda(warmup_steps=10, total_steps=110, power=0.9)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5**0.9)
    assert factor(110) == 0.0


def test_training_writes_checkpoints_and_log(tmp_path):
    best = train(_config(tmp_path))
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json", "train_state.pt", "train_log.json"):
        assert (tmp_path / name).is_file(), name
    config = json.loads((tmp_path / "last.json").read_text())
    assert (
        config["name"] == "segformer_b0"
        and config["num_classes"] == load_dataset(TINY_DATA, "train").info.num_classes
        and config["step"] == 4
    )
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert [h["step"] for h in log["history"]] == [2, 4]
    assert 0.0 <= best["miou"] <= 1.0


def test_same_seed_gives_the_same_weights(tmp_path):
    train(_config(tmp_path / "a"))
    train(_config(tmp_path / "b"))
    a = load_file(str(tmp_path / "a" / "last.safetensors"))
    b = load_file(str(tmp_path / "b" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_an_interruption_is_exact(tmp_path, monkeypatch):
    train(_config(tmp_path / "reference"))

    import seg2tflite.app.train as training

    save_state = training._save_train_state

    def save_then_die(*args, **kwargs):
        save_state(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the step-2 checkpoint

    monkeypatch.setattr(training, "_save_train_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path / "resumed"))
    monkeypatch.setattr(training, "_save_train_state", save_state)
    assert torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)["step"] == 2
    train(_config(tmp_path / "resumed", resume=True))

    reference = load_file(str(tmp_path / "reference" / "last.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_training_learns_on_synthetic_data(tmp_path):
    best = train(_config(tmp_path, steps=40, val_every=20, lr=2e-3, warmup_steps=4))
    assert best["pixel_accuracy"] > 0.5


def test_batch_larger_than_split_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="fewer than batch_size 64"):  # worded for Python
        train(_config(tmp_path, batch_size=64))
