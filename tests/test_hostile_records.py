"""Records handed over by someone else (issue 28, items 1-3): what they name stays inside their folder.

Each case plants a victim file and folder beside the output folder, hands the code a record (or
an ONNX file) that names them by ``..``, an absolute path or a symbolic link, and checks the
refusal and that the victims are still there byte for byte. No case imports TensorFlow.
"""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from seg2tflite.converters.manifest import artifact_hashes
from seg2tflite.converters.resume import StageCache
from seg2tflite.converters.stages import ConversionDir
from seg2tflite.errors import UserError
from seg2tflite.models.registry import registered_model
from seg2tflite.records import check_external_data, inside, read_json

VICTIM = b"victim bytes: the user's, never to be read into an artifact, changed or deleted"
SHA = hashlib.sha256(VICTIM).hexdigest()


@pytest.fixture
def victims(tmp_path):
    """A file and a folder beside ``out``; returns a check that they are intact."""
    (tmp_path / "victim.txt").write_bytes(VICTIM)
    (tmp_path / "victim_dir").mkdir()
    (tmp_path / "victim_dir" / "data.bin").write_bytes(VICTIM)
    (tmp_path / "out").mkdir()

    def intact():
        assert (tmp_path / "victim.txt").read_bytes() == VICTIM
        assert (tmp_path / "victim_dir" / "data.bin").read_bytes() == VICTIM

    return intact


HOSTILE_NAMES = {
    "parent": "../victim.txt",
    "parent folder": "../victim_dir",
    "deeper parent": "sub/../../victim.txt",
    "absolute": "/etc/passwd",
    "windows drive": "C:\\victim.txt",
    "windows parent": "..\\victim.txt",
    "empty": "",
    "not a string": 5,
    "NUL byte": "model\x00.onnx",
}


@pytest.mark.parametrize("name", list(HOSTILE_NAMES.values()), ids=list(HOSTILE_NAMES))
def test_a_name_leaving_its_folder_is_refused(tmp_path, name):
    with pytest.raises(UserError, match="stages.json"):
        inside(tmp_path / "out", name, tmp_path / "out" / "stages.json")


def test_a_link_leaving_its_folder_is_refused_one_staying_inside_is_not(tmp_path, victims):
    out = tmp_path / "out"
    (out / "model.onnx").symlink_to(tmp_path / "victim.txt")
    (out / "saved_model").symlink_to(tmp_path / "victim_dir")
    for name in ("model.onnx", "saved_model", "saved_model/data.bin"):
        with pytest.raises(UserError, match="a link to"):
            inside(out, name, out / "stages.json")
    (out / "real.txt").write_text("x")
    (out / "alias.txt").symlink_to(out / "real.txt")
    assert inside(out, "alias.txt", out / "stages.json") == out / "alias.txt"
    victims()


@pytest.mark.parametrize("name", ["../victim.txt", "../victim_dir", "ABSOLUTE", "LINK", "LINKED FOLDER"])
def test_stages_json_cannot_delete_outside_its_folder(tmp_path, victims, name):
    out = tmp_path / "out"
    if name == "ABSOLUTE":
        name = str(tmp_path / "victim.txt")
    elif name == "LINK":
        (out / "model_float16.tflite").symlink_to(tmp_path / "victim.txt")
        name = "model_float16.tflite"
    elif name == "LINKED FOLDER":
        (out / "saved_model").symlink_to(tmp_path / "victim_dir")
        name = "saved_model/data.bin"
    entry = {"key": "k", "names": [name], "files": {name: {"sha256": SHA, "bytes": len(VICTIM)}}}
    (out / "stages.json").write_text(json.dumps({"stages": {"float16": entry}}))
    with pytest.raises(UserError, match="outside"):
        StageCache(out).forget_others([])
    victims()


def test_a_linked_file_is_never_hashed_nor_deleted(tmp_path, victims):
    out = tmp_path / "out"
    (out / "saved_model").mkdir()
    (out / "saved_model" / "variables.bin").symlink_to(tmp_path / "victim.txt")
    (out / "model.onnx").symlink_to(tmp_path / "victim.txt")
    assert artifact_hashes(out, ["saved_model", "model.onnx"]) == {}
    victims()


