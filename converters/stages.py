"""The one table of stages, and the conversion folder that holds their artifacts.

Every stage of the road is declared once in ``STAGES``: its key (the name in parity.json,
manifest.json, record.json and every table), the artifact's file name inside a conversion folder,
the runtime that runs it, its label in tables and plots, the stage it is converted from (and
compared with), and the gate that applies to it. Everything else reads these: adding a stage
(another route, a deploy variant) is one entry here.

``ConversionDir`` owns a conversion folder's layout: where each stage's artifact is, which are
there, and the manifest that describes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seg2tflite.errors import UserError

GATES = ("reference", "float", "float16", "quantized")


@dataclass(frozen=True)
class Stage:
    key: str
    file: str  # the artifact's name inside a conversion folder
    runtime: str  # pytorch, onnxruntime, tensorflow or litert
    label: str  # in tables and plots
    previous: str | None  # the stage it is converted from, and compared with besides PyTorch
    gate: str  # reference: the others are compared with it; float: drift and agreement;
    # float16: agreement; quantized: mIoU budget (trained models only)
    calibrated: bool = False  # built with the representative dataset
    built_by_convert: bool = True  # False: written by a later command (`seg2tflite compress`)
    integer: bool = False  # built from the model's integer form when it has one (``INTEGER_FORM``)


STAGES: dict[str, Stage] = {
    s.key: s
    for s in (
        Stage("pytorch", "model.safetensors", "pytorch", "PyTorch", None, "reference"),
        Stage("onnx", "model.onnx", "onnxruntime", "ONNX", "pytorch", "float"),
        Stage("saved_model", "saved_model", "tensorflow", "TF SavedModel", "onnx", "float"),
        Stage("saved_model_int8", "saved_model_int8", "tensorflow", "TF SavedModel, int8 form", "onnx", "float"),
        Stage("float32", "model_float32.tflite", "litert", "TFLite float32", "saved_model", "float"),
        Stage("float16", "model_float16.tflite", "litert", "TFLite float16", "float32", "float16"),
        Stage("dynamic_int8", "model_dynamic_int8.tflite", "litert", "TFLite dynamic int8", "float32", "quantized"),
        Stage(
            "full_int8",
            "model_full_int8.tflite",
            "litert",
            "TFLite full int8",
            "float32",
            "quantized",
            calibrated=True,
            integer=True,
        ),
        Stage(
            "int16x8", "model_int16x8.tflite", "litert", "TFLite int16x8", "float32", "quantized", calibrated=True, integer=True
        ),
        Stage(
            "mixed_int8",
            "model_mixed_int8.tflite",
            "litert",
            "TFLite mixed int8",
            "float32",
            "quantized",
            calibrated=True,
            built_by_convert=False,
            integer=True,
        ),  # fmt: skip
    )
}
REFERENCE = "pytorch"
# The SavedModel of a model's integer form (``models.deploy_form(model, integer=True)``), converted
# only when that form differs from the float one: the integer variants are built from it.
INTEGER_FORM = "saved_model_int8"
# The .tflite files `convert` builds, the stages gated as float, and those built with calibration.
VARIANTS = tuple(k for k, s in STAGES.items() if s.runtime == "litert" and s.built_by_convert)
# The float stages of every conversion (the int8 form's SavedModel, when there is one, is gated as float too).
FLOAT_STAGES = tuple(k for k, s in STAGES.items() if s.gate == "float" and k != INTEGER_FORM)
QUANTIZED_VARIANTS = tuple(k for k in VARIANTS if STAGES[k].gate == "quantized")
CALIBRATED_VARIANTS = tuple(k for k in VARIANTS if STAGES[k].calibrated)
INTEGER_VARIANTS = tuple(k for k in VARIANTS if STAGES[k].integer)

MANIFEST_FILE = "manifest.json"
PARITY_FILE = "parity.json"
ONNX2TF_LOG = "onnx2tf.log"
ONNX2TF_LOGS = {"saved_model": ONNX2TF_LOG, INTEGER_FORM: "onnx2tf_int8.log"}  # one per SavedModel


def previous_stage(stage: str, present) -> str | None:
    """The nearest earlier stage that was actually run (e.g. onnx when a chain starts from ONNX)."""
    prev = STAGES[stage].previous if stage in STAGES else None
    while prev is not None and prev not in present:
        prev = STAGES[prev].previous
    return prev


def label(stage: str) -> str:
    return STAGES[stage].label if stage in STAGES else stage


class ConversionDir:
    """A conversion folder: the artifact of each stage, and the manifest describing them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def artifact(self, stage: str) -> Path:
        return self.path / STAGES[stage].file

    def int8_source(self) -> Path:
        """The SavedModel the integer files are built from: the integer form's when there is one."""
        integer = self.artifact(INTEGER_FORM)
        return integer if integer.is_dir() else self.artifact("saved_model")

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def parity_path(self) -> Path:
        return self.path / PARITY_FILE

    def manifest(self) -> dict:
        """The manifest ``convert`` wrote ({} when there is none); a corrupt one is a UserError."""
        if not self.manifest_path.is_file():
            return {}
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{self.manifest_path}: unreadable manifest ({e})") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.manifest_path}: expected a JSON object")
        return data

    @property
    def input_size(self) -> tuple[int, int] | None:
        size = (self.manifest().get("config") or {}).get("input_size")
        return tuple(size) if size else None

    def checkpoint(self) -> Path | None:
        """The PyTorch reference: the weights in the folder, else the checkpoint the manifest names."""
        from seg2tflite.records import inside, recorded_outside

        own = self.artifact(REFERENCE)
        if own.exists():
            return inside(self.path, own.name, own)  # a link out of the folder is refused
        model = self.manifest().get("model") or {}
        if not isinstance(model, dict) or not model.get("checkpoint"):
            return None
        # read only, and only when it is still the file the conversion recorded (its sha256)
        return recorded_outside(model["checkpoint"], model.get("checkpoint_sha256"), self.manifest_path)

    def artifacts(self) -> dict[str, Path]:
        """The artifacts present, by stage, in stage order (PyTorch first when there is one)."""
        if not self.path.is_dir():
            raise UserError(f"{self.path}: not a conversion folder")
        found = {key: self.artifact(key) for key in STAGES if key != REFERENCE and self.artifact(key).exists()}
        checkpoint = self.checkpoint()
        if checkpoint is not None:
            found = {REFERENCE: checkpoint, **found}
        if not found:
            names = ", ".join(s.file for s in STAGES.values())
            raise UserError(f"{self.path}: holds none of {names}; run `seg2tflite convert` first")
        return found
