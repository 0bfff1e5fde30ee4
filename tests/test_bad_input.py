"""Bad input through the real command line: one clear line, exit 2, no traceback, nothing half-written.

Each case feeds ``seg2tflite`` one broken thing (a checkpoint, an ONNX file, calibration data, a
dataset, an output folder) and checks the answer names it and says what to do. None of them gets
as far as onnx2tf, so the whole table runs in seconds.
"""

import errno
import json
import pickle

import numpy as np
import pytest
import torch
from hostile import EIGHT_CLASS_ARGS, SMALL, Bench, fails, nothing_written, onnx_file
from onnx import helper
from PIL import Image

from seg2tflite.data import SyntheticDataset, write_folder_dataset
from seg2tflite.data.spec import parse_synthetic_spec
from seg2tflite.models import create_model
from seg2tflite.models.checkpoint import save_checkpoint

SYNTHETIC = "synthetic:size=32,train=16,val=8,test=8"


@pytest.fixture(scope="module")
def segformer_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(create_model("segformer_b0", num_classes=8), tmp_path_factory.mktemp("ckpt") / "b0.safetensors")


def _convert(checkpoint, out, model="segformer_b0", *extra):
    return [
        "convert", "--model", model, "--checkpoint", str(checkpoint), "--input-size", "32", "32",
        "--calib-data", SYNTHETIC, "--calib-size", "8", "--out", str(out), *extra,
    ]  # fmt: skip


