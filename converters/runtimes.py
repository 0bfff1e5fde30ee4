"""Run each artifact in its own real runtime behind one signature: NCHW float32 in, NCHW logits out.

``TorchRunner`` (PyTorch eager), ``OnnxRunner`` (ONNX Runtime, CPU), ``SavedModelRunner``
(``tf.saved_model.load``, serving signature) and ``TFLiteRunner`` (the LiteRT interpreter) all
take a normalised batch ``(B, 3, H, W)`` float32 and return logits ``(B, K, H, W)`` float32.
The TensorFlow artifacts are NHWC and fixed to batch 1: the runners transpose, loop over the
batch, and for integer models quantize the input with its scale/zero point and dequantize the
output. ``make_runner(path)`` picks the runner for a file; evaluation code reuses these.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from seg2tflite.metrics import ConfusionMatrix
from seg2tflite.quiet import muted_stderr

# LiteRT releases whose XNNPACK path ignores the right-hand zero point of int8 BATCH_MATMUL
# (fixed in LiteRT 3d796311b, 2026-03-10, released in ai-edge-litert 2.1.3).
BROKEN_INT8_BATCH_MATMUL = ((2, 0, 2), (2, 1, 2))
_warned = False


def litert_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "not installed"


def litert_warning(version: str | None = None) -> str | None:
    """The line to print when this LiteRT is known to compute int8 models wrong; None when it is not."""
    version = version or litert_version()
    try:
        release = tuple(int(part) for part in version.split(".")[:3])
    except ValueError:
        return None
    low, high = BROKEN_INT8_BATCH_MATMUL
    if not low <= release <= high:
        return None
    return (
        f"ai-edge-litert {version} is known to give wrong results for int8 BATCH_MATMUL under XNNPACK; "
        "upgrade ai-edge-litert to >= 2.1.3 (pip install --no-deps -r runtime-override.txt)"
    )


def _warn_about_litert_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        line = litert_warning()
        if line:
            print(f"seg2tflite: warning: {line}", file=sys.stderr, flush=True)


Runner = Callable[[np.ndarray], np.ndarray]  # (B, 3, H, W) float32 -> (B, K, H, W) float32


class TorchRunner:
    name = "pytorch"

    def __init__(self, model, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = model.eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            x = self.torch.from_numpy(np.ascontiguousarray(batch, np.float32))
            device = next(self.model.parameters(), self.torch.empty(0)).device
            return self.model(x.to(device)).float().cpu().numpy()


class OnnxRunner:
    name = "onnx"

    def __init__(self, path: str | Path | bytes, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        model = path if isinstance(path, bytes) else str(path)  # a path, or a serialized model
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.batch = self.session.get_inputs()[0].shape[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        if isinstance(self.batch, int) and self.batch != len(batch):
            return np.concatenate([self.session.run(None, {self.input_name: x[None]})[0] for x in batch])
        return self.session.run(None, {self.input_name: batch})[0]


class SavedModelRunner:
    name = "saved_model"

    def __init__(self, path: str | Path, signature: str = "serving_default"):
        import tensorflow as tf

        self.tf = tf
        self.loaded = tf.saved_model.load(str(path))
        self.fn = self.loaded.signatures[signature]
        (self.input_key,) = self.fn.structured_input_signature[1].keys()
        (self.output_key,) = self.fn.structured_outputs.keys()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        outs = []
        for x in np.asarray(batch, np.float32):
            y = self.fn(**{self.input_key: self.tf.constant(x.transpose(1, 2, 0)[None])})[self.output_key]
            outs.append(y.numpy().transpose(0, 3, 1, 2))
        return np.concatenate(outs)


class TFLiteRunner:
    """LiteRT with its default XNNPACK delegate; when XNNPACK refuses the graph, the same
    interpreter without default delegates, noted in ``delegate``. ``xnnpack=False`` asks for
    LiteRT's builtin kernels alone (they and XNNPACK disagree on the full-int8 SegFormer).
    ``app`` (``app_io.AppIO``; default: the manifest.json next to the file, if any) says what the
    file's ends are: a uint8 pixel input (``--input uint8``) is fed the pixels the normalised
    batch was made from; a class-map output (``--output classes``) comes back as one-hot logits
    (argmax and mIoU figures hold, logit drift does not exist); low-resolution logits
    (``--output lowres``) come back upsampled as an app does it, bilinear with half-pixel centers
    (PyTorch's ``align_corners=False``). ``output_form`` names which."""

    name = "tflite"

    def __init__(self, model: str | Path | bytes, threads: int | None = None, xnnpack: bool = True, app=None):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from seg2tflite.converters.app_io import app_beside

        _warn_about_litert_once()
        kwargs = {"num_threads": threads} if threads else {}
        if not xnnpack:
            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        if isinstance(model, (bytes, bytearray)):
            kwargs["model_content"] = bytes(model)
        else:
            kwargs["model_path"] = str(model)
        self.delegate = "xnnpack" if xnnpack else "none"
        try:
            with muted_stderr():  # LiteRT prints a line per interpreter ("Created ... XNNPACK delegate")
                self.interpreter = Interpreter(**kwargs)
                self.interpreter.allocate_tensors()
        except RuntimeError as e:
            if "XNNPACK" not in str(e):
                raise
            self.delegate = f"none (XNNPACK failed to prepare: {str(e).strip().splitlines()[-1][:200]})"
            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            with muted_stderr():
                self.interpreter = Interpreter(**kwargs)
                self.interpreter.allocate_tensors()
        (self.input,) = self.interpreter.get_input_details()
        (self.output,) = self.interpreter.get_output_details()
        shape = tuple(self.input["shape"])
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise ValueError(f"expected a (1, H, W, 3) or (1, 3, H, W) image input, the model has {shape}")
        self.nhwc = shape[3] == 3  # onnx2tf writes NHWC; (1, 3, H, W) only when the last axis is not 3
        self.app = app if app is not None or isinstance(model, (bytes, bytearray)) else app_beside(model)
        self.pixel_input = np.dtype(self.input["dtype"]) == np.uint8 and not self.input["quantization"][0]
        if self.pixel_input and (self.app is None or self.app.input != "uint8"):
            raise ValueError("this model takes uint8 pixels: give TFLiteRunner the normalisation, app=AppIO('uint8', ...)")
        self.output_form = "logits" if self.app is None else self.app.output
        if len(self.output["shape"]) == 3 and (self.output_form != "classes" or not self.app.num_classes):
            raise ValueError("this model returns a class map: give TFLiteRunner app=AppIO(output='classes', num_classes=K)")

    @property
    def delegation(self) -> dict:
        """Which ops XNNPACK took, read from the interpreter after delegation.

        LiteRT keeps the model's nodes and appends one DELEGATE node per partition it handed to
        XNNPACK, with the partition's boundary tensors as inputs and outputs; a node is delegated
        when it lies between a DELEGATE node's inputs and outputs (walking back from the outputs
        to the inputs through the nodes that produce each tensor)."""
        ops = self.interpreter._get_ops_details()
        delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
        nodes = [op for op in ops if op["op_name"] != "DELEGATE"]
        producer = {int(t): op["index"] for op in nodes for t in op["outputs"]}
        by_index = {op["index"]: op for op in nodes}
        delegated: set[int] = set()
        for d in delegates:
            boundary = {int(t) for t in d["inputs"]}
            stack = [int(t) for t in d["outputs"]]
            while stack:
                tensor = stack.pop()
                node = producer.get(tensor)
                if tensor in boundary or node is None or node in delegated:
                    continue
                delegated.add(node)
                stack.extend(int(t) for t in by_index[node]["inputs"] if int(t) >= 0)
        kept: dict[str, int] = {}
        for op in nodes:
            if op["index"] not in delegated:
                kept[op["op_name"]] = kept.get(op["op_name"], 0) + 1
        return {
            "delegate": self.delegate,
            "ops": len(nodes),
            "delegated": len(delegated),
            "partitions": len(delegates),
            "not_delegated": dict(sorted(kept.items(), key=lambda kv: (-kv[1], kv[0]))),
        }

    @property
    def io_quantization(self) -> dict:
        """Input/output dtype, scale and zero point (scale 0 means not quantized)."""
        return {
            side: {
                "dtype": np.dtype(d["dtype"]).name,
                "scale": float(d["quantization"][0]),
                "zero_point": int(d["quantization"][1]),
            }
            for side, d in (("input", self.input), ("output", self.output))
        }

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        outs = []
        for x in np.asarray(batch, np.float32):
            x = x.transpose(1, 2, 0) if self.nhwc else x
            if self.pixel_input:
                from seg2tflite.converters.app_io import to_pixels

                x = to_pixels(x, self.app.mean, self.app.std, channel_axis=-1 if self.nhwc else 0)
            self.interpreter.set_tensor(self.input["index"], _quantize(x[None], self.input))
            self.interpreter.invoke()
            y = self.interpreter.get_tensor(self.output["index"])
            if y.ndim == 3:  # a class map (1, H, W)
                outs.append(np.eye(self.app.num_classes, dtype=np.float32)[y].transpose(0, 3, 1, 2))
                continue
            y = _dequantize(y, self.output)
            y = y.transpose(0, 3, 1, 2) if self.nhwc else y
            size = x.shape[:2] if self.nhwc else x.shape[1:]
            if self.output_form == "lowres" and y.shape[2:] != size:
                y = _upsample(y, size)
            outs.append(y)
        return np.concatenate(outs)


def _upsample(logits: np.ndarray, size) -> np.ndarray:
    """(1, K, h, w) -> (1, K, H, W), bilinear with half-pixel centers: what the cut resize did."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        return F.interpolate(torch.from_numpy(logits), size=tuple(size), mode="bilinear", align_corners=False).numpy()


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32 or x.dtype == dtype:  # float, or pixels already
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def make_runner(artifact, threads: int | None = None):
    """A runner for a torch module, a .onnx file, a SavedModel folder or a .tflite file."""
    if not isinstance(artifact, (str, Path)):
        return TorchRunner(artifact, threads)
    path = Path(artifact)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SavedModelRunner(path)
    if path.suffix == ".onnx":
        return OnnxRunner(path, threads)
    if path.suffix == ".tflite":
        return TFLiteRunner(path, threads)
    raise ValueError(f"{path}: not a .onnx, .tflite or SavedModel folder")


def tflite_miou(
    model: bytes | str | Path,
    images: np.ndarray,
    masks: np.ndarray,
    num_classes: int,
    threads: int | None = None,
    xnnpack: bool = True,
) -> float:
    """mIoU in points of a .tflite on preprocessed (N, 3, H, W) images, in LiteRT (with XNNPACK unless told not to)."""
    runner = TFLiteRunner(model, threads, xnnpack=xnnpack)
    matrix = ConfusionMatrix(num_classes)
    for i in range(len(images)):
        matrix.update(runner(images[i : i + 1]).argmax(1), masks[i : i + 1])
    return 100.0 * matrix.compute().miou
