"""The report's tables as rows, from a run record: the main table with its derived columns (change
in mIoU against the same model's PyTorch row), the compressed models' rows and the per-class IoU;
what ``report.build_report`` writes as CSV and JSON and ``report_md`` renders.
"""

from __future__ import annotations

import math

from seg2tflite.converters.stages import REFERENCE, label
from seg2tflite.eval.record import RunRecord


def _pct(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100.0 * v, 2)


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def table_rows(record: RunRecord) -> list[dict]:
    """The main table, one dict per row, with derived columns, as written to CSV and JSON."""
    reference = {r.model: r for r in record.rows if r.stage == REFERENCE}
    out = []
    for r in record.rows:
        ref = reference.get(r.model)
        delta = None
        # A row on fewer images than PyTorch's (the demo's int16x8) is compared with PyTorch on those images.
        ref_miou = r.reference_miou if r.reference_miou is not None else None if ref is None else ref.miou
        if r.miou is not None and ref_miou is not None:
            delta = round(100.0 * (r.miou - ref_miou), 2)
        fewer = ref is not None and r.num_images < ref.num_images
        out.append({
            "model": r.model,
            "stage": r.stage,
            "stage_label": label(r.stage) + (f" (first {r.num_images} images)" if fewer else ""),
            "runtime": r.runtime if r.runtime_version is None else f"{r.runtime} {r.runtime_version}",
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
            "miou_builtin_pct": _pct(r.miou_builtin),
            "xnnpack_ops": None if r.total_ops is None else f"{r.delegated_ops}/{r.total_ops}",
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
        ref, float32 = by_key.get((base, REFERENCE)), by_key.get((base, "float32"))
        members = [r for r in record.rows if r.model == base and r.stage in ("float32", "full_int8", "mixed_int8")]
        members += [r for r in record.rows if r.base_model == base and r.model != base]
        for r in members:
            out.append({
                "base_model": base,
                "variant": r.compression or "none",
                "stage": label(r.stage),
                "miou_pct": _pct(r.miou),
                "miou_delta_vs_base_pts": None if ref is None or ref.miou is None or r.miou is None else round(100 * (r.miou - ref.miou), 2),
                "file_mb": round(r.file_mb, 3),
                "zip_mb": round(r.zip_mb, 3),
                "zip_vs_float32": None if float32 is None else round(r.zip_mb / float32.zip_mb, 3),
                "latency_median_ms": _round(r.latency_median_ms, 2),
            })  # fmt: skip
    return out


def per_class_rows(record: RunRecord) -> tuple[list[str], list[dict]]:
    """Class names (union, in first-seen order) and one dict per model x stage of IoU in %."""
    classes = list(dict.fromkeys(name for r in record.rows for name in r.per_class_iou))
    rows = [{"model": r.model, "stage": r.stage, **{c: _pct(r.per_class_iou.get(c)) for c in classes}} for r in record.rows]
    return classes, rows
