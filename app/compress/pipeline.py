"""``seg2tflite compress``: compress the trained models of a run folder and record every figure.

A run folder is what ``seg2tflite demo`` writes: ``DIR/models/NAME/train/best.safetensors`` and
``DIR/models/NAME/convert/``. For each model and method:

- ``mixed``: mixed precision against the mIoU budget (``seg2tflite.converters.int8_mixed``), written
  into the model's conversion folder as ``model_mixed_int8.tflite``;
- ``prune:S``, ``cluster:K``, ``qat``: the PyTorch model fine-tuned by the method, saved under
  ``DIR/models/NAME/compress/TAG/``, then carried through the normal conversion (float32 and
  full int8) with every float gate on; recorded as the model ``NAME+TAG`` so the report shows
  the compressed PyTorch mIoU next to its TFLite mIoU; with ``+mixed`` (``cluster:16+mixed``)
  the mixed-precision search then runs on the compressed model too;
- ``calibration``: the calibration study (``seg2tflite.converters.int8_study``), ``DIR/report/calibration_study.md``.

Rows go into ``DIR/record.json`` and the report is rebuilt. A re-run skips what is already done
with the same settings: the fine-tuning, the conversion stages (resumed), the mixed-precision
search, and the measurement of a compressed model that was not fine-tuned again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg2tflite.app.compress_config import STUDY_FILE, CompressConfig, Method
from seg2tflite.atomic import atomic_write_text
from seg2tflite.converters.stages import ConversionDir
from seg2tflite.errors import UserError
from seg2tflite.eval.run_dir import MEASURED_FILE, RunDir, mark_measured, measured_is_current
from seg2tflite.models.registry import registered_model
from seg2tflite.records import read_json


@dataclass
class _Run:
    out: Path
    data: str
    calib_size: int
    parity_images: int
    models: tuple[str, ...]

    @classmethod
    def open(cls, run: str | Path) -> _Run:
        out = Path(run)
        demo = RunDir(out).summary_path
        if not demo.is_file():
            raise UserError(f"--run {out}: no demo.json there; run `seg2tflite demo --out {out}` first")
        try:
            config = json.loads(demo.read_text())["config"]
            data = config["data"]
            models = [registered_model(m, demo) for m in config["models"]]  # names become folders
            calib_size, parity_images = int(config["calib_size"]), int(config["parity_images"])
            if not isinstance(data, str):
                raise TypeError("'data' is not a spec string")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"--run {out}: {demo} is unreadable or incomplete ({type(e).__name__}: {str(e)[:200]}); "
                f"run `seg2tflite demo --out {out}` again to rewrite it"
            ) from None
        if data.startswith("synthetic"):
            data = f"folder:{RunDir(out).data_dir}"
        models = tuple(m for m in models if RunDir(out).checkpoint(m).is_file())
        return cls(out, data, calib_size, parity_images, models)

    def model_dir(self, name: str) -> Path:
        return RunDir(self.out).model_dir(name)


def _input_size(convert_dir: Path) -> tuple[int, int]:
    size = ConversionDir(convert_dir).input_size
    if size is None:
        raise UserError(f"{convert_dir}: no manifest.json with the input size; convert the model again")
    return size


def _preprocess(name: str, size: tuple[int, int]):
    from seg2tflite.data.preprocess import Preprocess
    from seg2tflite.models.registry import get_model_config

    return Preprocess.for_model(get_model_config(name), size)


def _arrays(dataset, preprocess, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    pairs = [preprocess(np.asarray(dataset[i][0]), np.asarray(dataset[i][1])) for i in range(n)]
    return np.stack([p[0] for p in pairs]).astype(np.float32), np.stack([p[1] for p in pairs])


def _measure(
    run: _Run,
    convert_dir: Path,
    model: str,
    stages: list[str],
    config: CompressConfig,
    base: str,
    method: Method,
    record_pytorch: bool = True,
):
    from seg2tflite.eval.measure import measure_conversion
    from seg2tflite.eval.record import record_results

    rows, _ = measure_conversion(
        convert_dir, run.data, "test", model=model, stages=stages, bench=config.bench_runs > 0, bench_threads=config.threads,
        runs=config.bench_runs, run_dir=run.out, progress=config.progress,
    )  # fmt: skip
    if not record_pytorch:  # the PyTorch row was only the reference here: keep the one already recorded
        rows = [row for row in rows if row.stage != "pytorch"]
    for row in rows:
        row.base_model, row.compression = base, method.description
    record_results(run.out, rows)  # no overlay sample: the overlays stay the base models'


MIXED = Method("mixed")


def _mixed(run: _Run, name: str, config: CompressConfig, method: Method = MIXED) -> None:
    """Mixed precision on the model's own conversion, or on its ``method``-compressed one; either
    way the budget and the size are against the uncompressed model's float32 TFLite file."""
    from seg2tflite.calibration.representative import build_calibration_set
    from seg2tflite.converters.int8_mixed import (
        REPORT_FILE,
        MixedPrecisionConfig,
        format_mixed_precision,
        search_mixed_precision,
        write_mixed_precision,
    )
    from seg2tflite.converters.int8_range_rules import RULES_REVISION
    from seg2tflite.data import load_dataset
    from seg2tflite.eval.profile import latency_ms

    base_dir = RunDir(run.out).conversion(name).path
    compressed = method.kind != "mixed"
    convert_dir = RunDir(run.out).compress_dir(name, method.tag) / "convert" if compressed else base_dir
    model = f"{name}+{method.tag}" if compressed else name
    settings = {
        "max_miou_drop": config.max_miou_drop, "val_images": config.val_images, "calib_size": run.calib_size,
        "prefer_speed": True, "ranges": _chosen_ranges(base_dir), "rules_revision": RULES_REVISION,
    }  # fmt: skip
    report = convert_dir / REPORT_FILE
    if report.is_file() and json.loads(report.read_text()).get("settings") == settings:
        print(f"{model}: mixed precision already searched with these settings")
        return
    preprocess = _preprocess(name, _input_size(base_dir))
    calib = build_calibration_set(load_dataset(run.data, "train"), preprocess, size=run.calib_size, progress=config.progress)
    images, masks = _arrays(load_dataset(run.data, "val"), preprocess, config.val_images)
    found = search_mixed_precision(
        ConversionDir(convert_dir).int8_source(), ConversionDir(base_dir).artifact("float32"), calib, images, masks,
        _num_classes(run), MixedPrecisionConfig(config.max_miou_drop, threads=config.threads),
        progress=config.progress, ranges=settings["ranges"], latency=lambda model: latency_ms(model, config.threads or 2),
    )  # fmt: skip
    write_mixed_precision(convert_dir, found, {"settings": settings, "evaluated_on": f"{run.data} val, {len(images)} images"})
    print(f"{model}: {format_mixed_precision(found)}")
    _measure(run, convert_dir, model, ["pytorch", "mixed_int8"], config, name, method, record_pytorch=False)


