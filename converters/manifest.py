"""The run record of a conversion: what was run, with which versions, and what came out (hashed)."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from seg2tflite.atomic import atomic_write_text
from seg2tflite.records import sha256_file

PACKAGES = (
    "seg2tflite",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxsim",
    "onnx2tf",
    "tensorflow",
    "tf-keras",
    "ai-edge-litert",
    "numpy",
)


def artifact_hashes(out_dir: Path, names: list[str]) -> dict[str, dict]:
    """sha256 and size of each artifact; a folder (the SavedModel) lists every file inside it.
    Only regular files count: a symbolic link (which could lead anywhere) is never followed."""
    hashes: dict[str, dict] = {}
    for name in names:
        path = out_dir / name
        if path.is_symlink():
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and not f.is_symlink():  # rglob does not enter linked folders
                hashes[f.relative_to(out_dir).as_posix()] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    return hashes


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def git_commit() -> str | None:
    """The commit of the code that ran, when it runs from a git checkout (read-only query)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_manifest(**sections) -> dict:
    """The manifest: ``sections`` (config, model, artifacts, ...) plus when, what and with which versions."""
    return {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sections.pop("command", None) or sys.argv,
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "versions": package_versions(),
        **sections,
    }


def write_json(path: str | Path, data: dict) -> Path:
    atomic_write_text(path, json.dumps(data, indent=2, default=_default) + "\n")
    return Path(path)


def _default(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
