"""The main job: data -> native PyTorch training -> conversion -> evaluation -> benchmark -> report.

Every stage writes into ``OUT`` and is skipped on a re-run when its output is already whole and
its inputs unchanged (training by its log and settings, conversion by content hashes), so an
interrupted demo continues where it stopped. Gate failures in conversion are findings, not
crashes: they are collected and printed at the end (and are visible in the report's mIoU column);
with ``strict`` the demo then exits non-zero.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from seg2tflite.app.demo_config import DEFAULT_CLASS_WEIGHTING, DEFAULT_TRAIN_STEPS, FALLBACK_TRAIN_STEPS, DemoConfig
from seg2tflite.atomic import atomic_write_text
from seg2tflite.errors import UserError, setting
from seg2tflite.eval.run_dir import RunDir, mark_measured, measured_is_current


def _data_spec(config: DemoConfig, out: Path) -> str:
    """Write synthetic data once to OUT/data (the folder layout); return the spec that reads it."""
    if not config.data.startswith("synthetic"):
        return config.data
    from seg2tflite.data import SyntheticDataset, write_folder_dataset
    from seg2tflite.data.spec import parse_synthetic_spec

    data_dir = RunDir(out).data_dir
    synthetic = parse_synthetic_spec(config.data)
    source = synthetic.to_spec()
    written = data_dir / "dataset.json"
    try:
        current = json.loads(written.read_text(encoding="utf-8")).get("source") if written.is_file() else None
    except (OSError, ValueError, AttributeError):
        current = None
    if current != source:
        splits = {split: SyntheticDataset(split, synthetic) for split in ("train", "val", "test")}
        try:
            write_folder_dataset(splits, data_dir, progress=config.progress, source=source)
        except UserError as e:  # a dataset of the user's in OUT/data is never replaced
            raise UserError(
                f"{e}; the demo writes its synthetic data to {data_dir}: to use that dataset pass "
                f"{setting('data')} folder:{data_dir}, else choose another {setting('out')}"
            ) from None
    return f"folder:{data_dir}"


def _train(name: str, data: str, config: DemoConfig, run: RunDir) -> Path:
    from seg2tflite.app.train import RESUME_SETTINGS, resume_settings, train
    from seg2tflite.app.train_config import TrainConfig

    steps = config.train_steps or DEFAULT_TRAIN_STEPS.get(name, FALLBACK_TRAIN_STEPS)
    train_dir = run.train_dir(name)
    train_config = TrainConfig(
        model=name,
        data=data,
        out=str(train_dir),
        steps=steps,
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_steps=min(50, steps // 10),
        class_weighting=DEFAULT_CLASS_WEIGHTING.get(name),
        input_size=config.model_input_size(name),
        val_every=max(1, steps // 2),  # each validation costs CPU seconds the budget needs elsewhere
        val_images=config.val_images,
        seed=config.seed,
        resume=True,
        progress=config.progress,
    )
    log = train_dir / "train_log.json"
    if log.is_file():  # a finished run: keep it if it had these settings, else start over
        from seg2tflite.records import field, read_json

        redo = f"delete {train_dir} to train {name} again"
        logged = field(read_json(log, redo), log, redo, "config", kind=dict)
        if {key: logged.get(key) for key in RESUME_SETTINGS} == resume_settings(train_config):
            return run.checkpoint(name)
        train_config.resume = False
    train(train_config)
    return run.checkpoint(name)


def _convert(name: str, checkpoint: Path, data: str, config: DemoConfig, run: RunDir) -> str | None:
    """Convert with every gate on; return the gate failure as text (None if all passed).

    A re-run rebuilds only the stages whose inputs changed (see ``seg2tflite.converters.resume``)."""
    from seg2tflite.converters import ConvertConfig, ParityError, convert_registered
    from seg2tflite.data import load_dataset

    convert_dir = run.conversion(name).path
    convert_config = ConvertConfig(
        input_size=config.model_input_size(name),
        calib_size=config.calib_size,
        parity_images=config.parity_images,
        trained=True,
        max_miou_drop=config.max_miou_drop,
        image_input=config.image_input,
        image_output=config.image_output,
        int8_ranges=config.int8_ranges,
        int8_bias_correction=config.int8_bias_correction,
    )
    calib = load_dataset(data, "train")
    try:
        convert_registered(
            name, convert_dir, convert_config, calib, load_dataset(data, "val"),
            num_classes=calib.info.num_classes, checkpoint=checkpoint, command=["seg2tflite", "demo", "--out", config.out], progress=config.progress,
        )  # fmt: skip
    except ParityError as e:
        print(f"gate failed for {name}: {e}")
        return str(e)
    return None


def check_demo_settings(config: DemoConfig) -> None:
    """Refuse, before any data is written or model trained, what a later step would refuse: every
    model's size, training and conversion settings, and what fits in memory."""
    from seg2tflite.app.train import check_train_settings
    from seg2tflite.app.train_config import TrainConfig
    from seg2tflite.converters import ConvertConfig
    from seg2tflite.converters.images import conversion_memory
    from seg2tflite.data.spec import dataset_info
    from seg2tflite.memory import check_fits
    from seg2tflite.models import get_model_config
    from seg2tflite.models.footprint import activation_bytes

    classes = dataset_info(config.data).num_classes
    for name in config.models:
        size = config.model_input_size(name)
        train = TrainConfig(model=name, data=config.data, batch_size=config.batch_size, lr=config.lr, input_size=size)
        check_train_settings(train, size, classes, classes)
        convert = ConvertConfig(
            input_size=size, calib_size=config.calib_size, parity_images=config.parity_images, max_miou_drop=config.max_miou_drop,
            image_input=config.image_input, image_output=config.image_output, int8_ranges=config.int8_ranges,
            int8_bias_correction=config.int8_bias_correction,
        )  # fmt: skip
        need = conversion_memory(
            lambda h, w, name=name: activation_bytes(name, (h, w), classes), True, convert.calib_size, convert.parity_images
        )
        check_fits(need, size, f"converting {name}", divisor=get_model_config(name).size_divisor)


