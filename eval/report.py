"""The report: tables and plots rendered from a run record, measuring nothing.

``build_report(DIR)`` renders ``DIR/report/`` from ``DIR/record.json`` and ``DIR/predictions/``
alone: ``results.md``, ``results.csv``, ``results.json``, ``summary.md``, ``per_class_iou.md``,
``per_class_iou.csv``, ``tradeoff.png``, ``overlays.png``, and after ``seg2tflite compress``
``compression.md``/``.png`` and ``compression_layers.md`` (the latter reads the compressed
models' files back), after ``seg2tflite latency`` ``deploy_latency.md`` and after ``seg2tflite
profile`` ``profile.md``. This module writes the files; the rows and their derived columns (change
in mIoU against the same model's PyTorch row) are ``report_rows``, the markdown pages ``report_md``,
the figures ``plots``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from seg2tflite.atomic import atomic_write_text
from seg2tflite.converters.stages import STAGES
from seg2tflite.errors import UserError
from seg2tflite.eval.record import RECORD_FILE, SCHEMA, load_predictions, load_record
from seg2tflite.eval.report_md import (
    render_compression_md,
    render_deploy_latency_md,
    render_glance_md,
    render_per_class_md,
    render_profile_md,
    render_results_md,
    render_summary_md,
)
from seg2tflite.eval.report_rows import compression_rows, per_class_rows, table_rows

REPORT_DIR = "report"
OVERLAY_STAGES = ("pytorch", "float32", "full_int8")


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
    from seg2tflite.eval.int8_report import render_int8_md

    run_dir = Path(run_dir)
    record = load_record(run_dir)
    if not record.rows:
        raise UserError(f"{run_dir / RECORD_FILE}: the record holds no rows; nothing to report")
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(record)
    atomic_write_text(out / "results.md", render_results_md(record))
    atomic_write_text(out / "summary.md", render_summary_md(record))
    atomic_write_text(out / "glance.md", render_glance_md(record))
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
    deploy = render_deploy_latency_md(run_dir)
    if deploy:
        atomic_write_text(out / "deploy_latency.md", deploy)
    profile = render_profile_md(run_dir)
    if profile:
        atomic_write_text(out / "profile.md", profile)
    int8 = render_int8_md(run_dir)
    if int8:
        atomic_write_text(out / "int8.md", int8)
    per_layer = render_compression_layers_md(run_dir)
    if per_layer:
        atomic_write_text(out / "compression_layers.md", per_layer)
    saved = load_predictions(run_dir)
    predictions = {m: saved[m] for m in dict.fromkeys(r.model for r in record.rows) if m in saved}
    if predictions:
        plots.plot_overlays(
            predictions, out / "overlays.png", stages=OVERLAY_STAGES, labels={key: stage.label for key, stage in STAGES.items()}
        )
    return out
