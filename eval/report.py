"""The run record (what every stage of every model measured) and the report rendered from it.

A run folder ``DIR`` holds:

- ``DIR/record.json``: the run record, ``RunRecord`` below: ``schema`` (1), ``created`` (UTC
  ISO time), ``versions`` (package versions), ``rows``: one ``StageResult`` per model x stage.
  Stages, in order: ``pytorch``, ``onnx``, ``tf`` (SavedModel), ``tflite_float32``,
  ``tflite_float16``, ``tflite_dynamic_int8``, ``tflite_full_int8``, ``tflite_int16x8``. All
  accuracy figures in the record are fractions in 0..1 (``None`` where not measured); sizes in
  MB (10^6 bytes); latencies in ms at batch 1.
- ``DIR/predictions/MODEL.npz``: for the overlays, the first few images of the evaluated split
  at the model's input size: ``image`` (N, H, W, 3) uint8, ``target`` (N, H, W) uint8 (255 =
  ignored), ``pred_STAGE`` (N, H, W) argmax per stage, ``class_names``, ``palette`` (K, 3).

``measure_conversion(convert_dir, data_spec, ...)`` fills rows for one conversion folder
(evaluates every artifact, compares it with PyTorch, benchmarks it); ``record_results`` merges
them into ``DIR/record.json``; ``build_report(DIR)`` renders ``DIR/report/`` from the record and
the saved predictions alone, measuring nothing: ``results.md``, ``results.csv``,
``results.json``, ``per_class_iou.md``, ``per_class_iou.csv``, ``tradeoff.png``,
``overlays.png``, and after ``seg2tflite compress`` ``compression.md``/``.png`` and
``compression_layers.md`` (the latter reads the compressed models' files back). Derived columns
(change in mIoU against the same model's PyTorch row) are computed when rendering.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from seg2tflite.eval import anchors
from seg2tflite.atomic import atomic_path, atomic_write_text
from seg2tflite.errors import UserError

SCHEMA = 1
RECORD_FILE = "record.json"
PREDICTIONS_DIR = "predictions"
REPORT_DIR = "report"

# stage -> (artifact name inside a conversion folder, label in tables and plots)
STAGES = {
    "pytorch": ("model.safetensors", "PyTorch"),
    "onnx": ("model.onnx", "ONNX"),
    "tf": ("saved_model", "TF SavedModel"),
    "tflite_float32": ("model_float32.tflite", "TFLite float32"),
    "tflite_float16": ("model_float16.tflite", "TFLite float16"),
    "tflite_dynamic_int8": ("model_dynamic_int8.tflite", "TFLite dynamic int8"),
    "tflite_full_int8": ("model_full_int8.tflite", "TFLite full int8"),
    "tflite_int16x8": ("model_int16x8.tflite", "TFLite int16x8"),
    "tflite_mixed_int8": ("model_mixed_int8.tflite", "TFLite mixed int8"),  # from `seg2tflite compress`
}
REFERENCE_STAGE = "pytorch"
OVERLAY_STAGES = ("pytorch", "tflite_float32", "tflite_full_int8")
VERSION_PACKAGES = ("torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow", "ai-edge-litert", "numpy")


@dataclass
class StageResult:
    """One model at one stage of the conversion."""

    model: str  # registered model name
    stage: str  # a key of STAGES
    artifact: str  # its path (relative to the run folder when inside it)
    runtime: str  # pytorch, onnxruntime, tensorflow, litert
    input_size: tuple[int, int]  # (H, W) evaluated and benchmarked at
    data: str  # data spec evaluated on
    split: str
    num_images: int  # images evaluated
    params: int | None  # parameters of the PyTorch model (the same weights at every stage)
    file_mb: float  # size on disk (a folder: all its files)
    zip_mb: float  # the same, deflate-compressed with zipfile
    miou: float | None  # 0..1
    pixel_accuracy: float | None  # 0..1
    per_class_iou: dict[str, float | None]  # class name -> IoU 0..1 (None: class in neither)
    argmax_agreement: float | None = None  # 0..1, pixels agreeing with PyTorch over the whole split
    max_logit_drift: float | None = None  # max |logits - PyTorch logits| over the drift images
    mean_logit_drift: float | None = None
    logit_range: float | None = None  # max - min of PyTorch's logits over the drift images
    drift_images: int = 0  # images the drift was measured on (the first of the split)
    latency_median_ms: float | None = None  # batch 1
    latency_p90_ms: float | None = None
    threads: int | None = None  # benchmark threads
    peak_rss_mb: float | None = None  # RSS high-water mark of the benchmark process
    baseline_rss_mb: float | None = None  # the same mark after the runtime's imports, before loading
    eval_seconds: float | None = None
    data_sha256: str = ""  # digest of the evaluated images and masks: equal across a model's stages
    base_model: str | None = None  # for a compressed variant (`seg2tflite compress`): the model it came from
    compression: str | None = None  # and how it was compressed

    @property
    def key(self) -> tuple[str, str]:
        return self.model, self.stage

    @classmethod
    def from_dict(cls, d: dict) -> "StageResult":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"record row {d.get('model')}/{d.get('stage')}: unknown fields {sorted(unknown)}")
        return cls(**{**d, "input_size": tuple(d["input_size"])})


@dataclass
class RunRecord:
    rows: list[StageResult] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema: int = SCHEMA

    def as_dict(self) -> dict:
        return {"schema": self.schema, "created": self.created, "versions": self.versions, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict, source: str = RECORD_FILE) -> "RunRecord":
        if d.get("schema") != SCHEMA:
            raise UserError(f"{source}: record schema {d.get('schema')!r}, this version reads {SCHEMA}; re-run the measurements")
        return cls([StageResult.from_dict(r) for r in d.get("rows", [])], d.get("versions", {}), d.get("created", ""))


# -- sizes -----------------------------------------------------------------------------------


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


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform(), "cpus": str(os.cpu_count())}
    for name in VERSION_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# -- measuring a conversion folder -----------------------------------------------------------


def find_stages(convert_dir: str | Path) -> dict[str, Path]:
    """The artifacts of a conversion folder, by stage, in stage order."""
    convert_dir = Path(convert_dir)
    if not convert_dir.is_dir():
        raise UserError(f"{convert_dir}: not a conversion folder")
    found = {stage: convert_dir / name for stage, (name, _) in STAGES.items() if (convert_dir / name).exists()}
    if REFERENCE_STAGE not in found:  # converted from a checkpoint kept elsewhere: the manifest names it
        checkpoint = _manifest_checkpoint(convert_dir)
        if checkpoint is not None:
            found = {REFERENCE_STAGE: checkpoint, **found}
    if not found:
        raise UserError(f"{convert_dir}: holds none of {', '.join(n for n, _ in STAGES.values())}; run `seg2tflite convert` first")
    return found


def _manifest_checkpoint(convert_dir: Path) -> Path | None:
    path = convert_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        model = json.loads(path.read_text()).get("model") or {}
    except (OSError, ValueError):
        return None
    checkpoint = model.get("checkpoint") if isinstance(model, dict) else None
    return Path(checkpoint) if checkpoint and Path(checkpoint).exists() else None


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
    drift_images: int = 8,
    overlay_images: int = 4,
    bench: bool = True,
    bench_threads: int = 1,
    warmup: int = 5,
    runs: int = 30,
    bench_isolate: bool = True,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[list[StageResult], dict[str, np.ndarray]]:
    """Evaluate, compare with PyTorch and benchmark every artifact of a conversion folder.

    Returns the rows and the overlay sample (``predictions/MODEL.npz`` content) for
    ``record_results``. All stages use the preprocessing the folder's manifest gives. ``workers``
    processes evaluate each .tflite (a LiteRT interpreter keeps to few threads); PyTorch, ONNX
    Runtime and TensorFlow run in this process with all cores, as they parallelise inside.
    """
    from seg2tflite.eval.bench import benchmark_artifact
    from seg2tflite.eval.evaluate import argmax_agreement, compare_artifacts, describe_artifact, evaluate_artifact

    convert_dir = Path(convert_dir)
    found = find_stages(convert_dir)
    if stages is not None:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise UserError(f"stages {unknown}: unknown; use some of {', '.join(STAGES)}")
        found = {s: p for s, p in found.items() if s in stages}
    reference = found.get(REFERENCE_STAGE)
    converted = [p for s, p in found.items() if s != REFERENCE_STAGE]
    first = describe_artifact(converted[0] if converted else reference)  # the conversion's manifest rules
    model = model or first.model or convert_dir.name
    params = _count_params(reference) if reference is not None else None
    sample = _overlay_sample(first, data_spec, split, overlay_images, first.num_classes)

    rows, reference_predictions = [], None
    for stage, path in found.items():
        result = evaluate_artifact(
            path, data_spec, split, first.input_size, first.mean, first.std,
            workers=workers if path.suffix == ".tflite" else 1, limit=limit, keep_predictions=True, progress=progress,
        )  # fmt: skip
        sample[f"pred_{stage}"] = result.predictions[: len(sample["image"])]
        row = StageResult(
            model=model,
            stage=stage,
            artifact=_relative(path, run_dir),
            runtime=describe_artifact(path, first.input_size, first.mean, first.std).runtime,
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
        if stage == REFERENCE_STAGE:
            reference_predictions = result.predictions
        elif reference is not None:
            row.argmax_agreement = argmax_agreement(result.predictions, reference_predictions)
            if drift_images > 0:
                drift = compare_artifacts(path, reference, data_spec, split, limit=drift_images, input_size=first.input_size, mean=first.mean, std=first.std)
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


# -- the record ------------------------------------------------------------------------------


def load_record(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        raise UserError(f"{path}: no run record here; run the measurements (e.g. `seg2tflite demo --out {run_dir}`) first")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable run record ({e})") from None
    return RunRecord.from_dict(data, str(path))


def record_results(run_dir: str | Path, rows: list[StageResult], sample: dict[str, np.ndarray] | None = None) -> Path:
    """Merge ``rows`` into ``DIR/record.json`` (replacing rows of the same model and stage) and
    save the overlay sample to ``DIR/predictions/MODEL.npz``. Returns the record's path."""
    run_dir = Path(run_dir)
    record = load_record(run_dir) if (run_dir / RECORD_FILE).is_file() else RunRecord()
    new = {r.key: r for r in rows}
    merged = [r for r in record.rows if r.key not in new] + list(new.values())
    order = {stage: i for i, stage in enumerate(STAGES)}
    models = list(dict.fromkeys(r.model for r in merged))
    merged.sort(key=lambda r: (models.index(r.model), order.get(r.stage, len(order))))
    record = RunRecord(merged, package_versions(), datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if sample is not None and rows:
        model_names = {r.model for r in rows}
        if len(model_names) != 1:
            raise ValueError("a prediction sample belongs to one model; record models one at a time")
        with atomic_path(run_dir / PREDICTIONS_DIR / f"{model_names.pop()}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **sample)
    path = run_dir / RECORD_FILE
    atomic_write_text(path, json.dumps(record.as_dict(), indent=2) + "\n")
    return path


def load_predictions(run_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """model -> its saved overlay sample."""
    folder = Path(run_dir) / PREDICTIONS_DIR
    out = {}
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        with np.load(path) as data:
            out[path.stem] = {k: data[k] for k in data.files}
    return out


# -- rendering -------------------------------------------------------------------------------


def _pct(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100.0 * v, 2)


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def table_rows(record: RunRecord) -> list[dict]:
    """The main table, one dict per row, with derived columns, as written to CSV and JSON."""
    reference = {r.model: r for r in record.rows if r.stage == REFERENCE_STAGE}
    out = []
    for r in record.rows:
        ref = reference.get(r.model)
        delta = None
        if ref is not None and r.miou is not None and ref.miou is not None:
            delta = round(100.0 * (r.miou - ref.miou), 2)
        out.append({
            "model": r.model,
            "stage": r.stage,
            "stage_label": STAGES.get(r.stage, (None, r.stage))[1],
            "runtime": r.runtime,
            "input_size": f"{r.input_size[0]}x{r.input_size[1]}",
            "params_m": None if r.params is None else round(r.params / 1e6, 4),
            "file_mb": round(r.file_mb, 3),
            "zip_mb": round(r.zip_mb, 3),
            "latency_median_ms": _round(r.latency_median_ms, 2),
            "latency_p90_ms": _round(r.latency_p90_ms, 2),
            "threads": r.threads,
            "peak_rss_mb": _round(r.peak_rss_mb, 1),
            "baseline_rss_mb": _round(r.baseline_rss_mb, 1),
            "miou_pct": _pct(r.miou),
            "miou_delta_pts": delta,
            "pixel_accuracy_pct": _pct(r.pixel_accuracy),
            "argmax_agreement_pct": None if r.argmax_agreement is None else round(100.0 * r.argmax_agreement, 3),
            "max_logit_drift": None if r.max_logit_drift is None else float(f"{r.max_logit_drift:.4g}"),
            "mean_logit_drift": None if r.mean_logit_drift is None else float(f"{r.mean_logit_drift:.4g}"),
            "drift_images": r.drift_images,
            "num_images": r.num_images,
            "data": r.data,
            "split": r.split,
            "artifact": r.artifact,
            "base_model": r.base_model,
            "compression": r.compression,
        })  # fmt: skip
    return out


def compression_rows(record: RunRecord) -> list[dict]:
    """Each base model's float32, full-int8 and mixed rows, then its compressed variants', with
    mIoU against the base model's PyTorch row and zipped size against its float32 TFLite file."""
    by_key = {r.key: r for r in record.rows}
    bases = list(dict.fromkeys(r.base_model for r in record.rows if r.base_model))
    out = []
    for base in bases:
        ref, float32 = by_key.get((base, REFERENCE_STAGE)), by_key.get((base, "tflite_float32"))
        members = [r for r in record.rows if r.model == base and r.stage in ("tflite_float32", "tflite_full_int8", "tflite_mixed_int8")]
        members += [r for r in record.rows if r.base_model == base and r.model != base]
        for r in members:
            out.append({
                "base_model": base,
                "variant": r.compression or "none",
                "stage": STAGES.get(r.stage, (None, r.stage))[1],
                "miou_pct": _pct(r.miou),
                "miou_delta_vs_base_pts": None if ref is None or ref.miou is None or r.miou is None else round(100 * (r.miou - ref.miou), 2),
                "file_mb": round(r.file_mb, 3),
                "zip_mb": round(r.zip_mb, 3),
                "zip_vs_float32": None if float32 is None else round(r.zip_mb / float32.zip_mb, 3),
                "latency_median_ms": _round(r.latency_median_ms, 2),
            })  # fmt: skip
    return out


def render_compression_md(record: RunRecord) -> str:
    rows = compression_rows(record)
    header = ["model", "compression", "stage", "mIoU (%)", "Δ vs float PyTorch (pts)", "size (MB)", "zipped (MB)", "zipped / float32", "median (ms)"]
    body = [
        [
            f"`{t['base_model']}`", t["variant"], t["stage"], _fmt(t["miou_pct"], ".2f"), _signed(t["miou_delta_vs_base_pts"]),
            _fmt(t["file_mb"], ".2f"), _fmt(t["zip_mb"], ".2f"), _fmt(t["zip_vs_float32"], ".2f"), _fmt(t["latency_median_ms"], ".1f"),
        ]
        for t in rows
    ]  # fmt: skip
    return "\n".join([
        "# Compression",
        "",
        "Every compressed variant beside the model it came from. Δ is against the uncompressed model's PyTorch",
        "mIoU on the same images; zipped / float32 compares the deflate-compressed file with the uncompressed",
        "model's float32 .tflite (how tensorflow-model-optimization measures the gain of sparsity and clustering).",
        "A compressed model's own PyTorch row is in `results.md` under `MODEL+METHOD`. Plot: `compression.png`.",
        "",
        _md_table(header, body, ["---", "---", "---"] + ["--:"] * (len(header) - 3)),
        "",
    ])  # fmt: skip


def per_class_rows(record: RunRecord) -> tuple[list[str], list[dict]]:
    """Class names (union, in first-seen order) and one dict per model x stage of IoU in %."""
    classes = list(dict.fromkeys(name for r in record.rows for name in r.per_class_iou))
    rows = [
        {"model": r.model, "stage": r.stage, **{c: _pct(r.per_class_iou.get(c)) for c in classes}}
        for r in record.rows
    ]
    return classes, rows


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)) and not isinstance(v, bool) and spec:
        return format(v, spec)
    return str(v)


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def render_results_md(record: RunRecord) -> str:
    rows = table_rows(record)
    header = [
        "model", "stage", "runtime", "params (M)", "size (MB)", "zipped (MB)", "median (ms)", "p90 (ms)",
        "threads", "peak RSS (MB)", "mIoU (%)", "Δ mIoU (pts)", "agreement (%)", "max drift",
    ]  # fmt: skip
    body = [
        [
            f"`{t['model']}`", t["stage_label"], t["runtime"], _fmt(t["params_m"], ".3g"), _fmt(t["file_mb"], ".2f"),
            _fmt(t["zip_mb"], ".2f"), _fmt(t["latency_median_ms"], ".2f"), _fmt(t["latency_p90_ms"], ".2f"),
            _fmt(t["threads"]), _fmt(t["peak_rss_mb"], ".0f"), _fmt(t["miou_pct"], ".2f"),
            _signed(t["miou_delta_pts"]) if t["stage"] != REFERENCE_STAGE else "ref",
            _fmt(t["argmax_agreement_pct"], ".3f") if t["stage"] != REFERENCE_STAGE else "ref",
            _fmt(t["max_logit_drift"], ".3g") if t["stage"] != REFERENCE_STAGE else "ref",
        ]
        for t in rows
    ]  # fmt: skip
    align = ["---", "---", "---"] + ["--:"] * (len(header) - 3)
    warnings = [
        f"**WARNING: `{model}` was evaluated on different data at different stages "
        "(the dataset changed during the run); its rows are not comparable. Re-run the measurements.**"
        for model in dict.fromkeys(r.model for r in record.rows)
        if len({r.data_sha256 for r in record.rows if r.model == model and r.data_sha256}) > 1
    ]
    setups = sorted({(t["data"], t["split"], t["num_images"], t["input_size"]) for t in rows})
    drift_n = sorted({t["drift_images"] for t in rows if t["drift_images"]})
    lines = [
        "# seg2tflite results",
        "",
        f"Generated from `{RECORD_FILE}` (recorded {record.created or 'unknown'}); every figure is measured, none typed.",
        "",
        "Evaluated on: " + "; ".join(f"`{d}` split `{s}`, {n} images at {size}" for d, s, n, size in setups) + ".",
        "mIoU in percent; Δ mIoU against the same model's PyTorch row, in points; agreement = pixels whose",
        "argmax equals PyTorch's over the whole split; max drift = largest |logit - PyTorch logit|"
        + (f" over the first {', '.join(map(str, drift_n))} images" if drift_n else "")
        + "; latency at batch 1 after warm-up, one fresh process per artifact (peak RSS is that process's).",
        "",
        *(w + "\n" for w in warnings),
        _md_table(header, body, align),
        "",
        "Per-class IoU: `per_class_iou.md`. Plots: `tradeoff.png` (mIoU against size and latency),",
        "`overlays.png` (predictions beside the ground truth).",
        "",
        render_anchors_md(record),
        "",
        "## Environment",
        "",
        ", ".join(f"{k} {v}" for k, v in record.versions.items()) or "not recorded",
        "",
    ]
    return "\n".join(lines)


def render_summary_md(record: RunRecord) -> str:
    """The short table (one row per model x stage, the columns a reader compares first) for a README."""
    rows = table_rows(record)
    header = ["model", "input", "stage", "size (MB)", "zipped (MB)", "median (ms)", "mIoU (%)", "Δ mIoU (pts)", "agreement (%)"]
    body = [
        [
            f"`{t['model']}`", t["input_size"], t["stage_label"], _fmt(t["file_mb"], ".2f"), _fmt(t["zip_mb"], ".2f"),
            _fmt(t["latency_median_ms"], ".1f"), _fmt(t["miou_pct"], ".2f"),
            _signed(t["miou_delta_pts"]) if t["stage"] != REFERENCE_STAGE else "ref",
            _fmt(t["argmax_agreement_pct"], ".2f") if t["stage"] != REFERENCE_STAGE else "ref",
        ]
        for t in rows
    ]  # fmt: skip
    threads = sorted({t["threads"] for t in rows if t["threads"]})
    return "\n".join([
        f"Latency: median ms at batch 1 with {', '.join(map(str, threads)) or '?'} threads. Full table: `results.md`.",
        "",
        _md_table(header, body, ["---", "---", "---"] + ["--:"] * (len(header) - 3)),
        "",
    ])  # fmt: skip


def render_per_class_md(record: RunRecord) -> str:
    classes, rows = per_class_rows(record)
    header = ["model", "stage", *classes]
    body = [[f"`{r['model']}`", STAGES.get(r["stage"], (None, r["stage"]))[1], *(_fmt(r[c], ".2f") for c in classes)] for r in rows]
    return "\n".join([
        "# Per-class IoU (%)",
        "",
        "`-`: the class is in neither the ground truth nor the predictions of the split.",
        "",
        _md_table(header, body, ["---", "---"] + ["--:"] * len(classes)),
        "",
    ])  # fmt: skip


def render_anchors_md(record: RunRecord) -> str:
    """Our figures beside published ones, under a heading that says they are different data."""
    models = list(dict.fromkeys(r.model for r in record.rows))
    body = []
    for model in models:
        rows = {r.stage: r for r in record.rows if r.model == model}
        ref = rows.get(REFERENCE_STAGE)
        int8 = rows.get("tflite_full_int8")
        ours_data = f"{ref.data} {ref.split}" if ref else "-"
        a = anchors.anchors_for(model)
        if a["params"] is not None:
            p = a["params"]
            ours = f"{ref.params / 1e6:.2f}M" if ref is not None and ref.params else "-"
            body.append([f"`{model}`", "parameters", ours, f"{p.params_m:g}M ({p.note})", "-", p.source])
        ours = f"{100 * ref.miou:.2f} ({ours_data})" if ref is not None and ref.miou is not None else "-"
        for i, acc in enumerate(a["accuracy"]):
            body.append([f"`{model}`", "float mIoU (%)", ours if i == 0 else "(as above)", f"{acc.miou:.2f}", acc.dataset, acc.source])
        ours = "-"
        if ref is not None and int8 is not None and ref.miou is not None and int8.miou is not None:
            ours = f"{100 * (int8.miou - ref.miou):+.2f} (full int8 PTQ, {ours_data})"
        for i, q in enumerate(a["quantization"]):
            body.append([
                f"`{model}`", "int8 change in mIoU (pts)", ours if i == 0 else "(as above)",
                f"{q.drop:+.2f} ({q.float_miou:.2f} -> {q.int8_miou:.2f})", q.setting, q.source,
            ])  # fmt: skip
        if a["note"]:
            body.append([f"`{model}`", "note", "-", a["note"], "-", "-"])
    lines = [
        "## Published figures: DIFFERENT DATA, not comparable",
        "",
        "The published column comes from papers and model zoos on ADE20K, Pascal VOC, Cityscapes, CamVid",
        "or private data, at their full input sizes and training schedules. Our column is measured on this",
        "run's data (the synthetic dataset unless stated) at this run's input size. Read them side by side",
        "for orientation only: an mIoU gap between the columns says nothing about the conversion.",
        "",
    ]
    if body:
        lines.append(_md_table(["model", "figure", "ours", "published", "published on", "source"], body))
    else:
        lines.append("No published figures for the models in this run.")
    lines += ["", f"Latency for orientation: {anchors.LATENCY_ANCHOR}."]
    return "\n".join(lines)


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def build_report(run_dir: str | Path) -> Path:
    """Render ``DIR/report/`` from ``DIR/record.json`` and ``DIR/predictions/``; measures nothing.

    Running it twice gives the same files. Returns the report folder.
    """
    from seg2tflite.eval import plots
    from seg2tflite.eval.compression_layers import render_compression_layers_md

    run_dir = Path(run_dir)
    record = load_record(run_dir)
    if not record.rows:
        raise UserError(f"{run_dir / RECORD_FILE}: the record holds no rows; nothing to report")
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(record)
    atomic_write_text(out / "results.md", render_results_md(record))
    atomic_write_text(out / "summary.md", render_summary_md(record))
    atomic_write_text(out / "results.csv", _csv_text(rows, list(rows[0])))
    report_json = {"schema": SCHEMA, "created": record.created, "versions": record.versions, "rows": rows}
    atomic_write_text(out / "results.json", json.dumps(report_json, indent=2) + "\n")
    classes, class_rows = per_class_rows(record)
    atomic_write_text(out / "per_class_iou.md", render_per_class_md(record))
    atomic_write_text(out / "per_class_iou.csv", _csv_text(class_rows, ["model", "stage", *classes]))
    plots.plot_tradeoff(rows, out / "tradeoff.png")
    compressed = compression_rows(record)
    if compressed:
        atomic_write_text(out / "compression.md", render_compression_md(record))
        plots.plot_compression(compressed, out / "compression.png")
    per_layer = render_compression_layers_md(run_dir)
    if per_layer:
        atomic_write_text(out / "compression_layers.md", per_layer)
    saved = load_predictions(run_dir)
    predictions = {m: saved[m] for m in dict.fromkeys(r.model for r in record.rows) if m in saved}
    if predictions:
        plots.plot_overlays(predictions, out / "overlays.png", stages=OVERLAY_STAGES, labels={s: l for s, (_, l) in STAGES.items()})
    return out
