"""The report's plots draw the recorded figures: every point of the trade-off plot is a row of the
committed demo record, at that row's size, latency and mIoU, and the PNG is written whole."""

import json
from pathlib import Path

from PIL import Image

from seg2tflite.eval.plots import plot_compression, plot_tradeoff, plotted_miou
from seg2tflite.eval.record import RunRecord
from seg2tflite.eval.report import table_rows

ROOT = Path(__file__).resolve().parents[1]


def _demo_rows() -> list[dict]:
    record = json.loads((ROOT / "results" / "demo_seed0.json").read_text())
    return table_rows(RunRecord.from_dict(record, "results/demo_seed0.json"))


def test_the_tradeoff_plot_draws_each_rows_figures(tmp_path):
    rows = _demo_rows()
    drawn = plot_tradeoff(rows, tmp_path / "tradeoff.png")
    reference = {r["model"]: r for r in rows if r["stage"] == "pytorch"}
    for key in ("file_mb", "latency_median_ms"):
        expected = {
            (r["model"], r["stage"], r[key], plotted_miou(r, reference.get(r["model"])))
            for r in rows
            if r[key] is not None and r["miou_pct"] is not None and r.get("base_model") in (None, r["model"])
        }  # compressed variants (`seg2tflite compress` rows in the same run) have a plot of their own
        assert set(drawn[key]) == expected and len(drawn[key]) == len(expected)
    assert len({model for model, *_ in drawn["file_mb"]}) == 6  # the six families
    with Image.open(tmp_path / "tradeoff.png") as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 300


def test_a_short_row_sits_at_pytorchs_miou_plus_its_delta():
    """int16x8 is measured on the first images only: plotted at PyTorch's mIoU plus its own Δ."""
    reference = {"num_images": 50, "miou_pct": 60.0}
    short = {"num_images": 10, "miou_pct": 71.0, "miou_delta_pts": -0.4}
    assert plotted_miou(short, reference) == 59.6
    assert plotted_miou(short | {"num_images": 50}, reference) == 71.0


def test_the_compression_plot_draws_each_variant_per_base_model(tmp_path):
    rows = [
        {"base_model": "segnet_vgg16", "variant": v, "stage": s, "zip_mb": mb, "miou_pct": m}
        for v, s, mb, m in [("none", "TFLite float32", 112.0, 61.2), ("prune50", "TFLite full int8", 17.5, 60.1),
                            ("cluster16", "TFLite float32", 20.0, None)]
    ]  # fmt: skip
    drawn = plot_compression(rows, tmp_path / "compression.png")
    assert drawn == {"segnet_vgg16": [("none", "TFLite float32", 112.0, 61.2), ("prune50", "TFLite full int8", 17.5, 60.1)]}
    assert (tmp_path / "compression.png").stat().st_size > 0
