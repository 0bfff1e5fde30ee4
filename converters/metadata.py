"""TFLite model metadata on every .tflite, so an app's task library can use the file as it is.

Written with MediaPipe's metadata library (``mediapipe.tasks.python.metadata``: the TFLite
metadata schema, its ``metadata_info`` builders and ``MetadataPopulator``), the same metadata
MediaPipe's ``ImageSegmenter`` (Python, Android, iOS) reads:

- the model: name, version, description;
- the image input: RGB, ``NormalizationOptions`` mean/std in 0..255 pixel units (the project's
  mean/std times 255), so the task library normalises a camera frame as PyTorch did;
- the output: a segmentation mask (``SegmentationMaskMd``) with the class names packed as an
  associated ``labels.txt`` (``TENSOR_AXIS_LABELS``), plus the segmenter options (activation
  NONE: the logits are not probabilities).

Metadata lives in the flatbuffer's ``metadata`` table and an appended zip of associated files;
the graph, its tensors and its buffers are untouched, so the outputs cannot change (checked by
tests/test_metadata.py on LiteRT). ``read_metadata`` reads it back.

Only mediapipe 0.10.21 works here: later releases (0.10.30 to 1.2.3) ship the Python writers
without the ``_pywrap_metadata_version`` extension they import (``No module named
'mediapipe.tasks.cc'``); tflite-support 0.4.4 needs protobuf < 4 and libusb.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

from seg2tflite.errors import UserError

LABEL_FILE = "labels.txt"


@dataclass(frozen=True)
class ModelMetadata:
    """What an app needs to know about a .tflite file, in the units the task library wants."""

    name: str
    version: str
    labels: tuple[str, ...]
    mean: tuple[float, float, float]  # the project's normalisation, 0..1 units
    std: tuple[float, float, float]
    description: str = ""
    author: str = "seg2tflite"

    @property
    def mean_255(self) -> list[float]:
        return [float(m) * 255.0 for m in self.mean]

    @property
    def std_255(self) -> list[float]:
        return [float(s) * 255.0 for s in self.std]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "labels": list(self.labels),
            "mean": list(self.mean),
            "std": list(self.std),
            "description": self.description,
            "author": self.author,
        }


def _writers():
    try:
        from mediapipe.tasks.python.metadata import metadata
        from mediapipe.tasks.python.metadata.metadata_writers import image_segmenter, metadata_info, writer_utils
    except ImportError as e:
        raise UserError(
            f"writing TFLite metadata needs mediapipe 0.10.21 ({e}); reinstall with the README's install commands"
        ) from None
    return metadata, image_segmenter, metadata_info, writer_utils


def add_metadata(model: bytes, info: ModelMetadata, app=None) -> bytes:
    """``model`` (a converter output, without metadata) with TFLite metadata for an image segmenter.

    ``app`` (``app_io.AppIO``, None: float input, logits): with a uint8 input the graph takes
    0..255 pixels and normalises inside; the metadata then says mean 0, std 1, so a task library
    feeds pixels unchanged. With a class-map output the mask is the class ids themselves. Per-channel
    mean/std (ImageNet's) are valid TFLite metadata, but MediaPipe's ImageSegmenter refuses them
    ("Per-channel image normalization is not available"): ``--input uint8`` is the form it loads."""
    metadata, image_segmenter, metadata_info, writer_utils = _writers()
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    model = bytearray(model)
    raw_pixel_input = app is not None and app.input == "uint8"
    classes = app is not None and app.output == "classes"
    if not classes and len(info.labels) != _output_channels(model, writer_utils):
        raise ValueError(f"{len(info.labels)} labels for a model with {_output_channels(model, writer_utils)} output classes")
    mean, std = ([0.0], [1.0]) if raw_pixel_input else (_one_if_equal(info.mean_255), _one_if_equal(info.std_255))
    general = metadata_info.GeneralMd(
        name=info.name, version=info.version, description=info.description or None, author=info.author
    ).create_metadata()
    image = metadata_info.InputImageTensorMd(
        name="image",
        description="RGB image"
        + (", 0..255 pixels (normalised inside the graph)" if raw_pixel_input else ", normalised with mean/std"),
        norm_mean=mean,
        norm_std=std,
        color_space_type=fb.ColorSpaceType.RGB,
        tensor_type=writer_utils.get_input_tensor_types(model)[0],
    ).create_metadata()
    label_file = metadata_info.LabelFileMd(file_path=LABEL_FILE)
    mask = metadata_info.SegmentationMaskMd(
        name="segmentation_masks",
        description="Per-pixel class ids." if classes else "Per-pixel class logits (NHWC); the category mask is their argmax.",
        label_files=[label_file],
    ).create_metadata()
    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [mask]
    subgraph.customMetadata = [image_segmenter.ImageSegmenterOptionsMd(image_segmenter.Activation.NONE).create_metadata()]
    general.subgraphMetadata = [subgraph]
    builder = flatbuffers.Builder(0)
    builder.Finish(general.Pack(builder), metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)
    populator = metadata.MetadataPopulator.with_model_buffer(bytes(model))
    populator.load_metadata_buffer(builder.Output())
    populator.load_associated_file_buffers({LABEL_FILE: "\n".join(info.labels).encode() + b"\n"})
    populator.populate()
    return _fixed_zip_times(bytes(populator.get_model_buffer()))


def read_metadata(model: bytes) -> dict | None:
    """The metadata of ``model`` as JSON (the library's own displayer) plus its label file; None without."""
    metadata, _, _, _ = _writers()
    try:
        displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(model))
    except ValueError:  # "The model does not have metadata."
        return None
    result = json.loads(displayer.get_metadata_json())
    files = displayer.get_packed_associated_file_list()
    result["associated_files"] = {name: displayer.get_associated_file_buffer(name).decode() for name in files}
    return result


def _fixed_zip_times(model: bytes) -> bytes:
    """The populator packs the label file as a zip member stamped with the current time; the same
    member stamped 1980-01-01 instead, so the same conversion writes the same bytes (resume keys,
    sha256 in the manifest)."""
    with zipfile.ZipFile(io.BytesIO(model)) as packed:
        members = [(info, packed.read(info)) for info in packed.infolist()]
    out = io.BytesIO(model[: min(info.header_offset for info, _ in members)])
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as repacked:
        for info, data in members:
            repacked.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data, info.compress_type)
    return out.getvalue()


