"""What an artifact is: its kind, and the input size, mean/std, model and class count it needs.

The kind comes from the path alone (a checkpoint, ``.onnx``, a SavedModel folder, ``.tflite``);
the preprocessing from, in order, the explicit arguments, the conversion ``manifest.json`` beside
the artifact, and the checkpoint's JSON config. A value found nowhere is a ``UserError`` naming
the option to pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seg2tflite.converters.stages import ConversionDir
from seg2tflite.data import Preprocess
from seg2tflite.errors import UserError, setting
from seg2tflite.records import manifest_records

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
KINDS = ("pytorch", "onnx", "saved_model", "tflite")
RUNTIME_NAMES = {"pytorch": "pytorch", "onnx": "onnxruntime", "saved_model": "tensorflow", "tflite": "litert"}


@dataclass(frozen=True)
class ArtifactInfo:
    """What evaluating an artifact needs to know besides its file."""

    path: Path
    kind: str  # one of KINDS
    input_size: tuple[int, int]  # (H, W) fed to the artifact
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model: str | None = None  # registered model name, when the metadata names one
    num_classes: int | None = None  # head size, when the metadata gives it

    @property
    def runtime(self) -> str:
        return RUNTIME_NAMES[self.kind]

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.input_size, self.mean, self.std)


def artifact_kind(path: str | Path) -> str:
    """``pytorch``, ``onnx``, ``saved_model`` (SavedModel folder) or ``tflite``, from the path alone."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        if any((path / name).is_file() for name in ("model.safetensors", "best.safetensors", "last.safetensors")):
            return "pytorch"
        raise UserError(f"{path}: a folder that is neither a SavedModel (saved_model.pb) nor a checkpoint folder")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return "tflite"
    if suffix == ".onnx":
        return "onnx"
    if suffix in CHECKPOINT_SUFFIXES:
        return "pytorch"
    raise UserError(f"{path}: unknown artifact type; use a .safetensors/.pt checkpoint, .onnx, a SavedModel folder or .tflite")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def find_manifest(path: str | Path) -> dict:
    """The conversion manifest that describes ``path`` (the folder's own, else its parent's); {} if
    none. A manifest beside a file that does not record that file (its sha256) describes another
    conversion's file and is not used: ``ignored_manifest(path)`` then names it."""
    path = Path(path)
    folders = [ConversionDir(path)] if path.is_dir() else []
    folders.append(ConversionDir(path.parent))
    return next((m for f in folders if (m := f.manifest()) and manifest_records(m, f.path, path)), {})


def ignored_manifest(path: str | Path) -> Path | None:
    """The manifest.json beside ``path`` that ``find_manifest`` did not use (it records another file)."""
    path = Path(path)
    beside = ConversionDir(path.parent)
    return beside.manifest_path if beside.manifest_path.is_file() and not find_manifest(path) else None


def _manifest_sources(manifest: dict) -> list[dict]:
    """The conversion manifest's own sections first (``preprocessing``: size/mean/std, ``model``:
    name/num_classes), then the whole manifest for the generic lookup."""
    pre = manifest.get("preprocessing") if isinstance(manifest.get("preprocessing"), dict) else {}
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    known = {"input_size": pre.get("size"), "mean": pre.get("mean"), "std": pre.get("std")}
    known.update({"name": model.get("name"), "num_classes": model.get("num_classes")})
    return [{k: v for k, v in known.items() if v is not None}, manifest]


def _lookup(record: dict, key: str):
    """``record[key]`` at the top level or one level down (e.g. under "config" or "model")."""
    if record.get(key) is not None:
        return record[key]
    for value in record.values():
        if isinstance(value, dict) and value.get(key) is not None:
            return value[key]
    return None


def _model_name(record: dict) -> str | None:
    for key in ("model", "model_name", "name"):
        value = _lookup(record, key)
        if isinstance(value, str):
            return value
    return None


def _checkpoint_config(path: Path) -> dict:
    from seg2tflite.models.checkpoint import read_checkpoint_config, resolve_weights_file

    weights = resolve_weights_file(path)
    if not weights.with_suffix(".json").is_file():
        return {}
    return read_checkpoint_config(weights)


def read_metadata(path: str | Path) -> dict:
    """Input size, mean/std, model name and class count of an artifact, as far as its metadata
    tells (``None`` where it does not): the conversion manifest beside it first, then the
    checkpoint config (for a checkpoint: the size it was trained at, then its model's default)."""
    path = Path(path)
    kind = artifact_kind(path)
    sources: list[dict] = []  # most trusted first
    manifest = find_manifest(path)
    if manifest:
        sources += _manifest_sources(manifest)
    if kind == "pytorch":
        config = _checkpoint_config(path)
        trained_size = (config.get("train_config") or {}).get("input_size")
        if trained_size:
            sources.append({"input_size": trained_size})
        sources.append(config)
    elif manifest or not ConversionDir(path.parent).manifest_path.is_file():
        sibling = path.parent / "model.json"  # the PyTorch reference config; not another conversion's files'
        if sibling.is_file():
            sources.append(_read_json(sibling))

    def first(key: str):
        return next((v for v in (_lookup(s, key) for s in sources) if v is not None), None)

    num_classes = first("num_classes")
    return {
        "kind": kind,
        "input_size": first("input_size"),
        "mean": first("mean"),
        "std": first("std"),
        "model": next((m for m in map(_model_name, sources) if m), None),
        "num_classes": None if num_classes is None else int(num_classes),
    }


def describe_artifact(
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> ArtifactInfo:
    """Kind, input size, mean/std and model name of an artifact: the arguments where given, else
    its metadata (``read_metadata``); a value found nowhere is a ``UserError``."""
    path = Path(path)
    meta = read_metadata(path)
    size = input_size if input_size is not None else meta["input_size"]
    mean = mean if mean is not None else meta["mean"]
    std = std if std is not None else meta["std"]
    wanted = (("input_size", "H W", size), ("mean", "R G B", mean), ("std", "R G B", std))
    missing = [setting(name, values) for name, values, v in wanted if v is None]
    if missing:
        ignored = ignored_manifest(path)
        if ignored is not None:
            raise UserError(
                f"{path}: {ignored} does not record this file (not the sha256 it recorded: another conversion's manifest, "
                f"or the file changed), so its preprocessing is not used; pass {', '.join(missing)}"
            )
        raise UserError(
            f"{path}: no manifest.json or checkpoint config beside it gives the preprocessing; pass {', '.join(missing)}"
        )
    size, mean, std = checked_size(size), _checked("mean", mean, 3, float), _checked("std", std, 3, float)
    if min(std) <= 0:
        raise UserError(f"{path}: std {std} must be positive")
    return ArtifactInfo(path, meta["kind"], size, mean, std, meta["model"], meta["num_classes"])


def checked_size(size) -> tuple[int, int]:
    size = _checked("input size", size, 2, int)
    if min(size) <= 0:
        raise UserError(f"input size {size}: must be positive")
    return size


def _checked(what: str, value, length: int, cast) -> tuple:
    try:
        values = tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != length:
        raise UserError(f"{what} {value!r}: expected {length} numbers")
    return values
