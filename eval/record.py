"""The run record: what every stage of every model measured, kept as ``DIR/record.json``.

A run folder ``DIR`` holds:

- ``DIR/record.json``: ``RunRecord``: ``schema``, ``created`` (UTC ISO time), ``versions``
  (package versions), ``rows``: one ``RecordRow`` per model x stage, stages named and ordered as
  in ``converters.stages.STAGES``. Accuracy figures are fractions in 0..1 (``None`` where not
  measured); sizes in MB (10^6 bytes); latencies in ms at batch 1.
- ``DIR/predictions/MODEL.npz``: for the overlays, the first few images of the evaluated split
  at the model's input size: ``image`` (N, H, W, 3) uint8, ``target`` (N, H, W) uint8 (255 =
  ignored), ``pred_STAGE`` (N, H, W) argmax per stage, ``class_names``, ``palette`` (K, 3).

``measure.measure_conversion`` makes the rows, ``record_results`` merges them in, and
``report.build_report`` renders from what is here without measuring anything.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from seg2tflite.atomic import atomic_path, atomic_write_text
from seg2tflite.converters.manifest import package_versions
from seg2tflite.converters.stages import STAGES
from seg2tflite.errors import UserError

SCHEMA = 2  # 2: stages named as in converters.stages (saved_model, float32, ...), not tf/tflite_*
RECORD_FILE = "record.json"
PREDICTIONS_DIR = "predictions"
DEPLOY_LATENCY_FILE = "deploy_latency.json"  # written by `seg2tflite latency`


@dataclass
class RecordRow:
    """What one model measured at one stage: a row of the run record."""

    model: str  # registered model name
    stage: str  # a key of converters.stages.STAGES
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
    runtime_version: str | None = None  # the version of ``runtime`` the row was measured on
    miou_builtin: float | None = None  # a .tflite on LiteRT's builtin kernels (no XNNPACK), 0..1
    delegated_ops: int | None = None  # a .tflite: ops XNNPACK took, of total_ops
    total_ops: int | None = None
    # A row evaluated on fewer images than its model's PyTorch row (the demo's int16x8): PyTorch's
    # mIoU on those same images, which its change in mIoU is taken against.
    reference_miou: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.model, self.stage

    @classmethod
    def from_dict(cls, d: dict, source: str = RECORD_FILE) -> RecordRow:
        if not isinstance(d, dict):
            raise UserError(f"{source}: a row is {type(d).__name__}, not an object; re-run the measurements")
        names = {f.name for f in fields(cls)}
        where = f"{source}: row {d.get('model')}/{d.get('stage')}"
        unknown = set(d) - names
        if unknown:
            raise UserError(f"{where}: unknown fields {sorted(unknown)}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in d]
        if missing:
            raise UserError(f"{where}: lacks {', '.join(missing)}; re-run the measurements")
        size = d["input_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            raise UserError(f"{where}: input_size {size!r} is not [H, W]; re-run the measurements")
        iou = d["per_class_iou"]
        if not isinstance(iou, dict) or not all(_fits(v, "float | None") for v in iou.values()):
            raise UserError(f"{where}: per_class_iou is not an object of numbers; re-run the measurements")
        for f in fields(cls):
            if f.name in d and f.name not in ("input_size", "per_class_iou") and not _fits(d[f.name], f.type):
                raise UserError(f"{where}: {f.name} is {d[f.name]!r}, not {f.type}; re-run the measurements")
        return cls(**{**d, "input_size": tuple(size)})


def _fits(value, annotation: str) -> bool:
    """Whether a JSON value fits a RecordRow field's annotation (str, int, float, each maybe None)."""
    kinds = {part.strip() for part in annotation.split("|")}
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return False
    return (
        ("str" in kinds and isinstance(value, str))
        or ("int" in kinds and isinstance(value, int))
        or ("float" in kinds and isinstance(value, (int, float)))
    )


@dataclass
class RunRecord:
    rows: list[RecordRow] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema: int = SCHEMA

    def as_dict(self) -> dict:
        return {"schema": self.schema, "created": self.created, "versions": self.versions, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict, source: str = RECORD_FILE) -> RunRecord:
        if not isinstance(d, dict):
            raise UserError(f"{source}: holds a JSON {type(d).__name__}, not a run record object; re-run the measurements")
        if d.get("schema") != SCHEMA:
            raise UserError(f"{source}: record schema {d.get('schema')!r}, this version reads {SCHEMA}; re-run the measurements")
        rows, versions = d.get("rows", []), d.get("versions", {})
        if not isinstance(rows, list) or not isinstance(versions, dict):
            raise UserError(f"{source}: 'rows' must be a list and 'versions' an object; re-run the measurements")
        return cls([RecordRow.from_dict(r, source) for r in rows], versions, str(d.get("created", "")))


def run_versions() -> dict[str, str | None]:
    """The package versions of the conversion manifest, plus the machine the figures come from."""
    return {**package_versions(), "platform": platform.platform(), "cpus": str(os.cpu_count()), "cpu_simd": cpu_simd()}


# What XNNPACK's kernels choose between: int8 arithmetic runs up to about 4x float32's with a
# dot-product extension (VNNI, SDOT), about 2x without one.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "asimddp", "i8mm", "fphp")


def cpu_simd(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The SIMD extensions among ``SIMD_FLAGS`` that the CPU reports (Linux), e.g. "avx2 fma"."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return None
    return " ".join(f for f in SIMD_FLAGS if f in flags) or "none of " + ", ".join(SIMD_FLAGS)


def load_record(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        raise UserError(f"{path}: no run record here; run the measurements (e.g. `seg2tflite demo --out {run_dir}`) first")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable run record ({e})") from None
    return RunRecord.from_dict(data, str(path))


def record_results(run_dir: str | Path, rows: list[RecordRow], sample: dict[str, np.ndarray] | None = None) -> Path:
    """Merge ``rows`` into ``DIR/record.json`` (replacing rows of the same model and stage) and
    save the overlay sample to ``DIR/predictions/MODEL.npz``. Returns the record's path."""
    run_dir = Path(run_dir)
    record = load_record(run_dir) if (run_dir / RECORD_FILE).is_file() else RunRecord()
    new = {r.key: r for r in rows}
    merged = [r for r in record.rows if r.key not in new] + list(new.values())
    order = {stage: i for i, stage in enumerate(STAGES)}
    models = list(dict.fromkeys(r.model for r in [*record.rows, *rows]))  # a model measured again keeps its place
    merged.sort(key=lambda r: (models.index(r.model), order.get(r.stage, len(order))))
    record = RunRecord(merged, run_versions(), datetime.now(timezone.utc).isoformat(timespec="seconds"))
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
        try:
            with np.load(path, allow_pickle=False) as data:
                out[path.stem] = {k: data[k] for k in data.files}
        except Exception as e:  # noqa: BLE001 - zipfile and zlib raise many types for a damaged archive
            raise UserError(
                f"{path}: unreadable prediction sample ({type(e).__name__}: {str(e)[:200]}); delete it to report "
                "without that model's overlays, or re-run the measurements"
            ) from None
    return out