def _one_if_equal(values: list[float]) -> list[float]:
    """One value for all channels when they are equal: MediaPipe refuses per-channel normalisation."""
    return values[:1] if len(set(values)) == 1 else values


def _output_channels(model: bytearray, writer_utils) -> int:
    graph = writer_utils.get_subgraph(model)
    return int(graph.Tensors(graph.Outputs(0)).ShapeAsNumpy()[-1])


def class_labels(num_classes: int, *datasets) -> tuple[str, ...]:
    """The class names of the first dataset that has ``num_classes`` of them, else class_0.. class_K-1."""
    for data in datasets:
        names = getattr(getattr(data, "info", None), "class_names", None)
        if names and len(names) == num_classes:
            return tuple(str(n) for n in names)
    return tuple(f"class_{i}" for i in range(num_classes))


def model_metadata(model_info: dict, labels: tuple[str, ...], mean, std) -> ModelMetadata:
    """The metadata of a conversion: the registry name (or the class converted), this package's version."""
    from importlib import metadata as importlib_metadata

    try:
        version = importlib_metadata.version("seg2tflite")
    except importlib_metadata.PackageNotFoundError:
        version = "unknown"
    name = model_info.get("name") or str(model_info.get("class") or model_info.get("onnx_source") or "model").rsplit(".", 1)[-1]
    description = f"Semantic segmentation, {len(labels)} classes; converted by seg2tflite {version}."
    return ModelMetadata(name, version, tuple(labels), tuple(mean), tuple(std), description)
