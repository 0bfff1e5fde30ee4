"""The run record and the report: measured rows for a tiny model carried through the real
conversion chain (all eight stages), every report file written, a rebuild from the record alone
that gives the same bytes, and clear errors."""

import csv
import dataclasses
import json
import shutil
from importlib import metadata

import numpy as np
import pytest
import torch

from seg2tflite.converters.stages import INTEGER_FORM, STAGES
from seg2tflite.data import load_dataset
from seg2tflite.errors import UserError
from seg2tflite.eval.measure import file_size_mb, measure_conversion, zipped_size_mb
from seg2tflite.eval.record import RECORD_FILE, cpu_simd, load_record, record_results
from seg2tflite.eval.report import build_report
from seg2tflite.models.checkpoint import save_checkpoint
from seg2tflite.models.registry import create_model

from small_chain import SmallSegNet, registered_small

pytestmark = pytest.mark.chain

DATA = "synthetic:train=8,val=4,test=4,size=32"
SIZE = (32, 32)
NAME = "tiny_report_cnn"
# mixed precision comes from `compress`; INTEGER_FORM only for a model whose integer files have a form of their own
CONVERT_STAGES = [k for k, s in STAGES.items() if s.built_by_convert and k != INTEGER_FORM]
REPORT_FILES = (
    "results.md",
    "summary.md",
    "results.csv",
    "results.json",
    "per_class_iou.md",
    "per_class_iou.csv",
    "tradeoff.png",
    "overlays.png",
)


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    with registered_small(NAME, input_size=SIZE, num_classes=8):
        yield


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A run folder holding one real conversion folder (checkpoint, ONNX, SavedModel, five
    .tflite), measured and recorded. Benchmarks run in this process: the tiny model is
    registered only here, so a fresh process could not rebuild it from its checkpoint."""
    from seg2tflite.converters.config import ConvertConfig
    from seg2tflite.converters.pipeline import convert_model

    run = tmp_path_factory.mktemp("run")
    convert = run / "models" / NAME
    torch.manual_seed(0)
    model = create_model(NAME, num_classes=8).eval()
    save_checkpoint(model, convert / "model.safetensors")
    config = ConvertConfig(input_size=SIZE, calib_size=8, parity_images=2)
    convert_model(model, convert, config, load_dataset(DATA, "train"), load_dataset(DATA, "val"), log=None, progress=False)
    rows, sample = measure_conversion(
        convert, DATA, "test", workers=1, drift_images=2, overlay_images=2, warmup=1, runs=2,
        bench_isolate=False, run_dir=run, progress=False,
    )  # fmt: skip
    record_results(run, rows, sample)
    return run, rows, sample


def test_measured_rows_are_complete(measured):
    run, rows, sample = measured
    assert [r.stage for r in rows] == CONVERT_STAGES
    assert [r.runtime for r in rows] == ["pytorch", "onnxruntime", "tensorflow"] + ["litert"] * 5
    pt, onnx, tf, f32 = rows[:4]
    assert pt.params == sum(p.numel() for p in SmallSegNet(8).parameters())
    assert onnx.artifact == f"models/{NAME}/model.onnx"
    assert pt.argmax_agreement is None and pt.max_logit_drift is None
    for r in rows[3:]:  # every .tflite: evaluated on the builtin kernels too, delegation read back
        assert r.miou_builtin is not None and 0 <= r.delegated_ops <= r.total_ops
    assert f32.delegated_ops == f32.total_ops and f32.miou_builtin == f32.miou
    for r in (onnx, tf, f32):  # float stages: the PyTorch function, so the PyTorch figures
        assert r.miou == pt.miou and r.per_class_iou == pt.per_class_iou
        assert r.argmax_agreement == 1.0
        assert r.drift_images == 2 and 0 <= r.max_logit_drift <= 1e-3 * r.logit_range
    for r in rows[1:]:
        assert 0 < r.argmax_agreement <= 1 and r.max_logit_drift >= 0 and r.mean_logit_drift <= r.max_logit_drift
    assert len({r.data_sha256 for r in rows}) == 1
    for r in rows:
        assert r.num_images == 4 and r.input_size == SIZE and r.threads == 1
        assert 0 < r.latency_median_ms <= r.latency_p90_ms
        assert r.peak_rss_mb is None  # benchmarked in this process: its memory is not the artifact's
        assert r.file_mb > 0 and r.zip_mb > 0
        assert list(r.per_class_iou) == list(load_dataset(DATA, "test").info.class_names)
    assert sample["image"].shape == (2, *SIZE, 3) and sample["target"].shape == (2, *SIZE)
    np.testing.assert_array_equal(sample["pred_float32"], sample["pred_pytorch"])
    assert all(f"pred_{stage}" in sample for stage in CONVERT_STAGES)
    assert load_record(run).rows == rows


def test_report_files_and_tables(measured):
    run, rows, _ = measured
    out = build_report(run)
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith(f"| `{NAME}` |")]
    assert [line.split(" | ")[1] for line in table] == [STAGES[s].label for s in CONVERT_STAGES]
    versions = {r.runtime: r.runtime_version for r in rows}
    assert versions["litert"] == metadata.version("ai-edge-litert") and versions["pytorch"] == metadata.version("torch")
    assert table[0].startswith(f"| `{NAME}` | PyTorch | pytorch {versions['pytorch']} |") and table[0].endswith(
        "| ref | - | - | ref | ref |"
    )
    assert table[1].startswith(f"| `{NAME}` | ONNX | onnxruntime ") and "| +0.00 | - | - | 100.000 |" in table[1]
    f32 = rows[3]
    assert table[3].startswith(f"| `{NAME}` | TFLite float32 | litert {versions['litert']} |")
    assert f"| +0.00 | {100 * f32.miou_builtin:.2f} | {f32.delegated_ops}/{f32.total_ops} | 100.000 |" in table[3]
    assert "## Published figures: DIFFERENT DATA, not comparable" in md and "WARNING" not in md
    summary = [line.split(" | ") for line in (out / "summary.md").read_text().splitlines() if line.startswith(f"| `{NAME}` |")]
    assert [cells[2] for cells in summary] == [STAGES[s].label for s in CONVERT_STAGES]
    assert [cells[6] for cells in summary] == [f"{100 * r.miou:.2f}" for r in rows]
    with open(out / "results.csv") as f:
        table_csv = list(csv.DictReader(f))
    assert [(r["model"], r["stage"]) for r in table_csv] == [(NAME, stage) for stage in CONVERT_STAGES]
    for row, r in zip(table_csv, rows):
        assert float(row["miou_pct"]) == round(100 * r.miou, 2)
        assert float(row["miou_delta_pts"]) == round(100 * (r.miou - rows[0].miou), 2)
        assert float(row["file_mb"]) == round(r.file_mb, 3)
    assert table_csv[0]["argmax_agreement_pct"] == "" and float(table_csv[1]["argmax_agreement_pct"]) == 100.0
    report_json = json.loads((out / "results.json").read_text())
    assert [r["stage"] for r in report_json["rows"]] == CONVERT_STAGES
    with open(out / "per_class_iou.csv") as f:
        per_class = list(csv.reader(f))
    assert per_class[0] == ["model", "stage", *load_dataset(DATA, "test").info.class_names]
    assert len(per_class) == 1 + len(CONVERT_STAGES)


def test_rebuild_uses_the_record_only_and_is_idempotent(measured, tmp_path):
    run, _, _ = measured
    first = build_report(run)
    before = {name: (first / name).read_bytes() for name in REPORT_FILES}
    copy = tmp_path / "copy"  # the record and predictions without any artifact: nothing to re-measure
    copy.mkdir()
    shutil.copy(run / RECORD_FILE, copy / RECORD_FILE)
    shutil.copytree(run / "predictions", copy / "predictions")
    again = build_report(copy)
    assert {name: (again / name).read_bytes() for name in REPORT_FILES} == before


def test_record_merges_by_model_and_stage_and_shows_published_figures(measured, tmp_path):
    _, rows, sample = measured
    rows = rows[:2]
    record_results(tmp_path, rows, sample)
    record_results(tmp_path, rows[::-1], sample)  # the same rows again: replaced, not appended
    assert [(r.model, r.stage) for r in load_record(tmp_path).rows] == [(NAME, "pytorch"), (NAME, "onnx")]
    renamed = [dataclasses.replace(r, model="segformer_b0") for r in rows]  # a name with published figures
    record_results(tmp_path, renamed, sample)
    assert [(r.model, r.stage) for r in load_record(tmp_path).rows] == [
        (NAME, "pytorch"), (NAME, "onnx"), ("segformer_b0", "pytorch"), ("segformer_b0", "onnx"),
    ]  # fmt: skip
    record_results(tmp_path, rows[:1], sample)  # a model measured again keeps its place
    assert [r.model for r in load_record(tmp_path).rows] == [NAME, NAME, "segformer_b0", "segformer_b0"]
    md = (build_report(tmp_path) / "results.md").read_text()
    anchors = md.split("## Published figures")[1]
    assert "| `segformer_b0` | float mIoU (%) |" in anchors and "| 37.40 | ADE20K | Xie et al. 2021" in anchors
    assert f"`{NAME}`" not in anchors


def test_stages_evaluated_on_different_data_are_flagged(measured, tmp_path):
    _, rows, _ = measured
    changed = [rows[0], dataclasses.replace(rows[1], data_sha256="0" * 64)]
    record_results(tmp_path, changed)
    md = (build_report(tmp_path) / "results.md").read_text()
    assert f"WARNING: `{NAME}` was evaluated on different data" in md


def test_a_stage_on_fewer_images_is_compared_on_those_images(measured, tmp_path):
    """The demo evaluates int16x8 on its first test images only: the row says so in the tables, and
    its change in mIoU and its agreement are against PyTorch on the same images."""
    from seg2tflite.eval.evaluate import evaluate_artifact

    run, rows, _ = measured
    convert = run / "models" / NAME
    fewer, sample = measure_conversion(
        convert, DATA, "test", stages=["pytorch", "int16x8"], stage_limits={"int16x8": 2}, workers=1, drift_images=2,
        overlay_images=2, bench=False, run_dir=run, progress=False,
    )  # fmt: skip
    pt, q = fewer
    assert pt.num_images == 4 and q.num_images == 2 and sample["pred_int16x8"].shape[0] == 2
    on_two = evaluate_artifact(convert / "model.safetensors", DATA, "test", limit=2, progress=False).metrics["miou"]
    assert q.reference_miou == on_two != pt.miou and pt.reference_miou is None  # so the Δ below tells them apart
    full = rows[CONVERT_STAGES.index("int16x8")]  # the same file on all 4 images, from the fixture
    assert q.data_sha256 != full.data_sha256 and q.miou is not None
    record_results(tmp_path, fewer, sample)
    out = build_report(tmp_path)
    md = (out / "results.md").read_text()
    assert "WARNING" not in md  # a subset has its own digest; that is not a change of data
    line = next(line for line in md.splitlines() if "TFLite int16x8" in line)
    assert "| TFLite int16x8 (first 2 images) |" in line
    assert f"| {100 * (q.miou - on_two):+.2f} |" in line
    summary = (out / "summary.md").read_text()
    assert "| TFLite int16x8 (first 2 images) |" in summary
    # The trade-off plot puts it at PyTorch's test mIoU plus its Δ, not at its mIoU on 2 images.
    from seg2tflite.eval.plots import plotted_miou
    from seg2tflite.eval.record import load_record
    from seg2tflite.eval.report import table_rows

    table = {r["stage"]: r for r in table_rows(load_record(tmp_path))}
    expected = round(100 * pt.miou, 2) + round(100 * (q.miou - on_two), 2)
    assert plotted_miou(table["int16x8"], table["pytorch"]) == pytest.approx(expected, abs=0.011)
    assert plotted_miou(table["pytorch"], table["pytorch"]) == table["pytorch"]["miou_pct"]


def test_sizes_of_files_and_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "zeros.bin").write_bytes(bytes(1_000_000))
    (tmp_path / "sub" / "noise.bin").write_bytes(np.random.default_rng(0).bytes(500_000))
    assert file_size_mb(tmp_path / "sub" / "zeros.bin") == 1.0
    assert file_size_mb(tmp_path / "sub") == 1.5
    assert zipped_size_mb(tmp_path / "sub" / "zeros.bin") < 0.01
    assert 0.5 < zipped_size_mb(tmp_path / "sub") < 0.51  # noise does not compress


def test_missing_or_foreign_record_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no run record"):
        build_report(tmp_path)
    (tmp_path / RECORD_FILE).write_text(json.dumps({"schema": 99, "rows": []}))
    with pytest.raises(UserError, match="schema 99"):
        build_report(tmp_path)
    with pytest.raises(UserError, match="not a conversion folder"):
        measure_conversion(tmp_path / "nowhere", DATA)


def test_the_record_names_the_cpus_simd_extensions(tmp_path):
    """What decides how much faster int8 can be: a dot-product extension (VNNI) or none."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\nprocessor\t: 1\nflags\t\t: avx2 fma\n")
    assert cpu_simd(cpuinfo) == "avx2 fma avx512f avx512_vnni"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_simd(cpuinfo) == "avx2 fma"
    assert cpu_simd(tmp_path / "absent") is None
