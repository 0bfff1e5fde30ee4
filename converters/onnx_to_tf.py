"""ONNX -> TensorFlow SavedModel (NHWC) with onnx2tf, in-process, offline, from a prepared graph.

onnx2tf is given a private copy of the graph (it rewrites its input file in place) and told not
to run onnxsim itself (``prepare_onnx`` already did; onnx2tf shells out to an ``onnxsim``
command that may not be on PATH, and silently continues unsimplified when it is missing). The
SavedModel gets a ``serving_default`` signature: input ``input`` (1, H, W, 3), one NHWC output.
onnx2tf always builds float32/float16 .tflite files of its own with
``TFLiteConverter.from_keras_model``, which serialises the Keras config with every weight inlined
as a Python list: 97% of a 1000 s SegNet-VGG16 conversion at 64x64 (cProfile). All five variants
are built the same way from the SavedModel by ``tflite_variants`` instead, so that step is
stubbed out while onnx2tf runs (``_skip_onnx2tf_tflite``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx

from seg2tflite.atomic import atomic_path, private_tempdir
from seg2tflite.converters.offline import onnx2tf_offline
from seg2tflite.errors import UserError

SAVED_MODEL_ENTRIES = ("saved_model.pb", "variables", "assets", "fingerprint.pb")


class ConversionError(UserError):
    """onnx2tf could not convert the graph."""


class _NoTFLite:
    """Stands in for onnx2tf's own TFLiteConverter: accepts its settings, converts to nothing."""

    def __init__(self, *args, **kwargs):
        self.target_spec = SimpleNamespace()

    def convert(self) -> bytes:
        return b""


@contextlib.contextmanager
def _skip_onnx2tf_tflite() -> Iterator[None]:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter
    saved = {name: getattr(converter, name) for name in ("from_keras_model", "from_concrete_functions")}
    for name in saved:
        setattr(converter, name, _NoTFLite)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(converter, name, original)


def run_onnx2tf(model: onnx.ModelProto, folder: Path, sample_nhwc: np.ndarray, **options) -> str:
    """Run ``onnx2tf.convert`` on ``model`` writing into ``folder``; return its log.

    ``options`` go to onnx2tf.convert (e.g. ``param_replacement_file``,
    ``check_onnx_tf_outputs_elementwise_close_full``).
    """
    import onnx2tf
    import tf_keras

    tf_keras.backend.clear_session()
    log = io.StringIO()
    with private_tempdir("onnx2tf") as work:  # a killed run's copy is removed by the next one
        onnx_path = Path(work) / "model.onnx"
        onnx.save(model, str(onnx_path))
        try:
            with onnx2tf_offline(sample_nhwc), _skip_onnx2tf_tflite(), contextlib.redirect_stdout(log):
                onnx2tf.convert(
                    input_onnx_file_path=str(onnx_path),
                    output_folder_path=str(folder),
                    output_signaturedefs=True,
                    not_use_onnxsim=True,
                    batch_size=1,
                    non_verbose=True,
                    **options,
                )
        except (Exception, SystemExit) as e:
            disk_full = _disk_full(e, log.getvalue())
            if disk_full is not None:  # not a conversion problem: the one-line disk message, as for every write
                raise OSError(errno.ENOSPC, "No space left on device", str(folder)) from None
            raise ConversionError(_failure_message(e, log.getvalue())) from None
    return log.getvalue()


def _disk_full(error: BaseException, log: str) -> BaseException | None:
    """The error (or one it was raised from) that says the disk is full, if any; TensorFlow
    wraps ENOSPC in its own error types, and onnx2tf may only print it before exiting."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return seen
        if "No space left on device" in str(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return error if "No space left on device" in log else None


def _failure_message(error: BaseException, log: str) -> str:
    lines = [_strip_colors(line).strip() for line in log.splitlines() if "ERROR" in line]
    op = next((line.split("onnx_op_name:", 1)[1].strip() for line in lines if "onnx_op_name:" in line), None)
    text = _strip_colors(str(error)).strip()
    detail = next((line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("Traceback", "  "))), "")
    detail = detail[:300] or type(error).__name__
    where = f" at ONNX node {op.replace('wa/', '/', 1)}" if op else ""
    return f"onnx2tf failed{where}: {detail}; see the onnx2tf log above, or try another --opset"


def _strip_colors(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def onnx_to_saved_model(
    model: onnx.ModelProto,
    target: str | Path,
    sample_nhwc: np.ndarray,
    param_replacement_file: str | Path | None = None,
) -> tuple[Path, str]:
    """Convert and write the SavedModel folder ``target`` atomically. Returns (path, onnx2tf log)."""
    options = {}
    if param_replacement_file is not None:
        options["param_replacement_file"] = str(param_replacement_file)
    target = Path(target)
    with atomic_path(target) as tmp:
        log = run_onnx2tf(model, tmp, sample_nhwc, **options)
        if not (tmp / "saved_model.pb").is_file():
            if "No space left on device" in log:  # onnx2tf printed TensorFlow's ENOSPC and went on
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
            last = [line.strip() for line in _strip_colors(log).splitlines() if line.strip()]
            raise ConversionError(f"onnx2tf wrote no saved_model.pb; its log ends: {last[-1][:300] if last else '(empty)'}")
        for entry in tmp.iterdir():
            if entry.name not in SAVED_MODEL_ENTRIES:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return target, _strip_colors(log)
