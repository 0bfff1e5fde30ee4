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

onnx2tf 1.29.24 honours a bilinear Resize's ``align_corners`` and ``asymmetric`` coordinates only
when the model's opset is <= 17; above it resizes with half-pixel centres, silently (smp's
DeepLabV3+ decoder at 79% argmax agreement). Those Resize nodes mean the same at opset 13 and 20
when they use none of opset 18's attributes (antialias, axes, keep_aspect_ratio_policy), so
``_resize_modes_honoured`` hands onnx2tf opset 17 for exactly those nodes (``resize_nodes_read_as_opset17``).
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
    """onnx2tf could not convert the graph; ``log`` holds what onnx2tf printed."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


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


OPSET17_RESIZE_MODES = ("align_corners", "asymmetric")  # bilinear coordinates onnx2tf drops above opset 17


def _reads_as_opset17(attrs: dict) -> bool:
    """A Resize (attributes by name) whose coordinates onnx2tf honours only at opset <= 17, and
    which means the same at opset 17 (no opset-18 attribute set)."""
    text = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    return (
        text(attrs.get("mode", "nearest")) == "linear"
        and text(attrs.get("coordinate_transformation_mode", "half_pixel")) in OPSET17_RESIZE_MODES
        and not attrs.get("antialias", 0)
        and attrs.get("axes") is None
        and text(attrs.get("keep_aspect_ratio_policy", "stretch")) == "stretch"
    )


def resize_nodes_read_as_opset17(model: onnx.ModelProto) -> list[str]:
    """The Resize nodes ``_resize_modes_honoured`` converts as at opset 17 (for the manifest)."""
    from onnx import helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset <= 17:
        return []
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Resize" and _reads_as_opset17({a.name: helper.get_attribute_value(a) for a in node.attribute})
    ]


@contextlib.contextmanager
def _resize_modes_honoured() -> Iterator[None]:
    import onnx2tf.ops.Resize as resize

    original = resize.make_node

    def make_node(*, graph_node, tf_layers_dict, **kwargs):
        if kwargs.get("opset", 0) > 17 and _reads_as_opset17(graph_node.attrs):
            kwargs = {**kwargs, "opset": 17}
        return original(graph_node=graph_node, tf_layers_dict=tf_layers_dict, **kwargs)

    resize.make_node = make_node
    try:
        yield
    finally:
        resize.make_node = original


def run_onnx2tf(model: onnx.ModelProto, folder: Path, sample_nhwc: np.ndarray, workarounds: bool = True, **options) -> str:
    """Run ``onnx2tf.convert`` on ``model`` writing into ``folder``; return its log.

    ``options`` go to onnx2tf.convert (e.g. ``param_replacement_file``,
    ``check_onnx_tf_outputs_elementwise_close_full``). ``workarounds=False`` leaves out
    ``_resize_modes_honoured`` (only to show what it fixes).
    """
    import onnx2tf
    import tf_keras

    tf_keras.backend.clear_session()
    log = io.StringIO()
    with private_tempdir("onnx2tf") as work:  # a killed run's copy is removed by the next one
        onnx_path = Path(work) / "model.onnx"
        onnx.save(model, str(onnx_path))
        try:
            honoured = _resize_modes_honoured() if workarounds else contextlib.nullcontext()
            with onnx2tf_offline(sample_nhwc), _skip_onnx2tf_tflite(), honoured, contextlib.redirect_stdout(log):
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
            raise ConversionError(_failure_message(e, log.getvalue()), _strip_colors(log.getvalue())) from None
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
    said_lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("Traceback", "  "))]
    if len(said_lines) > 1 and said_lines[0].startswith("Exception encountered when calling layer"):
        said_lines = said_lines[1:]  # Keras's wrapper line: the next line says what went wrong
    detail = said_lines[0] if said_lines else ""
    detail = detail[:300] or type(error).__name__
    where = f" at ONNX node {op.replace('wa/', '/', 1)}" if op else ""
    last = _last_meaningful_line(log)
    said = f" (onnx2tf's last word: {last[:300]})" if last and last not in detail and detail not in last else ""
    return f"onnx2tf failed{where}: {detail}{said}"


BOILERPLATE = (  # onnx2tf's banners and the generic hints it prints after every failure
    "Conversion failed", "Re-run with", "The trace log is below", "Traceback", "File ", "raise ", "^", "input_onnx_file_path",
    "onnx_op_name", "Read this and deal with it", "Alternatively, if the input OP", "If the input OP of ONNX",
    "Also, for models that include",
)  # fmt: skip


def _last_meaningful_line(log: str) -> str:
    """The last line onnx2tf printed that says something: an ERROR line's text, not its banners."""
    for line in reversed(_strip_colors(log).splitlines()):
        text = line.strip().removeprefix("ERROR:").strip()
        if "ERROR" in line and text and not text.startswith(BOILERPLATE) and not set(text) <= set("=-*"):
            return text
    return ""


def _strip_colors(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def onnx_to_saved_model(
    model: onnx.ModelProto,
    target: str | Path,
    sample_nhwc: np.ndarray,
    param_replacement_file: str | Path | None = None,
    workarounds: bool = True,
) -> tuple[Path, str]:
    """Convert and write the SavedModel folder ``target`` atomically. Returns (path, onnx2tf log)."""
    options = {"workarounds": workarounds}
    if param_replacement_file is not None:
        options["param_replacement_file"] = str(param_replacement_file)
    target = Path(target)
    with atomic_path(target) as tmp:
        log = run_onnx2tf(model, tmp, sample_nhwc, **options)
        if not (tmp / "saved_model.pb").is_file():
            if "No space left on device" in log:  # onnx2tf printed TensorFlow's ENOSPC and went on
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
            last = [line.strip() for line in _strip_colors(log).splitlines() if line.strip()]
            raise ConversionError(
                f"onnx2tf wrote no saved_model.pb; its log ends: {last[-1][:300] if last else '(empty)'}", _strip_colors(log)
            )
        for entry in tmp.iterdir():
            if entry.name not in SAVED_MODEL_ENTRIES:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return target, _strip_colors(log)
