"""Training interrupted at the worst moments (issue 28, items 7 and 13): between the checkpoint's
writes, and the history before the interrupt kept in the resumed log."""

import json

import pytest
import torch
from safetensors.torch import load_file

import seg2tflite.app.train as training
from seg2tflite.app.train import train
from seg2tflite.app.train_config import TrainConfig

from small_chain import registered_small

TINY_DATA = "synthetic:train=8,val=4,test=2,size=32"


@pytest.fixture(autouse=True)
def small():
    with registered_small("hostile_train_small", input_size=(32, 32)):
        yield


def _config(out, **overrides):
    settings = dict(model="hostile_train_small", data=TINY_DATA, out=str(out), steps=4, batch_size=2, warmup_steps=1,
                    input_size=(32, 32), val_every=2, seed=3, progress=False)  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def test_ctrl_c_between_the_weights_and_the_train_state_resumes_exactly(tmp_path, monkeypatch):
    train(_config(tmp_path / "reference"))
    save_state, calls = training._save_train_state, []

    def interrupted_before_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # step 4: last.safetensors already rewritten, train_state.pt not yet
            raise KeyboardInterrupt
        save_state(*args, **kwargs)

    monkeypatch.setattr(training, "_save_train_state", interrupted_before_the_second)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path / "resumed"))
    monkeypatch.setattr(training, "_save_train_state", save_state)
    assert torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)["step"] == 2
    assert json.loads((tmp_path / "resumed" / "last.json").read_text())["step"] == 4  # the two files disagree
    train(_config(tmp_path / "resumed", resume=True))

    reference = load_file(str(tmp_path / "reference" / "last.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    # the resumed log holds the history from before the interrupt too (item 13)
    logs = [json.loads((tmp_path / d / "train_log.json").read_text())["history"] for d in ("reference", "resumed")]
    assert [h["step"] for h in logs[1]] == [2, 4] and logs[1] == logs[0]


def test_ctrl_c_during_train_is_a_line_of_its_own_with_no_bar_after_it(tmp_path, monkeypatch, capsys):
    from seg2tflite.app.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_train_state", interrupted)
    argv = ["train", "--model", "hostile_train_small", "--data", TINY_DATA, "--steps", "4", "--val-every", "2",
            "--batch-size", "2", "--input-size", "32", "32", "--out", str(tmp_path / "t")]  # fmt: skip
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.endswith("\nseg2tflite: interrupted\n"), repr(err[-300:])  # not glued to the bar, nothing drawn after
    assert "train hostile_train_small" in err  # the bar was there, and was closed first
