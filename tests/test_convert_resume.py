"""Interrupted and repeated conversions: unchanged stages are kept, changed ones rebuilt.

The kill test starts the real ``seg2tflite convert`` command, kills it with SIGKILL once the first
.tflite is on disk, and runs the same command again.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from seg2tflite.converters import ConvertConfig, convert_onnx
from seg2tflite.converters.manifest import sha256_file
from seg2tflite.converters.resume import StageCache, stage_key
from seg2tflite.data import write_folder_dataset

from interrupt import kill_once_recorded, recorded_stages
from small_chain import SIZE, BlobDataset

pytestmark = pytest.mark.chain

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BUILT_STAGES = ("onnx", "saved_model", "float32", "float16", "dynamic_int8", "full_int8", "int16x8", "parity")


def _convert_again(out, log):
    config = ConvertConfig(input_size=SIZE, calib_size=8, parity_images=4)
    return convert_onnx(
        out / "model.onnx",
        out,
        config,
        BlobDataset("train"),
        BlobDataset("val"),
        mean=MEAN,
        std=STD,
        log=log.append,
        progress=False,
    )


@pytest.fixture
def converted_copy(offline_result, tmp_path):
    """A private copy of a finished conversion folder, converted once more from its own model.onnx."""
    out = tmp_path / "out"
    shutil.copytree(offline_result[0].out_dir, out)
    first = _convert_again(out, [])  # the ONNX path has no PyTorch stage: establish that record
    return out, first


def test_stage_key_is_order_and_boundary_sensitive():
    assert stage_key(b"ab", b"c") != stage_key(b"a", b"bc")
    assert stage_key("x", {"a": 1, "b": 2}) == stage_key("x", {"b": 2, "a": 1})
    assert stage_key(np.zeros(3, np.float32).tobytes()) != stage_key(np.zeros(4, np.float32).tobytes())


def test_rerun_keeps_every_unchanged_stage(converted_copy):
    out, first = converted_copy
    before = {p.name: sha256_file(p) for p in out.glob("*.tflite")}
    log = []
    second = _convert_again(out, log)
    text = "\n".join(log)
    assert "saved_model: unchanged since the last run" in text
    for variant in ("float32", "float16", "dynamic_int8", "full_int8", "int16x8"):
        assert f"model_{variant}.tflite: unchanged since the last run, kept" in text
    assert "parity: inputs unchanged" in text
    assert second.parity.to_dict() == first.parity.to_dict()
    assert {p.name: sha256_file(p) for p in out.glob("*.tflite")} == before
    assert set(second.manifest["stage_keys"]) == set(BUILT_STAGES)


def test_a_damaged_artifact_is_rebuilt_alone(converted_copy):
    out, first = converted_copy
    damaged = out / "model_full_int8.tflite"
    whole = damaged.read_bytes()
    damaged.write_bytes(whole[:100])
    log = []
    second = _convert_again(out, log)
    text = "\n".join(log)
    assert "model_full_int8.tflite: unchanged" not in text
    assert "model_float32.tflite: unchanged since the last run, kept" in text
    assert "saved_model: unchanged since the last run" in text
    assert damaged.read_bytes() == whole  # rebuilt, identical: calibration and conversion are deterministic
    assert "parity: inputs unchanged" in text  # so the recorded figures still hold
    assert second.parity.to_dict() == first.parity.to_dict()


def test_a_changed_model_rebuilds_everything(converted_copy):
    out, _ = converted_copy
    model = onnx.load(str(out / "model.onnx"))
    weight = next(init for init in model.graph.initializer if len(init.dims) == 4)
    values = numpy_helper.to_array(weight) * 1.01
    weight.CopyFrom(numpy_helper.from_array(values.astype(np.float32), weight.name))
    onnx.save(model, str(out / "model.onnx"))
    log = []
    _convert_again(out, log)
    assert not any("unchanged" in line for line in log)


KILLED_MID_WRITE = """
import os, signal, sys
from seg2tflite.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_stale_temporaries_are_removed(tmp_path):
    """A write killed mid-way leaves its marked temporary; the next StageCache removes it, and
    nothing else (a user's own ``.*.tmp`` stays)."""
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path / "model_float32.tflite")])
    assert killed.returncode == -9
    (left,) = tmp_path.glob(".*.tmp")
    (tmp_path / ".notes.tmp").mkdir()
    (tmp_path / ".draft.txt.tmp").write_text("mine")
    cache = StageCache(tmp_path)
    assert not left.exists() and not (tmp_path / "model_float32.tflite").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".draft.txt.tmp", ".notes.tmp"]
    assert cache.stages == {}


def _blob_folder(path):
    return write_folder_dataset({s: BlobDataset(s) for s in ("train", "val")}, path, progress=False, source="blobs")


def test_killed_convert_resumes(offline_result, tmp_path):
    """SIGKILL ``seg2tflite convert`` after its first .tflite, then run it again to the end."""
    data = _blob_folder(tmp_path / "blobs")
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "seg2tflite.app", "convert", "--onnx", str(offline_result[0].out_dir / "model.onnx"),
        "--calib-data", f"folder:{data}", "--calib-size", "8", "--parity-images", "4", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kill_once_recorded(command, out, "float32", env=env)
    assert not (out / "manifest.json").exists()
    recorded = recorded_stages(out)
    assert {"onnx", "saved_model", "float32"} <= recorded and "parity" not in recorded

    rerun = subprocess.run(command, capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "saved_model: unchanged since the last run" in rerun.stdout
    assert "model_float32.tflite: unchanged since the last run, kept" in rerun.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    for rel, entry in manifest["artifacts"].items():
        assert sha256_file(out / rel) == entry["sha256"], rel
    assert not list(out.glob(".*.tmp"))
    assert json.loads((out / "parity.json").read_text())["failures"] == []