def _chosen_ranges(convert_dir: Path) -> str:
    """The range method the conversion's full-int8 file got (``int8_ranges.json``; min/max before it existed)."""
    from seg2tflite.converters.int8_range_rules import CANDIDATES
    from seg2tflite.converters.int8_ranges import RANGES_FILE

    try:
        method = json.loads((convert_dir / RANGES_FILE).read_text())["method"]
    except (OSError, ValueError, KeyError, TypeError):
        return "minmax"
    return method if method in CANDIDATES else "minmax"


def _num_classes(run: _Run) -> int:
    from seg2tflite.data.spec import dataset_info

    return dataset_info(run.data).num_classes


def _finetuned(run: _Run, name: str, method: Method, config: CompressConfig) -> str | None:
    """Fine-tune, save, convert, measure; the gate failure as text, if any."""
    from seg2tflite.app import compress
    from seg2tflite.converters import ConvertConfig, ParityError, convert_model
    from seg2tflite.data import load_dataset
    from seg2tflite.eval.compression_layers import COMPRESS_LOG
    from seg2tflite.eval.record import load_record
    from seg2tflite.models.checkpoint import save_checkpoint
    from seg2tflite.models.registry import load_model

    out = RunDir(run.out).compress_dir(name, method.tag)
    checkpoint = out / "model.safetensors"
    size = _input_size(RunDir(run.out).conversion(name).path)
    settings = {
        "method": method.tag,
        "steps": config.finetune_steps,
        "lr": config.finetune_lr,
        "batch_size": config.batch_size,
        "seed": config.seed,
    }
    log = out / COMPRESS_LOG
    train = load_dataset(run.data, "train")
    finetuned_now = not (log.is_file() and checkpoint.is_file() and json.loads(log.read_text()).get("settings") == settings)
    if finetuned_now:
        model = load_model(RunDir(run.out).checkpoint(name))
        finetune = compress.FinetuneConfig(
            config.finetune_steps, config.batch_size, config.finetune_lr, seed=config.seed, input_size=size
        )
        if method.kind == "prune":
            model, report = compress.prune_model(
                model, train, compress.PruneConfig(sparsity=method.value), finetune, config.progress
            )
        elif method.kind == "cluster":
            model, report = compress.cluster_model(
                model, train, compress.ClusterConfig(clusters=method.value), finetune, config.progress
            )
        else:
            model, report = compress.qat_model(model, train, compress.QATConfig(), finetune, config.progress)
        folded = method.kind in ("cluster", "qat")  # these fold BN into the convs first
        save_checkpoint(
            model, checkpoint, extra={"input_size": list(size), "compression": method.tag, "batchnorm_folded": folded}
        )
        atomic_write_text(log, json.dumps({"settings": settings, "report": report}, indent=2, default=str) + "\n")
    convert_config = ConvertConfig(
        input_size=size, variants=("float32", "full_int8"), calib_size=run.calib_size, parity_images=run.parity_images,
        trained=True, max_miou_drop=config.max_miou_drop,
    )  # fmt: skip
    failure = None
    try:
        convert_model(
            load_model(checkpoint), out / "convert", convert_config, train, load_dataset(run.data, "val"),
            command=["seg2tflite", "compress", "--run", str(run.out)], model_info={"checkpoint": str(checkpoint)}, progress=config.progress,
        )  # fmt: skip
    except ParityError as e:
        print(f"gate failed for {name}+{method.tag}: {e}")
        failure = str(e)
    variant, stages = f"{name}+{method.tag}", ["pytorch", "float32", "full_int8"]
    recorded = {row.key for row in load_record(run.out).rows}
    measured = finetuned_now or not measured_is_current(out / MEASURED_FILE, out / "convert")
    if measured or not all((variant, stage) in recorded for stage in stages):
        _measure(run, out / "convert", variant, stages, config, name, method)
        mark_measured(out / MEASURED_FILE, out / "convert", stages)
    else:
        print(f"{variant}: already measured; the record keeps its rows")
    return failure


