"""Resume an interrupted conversion: skip every stage whose inputs and outputs are unchanged.

Each stage of the chain (ONNX file, SavedModel, each .tflite) gets a key: the sha256 of what it
is built from (the ONNX bytes, the calibration images, the settings, the tool versions), chained
so that a changed ONNX file invalidates everything after it. ``stages.json`` in the output
folder records, per stage, its key and the sha256 of every file it wrote, and is rewritten after
each stage. A stage is skipped only when its key matches and its files are all still there with
the recorded hashes, so a killed run, a changed checkpoint or a tampered file are all handled the
same way: what is stale is rebuilt, what is whole is kept.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from seg2tflite.atomic import atomic_write_text
from seg2tflite.atomic import remove_stale_temporaries as _remove_stale_temporaries
from seg2tflite.converters.manifest import artifact_hashes

STAGES_FILE = "stages.json"


def stage_key(*parts) -> str:
    """sha256 over ``parts`` (bytes, or anything with a stable ``repr``: str, numbers, dicts)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=repr).encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class StageCache:
    """The ``stages.json`` record of one output folder."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / STAGES_FILE
        try:
            self.stages: dict[str, dict] = json.loads(self.path.read_text())["stages"]
        except (OSError, ValueError, KeyError, TypeError):
            self.stages = {}
        remove_stale_temporaries(self.out_dir)

    def fresh(self, stage: str, key: str) -> bool:
        """True when ``stage`` was built from ``key`` and its files are whole and unchanged."""
        entry = self.stages.get(stage)
        if not entry or entry.get("key") != key or not entry.get("files"):
            return False
        return artifact_hashes(self.out_dir, entry["names"]) == entry["files"]

    def record(self, stage: str, key: str, names: list[str]) -> None:
        self.stages[stage] = {"key": key, "names": names, "files": artifact_hashes(self.out_dir, names)}
        self._save()

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps({"stages": self.stages}, indent=2) + "\n")

    def forget(self, stage: str, keep: tuple[Path, ...] = ()) -> list[str]:
        """Drop ``stage`` from the record and delete the files it recorded that are still as
        written (a file changed since, or one of ``keep``, is left alone). Returns what was deleted."""
        entry = self.stages.pop(stage, None)
        if entry is None:
            return []
        kept = {Path(p).resolve() for p in keep}
        current = artifact_hashes(self.out_dir, entry.get("names") or [])
        deleted = []
        for rel, recorded in (entry.get("files") or {}).items():
            path = self.out_dir / rel
            if current.get(rel) == recorded and path.resolve() not in kept:
                path.unlink(missing_ok=True)
                deleted.append(rel)
        for name in entry.get("names") or []:  # a folder (the SavedModel) emptied of its files goes too
            folder = self.out_dir / name
            if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)
        self._save()
        return deleted

    def forget_others(self, stages, keep: tuple[Path, ...] = ()) -> list[str]:
        """``forget`` every recorded stage not in ``stages``: what an earlier run into this folder
        built that this run does not (another variant set, a seed's weights beside a checkpoint's)."""
        deleted = []
        for stage in [s for s in self.stages if s not in set(stages)]:
            deleted += self.forget(stage, keep)
        return deleted


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the temporaries that killed writes of this project left in ``out_dir`` (never
    anything else: see ``seg2tflite.atomic``)."""
    return _remove_stale_temporaries(out_dir)
