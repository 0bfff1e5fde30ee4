"""What an app feeds a .tflite file and gets back: ``--input`` and ``--output`` of ``convert``.

- ``input="float"`` (default): a normalised float32 NHWC image, as PyTorch takes it (NCHW there).
- ``input="uint8"``: an RGB uint8 NHWC image, 0..255, as a camera frame or a decoded file comes;
  the normalisation is the graph's first ops (CAST, then a 1x1 DEPTHWISE_CONV_2D whose per-channel
  weight is ``1 / (255 std)`` and bias ``-mean / std``), for float and integer variants alike. One
  depthwise conv, not a MUL and an ADD: in the full-int8 file each of those requantizes the image
  with one scale for all channels (the demo's DeepLabv3+ MobileNetV2: full int8 1.21 mIoU points
  below PyTorch against 0.55 for the float-input file); the conv has per-channel int8 weights and
  an int32 bias and requantizes once, as the float-input file's own input quantization does
  (0.60 points). MediaPipe's
  ImageSegmenter takes only uint8 or float32 inputs and only one mean/std for all channels, so
  this is the form a per-channel (ImageNet) normalised model loads in it.
- ``output="logits"`` (default): float logits (1, H, W, K) at the input size.
- ``output="classes"``: the class map (1, H, W) int32, ARG_MAX in the graph (XNNPACK has no
  ARG_MAX: it runs on LiteRT's builtin kernels, the manifest's ``litert_delegation`` says so).
- ``output="lowres"``: the logits at the model's native output stride, the graph's trailing
  bilinear RESIZE cut off (``lowres.cut_final_resize``), for apps that upsample on the GPU; a
  model without a trailing resize (stride 1) keeps its full-size output.

``wrap_saved_model`` writes a SavedModel whose ``serving_default`` is onnx2tf's, with these ends
added; ``tflite_variants`` converts that one. ``to_pixels`` turns the project's normalised images
back into the uint8 pixels they were made from (for calibration and for parity, so every stage
sees the same image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUTS = ("float", "uint8")
OUTPUTS = ("logits", "classes", "lowres")


@dataclass(frozen=True)
class AppIO:
    input: str = "float"
    output: str = "logits"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # 0..1 units, as Preprocess has them
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    num_classes: int = 0  # what a class map's one-hot logits are rebuilt with (runtimes.TFLiteRunner)

    @property
    def default(self) -> bool:
        return self.input == "float" and self.output == "logits"

    @property
    def wrapped(self) -> bool:
        """Whether the SavedModel gets ends added before conversion (``wrap_saved_model``)."""
        return self.input != "float" or self.output == "classes"

    def to_dict(self) -> dict:
        return {
            "input": self.input, "output": self.output, "mean": list(self.mean), "std": list(self.std),
            "num_classes": self.num_classes,
        }  # fmt: skip


def app_beside(path: str | Path) -> AppIO | None:
    """The ``app`` entry of the manifest.json next to a .tflite file (None when there is none), so
    every reader of a conversion folder (evaluate, bench, the chain) feeds a file what it takes."""
    import json

    from seg2tflite.records import manifest_records

    manifest = Path(path).parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        recorded = json.loads(manifest.read_text())
        app = recorded.get("app")
    except (OSError, ValueError, AttributeError):
        return None
    if not app or not manifest_records(recorded, manifest.parent, Path(path)):  # another file's manifest: not this file's ends
        return None
    return AppIO(**{**app, "mean": tuple(app["mean"]), "std": tuple(app["std"])})


def to_pixels(images: np.ndarray, mean, std, channel_axis: int = 1) -> np.ndarray:
    """Normalised float images -> the uint8 pixels they came from (rounded, clipped)."""
    shape = [1] * images.ndim
    shape[channel_axis] = 3
    m = np.asarray(mean, np.float64).reshape(shape)
    s = np.asarray(std, np.float64).reshape(shape)
    return np.clip(np.round((images.astype(np.float64) * s + m) * 255.0), 0, 255).astype(np.uint8)


def from_pixels(pixels: np.ndarray, mean, std, channel_axis: int = 1) -> np.ndarray:
    """uint8 pixels -> the project's normalised float32 images (what PyTorch is given)."""
    shape = [1] * pixels.ndim
    shape[channel_axis] = 3
    m = np.asarray(mean, np.float32).reshape(shape)
    s = np.asarray(std, np.float32).reshape(shape)
    return ((pixels.astype(np.float32) / np.float32(255.0)) - m) / s


def wrap_saved_model(saved_model: str | Path, out: str | Path, app: AppIO) -> Path:
    """A SavedModel at ``out``: ``app``'s input end, onnx2tf's graph, ``app``'s output end."""
    import tensorflow as tf

    inner = tf.saved_model.load(str(saved_model))
    fn = inner.signatures["serving_default"]
    ((input_key, spec),) = fn.structured_input_signature[1].items()
    (output_key,) = fn.structured_outputs.keys()
    pixels = app.input == "uint8"
    kernel = tf.constant([[[[1.0 / (255.0 * s)] for s in app.std]]], tf.float32)  # (1, 1, 3, 1): one weight per channel
    shift = tf.constant([-m / s for m, s in zip(app.mean, app.std)], tf.float32)
    dtype = tf.uint8 if app.input == "uint8" else tf.float32

    class App(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        @tf.function(input_signature=[tf.TensorSpec(spec.shape, dtype, name="image")])
        def serve(self, image):
            x = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32), kernel, [1, 1, 1, 1], "VALID") + shift if pixels else image
            y = fn(**{input_key: x})[output_key]
            if app.output == "classes":
                y = tf.argmax(y, axis=-1, output_type=tf.int32)
            return {"output": y}

    module = App()
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    return Path(out)
