"""A real app client in the parity table: MediaPipe's ImageSegmenter (the Tasks API of Android,
iOS and Python; CPU here) on each .tflite exactly as it was written.

``category_masks`` loads a file with no options beyond its path and the CPU delegate (the
normalisation and the labels come from the file's metadata) and segments uint8 RGB images one
at a time. The chain runs it in its variant worker (``isolated.VariantWorker.client``), so a
native crash of MediaPipe fails that row only. ``client_figures`` turns its masks into the
parity row: agreement with the reference's argmax and with LiteRT's argmax of the same file, and
the mIoU against the ground truth; ``client_gate_failures`` holds them to the float agreement
(``client_min_agreement``, both float variants) or the quantized mIoU budget. ``client_agreement``
is the same row for one file outside the chain (in this process, against a given reference's
classes and LiteRT's argmax of the file); ``seg2tflite.eval.mediapipe_client`` runs it over a
dataset for a conversion folder.

MediaPipe takes only uint8 or float32 inputs and one mean/std for all channels: a file converted
with ``--input uint8`` loads; the default float input of an ImageNet-normalised model is refused
("Per-channel image normalization is not available"), and that refusal is the row.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from seg2tflite.converters.stages import STAGES
from seg2tflite.metrics import ConfusionMatrix


def category_masks(path: str, pixels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """MediaPipe's category masks (N, H, W) of ``pixels`` (N, H, W, 3) uint8, and the labels it read."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(path), delegate=BaseOptions.Delegate.CPU),
        output_category_mask=True,
        output_confidence_masks=False,
    )
    with vision.ImageSegmenter.create_from_options(options) as segmenter:
        labels = list(segmenter.labels)
        masks = []
        for p in pixels:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(p, np.uint8))
            mask = segmenter.segment(image).category_mask.numpy_view()
            masks.append(mask.reshape(mask.shape[:2]).copy())
    return np.stack(masks), labels


def client_figures(masks: np.ndarray, reference: np.ndarray, litert: np.ndarray, truth, num_classes: int) -> dict:
    """The client's row: ``masks`` against the reference's and LiteRT's argmax (N, H, W) and the truth."""
    figures = {
        "client": "mediapipe ImageSegmenter (CPU)",
        "images": int(len(masks)),
        "vs_reference": float((masks == reference).mean()),
        "vs_litert": float((masks == litert).mean()),
        "miou": math.nan,
    }
    if truth is not None:
        matrix = ConfusionMatrix(num_classes, ignore_index=255)
        matrix.update(masks, truth)
        figures["miou"] = matrix.compute().miou
    return figures


def client_agreement(path: str | Path, pixels: np.ndarray, reference: np.ndarray, mean, std, app=None) -> dict:
    """Share of pixels where MediaPipe's mask of ``pixels`` equals ``reference`` (e.g. PyTorch's
    argmax) and LiteRT's argmax of ``path`` (``app``: its ends, default the manifest's next to it),
    and the labels MediaPipe read."""
    from seg2tflite.converters.app_io import from_pixels
    from seg2tflite.converters.runtimes import TFLiteRunner

    masks, labels = category_masks(path, pixels)
    runner = TFLiteRunner(path, app=app)
    normalised = from_pixels(pixels, mean, std, channel_axis=-1).transpose(0, 3, 1, 2)
    litert = np.concatenate([runner(x[None]).argmax(1) for x in normalised])
    figures = client_figures(masks, reference, litert, None, len(labels))
    del figures["miou"]  # no ground truth here (NaN is not JSON)
    return {**figures, "labels": labels}


CLIENT_NOTES = {  # why the client's row is reported, not gated, for the other --output forms
    "classes": "not gated: MediaPipe's ImageSegmenter reads a (1, H, W) class-map output as one confidence channel, "
    "not as class ids (measured: its mask is wrong); a --output classes file is for apps that read the tensor themselves",
    "lowres": "not gated: MediaPipe upsamples the low-resolution logits with its own resize, not the model's "
    "half-pixel bilinear, so boundary pixels differ; LiteRT's row is the file upsampled as the model did",
}


def client_gate_failures(variant: str, row: dict, reference_miou: float, config) -> list[str]:
    """Float files: the client's mask is the reference's argmax on ``client_min_agreement`` of the
    pixels; quantized files (trained models): its mIoU within the variant's budget. A refusal or
    a row with a note (a class-map output) is reported, not gated."""
    if "refused" in row or "note" in row:
        return []
    if STAGES[variant].gate in ("float", "float16"):
        if not row["vs_reference"] >= config.client_min_agreement:
            return [
                f"{variant}@mediapipe: category mask agrees with the reference's argmax on {100 * row['vs_reference']:.3f}% "
                f"of the pixels < {100 * config.client_min_agreement:.3f}%"
            ]
        return []
    drop = 100 * (reference_miou - row["miou"])
    if config.trained and not math.isnan(drop) and not drop <= config.max_miou_drop:
        return [
            f"{variant}@mediapipe: mIoU {100 * row['miou']:.2f} is {drop:.2f} points below the reference's "
            f"{100 * reference_miou:.2f} (budget {config.max_miou_drop:g})"
        ]
    return []
