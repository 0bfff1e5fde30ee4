"""Opening an artifact in its own runtime, checked: a file the runtime cannot load, an input size
the artifact is not fixed to, or a size whose forward pass cannot fit in memory is a ``UserError``
before anything runs."""

from __future__ import annotations

from pathlib import Path

from seg2tflite.converters.runtimes import Runner
from seg2tflite.errors import UserError, on_command_line, setting
from seg2tflite.eval.artifacts import ArtifactInfo, artifact_kind


def _check_onnx_external_data(path: Path) -> None:
    """External data only as a regular file in the ONNX file's folder (ONNX Runtime follows links)."""
    import onnx

    from seg2tflite.records import check_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file: ONNX Runtime says so below
        return
    check_external_data(model, path)


def open_artifact(
    path: str | Path, threads: int | None = None, input_size: tuple[int, int] | None = None, xnnpack: bool = True
) -> Runner:
    """A runner for the artifact at ``path`` in its own runtime (``seg2tflite.converters.runtimes``),
    ``runner(nchw float32) -> logits nchw float32``, using ``threads`` threads where the runtime
    lets us choose (PyTorch, ONNX Runtime intra-op, TensorFlow intra-op, LiteRT/XNNPACK). A file
    its runtime cannot load is a ``UserError``; so is ``input_size`` when the artifact is fixed to
    another size. ``xnnpack=False`` runs a .tflite on LiteRT's builtin kernels alone."""
    from seg2tflite.converters import runtimes

    path = Path(path)
    kind = artifact_kind(path)
    if kind == "pytorch":
        from seg2tflite.models.registry import load_model

        return runtimes.TorchRunner(load_model(path), threads)
    if kind == "onnx":
        _check_onnx_external_data(path)
        try:
            runner = runtimes.OnnxRunner(path, threads)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's own exception types (InvalidProtobuf, Fail, ...)
            raise UserError(f"{path}: ONNX Runtime cannot load it ({_first_line(e)}); is it a whole .onnx file?") from None
        dims = runner.session.get_inputs()[0].shape
        fixed = tuple(dims[2:]) if len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]) else None
    elif kind == "saved_model":
        if threads:
            _set_tf_threads(threads)
        runner = runtimes.SavedModelRunner(path)
        spec = runner.fn.structured_input_signature[1][runner.input_key]
        dims = spec.shape.as_list() if spec.shape.rank == 4 else []
        fixed = tuple(dims[1:3]) if dims and all(isinstance(d, int) for d in dims[1:3]) else None
    else:
        check_tflite_file(path)
        try:
            runner = runtimes.TFLiteRunner(path, threads, xnnpack=xnnpack)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{path}: LiteRT cannot load it ({_first_line(e)})") from None
        shape = tuple(int(d) for d in runner.input["shape"])
        fixed = shape[1:3] if runner.nhwc else shape[2:4]
    if input_size is not None and fixed is not None and tuple(fixed) != tuple(input_size):
        h, w = fixed
        raise UserError(
            f"{path}: the model takes {h}x{w} images, not {input_size[0]}x{input_size[1]}; "
            + (
                f"pass {setting('input_size', f'{h} {w}')} (or drop {setting('input_size')})"
                if on_command_line()
                else f"pass input_size=({h}, {w}) (or None)"
            )
        )
    return runner


def check_tflite_file(path: Path) -> None:
    """Refuse a file that is not a TFLite flatbuffer before LiteRT reads it."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise UserError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier); is it a whole .tflite file?")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _set_tf_threads(threads: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process; it keeps its thread pools
        pass


def check_memory(info: ArtifactInfo, processes: int = 1) -> None:
    """Refuse an input size at which one forward pass of a checkpoint or an ONNX file (each of
    ``processes`` running one) cannot fit in the memory available."""
    from seg2tflite.memory import check_fits
    from seg2tflite.models import list_models

    if info.kind == "tflite":
        check_tflite_file(info.path)
    if info.kind == "pytorch" and info.model in list_models():
        from seg2tflite.models.footprint import activation_bytes

        activations = lambda h, w: activation_bytes(info.model, (h, w), info.num_classes)  # noqa: E731
    elif info.kind == "onnx":
        from seg2tflite.converters.onnx_export import load_onnx, onnx_activation_bytes

        model = load_onnx(info.path)
        activations = lambda h, w: onnx_activation_bytes(model, (h, w))  # noqa: E731
    else:  # a SavedModel or .tflite is fixed to its size: another one is refused when it is opened
        return
    check_fits(lambda h, w: processes * (activations(h, w) or 0), info.input_size, f"running {info.path.name}")
