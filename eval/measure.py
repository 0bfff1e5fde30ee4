"""Measure a conversion folder: evaluate every artifact, compare it with PyTorch, benchmark it.

``measure_conversion`` returns the run-record rows and the overlay sample; ``record.record_results``
stores them. Every stage uses the preprocessing the folder's manifest gives.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np

from seg2tflite.converters.runtimes import TFLiteRunner
from seg2tflite.converters.stages import REFERENCE, STAGES, ConversionDir
from seg2tflite.errors import UserError
from seg2tflite.eval.record import RecordRow


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def file_size_mb(path: str | Path) -> float:
    return sum(p.stat().st_size for p in _files(Path(path))) / 1e6


def zipped_size_mb(path: str | Path) -> float:
    """Size of ``path`` (a file or a folder) deflated into a zip archive, in MB."""
    path = Path(path)
    with tempfile.TemporaryFile() as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for p in _files(path):
                archive.write(p, p.relative_to(path.parent))
        return f.tell() / 1e6


RUNTIME_PACKAGES = {"pytorch": "torch", "onnxruntime": "onnxruntime", "tensorflow": "tensorflow", "litert": "ai-edge-litert"}


def runtime_version(runtime: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(RUNTIME_PACKAGES[runtime])
    except (KeyError, metadata.PackageNotFoundError):
        return None


def _count_params(checkpoint: Path) -> int:
    from seg2tflite.models.registry import load_model

    return sum(p.numel() for p in load_model(checkpoint).parameters())


def _overlay_sample(info, data_spec: str, split: str, n: int, num_classes: int | None) -> dict:
    from PIL import Image

    from seg2tflite.data import load_dataset

    dataset = load_dataset(data_spec, split, num_classes=num_classes)
    h, w = info.input_size
    images, targets = [], []
    for i in range(min(n, len(dataset))):
        image, mask = dataset[i]
        images.append(np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)))
        targets.append(info.preprocess.mask(mask).astype(np.uint8))
    return {
        "image": np.stack(images),
        "target": np.stack(targets),
        "class_names": np.asarray(dataset.info.class_names),
        "palette": np.asarray(dataset.info.palette, np.uint8),
    }


def measure_conversion(
    convert_dir: str | Path,
    data_spec: str,
    split: str = "test",
    model: str | None = None,
    stages: list[str] | None = None,
    workers: int = 1,
    limit: int | None = None,
    stage_limits: dict[str, int] | None = None,
    drift_images: int = 8,
    overlay_images: int = 4,
    bench: bool = True,
    bench_threads: int = 1,
    warmup: int = 5,
    runs: int = 30,
    bench_isolate: bool = True,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[list[RecordRow], dict[str, np.ndarray]]:
    """Evaluate, compare with PyTorch and benchmark every artifact of a conversion folder.

    Returns the rows and the overlay sample (``predictions/MODEL.npz`` content) for
    ``record_results``. All stages use the preprocessing the folder's manifest gives. ``workers``
    processes evaluate each .tflite (a LiteRT interpreter keeps to few threads); PyTorch, ONNX
    Runtime and TensorFlow run in this process with all cores, as they parallelise inside.
    ``stage_limits`` evaluates the named stages on their first N images only (at least the overlay
    images); such a row's agreement and ``reference_miou`` are PyTorch's on the same images.
    """
    from seg2tflite.eval.artifacts import describe_artifact
    from seg2tflite.eval.bench import benchmark_artifact
    from seg2tflite.eval.evaluate import argmax_agreement, compare_artifacts, evaluate_artifact

    convert_dir = Path(convert_dir)
    found = ConversionDir(convert_dir).artifacts()
    if stages is not None:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise UserError(f"stages {unknown}: unknown; use some of {', '.join(STAGES)}")
        found = {s: p for s, p in found.items() if s in stages}
    reference = found.get(REFERENCE)
    converted = [p for s, p in found.items() if s != REFERENCE]
    first = describe_artifact(converted[0] if converted else reference)  # the conversion's manifest rules
    model = model or first.model or convert_dir.name
    params = _count_params(reference) if reference is not None else None
    sample = _overlay_sample(first, data_spec, split, overlay_images, first.num_classes)

    rows, reference_predictions = [], None
    for stage, path in found.items():
        stage_limit = limit
        if stage != REFERENCE and stage in (stage_limits or {}):
            stage_limit = max(stage_limits[stage], overlay_images) if limit is None else min(limit, stage_limits[stage])
        result = evaluate_artifact(
            path, data_spec, split, first.input_size, first.mean, first.std,
            workers=workers if path.suffix == ".tflite" else 1, limit=stage_limit, keep_predictions=True, progress=progress,
        )  # fmt: skip
        sample[f"pred_{stage}"] = result.predictions[: len(sample["image"])]
        row = RecordRow(
            model=model,
            stage=stage,
            artifact=_relative(path, run_dir),
            runtime=STAGES[stage].runtime,
            runtime_version=runtime_version(STAGES[stage].runtime),
            input_size=first.input_size,
            data=data_spec,
            split=split,
            num_images=result.num_images,
            params=params,
            file_mb=file_size_mb(path),
            zip_mb=zipped_size_mb(path),
            miou=result.metrics["miou"],
            pixel_accuracy=result.metrics["pixel_accuracy"],
            per_class_iou=dict(result.metrics["per_class_iou"]),
            eval_seconds=result.seconds,
            data_sha256=result.data_sha256,
        )
        if STAGES[stage].runtime == "litert":
            delegation = TFLiteRunner(path).delegation
            row.delegated_ops, row.total_ops = delegation["delegated"], delegation["ops"]
            row.miou_builtin = row.miou  # with no op delegated, XNNPACK's run was the builtin kernels' run
            if delegation["delegated"]:
                builtin = evaluate_artifact(
                    path, data_spec, split, first.input_size, first.mean, first.std,
                    workers=workers, limit=stage_limit, xnnpack=False, progress=progress,
                )  # fmt: skip
                row.miou_builtin = builtin.metrics["miou"]
        if stage == REFERENCE:
            reference_predictions = result.predictions
        elif reference is not None:
            n = len(result.predictions)
            row.argmax_agreement = argmax_agreement(result.predictions, reference_predictions[:n])
            if n < len(reference_predictions):  # fewer images than PyTorch's row: its mIoU on the same ones
                row.reference_miou = evaluate_artifact(
                    reference, data_spec, split, first.input_size, first.mean, first.std, limit=n, progress=False
                ).metrics["miou"]
            if drift_images > 0:
                drift = compare_artifacts(
                    path,
                    reference,
                    data_spec,
                    split,
                    limit=drift_images,
                    input_size=first.input_size,
                    mean=first.mean,
                    std=first.std,
                )
                row.max_logit_drift, row.mean_logit_drift = drift.max_abs, drift.mean_abs
                row.logit_range, row.drift_images = drift.logit_range, drift.num_images
        if bench:
            b = benchmark_artifact(path, first.input_size, bench_threads, warmup, runs, isolate=bench_isolate)
            row.latency_median_ms, row.latency_p90_ms = b.median_ms, b.p90_ms
            row.threads = b.threads
            if bench_isolate:  # else the memory figures are this process's, not the artifact's
                row.peak_rss_mb, row.baseline_rss_mb = b.peak_rss_mb, b.baseline_rss_mb
        rows.append(row)
    return rows, sample


def _relative(path: Path, run_dir) -> str:
    if run_dir is not None:
        try:
            return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
        except ValueError:
            pass
    return str(path)
