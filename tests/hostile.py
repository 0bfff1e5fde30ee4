"""What the bad-input tests share: the one-line-refusal check, and a folder of hostile inputs.

``fails`` runs the real command line in this process and checks the answer is one
``seg2tflite: error:`` line (exit 2, no traceback); a ``Bench`` makes, in one test's folder, the
inputs a case needs (a checkpoint with an edited config, an ONNX file, a dataset, a run record).
"""

import json
import shutil

import onnx
import torch
from onnx import TensorProto, helper

from seg2tflite.app.cli import main
from seg2tflite.data import SyntheticDataset, write_folder_dataset
from seg2tflite.data.spec import parse_synthetic_spec


def fails(capsys, argv, *expected) -> str:
    """Run the command: exit 2, no traceback, and one error line (last on stderr) holding every ``expected``."""
    code = main(argv)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("seg2tflite: error: ")]
    assert code == 2, stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.rstrip().endswith(errors[0])  # progress bars may come first; the error is last
    for text in expected:
        assert str(text) in errors[0], (text, errors[0])
    return errors[0]


def nothing_written(out) -> None:
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


SMALL = "synthetic:size=32,train=8,val=4,test=4"
EIGHT_CLASS_ARGS = ["--input-size", "32", "32", "--mean", "0", "0", "0", "--std", "1", "1", "1"]


class Bench:
    """One case's folder and the inputs it can make there."""

    def __init__(self, root, checkpoint):
        self.root = root
        self._checkpoint = checkpoint

    def checkpoint(self, **config):
        """A copy of the SegFormer-B0 checkpoint, its JSON config changed by ``config``."""
        folder = self.root / "ckpt"
        folder.mkdir(exist_ok=True)
        weights = shutil.copy(self._checkpoint, folder / "b0.safetensors")
        saved = json.loads(self._checkpoint.with_suffix(".json").read_text())
        (folder / "b0.json").write_text(json.dumps({**saved, **config}))
        return weights

    def onnx(self, num_classes=8):
        """A SmallSegNet ONNX file (fixed 1x3x32x32 input) predicting ``num_classes`` classes."""
        from seg2tflite.converters.onnx_export import export_onnx, save_onnx

        from small_chain import SmallSegNet

        torch.manual_seed(0)
        return save_onnx(export_onnx(SmallSegNet(num_classes), (32, 32), 17), self.root / "model.onnx")

    def folder(self, num_classes=8, name="d", dataset_name=None):
        config = parse_synthetic_spec("synthetic:size=16,train=4,val=4,test=4")
        path = write_folder_dataset(
            {s: SyntheticDataset(s, config) for s in ("train", "val", "test")}, self.root / name, progress=False
        )
        if num_classes != 8 or dataset_name:
            meta = json.loads((path / "dataset.json").read_text())
            meta["class_names"] = meta["class_names"][:num_classes]
            meta["palette"] = meta["palette"][:num_classes]
            meta["name"] = dataset_name or meta["name"]
            (path / "dataset.json").write_text(json.dumps(meta))
        return path

    def record(self, edit):
        """A run folder with a one-row record.json, then ``edit(record_dict)`` written back."""
        from seg2tflite.eval.record import RecordRow, record_results

        run = self.root / "run"
        row = RecordRow("m", "pytorch", "a", "pytorch", (32, 32), "synthetic", "test", 4, 10, 1.0, 0.5, 0.5, 0.9, {"c": 0.5})
        record = record_results(run, [row])
        data = json.loads(record.read_text())
        record.write_text(json.dumps(edit(data)))
        return run


def blob_folder(path):
    """The small CNN's blob dataset (4 classes, 32x48) written in the folder layout."""
    from small_chain import BlobDataset

    return write_folder_dataset({s: BlobDataset(s) for s in ("train", "val", "test")}, path, progress=False, source="blobs")


def onnx_file(path, nodes, dims=(1, 3, 8, 8), out_channels=3, opset=17, extra_opsets=()):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], out_channels, *dims[2:]])
    graph = helper.make_graph(nodes, "g", [x], [y])
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in extra_opsets)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path
