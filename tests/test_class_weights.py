"""Median frequency balancing: the weights, the training loss that uses them, old logs still resuming."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seg2tflite.app.class_weights import median_frequency_weights
from seg2tflite.app.train import RESUME_SETTINGS, resume_settings, train
from seg2tflite.app.train_config import TrainConfig
from seg2tflite.errors import UserError


def test_median_frequency_weights_by_hand():
    # class 0: 5 of the 8 pixels of the two images holding it; 1: 1 of 4; 2: 2 of 4; 3: nowhere
    masks = [np.array([[0, 0], [0, 1]]), np.array([[0, 0], [2, 2]]), np.array([[255, 255]])]
    frequency = np.array([5 / 8, 1 / 4, 2 / 4])
    expected = [*(np.median(frequency) / frequency), 1.0]
    assert median_frequency_weights(masks, 4) == pytest.approx(expected)
    assert median_frequency_weights([np.full((2, 2), 255)], 3) == pytest.approx([1, 1, 1])


def _config(out, **overrides):
    return TrainConfig(
        model="unet_mediatek", data="synthetic:train=16,val=8,test=4,size=32", out=str(out), steps=2, batch_size=4,
        warmup_steps=1, input_size=(32, 32), val_every=2, seed=3, progress=False, **overrides,
    )  # fmt: skip


def test_the_weighted_loss_trains_other_weights(tmp_path):
    train(_config(tmp_path / "plain"))
    train(_config(tmp_path / "weighted", class_weighting="median_frequency"))
    plain = load_file(str(tmp_path / "plain" / "last.safetensors"))
    weighted = load_file(str(tmp_path / "weighted" / "last.safetensors"))
    assert not all(torch.equal(plain[k], weighted[k]) for k in plain)


def test_an_unknown_weighting_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match="class.weighting inverse: not a class weighting"):
        train(_config(tmp_path, class_weighting="inverse"))
    assert not (tmp_path / "train_state.pt").exists()


def test_a_log_from_before_the_setting_resumes_unweighted_runs_only(tmp_path):
    logged = {k: v for k, v in resume_settings(_config(tmp_path)).items() if k != "class_weighting"}
    assert {k: logged.get(k) for k in RESUME_SETTINGS} == resume_settings(_config(tmp_path))
    assert {k: logged.get(k) for k in RESUME_SETTINGS} != resume_settings(_config(tmp_path, class_weighting="median_frequency"))
