"""The calibration study: full-int8 mIoU against calibration set size, selection and weight scales.

For every size in ``sizes`` and every selection strategy (``stratified``: rare classes first,
``random``: a plain seeded draw) the SavedModel is quantized to full int8 with per-channel
weight scales, and once more with one scale per tensor at ``per_tensor_size``; each model is
evaluated end to end in LiteRT on the same held-out images, with its default XNNPACK kernels and
on its builtin kernels (XNNPACK's int8 path collapses SegFormer whatever the calibration; the
builtin column shows what calibration itself does there). Rows are plain dicts, ready for JSON,
a Markdown table and ``seg2tflite.eval.plots.plot_calibration_study``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seg2tflite.calibration.representative import build_calibration_set
from seg2tflite.calibration.select import STRATEGIES
from seg2tflite.data.base import SegmentationDataset
from seg2tflite.data.preprocess import Preprocess
from seg2tflite.errors import UserError, setting


@dataclass(frozen=True)
class CalibrationStudyConfig:
    sizes: tuple[int, ...] = (8, 32, 128, 512)
    strategies: tuple[str, ...] = STRATEGIES
    per_tensor_size: int | None = None  # per-tensor weights at this size (default: the largest of sizes)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise UserError(f"{setting('calib_sizes', python='sizes')}: {self.sizes} must be one or more sizes >= 1")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise UserError(
                f"{setting('strategies')}: {unknown or self.strategies} not valid; choose from {', '.join(STRATEGIES)}"
            )


def run_calibration_study(
    saved_model: str | Path,
    calib_dataset: SegmentationDataset,
    preprocess: Preprocess,
    images: np.ndarray,
    masks: np.ndarray,
    num_classes: int,
    config: CalibrationStudyConfig = CalibrationStudyConfig(),
    threads: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """One row per (size, strategy, weight scales): the full-int8 model's mIoU in points and its size."""
    from seg2tflite.converters.runtimes import tflite_miou
    from seg2tflite.converters.tflite_variants import build_tflite

    if max(config.sizes) > len(calib_dataset):
        raise UserError(
            f"{setting('calib_sizes', python='sizes')}: {max(config.sizes)} images asked for, the calibration split has {len(calib_dataset)}; use smaller sizes"
        )
    per_tensor_size = config.per_tensor_size or max(config.sizes)
    plan = [(n, s, True) for n in config.sizes for s in config.strategies] + [(per_tensor_size, config.strategies[0], False)]
    rows = []
    for size, strategy, per_channel in tqdm(plan, desc="calibration study", unit="model", disable=not progress):
        calib = build_calibration_set(
            calib_dataset, preprocess, size=size, seed=config.seed, min_size=1, progress=False, strategy=strategy
        )
        model = build_tflite(saved_model, "full_int8", calib, int8_io="float", per_channel=per_channel)
        rows.append({
            "size": size,
            "strategy": strategy,
            "weights": "per-channel" if per_channel else "per-tensor",
            "miou": tflite_miou(model, images, masks, num_classes, threads),
            "miou_builtin_kernels": tflite_miou(model, images, masks, num_classes, threads, xnnpack=False),
            "file_bytes": len(model),
        })  # fmt: skip
    return rows


def render_calibration_study_md(studies: dict[str, dict]) -> str:
    """``studies``: model -> {"float32_miou": x, "rows": [...], "data": str}; one table per model."""
    lines = [
        "# Calibration study",
        "",
        "Full-int8 mIoU (%) in LiteRT against the calibration set: its size, how its images were chosen",
        "(stratified: rare classes first; random: a seeded draw) and per-channel or per-tensor weight",
        "scales. Δ is against the same model's float32 TFLite file on the same images. The last columns",
        "run the same file on LiteRT's builtin kernels instead of its default XNNPACK delegate.",
        "",
    ]
    for model, study in studies.items():
        float32 = study["float32_miou"]
        lines += [f"## `{model}` ({study['data']}; float32 TFLite {float32:.2f}%)", ""]
        lines += [
            "| images | selection | weight scales | mIoU (%) | Δ (pts) | builtin kernels (%) | Δ builtin (pts) |",
            "| --: | --- | --- | --: | --: | --: | --: |",
        ]
        for r in study["rows"]:
            builtin = r.get("miou_builtin_kernels")
            builtin_cells = "- | -" if builtin is None else f"{builtin:.2f} | {builtin - float32:+.2f}"
            lines.append(
                f"| {r['size']} | {r['strategy']} | {r['weights']} | {r['miou']:.2f} | {r['miou'] - float32:+.2f} | {builtin_cells} |"
            )
        lines.append("")
    return "\n".join(lines)