def test_claim_refuses_a_file_of_the_users_and_takes_its_own(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(VICTIM)
    with pytest.raises(UserError, match="did not write"):
        StageCache(out).claim(["model.onnx", "manifest.json"])
    assert not (out / "stages.json").exists() and (out / "model.onnx").read_bytes() == VICTIM
    # recorded by this project with the hash it has now: its own, replaceable
    cache = StageCache(out)
    cache.stages["onnx"] = {"key": "k", "names": ["model.onnx"], "files": artifact_hashes(out, ["model.onnx"])}
    cache.claim(["model.onnx", "manifest.json"])
    assert StageCache(out).claimed == ["model.onnx", "manifest.json"]
    (out / "model.onnx").write_bytes(VICTIM + b"edited")  # recorded, but changed since: no longer claimable as written
    cache = StageCache(out)
    cache.claimed = []
    with pytest.raises(UserError, match="model.onnx"):
        cache.claim(["model.onnx"])


def test_a_stages_json_of_the_users_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stages.json").write_bytes(VICTIM)
    with pytest.raises(UserError, match="stages.json"):
        StageCache(out).claim(["model.onnx"])
    assert (out / "stages.json").read_bytes() == VICTIM


def _manifest(folder, **model):
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"model": model}))
    return ConversionDir(folder)


def test_a_manifests_checkpoint_outside_is_read_only_when_its_hash_matches(tmp_path, victims):
    victim = tmp_path / "victim.txt"
    assert _manifest(tmp_path / "out", checkpoint=str(victim)).checkpoint() is None  # no hash recorded
    assert _manifest(tmp_path / "out", checkpoint=str(victim), checkpoint_sha256="0" * 64).checkpoint() is None
    assert _manifest(tmp_path / "out", checkpoint=str(victim), checkpoint_sha256=SHA).checkpoint() == victim
    link = tmp_path / "link.safetensors"
    link.symlink_to(victim)
    assert _manifest(tmp_path / "out", checkpoint=str(link), checkpoint_sha256=SHA).checkpoint() == link  # same bytes
    assert _manifest(tmp_path / "out", checkpoint=str(tmp_path / "victim_dir"), checkpoint_sha256=SHA).checkpoint() is None
    victims()


def test_the_folders_own_weights_may_not_link_outside(tmp_path, victims):
    folder = _manifest(tmp_path / "out")
    (folder.path / "model.safetensors").symlink_to(tmp_path / "victim.txt")
    with pytest.raises(UserError, match="a link to"):
        folder.checkpoint()
    victims()


def test_model_names_from_records_are_registered_names(tmp_path):
    assert registered_model("segformer_b0", tmp_path / "demo.json") == "segformer_b0"
    for name in ("../..", "/etc", "segformer_b0/../..", "", None, ["segformer_b0"]):
        with pytest.raises(UserError, match="demo.json"):
            registered_model(name, tmp_path / "demo.json")


@pytest.mark.parametrize("text", ['{"config": {"da', "[1, 2]", "\xff\xfe", ""])
def test_a_corrupt_record_is_one_line(tmp_path, text):
    path = tmp_path / "demo.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError, match="demo.json") as e:
        read_json(path, "run the demo again")
    assert "\n" not in str(e.value) and "run the demo again" in str(e.value)


# -- ONNX external data (item 2) -------------------------------------------------------------


def _external_onnx(folder, location="weights.bin"):
    """A one-Add ONNX model whose constant lives in external data at ``location``."""
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    bias = numpy_helper.from_array(np.arange(8, dtype=np.float32), "bias")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y], [bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)  # fmt: skip
    if location != "weights.bin":
        loaded = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        for entry in loaded.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        (folder / "model.onnx").write_bytes(loaded.SerializeToString())
    return folder / "model.onnx"


def test_external_data_beside_the_model_loads(tmp_path):
    from seg2tflite.converters.onnx_export import load_onnx

    model = load_onnx(_external_onnx(tmp_path / "m"))
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), np.arange(8, dtype=np.float32))


@pytest.mark.parametrize("how", ["link", "linked folder", "parent", "absolute"])
def test_external_data_outside_the_folder_is_refused(tmp_path, victims, how):
    from seg2tflite.converters.onnx_export import load_onnx

    folder = tmp_path / "m"
    secret = tmp_path / "victim.txt"
    if how == "link":
        path = _external_onnx(folder)
        (folder / "weights.bin").unlink()
        (folder / "weights.bin").symlink_to(secret)
    elif how == "linked folder":
        path = _external_onnx(folder, "sub/data.bin")
        (folder / "sub").symlink_to(tmp_path / "victim_dir")
    else:
        path = _external_onnx(folder, "../victim.txt" if how == "parent" else str(secret))
    with pytest.raises(UserError, match="external data must be a regular file") as e:
        load_onnx(path)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError):
        check_external_data(onnx.load(str(path), load_external_data=False), path)
    victims()