def run_summary(out: Path, config: DemoConfig, seconds: dict[str, dict[str, float]]) -> dict:
    """``OUT/demo.json``'s settings and timings. Its ``models`` are the run's: an earlier demo into
    ``OUT`` on the same data keeps its trained models there (and in the report), so they stay
    listed before this demo's, which ``latency``, ``compress`` and the benchmarks default to."""
    from seg2tflite.models import list_models

    models, timings = list(config.models), dict(seconds)
    try:
        run = RunDir(out)
        earlier = json.loads(run.summary_path.read_text())
        if earlier["config"]["data"] == config.data:
            kept = [m for m in earlier["config"]["models"] if m not in models and m in list_models()]
            kept = [m for m in kept if run.checkpoint(m).is_file()]
            models = kept + models
            timings = {m: earlier.get("seconds", {}).get(m, {}) for m in kept} | timings
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no earlier demo here, or not one we can read
        pass
    return {"config": asdict(config) | {"models": models}, "seconds": timings}


def run_demo(config: DemoConfig) -> int:
    """Run the whole job; return the process exit code (1 when a gate failed and ``strict``)."""
    from seg2tflite.eval.measure import measure_conversion
    from seg2tflite.eval.record import record_results
    from seg2tflite.eval.report import build_report
    from seg2tflite.models import list_models

    unknown = [m for m in config.models if m not in list_models()]
    if unknown:
        raise UserError(f"{setting('models')}: unknown {', '.join(unknown)}; choose from {', '.join(list_models())}")
    check_demo_settings(config)
    out = Path(config.out)
    run = RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds: dict[str, dict[str, float]] = {}

    data = _data_spec(config, out)
    failures: dict[str, str] = {}
    for name in config.models:
        timings = seconds.setdefault(name, {})
        t = time.perf_counter()
        checkpoint = _train(name, data, config, run)
        timings["train"] = time.perf_counter() - t
        t = time.perf_counter()
        failure = _convert(name, checkpoint, data, config, run)
        timings["convert"] = time.perf_counter() - t
        if failure:
            failures[name] = failure
        if not measured_is_current(run.measured_path(name), run.conversion(name).path):
            t = time.perf_counter()
            rows, sample = measure_conversion(
                run.conversion(name).path, data, config.eval_split, model=name, workers=config.workers, limit=config.eval_limit,
                stage_limits={"int16x8": config.int16x8_eval_images} if config.int16x8_eval_images else None,
                bench_threads=config.bench_threads, runs=config.bench_runs, run_dir=out, progress=config.progress,
            )  # fmt: skip
            record_results(out, rows, sample)
            timings["measure"] = time.perf_counter() - t
            mark_measured(run.measured_path(name), run.conversion(name).path, [r.stage for r in rows])

    report = build_report(out)
    total = time.perf_counter() - started
    summary = run_summary(out, config, seconds) | {"total_seconds": total, "gate_failures": failures}
    atomic_write_text(run.summary_path, json.dumps(summary, indent=2) + "\n")
    print((report / "results.md").read_text())
    print(f"demo finished in {total / 60:.1f} min; report in {report}")
    for name, failure in failures.items():
        print(f"gate failed (a finding, see the report): {name}: {failure}")
    return 1 if failures and config.strict else 0
