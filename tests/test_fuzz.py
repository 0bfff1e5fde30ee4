"""Fuzzing the loaders: corrupted checkpoints, images, masks, ONNX files and dataset folders.

Every loader must either return what it promises or raise ``UserError`` (the one clear line);
any other exception is a crash the user would see as a traceback. The corruptions are seeded, so
a failure reproduces.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from seg2tflite.converters.onnx_export import load_onnx
from seg2tflite.data import SyntheticDataset, load_dataset, write_folder_dataset
from seg2tflite.data.readers import read_image, read_mask
from seg2tflite.data.spec import parse_synthetic_spec
from seg2tflite.errors import UserError
from seg2tflite.models.checkpoint import read_state_dict

CASES = 40


def _corruptions(data: bytes, seed: int):
    """Truncations, byte flips, random bytes and an empty file, all derived from ``seed``."""
    rng = np.random.default_rng(seed)
    for cut in sorted(set(rng.integers(0, len(data), CASES // 2).tolist())):
        yield f"truncated at {cut}", data[:cut]
    for _ in range(CASES // 2):
        flipped = bytearray(data)
        for i in rng.integers(0, len(data), 1 + int(rng.integers(0, 8))):
            flipped[i] ^= 1 << int(rng.integers(0, 8))
        yield "bytes flipped", bytes(flipped)
    yield "random bytes", rng.bytes(int(rng.integers(1, 5000)))
    yield "empty", b""


def _only_user_errors(load, path, what):
    try:
        return load(path)
    except UserError as e:
        assert str(path) in str(e) or path.name in str(e), f"{what}: the error does not name the file: {e}"
        return None
    except Exception as e:  # noqa: BLE001 - this is the crash the test is looking for
        pytest.fail(f"{what}: {type(e).__name__}: {e}")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupted_checkpoints(tmp_path, suffix):
    from safetensors.torch import save_file

    state = {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4)}
    good = tmp_path / f"good{suffix}"
    save_file(state, str(good)) if suffix == ".safetensors" else torch.save(state, good)
    for i, (what, data) in enumerate(_corruptions(good.read_bytes(), seed=1)):
        path = tmp_path / f"bad{i}{suffix}"
        path.write_bytes(data)
        state = _only_user_errors(read_state_dict, path, what)
        if state is not None:  # a flip that missed everything that matters
            assert all(isinstance(v, torch.Tensor) for v in state.values())


def _png(path, array, mode):
    Image.fromarray(array, mode=mode).save(path)
    return path.read_bytes()


def test_corrupted_images_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    image = _png(tmp_path / "i.png", rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), "RGB")
    mask = _png(tmp_path / "m.png", rng.integers(0, 8, (24, 24), dtype=np.uint8), "L")
    for kind, data, read in (("image", image, read_image), ("mask", mask, read_mask)):
        for i, (what, bad) in enumerate(_corruptions(data, seed=2)):
            path = tmp_path / f"{kind}{i}.png"
            path.write_bytes(bad)
            out = _only_user_errors(read, path, f"{kind} {what}")
            if out is not None:
                assert out.dtype == np.uint8 and out.shape[:2] == (24, 24)


def test_masks_of_the_wrong_dtype(tmp_path):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((8, 8), 300, np.uint16)).save(wide)  # 16-bit, beyond 8-bit class indices
    with pytest.raises(UserError, match="outside 0..255"):
        read_mask(wide)
    colour = tmp_path / "colour.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), mode="RGB").save(colour)
    with pytest.raises(UserError, match="single-channel"):
        read_mask(colour)
    floats = tmp_path / "float.tiff"
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(floats)
    with pytest.raises(UserError, match="single-channel"):
        read_mask(floats)


def test_corrupted_onnx_files(tmp_path, offline_result):
    good = (offline_result[0].out_dir / "model.onnx").read_bytes()
    for i, (what, bad) in enumerate(_corruptions(good, seed=3)):
        path = tmp_path / f"bad{i}.onnx"
        path.write_bytes(bad)
        _only_user_errors(load_onnx, path, what)


def test_corrupted_dataset_folders(tmp_path):
    config = parse_synthetic_spec("synthetic:size=16,train=2,val=2,test=2")
    folder = write_folder_dataset(
        {s: SyntheticDataset(s, config) for s in ("train", "val", "test")}, tmp_path / "d", progress=False
    )
    good = (folder / "dataset.json").read_bytes()
    for what, bad in _corruptions(good, seed=4):
        (folder / "dataset.json").write_bytes(bad)
        try:
            dataset = load_dataset(f"folder:{folder}", "val")
            for i in range(len(dataset)):
                dataset[i]
        except UserError:
            pass
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"dataset.json {what}: {type(e).__name__}: {e}\n{bad[:200]!r}")
    (folder / "dataset.json").write_text(json.dumps({"classes": "not a list"}))
    with pytest.raises(UserError):
        load_dataset(f"folder:{folder}", "val")


# -- hostile input, round two (issue 19): more loaders, the same rule ----------------------------

ODD_VALUES = ("x", "", -1, 0, 1.5, 10**6, None, True, [], {}, [1], [1, "a"], [0, 0], [-3, 4], {"a": 1}, float("nan"))


def _field_mutations(good: dict):
    """Every top-level field of ``good`` set to each odd value, and dropped; the whole in a list."""
    for key in good:
        for value in ODD_VALUES:
            yield f"{key}={value!r}", {**good, key: value}
        yield f"no {key}", {k: v for k, v in good.items() if k != key}
    yield "a list", [good]


def _mutations(good: dict, seed: int):
    """``_field_mutations`` as JSON bytes, then byte corruptions of the good JSON."""
    for what, value in _field_mutations(good):
        yield what, json.dumps(value).encode()
    yield from _corruptions(json.dumps(good).encode(), seed)


@pytest.fixture(scope="module")
def small_registered():
    from small_chain import registered_small

    with registered_small("fuzz_small", input_size=(16, 16), num_classes=4):
        yield "fuzz_small"


def test_corrupted_checkpoint_configs(tmp_path, small_registered):
    from seg2tflite.models.checkpoint import save_checkpoint
    from seg2tflite.models.registry import create_model, load_model

    weights = save_checkpoint(create_model(small_registered, num_classes=4), tmp_path / "m.safetensors")
    good = json.loads(weights.with_suffix(".json").read_text())
    for what, data in _mutations(good, seed=5):
        weights.with_suffix(".json").write_bytes(data)
        try:
            model = load_model(weights)
        except UserError as e:
            assert "m.json" in str(e) or "m.safetensors" in str(e), f"m.json {what}: the error names no file: {e}"
            continue
        except Exception as e:  # noqa: BLE001 - the crash this test looks for
            pytest.fail(f"m.json {what}: {type(e).__name__}: {e}")
        assert isinstance(model, torch.nn.Module)


def _good_record(run):
    from seg2tflite.eval.record import RecordRow, record_results

    row = RecordRow("m", "pytorch", "a", "pytorch", (16, 16), "synthetic", "test", 4, 10, 1.0, 0.5, 0.5, 0.9, {"c": 0.5})
    return record_results(run, [row])


def test_corrupted_run_records(tmp_path):
    from seg2tflite.eval.record import load_record
    from seg2tflite.eval.report import render_per_class_md, render_results_md, render_summary_md

    def read_and_render(path):
        record = load_record(path.parent)
        return [render(record) for render in (render_results_md, render_summary_md, render_per_class_md)]

    path = _good_record(tmp_path / "run")
    good = json.loads(path.read_text())
    row = good["rows"][0]
    cases = list(_mutations(good, seed=6))
    cases += [(f"row {what}", json.dumps({**good, "rows": [value]}).encode()) for what, value in _field_mutations(row)]
    for what, data in cases:
        path.write_bytes(data)
        _only_user_errors(read_and_render, path, f"record.json {what}")


def test_corrupted_prediction_samples(tmp_path):
    from seg2tflite.eval.record import load_predictions

    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    sample = run / "predictions" / "m.npz"
    np.savez_compressed(sample, image=np.zeros((2, 8, 8, 3), np.uint8), target=np.zeros((2, 8, 8), np.uint8))
    for what, data in _corruptions(sample.read_bytes(), seed=8):
        sample.write_bytes(data)
        _only_user_errors(lambda _: load_predictions(run), sample, f"m.npz {what}")


def test_corrupted_demo_records(tmp_path):
    from seg2tflite.app.compress.pipeline import _Run

    run = tmp_path / "run"
    run.mkdir()
    good = {"config": {"data": "synthetic", "models": ["segformer_b0"], "calib_size": 8, "parity_images": 4}}
    cases = list(_mutations(good, seed=9))
    cases += [(f"config {w}", json.dumps({"config": value}).encode()) for w, value in _field_mutations(good["config"])]
    for what, data in cases:
        (run / "demo.json").write_bytes(data)
        _only_user_errors(lambda _: _Run.open(run), run / "demo.json", f"demo.json {what}")


def test_sixteen_bit_images_keep_their_values(tmp_path):
    from seg2tflite.data.readers import read_image

    rng = np.random.default_rng(11)
    for i in range(20):
        grey = rng.integers(0, 65536, (12, 12), dtype=np.uint16)
        Image.fromarray(grey).save(tmp_path / f"g{i}.png")
        image = read_image(tmp_path / f"g{i}.png")
        np.testing.assert_array_equal(image, np.repeat(np.rint(grey / 257.0).astype(np.uint8)[..., None], 3, axis=2))


def test_onnx_files_of_every_ir_version_and_opset(tmp_path):
    from onnx import TensorProto, helper

    from seg2tflite.converters.onnx_export import prepare_onnx

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 16, 16])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"], name="relu")], "g", [x], [y])
    for opset in (11, 13, 17, 20, 21, 22, 23):
        for ir in (7, 8, 9, 10, 11, 12):
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
            path = tmp_path / f"ir{ir}_opset{opset}.onnx"
            onnx.save(model, str(path))
            prepared = _only_user_errors(lambda p: prepare_onnx(onnx.load(str(p)), None, str(p)), path, f"IR {ir} opset {opset}")
            if prepared is not None:
                assert prepared.num_classes == 3


HOSTILE_NUMBERS = ("nan", "inf", "-inf", "1e400", "-1", "abc", "")


def _numeric_options():
    """(subcommand words, option) for every option of every subcommand that takes a number."""
    import argparse

    from seg2tflite.app.cli import build_parser

    def walk(parser, words):
        # the subcommand's required options, given a value, so a refusal is the tested option's own
        required = [a for a in parser._actions if a.required and a.option_strings]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*words, name])
            elif action.option_strings and action.type not in (None, str) and action.option_strings[-1] != "--mean":
                yield words, action, [w for a in required if a is not action for w in (a.option_strings[-1], "x")]

    return list(walk(build_parser(), []))


def test_every_numeric_option_refuses_hostile_numbers():
    """No option takes NaN, infinity, a negative number or text: argparse refuses it with the
    usage and one ``seg2tflite: error:`` line (the table in test_bad_input runs such lines)."""
    from seg2tflite.app.cli import build_parser
    from seg2tflite.app.cli_options import UsageError

    options = _numeric_options()
    assert len(options) > 30
    for words, action, required in options:
        nargs = action.nargs if isinstance(action.nargs, int) else 1
        for text in HOSTILE_NUMBERS:
            argv = [*words, *required, action.option_strings[-1], *[text] * nargs]
            try:
                args = build_parser().parse_args(argv)
            except UsageError as e:  # refused for this option, not for a required one left out (issue 28)
                assert action.option_strings[-1] in str(e), (argv, str(e))
                continue
            pytest.fail(f"{' '.join(argv)} was accepted: {getattr(args, action.dest)!r}")


TFLITE_FUZZ = """
import json, sys
import numpy as np
from seg2tflite.errors import UserError
from seg2tflite.eval.evaluate import open_artifact
outcomes = []
for path in sys.argv[1:]:
    try:
        runner = open_artifact(path, threads=1, input_size=(32, 48))
        runner(np.zeros((1, 3, 32, 48), np.float32))
        outcomes.append("ok")
    except UserError as e:
        outcomes.append("user error" if path.rsplit("/", 1)[-1] in str(e) else f"unnamed: {e}")
    except Exception as e:
        outcomes.append(f"{type(e).__name__}: {e}")