def test_truncated_checkpoint(capsys, tmp_path, segformer_checkpoint):
    broken = tmp_path / "b0.safetensors"
    broken.write_bytes(segformer_checkpoint.read_bytes()[: segformer_checkpoint.stat().st_size // 2])
    (tmp_path / "b0.json").write_text(segformer_checkpoint.with_suffix(".json").read_text())
    fails(capsys, _convert(broken, tmp_path / "out"), broken, "not a readable weights file")
    nothing_written(tmp_path / "out")


def test_random_bytes_checkpoint(capsys, tmp_path):
    junk = tmp_path / "model.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    fails(capsys, _convert(junk, tmp_path / "out"), junk)
    nothing_written(tmp_path / "out")


class _RunsCode:
    """Unpickling this would create the marker file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_running_pickle_is_refused_never_run(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": _RunsCode(marker)}))
    fails(capsys, _convert(evil, tmp_path / "out"), evil, "refused to load")
    assert not marker.exists()
    nothing_written(tmp_path / "out")


def test_checkpoint_of_another_architecture(capsys, tmp_path, segformer_checkpoint):
    line = fails(
        capsys, _convert(segformer_checkpoint, tmp_path / "out", "deeplabv3plus_mobilenetv2", "--num-classes", "8"),
        segformer_checkpoint, "does not fit deeplabv3plus_mobilenetv2", "missing keys",
    )  # fmt: skip
    assert "Check --model and --num-classes" in line
    nothing_written(tmp_path / "out")


def test_checkpoint_with_another_class_count(capsys, tmp_path, segformer_checkpoint):
    # Refused against the data before the model is built: with --num-classes 8 the checkpoint fits.
    fails(
        capsys,
        _convert(segformer_checkpoint, tmp_path / "out", "segformer_b0", "--num-classes", "5"),
        "--num-classes 5",
        "has 8 classes",
    )
    nothing_written(tmp_path / "out")


@pytest.mark.chain
def test_onnx_op_the_chain_cannot_carry(capsys, tmp_path):
    node = helper.make_node("MaxUnpoolWithMagic", ["input"], ["logits"], name="/decoder/unpool", domain="custom.ops")
    path = onnx_file(tmp_path / "custom.onnx", [node], extra_opsets=["custom.ops"])
    argv = ["convert", "--onnx", str(path), "--calib-data", SYNTHETIC, "--out", str(tmp_path / "out")]
    fails(capsys, argv, path, "'/decoder/unpool'", "custom.ops::MaxUnpoolWithMagic", "cannot convert")
    nothing_written(tmp_path / "out")


def test_onnx_with_dynamic_input_needs_input_size(capsys, tmp_path):
    node = helper.make_node("Identity", ["input"], ["logits"], name="id")
    path = onnx_file(tmp_path / "dynamic.onnx", [node], dims=("batch", 3, "height", "width"))
    argv = ["convert", "--onnx", str(path), "--calib-data", SYNTHETIC, "--out", str(tmp_path / "out")]
    fails(capsys, argv, path, "dynamic dimensions", "--input-size H W")
    nothing_written(tmp_path / "out")


def test_not_an_onnx_file(capsys, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00garbage" * 50)
    fails(capsys, ["convert", "--onnx", str(path), "--calib-data", SYNTHETIC, "--out", str(tmp_path / "out")], path)
    nothing_written(tmp_path / "out")


def test_calibration_set_too_small(capsys, tmp_path, segformer_checkpoint):
    fails(
        capsys, _convert(segformer_checkpoint, tmp_path / "out", "segformer_b0", "--calib-size", "2"), "--calib-size", "at least"
    )
    nothing_written(tmp_path / "out")


class _Constant(SyntheticDataset):
    """Synthetic masks on images that are all one grey value."""

    def __getitem__(self, index):
        image, mask = super().__getitem__(index)
        return np.full_like(image, 128), mask


@pytest.mark.chain
def test_calibration_images_all_one_value(capsys, tmp_path, segformer_checkpoint):
    config = parse_synthetic_spec(SYNTHETIC)
    data = write_folder_dataset({s: _Constant(s, config) for s in ("train", "val")}, tmp_path / "grey", progress=False)
    argv = _convert(segformer_checkpoint, tmp_path / "out")
    argv[argv.index("--calib-data") + 1] = f"folder:{data}"
    fails(capsys, argv, "one value per channel")
    nothing_written(tmp_path / "out")


@pytest.fixture
def folder(tmp_path):
    config = parse_synthetic_spec("synthetic:size=16,train=4,val=4,test=4")
    return write_folder_dataset(
        {s: SyntheticDataset(s, config) for s in ("train", "val", "test")}, tmp_path / "d", progress=False
    )


def test_mask_label_beyond_the_classes(capsys, folder):
    mask = folder / "val" / "masks" / "val_000002.png"
    Image.fromarray(np.full((16, 16), 9, np.uint8), mode="L").save(mask)
    fails(capsys, ["data", "check", "--data", f"folder:{folder}"], mask, "9")


def test_mask_of_another_size(capsys, folder):
    mask = folder / "val" / "masks" / "val_000001.png"
    Image.fromarray(np.zeros((8, 16), np.uint8), mode="L").save(mask)
    fails(capsys, ["data", "check", "--data", f"folder:{folder}"], "val_000001")


def test_unreadable_image(capsys, folder):
    image = folder / "val" / "images" / "val_000003.png"
    image.write_bytes(image.read_bytes()[:40])
    fails(capsys, ["data", "check", "--data", f"folder:{folder}"], image)


def test_empty_split(capsys, folder, tmp_path):
    for f in (folder / "test" / "images").iterdir():
        f.unlink()
    for f in (folder / "test" / "masks").iterdir():
        f.unlink()
    fails(capsys, ["data", "check", "--data", f"folder:{folder}", "--split", "test"], "test")


def test_output_folder_blocked_by_a_file(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    fails(capsys, ["data", "synthetic", "--out", str(blocker / "data"), "--num-train", "2", "--num-val", "1", "--num-test", "1"])
    assert blocker.read_text() == "not a folder"


def test_disk_full_mid_write_keeps_nothing(capsys, tmp_path, monkeypatch):
    saved = []
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if len(saved) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "data"
    argv = ["data", "synthetic", "--out", str(out), "--num-train", "8", "--num-val", "2", "--num-test", "2"]
    line = fails(capsys, argv, "no space left on the device", "--out", f"error: {out}: ")
    assert ".seg2tflite-" not in line and ".tmp" not in line  # the target is named, never the temporary
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


# -- the hostile-input table (issue 19): one case per situation, each through the real CLI ------
#
# Every case builds what it needs in its own folder (a ``Bench``), runs one command and expects
# exit 2 with one ``seg2tflite: error:`` line holding every ``expected`` text and none of the
# ``absent`` ones; ``after`` checks what must (not) be on disk afterwards. None imports TensorFlow.

CASES = {}


def case(name, *expected, absent=(), after=None):
    def register(build):
        CASES[name] = (build, expected, absent, after)
        return build

    return register


# 1. data loss


def _user_folder(b):
    folder = b.root / "results"
    folder.mkdir()
    (folder / "mine.txt").write_text("my notes")
    return folder


def _user_folder_intact(b):
    assert (b.root / "results" / "mine.txt").read_text() == "my notes"


@case("evaluate --json onto a folder of the user's", "--json", "is a folder", after=_user_folder_intact)
def _(b):
    return ["evaluate", "--artifact", str(b.onnx()), "--data", SMALL, "--workers", "1", *EIGHT_CLASS_ARGS,
            "--json", str(_user_folder(b))]  # fmt: skip


@case("evaluate --json under a file", "--json", "is a file", absent=("--out",))
def _(b):
    (b.root / "notes").write_text("x")
    return ["evaluate", "--artifact", str(b.onnx()), "--data", SMALL, "--workers", "1", *EIGHT_CLASS_ARGS,
            "--json", str(b.root / "notes" / "m.json")]  # fmt: skip


# 2. tracebacks


def _evaluate_checkpoint(b, **config):
    return ["evaluate", "--artifact", str(b.checkpoint(**config)), "--data", SMALL, "--workers", "1"]


@case("checkpoint config: non-numeric class count", "b0.json", "'num_classes' is 'eight'", "a class count in 1..255")
def _(b):
    return _evaluate_checkpoint(b, num_classes="eight")


@case("checkpoint config: class count for convert", "b0.json", "'num_classes' is 'eight'")
def _(b):
    return _convert(b.checkpoint(num_classes="eight"), b.root / "out")


@case("checkpoint config: unknown model name", "b0.json", "'segformer_b9'", "not registered")
def _(b):
    return _evaluate_checkpoint(b, name="segformer_b9")


@case("checkpoint config: unknown keyword arguments", "b0.json", "'kwargs'", "depthz")
def _(b):
    return _evaluate_checkpoint(b, kwargs={"depthz": 3})


def _broken_onnx(b, how):
    path = b.onnx()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else np.random.default_rng(0).bytes(len(data)))
    return path


@case("evaluate: truncated ONNX file", "model.onnx", "ONNX")
def _(b):
    return ["evaluate", "--artifact", str(_broken_onnx(b, "truncated")), "--data", SMALL, "--workers", "1", *EIGHT_CLASS_ARGS]


@case("evaluate: garbage ONNX file", "model.onnx", "ONNX")
def _(b):
    return ["evaluate", "--artifact", str(_broken_onnx(b, "garbage")), "--data", SMALL, "--workers", "1", *EIGHT_CLASS_ARGS]


@case("bench: truncated ONNX file", "model.onnx", "ONNX")
def _(b):
    return ["bench", "--artifact", str(_broken_onnx(b, "truncated")), "--input-size", "32", "32", "--runs", "1"]


@case("bench: garbage ONNX file", "model.onnx", "ONNX")
def _(b):
    return ["bench", "--artifact", str(_broken_onnx(b, "garbage")), "--input-size", "32", "32", "--runs", "1"]


def _train(b, *extra, model="segformer_b0"):
    return ["train", "--model", model, "--data", SMALL, "--steps", "1", "--input-size", "32", "32",
            "--batch-size", "2", "--out", str(b.root / "train"), *extra]  # fmt: skip


def _nothing_trained(b):
    nothing_written(b.root / "train")


@case("train --batch-size 1 with BatchNorm on a 1x1 map", "--batch-size 1", "aspp", "--batch-size 2", after=_nothing_trained)
def _(b):
    return _train(b, "--batch-size", "1", model="deeplabv3plus_mobilenetv2")


@case("train --num-classes below the labels present", "--num-classes 3", "has 8 classes", after=_nothing_trained)
def _(b):
    return _train(b, "--num-classes", "3")


@case("train --lr negative", "--lr", "> 0", after=_nothing_trained)
def _(b):
    return _train(b, "--lr", "-1")


@case("train --workers negative", "--workers", "0 or more", after=_nothing_trained)
def _(b):
    return _train(b, "--workers", "-1")


@case("report --run: the record is a list", "record.json", "list")
def _(b):
    return ["report", "--run", str(b.record(lambda d: [d]))]


@case("report --run: a row lacks fields", "record.json", "lacks", "miou")
def _(b):
    def drop(d):
        del d["rows"][0]["miou"]
        return d

    return ["report", "--run", str(b.record(drop))]


@case("report --run: a row field of the wrong type", "record.json", "file_mb")
def _(b):
    def edit(d):
        d["rows"][0]["file_mb"] = "big"
        return d

    return ["report", "--run", str(b.record(edit))]


@case("report --run: corrupt predictions file", "m.npz", "unreadable prediction sample")
def _(b):
    run = b.record(lambda d: d)
    (run / "predictions").mkdir()
    (run / "predictions" / "m.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return ["report", "--run", str(run)]


@case("compress --run on a truncated demo.json", "demo.json", "unreadable or incomplete", "seg2tflite demo --out")
def _(b):
    (b.root / "run").mkdir()
    (b.root / "run" / "demo.json").write_text('{"config": {"data": "synth')
    return ["compress", "--run", str(b.root / "run"), "--methods", "mixed"]


# 3. refused late or never


@case(
    "convert --input-size 8192 8192",
    "--input-size 8192 8192",
    "needs at least",
    "largest size",
    after=lambda b: nothing_written(b.root / "out"),
)
def _(b):
    return [
        "convert",
        "--model",
        "segformer_b0",
        "--input-size",
        "8192",
        "8192",
        "--calib-data",
        SMALL,
        "--out",
        str(b.root / "out"),
    ]


@case("train --input-size 8192 8192", "--input-size 8192 8192", "largest size", after=_nothing_trained)
def _(b):
    return _train(b, "--input-size", "8192", "8192")


@case("evaluate --data synthetic:size=60000", "size=60000", "largest size that fits")
def _(b):
    return ["evaluate", "--artifact", str(b.onnx()), "--data", "synthetic:size=60000", *EIGHT_CLASS_ARGS]


@case(
    "data synthetic --image-size 60000 60000",
    "60000x60000",
    "largest size that fits",
    after=lambda b: nothing_written(b.root / "d"),
)
def _(b):
    return ["data", "synthetic", "--out", str(b.root / "d"), "--image-size", "60000", "60000"]


@case("train --num-classes 100000", "--num-classes", "1..255", after=_nothing_trained)
def _(b):
    return _train(b, "--num-classes", "100000")


@case("convert --num-classes 100000", "--num-classes", "1..255", after=lambda b: nothing_written(b.root / "out"))
def _(b):
    return _convert(b.checkpoint(), b.root / "out", "segformer_b0", "--num-classes", "100000")


@case("convert --max-miou-drop nan", "--max-miou-drop", "finite", after=lambda b: nothing_written(b.root / "out"))
def _(b):
    return _convert(b.checkpoint(), b.root / "out", "segformer_b0", "--max-miou-drop", "nan")


@case("demo --max-miou-drop nan", "--max-miou-drop", "finite", after=lambda b: nothing_written(b.root / "demo"))
def _(b):
    return ["demo", "--out", str(b.root / "demo"), "--models", "segformer_b0", "--data", SMALL, "--train-steps", "1",
            "--batch-size", "2", "--input-size", "32", "32", "--max-miou-drop", "nan"]  # fmt: skip


@case("train DeepLabv3+ at --input-size 65 67", "--input-size 65 67", "multiples of", after=_nothing_trained)
def _(b):
    return _train(b, "--input-size", "65", "67", model="deeplabv3plus_mobilenetv2")


# 4. misleading messages


@case("convert --std 0 0 0", "--std", "> 0", absent=("NaN", "calibration"))
def _(b):
    return ["convert", "--onnx", str(b.onnx()), "--std", "0", "0", "0", "--calib-data", SMALL, "--out", str(b.root / "out")]


@case("evaluate on data with other classes", "predicts 8 classes but the dataset has 5", absent=("--num-classes",))
def _(b):
    return ["evaluate", "--artifact", str(b.checkpoint()), "--data", f"folder:{b.folder(num_classes=5)}", "--workers", "1"]


@case("compress --methods prune:1.5", "--methods", "prune:1.5", absent=("--sparsity",))
def _(b):
    run = b.root / "run"
    (run / "models" / "segformer_b0" / "train").mkdir(parents=True)
    (run / "models" / "segformer_b0" / "train" / "best.safetensors").write_bytes(b"x")
    config = {"data": SMALL, "models": ["segformer_b0"], "calib_size": 8, "parity_images": 4}
    (run / "demo.json").write_text(json.dumps({"config": config}))
    return ["compress", "--run", str(run), "--methods", "prune:1.5"]


@case("convert a checkpoint of NaN weights", "NaN or Inf", "checkpoint is broken", absent=("torch.onnx.export", "pooling"),
      after=lambda b: nothing_written(b.root / "out"))  # fmt: skip
def _(b):
    from safetensors.torch import load_file, save_file

    weights = b.checkpoint()
    state = load_file(str(weights))
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    return _convert(weights, b.root / "out")


@case("evaluate a random-bytes .tflite", "junk.tflite", "not a TFLite model", absent=("utf-8", "codec"))
def _(b):
    (b.root / "junk.tflite").write_bytes(np.random.default_rng(0).bytes(4096))
    return ["evaluate", "--artifact", str(b.root / "junk.tflite"), "--data", SMALL, *EIGHT_CLASS_ARGS]


@case("convert --calib-data with a bad spec", "--calib-data bogus:x", absent=("--data bogus",))
def _(b):
    return ["convert", "--onnx", str(b.onnx()), "--calib-data", "bogus:x", "--out", str(b.root / "out")]


@case("class count names the data path given", "folder:", "has 5", absent=("synthetic:train",))
def _(b):
    return _convert(b.checkpoint(), b.root / "out", "segformer_b0", "--calib-data", f"folder:{b.folder(num_classes=5)}")


# 5. records that reach outside their folder (issue 28): a victim beside --out survives byte for byte

VICTIM = b"the user's own file, not to be touched"


def _victim(b):
    (b.root / "victim.txt").write_bytes(VICTIM)
    (b.root / "victim_dir").mkdir()
    (b.root / "victim_dir" / "image.png").write_bytes(VICTIM)
    return b.root / "victim.txt"


def _victim_intact(b):
    assert (b.root / "victim.txt").read_bytes() == VICTIM
    assert (b.root / "victim_dir" / "image.png").read_bytes() == VICTIM


def _stages_naming(b, planted):
    """A --out whose stages.json lists ``planted`` (with the victim's public sha256) as its file."""
    import hashlib

    _victim(b)
    out = b.root / "out"
    out.mkdir()
    name = {"ABSOLUTE": str(b.root / "victim.txt"), "LINK": "model_dynamic_int8.tflite"}.get(planted, planted)
    if planted == "LINK":
        (out / name).symlink_to(b.root / "victim.txt")
    files = {name: {"sha256": hashlib.sha256(VICTIM).hexdigest(), "bytes": len(VICTIM)}}
    entry = {"key": "k", "names": [name], "files": files}
    (out / "stages.json").write_text(json.dumps({"stages": {"dynamic_int8": entry}}))
    return ["convert", "--onnx", str(b.onnx()), "--calib-data", SMALL, "--variants", "float32", "--out", str(out)]


for _name, _planted in {
    "a file beside --out": "../victim.txt",
    "a folder beside --out": "../victim_dir",
    "an absolute path": "ABSOLUTE",
    "a link out of --out": "LINK",
}.items():

    @case(f"convert: stages.json names {_name}", "stages.json", "outside", "delete it", after=_victim_intact)
    def _(b, planted=_planted):
        return _stages_naming(b, planted)


def _demo_run(b, models, **config):
    run = b.root / "run"
    run.mkdir()
    config = {"data": SMALL, "models": models, "calib_size": 8, "parity_images": 4, **config}
    (run / "demo.json").write_text(json.dumps({"config": config}))
    _victim(b)
    # what a hostile name would reach: a trained model beside the run
    (b.root / "victim_dir" / "train").mkdir()
    (b.root / "victim_dir" / "train" / "best.safetensors").write_bytes(VICTIM)
    return run


def _victim_and_its_model_intact(b):
    _victim_intact(b)
    assert sorted(p.name for p in (b.root / "victim_dir").iterdir()) == ["image.png", "train"]


# latency and compress load the models a run lists (registered names only); profile reads their folders (inside models/)
_REFUSALS = {"latency": "not a registered model name", "compress": "not a registered model name", "profile": "outside"}
for _command, _extra in {"latency": ["--runs", "1"], "compress": ["--methods", "mixed"], "profile": []}.items():
    for _label, _model in {"../": "../victim_dir", "absolute": "ABSOLUTE"}.items():

        @case(f"{_command}: demo.json names a model {_label}", "demo.json", _REFUSALS[_command],
              after=_victim_and_its_model_intact)  # fmt: skip
        def _(b, command=_command, extra=_extra, model=_model):
            model = str(b.root / "victim_dir") if model == "ABSOLUTE" else model
            return [command, "--run", str(_demo_run(b, [model])), *extra]


# 6. the user's files inside --out: never replaced (issue 28)


def _users_file(path, data=VICTIM):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@case("convert --model: the user's model.safetensors in --out", "model.safetensors", "did not write", "--out",
      after=lambda b: (b.root / "out" / "model.safetensors").read_bytes() == VICTIM or pytest.fail("replaced"))  # fmt: skip
def _(b):
    _users_file(b.root / "out" / "model.safetensors")
    return ["convert", "--model", "segformer_b0", "--input-size", "32", "32", "--calib-data", SMALL, "--calib-size", "8",
            "--variants", "float32", "--out", str(b.root / "out")]  # fmt: skip


@case("convert --onnx OUT/model.onnx --out OUT: the input is the user's", "model.onnx", "did not write", "--out",
      after=lambda b: (b.root / "out" / "model.onnx").read_bytes() == b.after_bytes or pytest.fail("replaced"))  # fmt: skip
def _(b):
    out = b.root / "out"
    out.mkdir()
    onnx_path = b.onnx().rename(out / "model.onnx")
    b.after_bytes = onnx_path.read_bytes()
    return ["convert", "--onnx", str(onnx_path), "--calib-data", SMALL, "--variants", "float32", "--out", str(out)]


@case("convert: a stages.json of the user's in --out", "stages.json", "--out")
def _(b):
    _users_file(b.root / "out" / "stages.json", b"my own notes on the stages")
    return ["convert", "--onnx", str(b.onnx()), "--calib-data", SMALL, "--variants", "float32", "--out", str(b.root / "out")]


def _users_dataset_intact(b):
    data = b.root / "run" / "data"
    assert (data / "README.md").read_bytes() == VICTIM
    assert json_of(data / "dataset.json")["name"] == "mine"
    assert sorted(p.name for p in (data / "val" / "images").iterdir()) == sorted(b.images)


def json_of(path):
    return json.loads(path.read_text())


def _users_dataset(b, folder):
    import shutil

    shutil.copytree(b.folder(dataset_name="mine"), folder)
    (folder / "README.md").write_bytes(VICTIM)
    b.images = [p.name for p in (folder / "val" / "images").iterdir()]


@case("demo --out OUT: the user's dataset in OUT/data", "data", "not a folder dataset seg2tflite wrote",
      "--data folder:", after=_users_dataset_intact)  # fmt: skip
def _(b):
    _users_dataset(b, b.root / "run" / "data")
    return ["demo", "--out", str(b.root / "run"), "--models", "segformer_b0", "--data", SMALL, "--train-steps", "1",
            "--batch-size", "2", "--input-size", "32", "32"]  # fmt: skip


@case("data synthetic --out: the user's dataset", "not a folder dataset seg2tflite wrote", after=_users_dataset_intact)
def _(b):
    _users_dataset(b, b.root / "run" / "data")
    return ["data", "synthetic", "--out", str(b.root / "run" / "data"), "--num-train", "2", "--num-val", "1", "--num-test", "1"]


# 7. a manifest that is not the file's (issue 28): its preprocessing is not taken for another file


def _beside_a_manifest(b, recorded_sha):
    import shutil

    folder = b.root / "conversion"
    folder.mkdir()
    path = shutil.copy(b.onnx(), folder / "model.onnx")
    pre = {"size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    manifest = {"preprocessing": pre, "model": {"num_classes": 8}, "artifacts": {"model.onnx": {"sha256": recorded_sha}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return path


@case("evaluate: a file copied beside another conversion's manifest", "manifest.json", "does not record this file",
      "--input-size H W", "--mean")  # fmt: skip
def _(b):
    return ["evaluate", "--artifact", str(_beside_a_manifest(b, "0" * 64)), "--data", SMALL, "--workers", "1"]


@case("bench: a file copied beside another conversion's manifest", "manifest.json", "--input-size")
def _(b):
    return ["bench", "--artifact", str(_beside_a_manifest(b, "0" * 64)), "--runs", "1"]


# 8. class names that would break the files they are written into (issue 28)


def _class_named(b, name):
    folder = b.folder()
    meta = json.loads((folder / "dataset.json").read_text())
    meta["class_names"][3] = name
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


for _label, _bad in {"a line break": "road\nsky", "a carriage return": "road\r", "a tab": "a\tb",
                     "a Unicode line separator": "a\u2028b", "blank": "  "}.items():  # fmt: skip

    @case(f"data check: a class name with {_label}", "dataset.json", "class_names[3]", "rename the class")
    def _(b, bad=_bad):
        return ["data", "check", "--data", f"folder:{_class_named(b, bad)}"]


@case("convert: a class name with a line break never reaches labels.txt", "class_names[3]",
      after=lambda b: nothing_written(b.root / "out"))  # fmt: skip
def _(b):
    data = _class_named(b, "a\nb")
    return ["convert", "--onnx", str(b.onnx()), "--calib-data", f"folder:{data}", "--out", str(b.root / "out")]


# 9. a user module that runs a script at import, or takes two inputs (issue 28)

_MODEL = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 1)

    def forward(self, x{extra}):
        return self.conv(x)


def build():
    return Net()
"""


def _module(b, prelude="", extra=""):
    path = b.root / "my_model.py"
    path.write_text(prelude + _MODEL.format(extra=extra))
    return ["convert", "--module", f"{path}:build", "--input-size", "32", "32", "--calib-data", SMALL,
            "--out", str(b.root / "out")]  # fmt: skip


@case("convert --module: the file calls sys.exit(0) at import", "--module", "SystemExit 0", "__main__",
      after=lambda b: nothing_written(b.root / "out"))  # fmt: skip
def _(b):
    return _module(b, "import sys\nsys.exit(0)\n")


@case("convert --module: the file calls sys.exit('a message') at import", "--module", "SystemExit", "a message",
      after=lambda b: nothing_written(b.root / "out"))  # fmt: skip
def _(b):
    return _module(b, "import sys\nsys.exit('a message')\n")


@case("convert --module: the file parses sys.argv at import", "--module", "it printed", "--epochs", absent=("usage: seg2tflite",),
      after=lambda b: nothing_written(b.root / "out"))  # fmt: skip
def _(b):
    return _module(
        b, "import argparse\np = argparse.ArgumentParser()\np.add_argument('--epochs', required=True)\np.parse_args()\n"
    )


@case("convert --module: a model with two inputs", "--module", "takes 2 inputs", "single-image",
      after=lambda b: nothing_written(b.root / "out"))  # fmt: skip
def _(b):
    return _module(b, extra=", mask")


# 10. files that claim more than they hold, or are not the text expected (issue 28)


def _bomb(path, width=100000, height=100000, mode=2):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@case("data check: a decompression-bomb PNG as image", "val_000001.png", "too many to read safely")
def _(b):
    folder = b.folder()
    _bomb(folder / "val" / "images" / "val_000001.png")
    return ["data", "check", "--data", f"folder:{folder}"]


@case("data check: a decompression-bomb PNG as mask", "val_000002.png", "mask claims more than")
def _(b):
    folder = b.folder()
    _bomb(folder / "val" / "masks" / "val_000002.png", mode=0)
    return ["data", "check", "--data", f"folder:{folder}"]


@case("data check: a VOC split list that is not UTF-8", "val.txt", "not UTF-8", "restore")
def _(b):
    root = b.root / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_bytes(b"2007_\xff\xfe000032\n")
    return ["data", "check", "--data", f"voc:{root}"]


# 11. corrupt or partial records each command reads (issue 28)


@case("latency --run on a truncated demo.json", "demo.json", "unreadable or incomplete", "--models")
def _(b):
    (b.root / "run").mkdir()
    (b.root / "run" / "demo.json").write_text('{"config": {"models": ["segf')
    return ["latency", "--run", str(b.root / "run"), "--runs", "1"]


@case("latency --run on a demo.json without its models", "demo.json", "lacks config.models")
def _(b):
    (b.root / "run").mkdir()
    (b.root / "run" / "demo.json").write_text('{"config": {}}')
    return ["latency", "--run", str(b.root / "run"), "--runs", "1"]


@case("compress --methods calibration on a truncated calibration study", "calibration_study.json", "unreadable or incomplete")
def _(b):
    run = _demo_run(b, ["segformer_b0"])
    (run / "models" / "segformer_b0" / "train").mkdir(parents=True)
    (run / "models" / "segformer_b0" / "train" / "best.safetensors").write_bytes(b"x")
    (run / "calibration_study.json").write_text('{"segformer_b0": {"siz')
    return ["compress", "--run", str(run), "--methods", "calibration"]


@case("report --run: a truncated compress log", "compress.json", "unreadable or incomplete", "seg2tflite compress")
def _(b):
    run = b.record(lambda d: d)
    log = run / "models" / "m" / "compress" / "prune_0.5" / "compress.json"
    log.parent.mkdir(parents=True)
    log.write_text('{"report": {"config": {"min_par')
    return ["report", "--run", str(run)]


@case("report --run: a compress log without its method", "compress.json", "lacks settings.method")
def _(b):
    run = b.record(lambda d: d)
    log = run / "models" / "m" / "compress" / "prune_0.5" / "compress.json"
    log.parent.mkdir(parents=True)
    log.write_text('{"report": {}}')
    return ["report", "--run", str(run)]


@case("demo: a train log without its config", "train_log.json", "lacks config", "segformer_b0")
def _(b):
    train = b.root / "run" / "models" / "segformer_b0" / "train"
    train.mkdir(parents=True)
    (train / "train_log.json").write_text('{"history": []}')
    return ["demo", "--out", str(b.root / "run"), "--models", "segformer_b0", "--data", SMALL, "--train-steps", "1",
            "--batch-size", "2", "--input-size", "32", "32"]  # fmt: skip


# 12. advice that would not help (issue 28): each names what is actually wrong


def _module_returning(b, expression, *extra, data=SMALL):
    path = b.root / "returns.py"
    path.write_text(_MODEL.format(extra="").replace("return self.conv(x)", f"y = self.conv(x)\n        return {expression}"))
    return ["convert", "--module", f"{path}:build", "--input-size", "32", "32", "--calib-data", data,
            "--out", str(b.root / "out"), *extra]  # fmt: skip


@case("convert --module: output channels other than the data's classes", "--module", "its output channels", "has 5",
      absent=("pass --num-classes",))  # fmt: skip
def _(b):
    return _module_returning(b, "y", data=f"folder:{b.folder(num_classes=5)}")


@case("convert --module: channels-last logits", "channels-last", "permute(0, 3, 1, 2)", absent=("--upsample-logits",))
def _(b):
    return _module_returning(b, "y.permute(0, 2, 3, 1)")


@case("convert --module: a dict of two tensors", "--output-key a", absent=("output_key=",))
def _(b):
    return _module_returning(b, "{'a': y, 'b': y}")


@case("convert --module --output-key of no tensor", "--output-key nope", "no tensor", absent=("output_key=",))
def _(b):
    return _module_returning(b, "{'a': y, 'b': y}", "--output-key", "nope")


@case("convert --module: low-resolution logits", "16x16 for a 32x32 input", "--upsample-logits", absent=("upsample_logits=",))
def _(b):
    return _module_returning(b, "y[:, :, ::2, ::2]")


@case("convert --variants with an entry repeated", "--variants", "float32 repeated", absent=("not valid",))
def _(b):
    return ["convert", "--onnx", str(b.onnx()), "--calib-data", SMALL, "--variants", "float32", "float16", "float32",
            "--out", str(b.root / "out")]  # fmt: skip


def _linked_out(b, target):
    link = b.root / "data_link"
    link.symlink_to(target)
    return ["data", "synthetic", "--out", str(link), "--num-train", "2", "--num-val", "1", "--num-test", "1"]


@case("data synthetic --out through a symbolic link to an empty folder", "data_link", "symbolic link", "real folder",
      absent=(".seg2tflite-", ".tmp"), after=lambda b: not any((b.root / "real").iterdir()) or pytest.fail("written"))  # fmt: skip
def _(b):
    (b.root / "real").mkdir()
    return _linked_out(b, b.root / "real")


@case("data synthetic --out through a dangling symbolic link", "data_link", "symbolic link", absent=(".seg2tflite-", ".tmp"))
def _(b):
    return _linked_out(b, b.root / "gone")


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_refused_in_one_line(name, capsys, tmp_path, segformer_checkpoint):
    build, expected, absent, after = CASES[name]
    bench = Bench(tmp_path, segformer_checkpoint)
    argv = build(bench)
    line = fails(capsys, argv, *expected)
    for text in absent:
        assert text not in line, (text, line)
    if after is not None:
        after(bench)