def test_convert_refuses_linked_external_data_and_writes_nothing(tmp_path, victims, capsys):
    from hostile import SMALL, fails

    path = _external_onnx(tmp_path / "m")
    (tmp_path / "m" / "weights.bin").unlink()
    (tmp_path / "m" / "weights.bin").symlink_to(tmp_path / "victim.txt")
    out = tmp_path / "out"
    fails(capsys, ["convert", "--onnx", str(path), "--calib-data", SMALL, "--out", str(out)], "symbolic link", "model.onnx")
    assert not any(out.iterdir())
    victims()


# -- the MediaPipe client's command line (item 1: its manifest; item 9: one line, exit 2) ------


def _client_line(capsys, *argv):
    from seg2tflite.eval.mediapipe_client import main

    code = main([str(a) for a in argv])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, errors
    return errors[0]


def test_mediapipe_client_refuses_in_one_line(tmp_path, victims, capsys):
    # the entry point itself, as the docstring runs it: one line, exit 2, no traceback
    done = subprocess.run([sys.executable, "-m", "seg2tflite.eval.mediapipe_client", str(tmp_path / "nowhere"),
                           "--data", "synthetic"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr and "not found" in done.stderr, done.stderr[-2000:]
    assert "--limit" in _client_line(capsys, tmp_path / "out", "--data", "synthetic", "--limit", "0")
    manifest = {
        "preprocessing": {"mean": [0, 0, 0], "std": [1, 1, 1]},
        "config": {"input_size": [32, 32], "variants": ["float32"]},
        "model": {"weights": "../victim.txt"},
    }
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    line = _client_line(capsys, tmp_path / "out", "--data", "synthetic:size=32,train=2,val=2,test=2", "--limit", "1")
    assert "outside" in line and "manifest.json" in line
    (tmp_path / "out" / "manifest.json").write_text('{"preprocessing": ')
    assert "unreadable or incomplete" in _client_line(capsys, tmp_path / "out", "--data", "synthetic")
    victims()


def test_the_records_module_loads_no_framework():
    # the containment helpers are plain path logic: importing them loads no framework
    code = "import sys, seg2tflite.records; print('torch' in sys.modules, 'tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False", "False"]


# -- a manifest that is not the file's (item 5) ----------------------------------------------


def test_a_manifest_is_used_only_for_the_files_it_records(tmp_path):
    from seg2tflite.eval.artifacts import find_manifest, ignored_manifest, read_metadata

    folder = tmp_path / "conversion"
    folder.mkdir()
    (folder / "model_float32.tflite").write_bytes(VICTIM)
    (folder / "saved_model").mkdir()
    (folder / "saved_model" / "saved_model.pb").write_bytes(VICTIM)
    artifacts = artifact_hashes(folder, ["model_float32.tflite", "saved_model"])
    pre = {"size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    (folder / "manifest.json").write_text(json.dumps({"preprocessing": pre, "artifacts": artifacts}))
    assert read_metadata(folder / "model_float32.tflite")["mean"] == [0.5, 0.5, 0.5]
    assert find_manifest(folder / "saved_model")  # every file of the folder recorded
    (folder / "model_float32.tflite").write_bytes(VICTIM + b"another model's file")
    (folder / "saved_model" / "variables.index").write_bytes(b"not recorded")
    for path in (folder / "model_float32.tflite", folder / "saved_model"):
        assert find_manifest(path) == {} and read_metadata(path)["mean"] is None
    assert ignored_manifest(folder / "model_float32.tflite") == folder / "manifest.json"


# -- class names (item 6) ---------------------------------------------------------------------


def test_class_names_stay_one_cell_of_per_class_iou_md():
    import re

    from seg2tflite.eval.record import RecordRow, RunRecord
    from seg2tflite.eval.report import render_per_class_md

    iou = {"road|kerb": 0.5, "sky\nline": 0.25, "plain": None}  # as a hand-edited record.json could hold them
    row = RecordRow("m", "pytorch", "a", "pytorch", (32, 32), "synthetic", "test", 4, 10, 1.0, 0.5, 0.5, 0.9, iou)
    table = [line for line in render_per_class_md(RunRecord([row])).splitlines() if line.startswith("|")]
    assert len(table) == 3  # header, alignment, one row: no line broken in two
    cells = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
    assert cells == {len(iou) + 3}, table  # every line has the same columns
    assert "road\\|kerb" in table[0] and "sky line" in table[0]


def test_a_dataset_of_the_api_refuses_a_class_name_with_a_line_break():
    from seg2tflite.data.base import DatasetInfo

    with pytest.raises(UserError, match="rename the class"):
        DatasetInfo("mine", ("road", "sky\nline"), ((0, 0, 0), (1, 1, 1)))
    assert DatasetInfo("mine", ("road|kerb",), ((0, 0, 0),)).num_classes == 1  # '|' is escaped where written


# -- the user's module (item 8) -----------------------------------------------------------------


def test_a_user_module_sees_its_own_argv_and_prints_after_it_returns(tmp_path, capsys, monkeypatch):
    from seg2tflite.app.user_module import build_user_model

    path = tmp_path / "net.py"
    path.write_text(
        "import sys\nimport torch\nSEEN = list(sys.argv)\nprint('hello from the module')\n"
        "def build():\n    return torch.nn.Conv2d(3, 4, 1)\n"
    )
    monkeypatch.setattr(sys, "argv", ["seg2tflite", "convert", "--secret-option"])
    model = build_user_model(f"{path}:build")
    assert sys.modules["seg2tflite_user_net"].SEEN == [str(path)]
    assert sys.argv == ["seg2tflite", "convert", "--secret-option"]  # given back
    assert "hello from the module" in capsys.readouterr().out
    assert not model.training


def test_the_manifest_of_an_earlier_version_is_taken_as_ours_only_when_it_describes_these_stages(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stages.json").write_text(json.dumps({"stages": {"onnx": {"key": "k1", "names": [], "files": {}}}}))
    (out / "manifest.json").write_text(json.dumps({"stage_keys": {"onnx": "k1"}}))
    assert StageCache(out).ours("manifest.json")
    (out / "manifest.json").write_text(json.dumps({"stage_keys": {"onnx": "another"}}))
    assert not StageCache(out).ours("manifest.json")


def test_a_manifests_app_ends_apply_only_to_the_files_it_records(tmp_path):
    from seg2tflite.converters.app_io import app_beside

    folder = tmp_path / "conversion"
    folder.mkdir()
    (folder / "model_float32.tflite").write_bytes(VICTIM)
    app = {"input": "uint8", "output": "logits", "mean": [0.5] * 3, "std": [0.25] * 3, "num_classes": 8}
    manifest = {"app": app, "artifacts": artifact_hashes(folder, ["model_float32.tflite"])}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert app_beside(folder / "model_float32.tflite").input == "uint8"
    (folder / "model_float32.tflite").write_bytes(VICTIM + b"another conversion's float-input file")
    assert app_beside(folder / "model_float32.tflite") is None


def test_evaluate_refuses_linked_external_data_too(tmp_path, victims):
    from seg2tflite.eval.opening import open_artifact

    path = _external_onnx(tmp_path / "m")
    (tmp_path / "m" / "weights.bin").unlink()
    (tmp_path / "m" / "weights.bin").symlink_to(tmp_path / "victim.txt")
    with pytest.raises(UserError, match="symbolic link"):
        open_artifact(path)
    victims()


def test_the_api_refuses_a_users_file_in_out_dir_in_its_own_words(tmp_path):
    from hostile import Bench

    from seg2tflite.converters import ConvertConfig, convert_onnx
    from seg2tflite.data import load_dataset

    onnx_path = Bench(tmp_path, None).onnx()
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_float32.tflite").write_bytes(VICTIM)
    data = load_dataset("synthetic:size=32,train=8,val=4,test=4", "train")
    with pytest.raises(UserError, match="choose another out_dir") as e:
        convert_onnx(onnx_path, out, ConvertConfig(input_size=(32, 32), variants=("float32",)), data,
                     mean=(0, 0, 0), std=(1, 1, 1), log=None, progress=False)  # fmt: skip
    assert "--out" not in str(e.value)
    assert (out / "model_float32.tflite").read_bytes() == VICTIM and sorted(p.name for p in out.iterdir()) == [
        "model_float32.tflite"
    ]
