"""Latency where it means something: each model at its deploy size, PyTorch against TFLite float32 and int8.

The demo trains and measures at 96x96 so that it fits a 2-core CPU; phones run these models at
their deploy size (the registry's ``input_size``: SegFormer and DeepLab 512x512, SegNet 352x480).
``run_latency`` converts each model of a run at that size (float32 and full int8; the trained
demo weights when there are some, else seeded ones: latency does not depend on the values),
times PyTorch and both .tflite files loaded side by side in one fresh process, in turns
(``eval.bench.benchmark_in_turns``: a machine whose speed drifts weighs on all of a row alike), and
writes ``DIR/deploy_latency.json``; ``seg2tflite report`` renders it as ``report/deploy_latency.md``.

Where ``seg2tflite compress --methods mixed`` has chosen a mixed-precision file for a model at the
demo size (``models/M/convert/mixed_precision.json``), the same choice (the op types and nodes it
kept in float) is applied at the deploy size too, ``deploy/M/model_mixed_int8.tflite``, and timed
beside the others: the search measures accuracy at the size it can afford, the deploy size is
where its speed matters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seg2tflite.atomic import atomic_write_bytes, atomic_write_text
from seg2tflite.errors import UserError, setting
from seg2tflite.eval.record import DEPLOY_LATENCY_FILE, run_versions
from seg2tflite.eval.run_dir import RunDir

STAGES_TIMED = ("pytorch", "float32", "full_int8")
BLOCK_MS = 250.0  # each artifact's share of a timing turn


@dataclass(frozen=True)
class LatencyConfig:
    run: str  # a run folder (what `seg2tflite demo --out` wrote) or any output folder
    models: tuple[str, ...] = ()  # default: the run's models, else every carried family
    threads: int = 2  # benchmark threads, for every runtime alike
    warmup: int = 3
    runs: int = 10  # timing turns: a model's artifacts take turns, each about BLOCK_MS a turn
    calib_size: int = 8  # calibration images at the deploy size (ranges, not accuracy, are at stake)
    isolate: bool = True  # each model's timing in a fresh process (False: in this one, for test-only models)
    progress: bool = True


def _models(config: LatencyConfig) -> tuple[str, ...]:
    from seg2tflite.models import get_model_config, list_models

    if config.models:
        unknown = [m for m in config.models if m not in list_models()]
        if unknown:
            raise UserError(f"{setting('models')} {' '.join(unknown)}: unknown; choose from {', '.join(list_models())}")
        return config.models
    demo = RunDir(config.run).summary_path
    if demo.is_file():
        from seg2tflite.models.registry import registered_model
        from seg2tflite.records import field, read_json

        redo = f"run `seg2tflite demo --out {config.run}` again, or name the models with {setting('models')}"
        models = field(read_json(demo, redo), demo, redo, "config", "models", kind=list)
        return tuple(registered_model(m, demo, setting("models")) for m in models)
    return tuple(n for n in list_models() if not get_model_config(n).variant_of)


def deploy_data_spec(size, calib_size: int) -> str:
    """The synthetic data a deploy-size conversion calibrates on (ranges, not accuracy, are at stake)."""
    return f"synthetic:size={size[0]}x{size[1]},train={calib_size},val=2,test=1"


def _convert_at_deploy_size(name: str, out: Path, config: LatencyConfig) -> tuple[Path, tuple[int, int]]:
    from seg2tflite.converters import ConvertConfig, ParityError, convert_registered
    from seg2tflite.data import load_dataset
    from seg2tflite.models import get_model_config

    size = tuple(get_model_config(name).input_size)
    trained = RunDir(config.run).checkpoint(name)
    spec = deploy_data_spec(size, config.calib_size)
    convert = ConvertConfig(input_size=size, variants=("float32", "full_int8"), calib_size=config.calib_size, parity_images=2)
    calib = load_dataset(spec, "train")
    try:
        convert_registered(
            name, out, convert, calib, load_dataset(spec, "val"), num_classes=calib.info.num_classes,
            checkpoint=trained if trained.is_file() else None, log=None, progress=config.progress,
        )  # fmt: skip
    except ParityError as e:  # the figures at stake here are latencies; the gate is reported
        print(f"{name} at {size[0]}x{size[1]}: {e}")
    return out, size


def _mixed_at_deploy_size(demo_conversion: Path, conversion, config: LatencyConfig) -> dict | None:
    """The demo size's mixed-precision choice applied to the deploy-size SavedModel, calibrated on
    the images its full-int8 file was; None when the run has no such choice."""
    from seg2tflite.calibration.representative import build_calibration_set
    from seg2tflite.converters.int8_mixed import REPORT_FILE, calibrate, quantizable_nodes, quantize
    from seg2tflite.converters.int8_range_rules import CANDIDATES
    from seg2tflite.converters.runtimes import TFLiteRunner
    from seg2tflite.data import Preprocess, load_dataset

    report = demo_conversion / REPORT_FILE
    if not report.is_file():
        return None
    try:
        chosen = json.loads(report.read_text())
        ranges = str((chosen.get("settings") or {}).get("ranges", "minmax"))
        chosen = {"float_op_types": list(chosen["float_op_types"]), "float_nodes": list(chosen.get("float_nodes", []))}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{report}: unreadable mixed-precision record ({e}); run `seg2tflite compress --methods mixed` again"
        ) from None
    manifest = json.loads(conversion.manifest_path.read_text())
    pre = manifest["preprocessing"]
    dataset = load_dataset(deploy_data_spec(pre["size"], config.calib_size), "train")
    calib = build_calibration_set(dataset, Preprocess(tuple(pre["size"]), tuple(pre["mean"]), tuple(pre["std"])),
                                  size=config.calib_size, progress=False)  # fmt: skip
    calibrated = calibrate(conversion.int8_source(), calib, ranges if ranges in CANDIDATES else "minmax")
    nodes = {n for names in quantizable_nodes(calibrated).values() for n in names}
    float_nodes = [n for n in chosen["float_nodes"] if n in nodes]
    content = quantize(calibrated, chosen["float_op_types"], float_nodes)
    path = conversion.artifact("mixed_int8")
    atomic_write_bytes(path, content)
    delegation = TFLiteRunner(path, threads=config.threads).delegation
    return {
        "float_op_types": chosen["float_op_types"],
        "float_nodes": float_nodes,
        "float_nodes_missing": len(chosen["float_nodes"]) - len(float_nodes),
        "delegation": {k: delegation[k] for k in ("delegate", "ops", "delegated", "partitions", "not_delegated")},
    }


def run_latency(config: LatencyConfig) -> Path:
    """Convert and time every model at its deploy size; return the JSON file written."""
    import numpy as np

    from seg2tflite.converters.stages import ConversionDir
    from seg2tflite.eval.bench import benchmark_in_turns, measure_in_turns

    run = Path(config.run)
    rows = []
    for name in _models(config):
        folder, size = _convert_at_deploy_size(name, RunDir(run).deploy_dir(name), config)
        conversion = ConversionDir(folder)
        mixed = _mixed_at_deploy_size(RunDir(run).conversion(name).path, conversion, config)
        stages = STAGES_TIMED + (("mixed_int8",) if mixed else ())
        paths = [conversion.checkpoint() if stage == "pytorch" else conversion.artifact(stage) for stage in stages]
        in_turns = benchmark_in_turns if config.isolate else measure_in_turns
        turns = in_turns(paths, size, config.threads, config.runs, BLOCK_MS, config.warmup, invoke=False)
        times = {stage: float(np.median(ms)) for stage, ms in zip(stages, turns)}
        for stage, ms in times.items():
            print(f"{name} {size[0]}x{size[1]} {stage}: median {ms:.1f} ms")
        rows.append({
            "model": name,
            "input_size": list(size),
            "median_ms": times,
            "int8_over_float32": times["full_int8"] / times["float32"],
            "float32_over_pytorch": times["float32"] / times["pytorch"],
            "int8_over_pytorch": times["full_int8"] / times["pytorch"],
            "delegation": json.loads(conversion.parity_path.read_text()).get("delegation", {}),
        })  # fmt: skip
        if mixed:
            rows[-1]["mixed_int8"] = mixed
            rows[-1]["delegation"]["mixed_int8"] = mixed.pop("delegation")
    path = run / DEPLOY_LATENCY_FILE
    record = {"threads": config.threads, "runs": config.runs, "timing": "turns", "block_ms": BLOCK_MS}
    record.update(versions=run_versions(), rows=rows)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path
