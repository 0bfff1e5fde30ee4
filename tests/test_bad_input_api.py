"""Hostile input below the command line (issue 19): nothing of the user's is deleted, a refusal
writes nothing, messages name what the user gave, odd but valid files are read right, and Ctrl-C
stops evaluation workers without a traceback."""

import re

import numpy as np
import onnx
import pytest
from hostile import EIGHT_CLASS_ARGS, Bench, nothing_written, onnx_file
from onnx import helper
from PIL import Image

SYNTHETIC = "synthetic:size=32,train=16,val=8,test=8"


@pytest.fixture
def folder(tmp_path):
    from seg2tflite.data import SyntheticDataset, write_folder_dataset
    from seg2tflite.data.spec import parse_synthetic_spec

    config = parse_synthetic_spec("synthetic:size=16,train=4,val=4,test=4")
    return write_folder_dataset(
        {s: SyntheticDataset(s, config) for s in ("train", "val", "test")}, tmp_path / "d", progress=False
    )


KILLED_MID_WRITE = """
import os, signal, sys
from seg2tflite.atomic import atomic_path, private_tempdir
if sys.argv[2] == "beside":
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
with private_tempdir("onnx2tf") as tmp:
    (tmp / "model.onnx").write_bytes(b"copy")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_mid_write(target, where, env=None):
    import subprocess
    import sys

    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target), where], env=env)
    assert killed.returncode == -9


def test_only_this_projects_temporaries_are_ever_removed(tmp_path):
    from seg2tflite.converters.resume import StageCache

    out = tmp_path / "out"
    out.mkdir()
    mine = {".notes.tmp": "dir", ".draft.txt.tmp": "file", ".model_float32.tflite.abc.tmp": "dir", ".seg2tflite-1-x.tmp": "dir"}
    for name, kind in mine.items():
        (out / name).mkdir() if kind == "dir" else (out / name).write_text("the user's")
    _killed_mid_write(out / "model_float32.tflite", "beside")
    assert len(list(out.glob(".seg2tflite-*"))) == 2  # the killed write's temporary, and a look-alike without its marker
    StageCache(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(mine)


def test_a_killed_runs_temp_folder_is_removed_by_the_next(tmp_path):
    import os

    from seg2tflite.atomic import private_tempdir

    temp = tmp_path / "temp"
    temp.mkdir()
    (temp / "seg2tflite_onnx2tf_users_own").mkdir()
    _killed_mid_write(tmp_path / "unused", "temp", env={**os.environ, "TMPDIR": str(temp)})
    (left,) = [p for p in temp.iterdir() if p.name != "seg2tflite_onnx2tf_users_own"]
    assert left.name.startswith("seg2tflite_onnx2tf_")
    import tempfile

    saved, tempfile.tempdir = tempfile.tempdir, str(temp)
    try:
        with private_tempdir("bench"):
            pass
    finally:
        tempfile.tempdir = saved
    assert [p.name for p in temp.iterdir()] == ["seg2tflite_onnx2tf_users_own"]


def test_a_folder_in_the_way_of_a_file_is_refused_never_deleted(tmp_path):
    from seg2tflite.atomic import atomic_path, atomic_write_text
    from seg2tflite.errors import UserError

    folder = tmp_path / "results.json"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="a folder is in the way"):
        atomic_write_text(folder, "{}")
    with pytest.raises(UserError, match="a folder is in the way"), atomic_path(folder) as tmp:
        tmp.write_text("{}")
    assert (folder / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_class_count_refusal_writes_nothing(tmp_path):
    from seg2tflite.converters import ConvertConfig, convert_registered
    from seg2tflite.data import load_dataset
    from seg2tflite.errors import UserError

    out = tmp_path / "out"
    config = ConvertConfig(input_size=(32, 32), calib_size=8)
    calib, parity = load_dataset(SYNTHETIC, "train"), load_dataset(SYNTHETIC, "val")
    with pytest.raises(UserError, match="predicts 5 classes but synthetic:size=32"):
        convert_registered("segformer_b0", out, config, calib, parity, num_classes=5, log=None, progress=False)
    with pytest.raises(UserError, match="predicts 150 classes"):  # the registry's default head
        convert_registered("segformer_b0", out, config, calib, parity, log=None, progress=False)
    nothing_written(out)


def test_class_count_messages_name_the_data_the_user_gave(tmp_path, folder):
    import json

    from seg2tflite.converters import ConvertConfig, convert_model
    from seg2tflite.data import load_dataset
    from seg2tflite.errors import UserError

    from small_chain import SmallSegNet

    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["name"] == "synthetic"  # what the old message named instead of the path
    spec = f"folder:{folder}"
    with pytest.raises(UserError, match=f"predicts 4 classes but {spec} has 8"):
        convert_model(SmallSegNet(4), tmp_path / "out", ConvertConfig(input_size=(16, 16), calib_size=4, calib_min=1),
                      load_dataset(spec, "train"), log=None, progress=False)  # fmt: skip
    nothing_written(tmp_path / "out")


def test_an_onnx_file_of_the_installed_onnx_ir_version_is_carried(tmp_path):
    from seg2tflite.converters.onnx_export import prepare_onnx
    from seg2tflite.errors import UserError

    node = helper.make_node("Relu", ["input"], ["logits"], name="relu")
    path = onnx_file(tmp_path / "ir.onnx", [node], dims=(1, 3, 16, 16))
    model = onnx.load(str(path))
    assert model.ir_version > 10  # onnx's own default; onnxsim's checker reads up to 10
    prepared = prepare_onnx(model, None, str(path))
    assert prepared.num_classes == 3 and prepared.model.ir_version == 10
    newer = onnx_file(tmp_path / "opset23.onnx", [node], dims=(1, 3, 16, 16), opset=23)
    with pytest.raises(UserError, match="opset 23 .* opset_version=21 or lower"):
        prepare_onnx(onnx.load(str(newer)), None, str(newer))


def test_sixteen_bit_png_images_are_read_at_their_value(tmp_path):
    from seg2tflite.data.readers import read_image

    grey = np.full((8, 8), round(94.5 * 257), np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    image = read_image(tmp_path / "g16.png")
    assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
    assert abs(float(image.mean()) - 94.5) <= 0.5  # not 255, as a clipping conversion gives
    ramp = np.arange(0, 65536, 256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    np.testing.assert_array_equal(read_image(tmp_path / "ramp.png")[..., 0], np.rint(ramp / 257.0).astype(np.uint8))


def test_ctrl_c_during_evaluate_with_workers_prints_one_line(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C sends) once the two workers
    are evaluating: the command answers one line and exit 130; no worker prints a traceback."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    onnx_path = Bench(tmp_path, None).onnx()
    # More images than get evaluated: the first chunk (1/8 of the split, 10,000) reports progress,
    # and the SIGINT must still find the workers busy with the other 70,000 (20,000 images take 6 s
    # on an idle machine).
    images = 80_000
    command = [sys.executable, "-m", "seg2tflite.app", "evaluate", "--artifact", str(onnx_path), "--workers", "2",
               "--data", f"synthetic:size=32,test={images}", *EIGHT_CLASS_ARGS]  # fmt: skip
    # A terminal's foreground command has SIGINT at its default; one started from a background job
    # (`pytest &`, a CI runner's shell) inherits it ignored and would never see the Ctrl-C.
    reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(command, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=reset)
    stderr = bytearray()
    reader = threading.Thread(target=lambda: [stderr.extend(chunk) for chunk in iter(lambda: process.stderr.read1(4096), b"")])
    reader.start()
    try:
        while process.poll() is None and not re.search(
            rb"eval model\.onnx:\s+\d+%.*\| *[1-9]\d*/" + str(images).encode(), bytes(stderr)
        ):
            time.sleep(0.05)
        assert process.poll() is None, bytes(stderr).decode()[-2000:]
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        reader.join()
    text = bytes(stderr).decode(errors="replace")
    assert process.returncode == 130, text[-2000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert text.rstrip().endswith("seg2tflite: interrupted")


def test_nan_logits_of_the_reference_are_not_blamed_on_the_conversion():
    from seg2tflite.converters.config import ConvertConfig
    from seg2tflite.converters.divergence import explain_float_failure
    from seg2tflite.converters.parity import ParityReport, StageResult

    nan = float("nan")
    drift = {"argmax_agreement": 1.0, "max_abs": nan, "mean_abs": nan, "max_abs_over_range": nan}
    report = ParityReport(
        {"onnx": StageResult("onnx", None, nonfinite=4096), "saved_model": StageResult("saved_model", "onnx", drift, drift,
                                                                                          nonfinite=4096, gate="fail")},
        1, ["x"], nan, nan, reference="onnx",
    )  # fmt: skip
    found = explain_float_failure(report, None, None, None, ConvertConfig(input_size=(8, 8)), print)
    assert "onnx's own logits hold 4096 NaN/Inf values" in found["summary"]
    assert "pooling" not in found["summary"] and "torch.onnx.export" not in found["summary"]
