"""A run folder's layout, in one place: what ``seg2tflite demo --out DIR`` writes and what
``latency``, ``compress``, ``profile``, ``report`` and the benchmarks read back.

    DIR/demo.json                      the run's settings, models and timings
    DIR/data/                          the built-in synthetic data, when the run made it
    DIR/models/M/train/best.safetensors
    DIR/models/M/convert/              M's conversion (a ``ConversionDir``)
    DIR/models/M/measured.json         which files M's rows in the record were measured on
    DIR/models/M/compress/TAG/         a compression method's model and its conversion
    DIR/deploy/M/                      M converted at its deploy size (``latency``)
    DIR/record.json, DIR/predictions/  the measurements (``seg2tflite.eval.record``)
    DIR/report/                        the report built from them
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seg2tflite.converters.stages import ConversionDir
from seg2tflite.errors import UserError
from seg2tflite.records import inside

SUMMARY_FILE = "demo.json"
CHECKPOINT_FILE = "best.safetensors"


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
        return self.model_dir(name) / "measured.json"

    def compress_dir(self, name: str, tag: str) -> Path:
        return self.model_dir(name) / "compress" / tag

    def deploy_dir(self, name: str) -> Path:
        return self.path / "deploy" / name

    @property
    def report_dir(self) -> Path:
        return self.path / "report"
