"""Write files and folders whole or not at all: a temporary name, fsync, then rename.

Every temporary this project makes is named ``.seg2tflite-PID-KIND-XXXX.tmp`` (beside its target)
or ``seg2tflite_KIND_PID_XXXX`` (in the system temp dir) and holds a marker file; only folders
with both, left by a process that no longer runs, are ever removed by ``remove_stale_temporaries``.
Nothing else in a folder is touched, whatever its name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from seg2tflite.errors import UserError

MARKER = ".seg2tflite-temporary"  # inside every temporary folder this project creates
_BESIDE = re.compile(r"^\.seg2tflite-(\d+)-.*\.tmp$")  # atomic_path's temporaries beside their target
_IN_TEMP = re.compile(r"^seg2tflite_[a-z0-9]+_(\d+)_.*$")  # private_tempdir's, in the system temp dir


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _marked_folder(folder: Path, prefix: str, suffix: str = "") -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder))
    (tmp / MARKER).write_text(f"{os.getpid()}\n")
    return tmp


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed processes of this project left in ``folder``: folders
    named as ``atomic_path`` or ``private_tempdir`` name them, holding the marker, whose process
    is gone. Returns what was removed; anything else, the user's ``.*.tmp`` included, stays."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _BESIDE.match(entry.name) or _IN_TEMP.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if not (path / MARKER).is_file() or _process_alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _name_tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]


def _in_the_way(target: Path, writing_a_file: bool) -> UserError | None:
    if writing_a_file and target.is_dir() and not target.is_symlink():
        return UserError(f"{target}: a folder is in the way of the file to write; move it or choose another path")
    if not writing_a_file and target.exists() and not target.is_dir():
        return UserError(f"{target}: a file is in the way of the folder to write; move it or choose another path")
    return None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one rename.

    Works for a file or a folder written by a third-party library (e.g. a SavedModel). A folder
    replaces a folder; a folder in the way of a file (or a file in the way of a folder) is a
    ``UserError`` and is left as it is. On error the temporary is removed and ``target`` is left
    as it was; an ``OSError`` about the temporary names ``target`` instead.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    tmp = _marked_folder(target.parent, f".seg2tflite-{os.getpid()}-{_name_tag(target.name)}-", ".tmp")
    tmp_target = tmp / target.name
    try:
        try:
            yield tmp_target
        except OSError as e:
            if e.filename and str(tmp) in str(e.filename):
                raise OSError(e.errno, e.strerror, str(target)) from None
            raise
        refused = _in_the_way(target, tmp_target.is_file())
        if refused is not None:
            raise refused
        if tmp_target.is_file():
            with open(tmp_target, "rb") as f:
                os.fsync(f.fileno())
            # Some writers create private (0600) files; give the usual umask-based mode instead.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_target, 0o666 & ~umask)
        replaced = None
        if target.is_dir() and not target.is_symlink():
            replaced = tmp / ".replaced"
            os.replace(target, replaced)  # the old folder out of the way in one rename, removed below
        try:
            os.replace(tmp_target, target)
        except OSError as e:
            if replaced is not None:
                os.replace(replaced, target)
            if e.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise _in_the_way(target, tmp_target.is_file()) or e from None
            raise
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    refused = _in_the_way(Path(target), writing_a_file=True)
    if refused is not None:  # before anything is written
        raise refused
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def check_writable_file(target: str | os.PathLike, option: str) -> None:
    """Refuse, before any work, a file target that cannot be written: a folder in its place."""
    target = Path(target)
    if target.is_dir():
        raise UserError(f"{option} {target}: is a folder; give the path of a file to write (the folder is left as it is)")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {target}: {parent} is a file, not a folder; choose another path")
            break


@contextlib.contextmanager
def private_tempdir(kind: str) -> Iterator[Path]:
    """A folder in the system temp dir, ``seg2tflite_KIND_PID_XXXX``, removed on leaving the
    block; one a killed process left behind is removed by the next call (of any kind)."""
    base = Path(tempfile.gettempdir())
    remove_stale_temporaries(base)
    tmp = _marked_folder(base, f"seg2tflite_{kind}_{os.getpid()}_")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