def _calibration_study(run: _Run, name: str, config: CompressConfig) -> dict:
    from seg2tflite.converters.int8_study import CalibrationStudyConfig, run_calibration_study
    from seg2tflite.converters.runtimes import tflite_miou
    from seg2tflite.data import load_dataset

    convert_dir = RunDir(run.out).conversion(name).path
    preprocess = _preprocess(name, _input_size(convert_dir))
    images, masks = _arrays(load_dataset(run.data, "test"), preprocess, None)
    num_classes = _num_classes(run)
    rows = run_calibration_study(
        ConversionDir(convert_dir).int8_source(), load_dataset(run.data, "train"), preprocess, images, masks, num_classes,
        CalibrationStudyConfig(tuple(config.calib_sizes), seed=config.seed), threads=config.threads, progress=config.progress,
    )  # fmt: skip
    float32 = tflite_miou(ConversionDir(convert_dir).artifact("float32"), images, masks, num_classes, config.threads)
    return {"data": f"{run.data} test, {len(images)} images", "float32_miou": float32, "rows": rows}


def run_compress(config: CompressConfig) -> int:
    """Every method on every model of the run; 1 when a compressed model broke a gate of its
    conversion (a float gate, or the full-int8 mIoU budget, which ``+mixed`` then addresses) and
    ``strict``, else 0. Broken gates are findings, printed and kept in the report either way."""
    from seg2tflite.converters.int8_study import render_calibration_study_md
    from seg2tflite.eval.report import REPORT_DIR, build_report

    methods = [Method.parse(m) for m in config.methods]
    run = _Run.open(config.run)
    models = config.models or run.models
    missing = [m for m in models if m not in run.models]
    if missing:
        raise UserError(f"--models: {', '.join(missing)} not trained in {run.out}; choose from {', '.join(run.models)}")
    failures, studies = {}, {}
    study_path = run.out / STUDY_FILE
    if study_path.is_file():
        studies = read_json(study_path, f"delete it to run the calibration study again (`seg2tflite compress --run {run.out}`)")
    for name in models:
        for method in methods:
            print(f"== {name}: {method.description}", flush=True)
            if method.kind == "mixed":
                _mixed(run, name, config)
            elif method.kind == "calibration":
                studies[name] = _calibration_study(run, name, config)
                atomic_write_text(study_path, json.dumps(studies, indent=2) + "\n")
            else:
                failure = _finetuned(run, name, method, config)
                if failure:
                    failures[f"{name}+{method.tag}"] = failure
                if method.then_mixed:  # also after a full-int8 gate failure: that is what mixed precision is for
                    _mixed(run, name, config, method)
    report = build_report(run.out)
    if studies:
        atomic_write_text(report / "calibration_study.md", render_calibration_study_md(studies))
        from seg2tflite.eval.plots import plot_calibration_study

        plot_calibration_study(studies, report / "calibration_study.png")
    print((report / "compression.md").read_text() if (report / "compression.md").is_file() else "")
    print(f"report in {run.out / REPORT_DIR}")
    for name, failure in failures.items():
        print(f"gate failed (a finding, see the report): {name}: {failure}")
    return 1 if failures and config.strict else 0
