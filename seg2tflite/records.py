"""Reading the records this project writes (stages.json, manifest.json, parity.json, demo.json,
record.json, the compress and calibration-study files) as what they are: files anyone can edit.

A record is trusted for nothing it could use to reach outside its folder:

- a file or folder name in it is used only when it is relative, has no ``..`` part and resolves
  (symlinks followed) inside the record's folder (``inside``); anything else is refused in one
  line, before any file is read, written or deleted;
- a path it names outside its folder (the checkpoint a conversion was made from) is only ever
  read, and only when it is a regular file whose sha256 is the one the record holds
  (``recorded_outside``);
- a model name in it must be a registered name (``models.registry.registered_model``): names become folders;
- a record that is not JSON, or not the object expected, is a one-line error naming the file
  (``read_json``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from seg2tflite.errors import UserError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _not_ours(record, what: str) -> UserError:
    return UserError(
        f"{record}: {what}; a record of seg2tflite only names files inside its own folder, so this one was edited "
        "or comes from elsewhere: delete it (or the folder) and run the command again"
    )


def inside(folder: str | os.PathLike, name, record: str | os.PathLike) -> Path:
    """``folder / name`` for a ``name`` read from ``record``, refused unless it stays inside ``folder``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise _not_ours(record, f"names {name!r}, not a file name")
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise _not_ours(record, f"names the absolute path {name!r}, outside {folder}")
    if ".." in parts.parts:
        raise _not_ours(record, f"names {name!r}, outside {folder}")
    folder = Path(folder)
    path = folder / parts
    base = folder.resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise _not_ours(record, f"names {name!r}, a link to {resolved}, outside {folder}")
    return path


def all_inside(folder, names, record) -> list[Path]:
    """``inside`` for every name of a list read from ``record`` (a non-list is refused too)."""
    if not isinstance(names, (list, tuple)):
        raise _not_ours(record, f"holds {type(names).__name__} where a list of file names belongs")
    return [inside(folder, name, record) for name in names]


def recorded_outside(path, sha256, record) -> Path | None:
    """A path ``record`` names outside its folder (to read, never to write): the file, when it is a
    regular file with the sha256 the record holds; else None (the record's claim is not used)."""
    if not isinstance(path, str) or not path or not isinstance(sha256, str):
        return None
    candidate = Path(path)
    try:
        if not candidate.is_file() or sha256_file(candidate) != sha256:  # (a link is fine: the bytes are known)
            return None
    except OSError:
        return None
    return candidate


def read_json(path: str | os.PathLike, redo: str, kind: type = dict):
    """The JSON ``kind`` (an object by default) in ``path``; unreadable, partial or of another shape:
    one line naming the file and ``redo`` (what to run to write it again)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable or incomplete ({type(e).__name__}: {str(e)[:120]}); {redo}") from None
    if not isinstance(data, kind):
        raise UserError(f"{path}: holds a JSON {type(data).__name__}, not the {kind.__name__} expected; {redo}")
    return data


def field(data: dict, path: str | os.PathLike, redo: str, *keys, kind: type | tuple = object):
    """``data[k1][k2]...`` of a record read from ``path``, of type ``kind``; missing or of another
    type: one line naming the file, the field and ``redo``."""
    value = data
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise UserError(f"{path}: lacks {'.'.join(keys)}; {redo}")
        value = value[key]
    if not isinstance(value, kind):
        raise UserError(f"{path}: {'.'.join(keys)} is {type(value).__name__}, not what it should be; {redo}")
    return value


def check_external_data(model, onnx_path: str | os.PathLike) -> None:
    """Refuse an ONNX model whose external data is not a regular file inside the ONNX file's
    folder: ``..``, an absolute path, a symbolic link (to anywhere) or a link in its path."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    onnx_path = Path(onnx_path)
    folder = onnx_path.parent
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        relative = PurePosixPath(location.replace("\\", "/"))
        links = [folder / p for p in [*reversed(relative.parents), relative] if p.parts and ".." not in p.parts]
        why = None
        try:
            path = inside(folder, location, onnx_path)
        except UserError:
            why = "outside its folder"
        if not relative.is_absolute() and any(p.is_symlink() for p in links):
            why = "a symbolic link" + (" out of its folder" if why else "")
        elif why is None and not path.is_file():
            why = "not a file there"
        if why is not None:
            raise UserError(
                f"{onnx_path}: tensor {tensor.name!r} keeps its data in {location!r}, {why}; external data must be a "
                f"regular file in the ONNX file's folder ({folder}): copy it there (not a link) and convert again"
            )


def manifest_records(manifest: dict, folder: Path, path: Path) -> bool:
    """Whether ``manifest`` (in ``folder``) records ``path`` as it is now: the same sha256 for the
    file, or for every file of a folder (a SavedModel); a conversion folder describes itself."""
    if path.resolve() == folder.resolve():
        return True
    rel = path.name
    recorded = manifest.get("artifacts") if isinstance(manifest.get("artifacts"), dict) else {}
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    if path.is_file() and not path.is_symlink():
        entry = {"sha256": model.get("weights_sha256")} if rel == model.get("weights") else recorded.get(rel)
        return isinstance(entry, dict) and entry.get("sha256") == sha256_file(path)
    if path.is_dir() and not path.is_symlink():
        files = {p.relative_to(folder).as_posix(): p for p in path.rglob("*") if p.is_file()}
        wanted = {k: v for k, v in recorded.items() if k.startswith(f"{rel}/")}
        return (
            bool(files)
            and set(files) == set(wanted)
            and all(isinstance(wanted[k], dict) and wanted[k].get("sha256") == sha256_file(p) for k, p in files.items())
        )
    return False
