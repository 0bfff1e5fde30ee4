"""A run folder's layout, in one place: what ``seg2tflite demo --out DIR`` writes and what
``latency``, ``compress``, ``profile``, ``report`` and the benchmarks read back.

    DIR/demo.json                      the run's settings, models and timings
    DIR/data/                          the built-in synthetic data, when the run made it
    DIR/models/M/train/best.safetensors
    DIR/models/M/convert/              M's conversion (a ``ConversionDir``)
    DIR/models/M/measured.json         which files M's rows in the record were measured on
    DIR/models/M/compress/TAG/         a compression method's model, its conversion and measured.json
    DIR/deploy/M/                      M converted at its deploy size (``latency``)
    DIR/record.json, DIR/predictions/  the measurements (``seg2tflite.eval.record``)
    DIR/report/                        the report built from them
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from seg2tflite.atomic import atomic_write_text
from seg2tflite.converters.stages import ConversionDir
from seg2tflite.errors import UserError
from seg2tflite.records import inside

SUMMARY_FILE = "demo.json"
CHECKPOINT_FILE = "best.safetensors"
MEASURED_FILE = "measured.json"  # which files a model's rows in the record were measured on


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    def summary(self) -> dict:
        """``demo.json`` as written; a file that is not a demo summary is one UserError."""
        try:
            summary = json.loads(self.summary_path.read_text())
            if not isinstance(summary.get("config"), dict):
                raise ValueError("no config object")
        except (OSError, ValueError, AttributeError) as e:
            raise UserError(
                f"{self.summary_path}: unreadable demo record ({e}); run `seg2tflite demo --out {self.path}` again"
            ) from None
        return summary

    def model_names(self) -> list[str]:
        """The models ``demo.json`` lists, then any other ``models/M/`` holding a conversion. A name
        becomes a folder, so one that would leave ``models/`` (``..``, absolute) is refused."""
        names = []
        if self.summary_path.is_file():
            listed = self.summary()["config"].get("models", [])
            if not isinstance(listed, list):
                raise UserError(f"{self.summary_path}: 'models' is not a list; run `seg2tflite demo --out {self.path}` again")
            names = [inside(self.path / "models", name, self.summary_path).name for name in listed]
        names += sorted(p.parent.name for p in (self.path / "models").glob("*/convert") if p.is_dir())
        return list(dict.fromkeys(names))

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    def model_dir(self, name: str) -> Path:
        return self.path / "models" / name

    def train_dir(self, name: str) -> Path:
        return self.model_dir(name) / "train"

    def checkpoint(self, name: str) -> Path:
        return self.train_dir(name) / CHECKPOINT_FILE

    def conversion(self, name: str) -> ConversionDir:
        return ConversionDir(self.model_dir(name) / "convert")

    def measured_path(self, name: str) -> Path:
        return self.model_dir(name) / MEASURED_FILE

    def compress_dir(self, name: str, tag: str) -> Path:
        return self.model_dir(name) / "compress" / tag

    def deploy_dir(self, name: str) -> Path:
        return self.path / "deploy" / name

    @property
    def report_dir(self) -> Path:
        return self.path / "report"


def measured_files_key(convert_dir: Path) -> str | None:
    """What a model's measured rows were measured on: the sha256 of its conversion's stage record
    (``stages.json`` holds every file's hash), so a re-built file is measured again."""
    stages = convert_dir / "stages.json"
    return hashlib.sha256(stages.read_bytes()).hexdigest() if stages.is_file() else None


def measured_is_current(marker: Path, convert_dir: Path) -> bool:
    """Whether ``marker`` (a ``measured.json``) says the record's rows were measured on the files
    now in ``convert_dir``."""
    try:
        return json.loads(marker.read_text()).get("files") == measured_files_key(convert_dir)
    except (OSError, ValueError, AttributeError):
        return False


def mark_measured(marker: Path, convert_dir: Path, stages: list[str]) -> None:
    """Note in ``marker`` that the record's ``stages`` rows were measured on ``convert_dir``'s files."""
    atomic_write_text(marker, json.dumps({"stages": stages, "files": measured_files_key(convert_dir)}) + "\n")
