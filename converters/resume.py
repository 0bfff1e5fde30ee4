"""Resume an interrupted conversion: skip every stage whose inputs and outputs are unchanged.

Each stage of the chain (ONNX file, SavedModel, each .tflite) gets a key: the sha256 of what it
is built from (the ONNX bytes, the calibration images, the settings, the tool versions), chained
so that a changed ONNX file invalidates everything after it. ``stages.json`` in the output
folder records, per stage, its key and the sha256 of every file it wrote, and is rewritten after
each stage. A stage is skipped only when its key matches and its files are all still there with
the recorded hashes, so a killed run, a changed checkpoint or a tampered file are all handled the
same way: what is stale is rebuilt, what is whole is kept.

``stages.json`` is read as what it is, a file anyone can edit: every name in it must stay inside
the folder (``seg2tflite.records.inside``) or the run is refused before anything is touched, and
only files it records with their current hash are ever deleted. It also lists the names this
project has ``claim``ed in the folder: a file in the way of one that is neither claimed nor
recorded with its current hash is the user's, and is never replaced (``claim`` refuses).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from seg2tflite.atomic import atomic_write_text
from seg2tflite.atomic import remove_stale_temporaries as _remove_stale_temporaries
from seg2tflite.converters.manifest import artifact_hashes, sha256_file
from seg2tflite.errors import UserError, setting
from seg2tflite.records import all_inside, inside

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
        self.stages: dict[str, dict] = {}
        self.claimed: list[str] = []
        self._foreign = False  # a stages.json that is not a stage record: the user's, never replaced
        if self.path.is_file() or self.path.is_symlink():
            try:
                data = json.loads(self.path.read_text())
                stages, claimed = data["stages"], data.get("claimed", [])
                if not isinstance(stages, dict) or not all(isinstance(e, dict) for e in stages.values()):
                    raise TypeError("stages is not an object of objects")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self._foreign = True
            else:
                self._check_contained(stages, claimed)
                self.stages, self.claimed = stages, list(claimed)
        remove_stale_temporaries(self.out_dir)

    def _check_contained(self, stages: dict, claimed) -> None:
        """Refuse a record naming anything outside the folder (``..``, an absolute path, a link out)."""
        all_inside(self.out_dir, claimed, self.path)
        for entry in stages.values():
            all_inside(self.out_dir, entry.get("names") or [], self.path)
            files = entry.get("files") or {}
            if not isinstance(files, dict):
                raise UserError(f"{self.path}: a stage's files are {type(files).__name__}, not an object; delete it and rerun")
            all_inside(self.out_dir, list(files), self.path)

    def ours(self, name: str) -> bool:
        """Whether ``name`` in the folder is this project's: claimed, or every file of it recorded
        with the hash it has now (nothing there at all counts as ours: nothing would be lost)."""
        path = self.out_dir / name
        if name == STAGES_FILE:
            return not self._foreign
        if name in self.claimed or not (path.exists() or path.is_symlink()):
            return True
        recorded = {rel: f.get("sha256") for e in self.stages.values() for rel, f in (e.get("files") or {}).items()}
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            return False
        if name == "manifest.json" and path.is_file():  # written before claims were recorded: the manifest of these stages
            try:
                keys = json.loads(path.read_text()).get("stage_keys")
            except (OSError, ValueError, AttributeError):
                return False
            return bool(self.stages) and keys == {stage: e.get("key") for stage, e in self.stages.items()}
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_symlink() or not p.is_dir()]
        for f in files:
            rel = f.relative_to(self.out_dir).as_posix()
            if f.is_symlink() or not f.is_file() or recorded.get(rel) != sha256_file(f):
                return False
        return True

    def check(self, names, option: str | None = None) -> None:
        """Refuse when a file this project did not write (nor recorded with its current hash) is in
        the way of one of ``names``."""
        option = option or setting("out", python="out_dir")
        for name in [STAGES_FILE, *names]:
            if not self.ours(name):
                path = self.out_dir / name
                raise UserError(
                    f"{path}: a file seg2tflite did not write (or one changed since it did) is in the way of "
                    f"what this conversion writes; move it, or choose another {option} (nothing was written)"
                )

    def claim(self, names, option: str | None = None) -> None:
        """Before the first write: ``check``, then record ``names`` as this project's."""
        self.check(names, option)
        self.claimed = list(dict.fromkeys([*self.claimed, *names]))
        self._save()

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
        if self._foreign:
            raise UserError(f"{self.path}: not a stage record of seg2tflite; move it, or choose another output folder")
        atomic_write_text(self.path, json.dumps({"stages": self.stages, "claimed": self.claimed}, indent=2) + "\n")

    def forget(self, stage: str, keep: tuple[Path, ...] = ()) -> list[str]:
        """Drop ``stage`` from the record and delete the files it recorded that are still as
        written (a file changed since, or one of ``keep``, is left alone). Returns what was deleted."""
        entry = self.stages.pop(stage, None)
        if entry is None:
            return []
        kept = {Path(p).resolve() for p in keep}
        names = all_inside(self.out_dir, entry.get("names") or [], self.path)
        current = artifact_hashes(self.out_dir, [p.relative_to(self.out_dir).as_posix() for p in names])
        deleted = []
        for rel, recorded in (entry.get("files") or {}).items():
            path = inside(self.out_dir, rel, self.path)
            if current.get(rel) == recorded and path.resolve() not in kept and not path.is_symlink():
                path.unlink(missing_ok=True)
                deleted.append(rel)
        for folder in names:  # a folder (the SavedModel) emptied of its files goes too
            if folder.is_dir() and not folder.is_symlink() and not any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
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