print(json.dumps(outcomes))
"""


@pytest.mark.chain
def test_corrupted_tflite_files(tmp_path, offline_result):
    """Evaluate and bench open a .tflite in LiteRT in their own process: every corruption must be
    a clear UserError (or still run), never a crash. Checked in a child process, so a native
    crash fails this test rather than killing the test run."""
    import subprocess
    import sys

    good = (offline_result[0].out_dir / "model_float32.tflite").read_bytes()
    paths = []
    for i, (what, bad) in enumerate(_corruptions(good, seed=12)):
        paths.append(tmp_path / f"bad{i}.tflite")
        paths[-1].write_bytes(bad)
    child = subprocess.run([sys.executable, "-c", TFLITE_FUZZ, *map(str, paths)], capture_output=True, text=True)
    assert child.returncode == 0, f"the child died ({child.returncode}): {child.stderr[-2000:]}"
    outcomes = json.loads(child.stdout.strip().splitlines()[-1])
    assert len(outcomes) == len(paths)
    crashes = [(p.name, o) for p, o in zip(paths, outcomes) if o not in ("ok", "user error")]
    assert not crashes, crashes


def test_corrupted_stage_records_touch_nothing_outside_their_folder(tmp_path):
    """Mutated stages.json records (issue 28): the stage cache loads, refuses in one line naming
    stages.json, or forgets what it recorded, and a victim file and folder beside --out survive."""
    import hashlib

    from seg2tflite.converters.resume import StageCache

    victim, victim_dir = tmp_path / "victim.txt", tmp_path / "victim_dir"
    victim.write_bytes(b"victim")
    victim_dir.mkdir()
    (victim_dir / "a.bin").write_bytes(b"victim")
    out = tmp_path / "out"
    out.mkdir()
    sha = {"sha256": hashlib.sha256(b"victim").hexdigest(), "bytes": 6}
    names = ["../victim.txt", "../victim_dir", str(victim), "../victim_dir/a.bin", "x/../../victim.txt", "..", "/"]
    good = {"key": "k", "names": ["model.onnx"], "files": {"model.onnx": sha}}
    cases = [(f"entry {w}", json.dumps({"stages": {"onnx": v}}).encode()) for w, v in _field_mutations(good)]
    cases += [(f"names {n!r}", json.dumps({"stages": {"onnx": {**good, "names": [n]}}}).encode()) for n in names]
    cases += [(f"files {n!r}", json.dumps({"stages": {"onnx": {**good, "files": {n: sha}}}}).encode()) for n in names]
    cases += [(f"claimed {n!r}", json.dumps({"stages": {}, "claimed": [n]}).encode()) for n in names]
    cases += list(_corruptions(json.dumps({"stages": {"onnx": {**good, "names": names}}}).encode(), seed=12))
    for what, data in cases:
        (out / "stages.json").write_bytes(data)
        _only_user_errors(lambda _: StageCache(out).forget_others([]), out / "stages.json", f"stages.json {what}")
        assert victim.read_bytes() == b"victim" and (victim_dir / "a.bin").read_bytes() == b"victim", what
