"""Latency where it means something: each model at its deploy size, PyTorch against TFLite float32 and int8.

The demo trains and measures at 96x96 so that it fits a 2-core CPU; phones run these models at
their deploy size (the registry's ``input_size``: SegFormer and DeepLab 512x512, SegNet 352x480).
``run_latency`` converts each model of a run at that size (float32 and full int8; the trained
demo weights when there are some, else seeded ones: latency does not depend on the values),
benchmarks PyTorch and both .tflite files in fresh processes in the same run, and writes
``DIR/deploy_latency.json``; ``seg2tflite report`` renders it as ``report/deploy_latency.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seg2tflite.atomic import atomic_write_text
from seg2tflite.errors import UserError, setting
from seg2tflite.eval.record import DEPLOY_LATENCY_FILE, run_versions

STAGES_TIMED = ("pytorch", "float32", "full_int8")


@dataclass(frozen=True)
class LatencyConfig:
    run: str  # a run folder (what `seg2tflite demo --out` wrote) or any output folder
    models: tuple[str, ...] = ()  # default: the run's models, else every carried family
    threads: int = 2  # benchmark threads, for every runtime alike
    warmup: int = 3
    runs: int = 10
    calib_size: int = 8  # calibration images at the deploy size (ranges, not accuracy, are at stake)
    isolate: bool = True  # each benchmark in a fresh process (False: in this one, for test-only models)
    progress: bool = True


def _models(config: LatencyConfig) -> tuple[str, ...]:
    from seg2tflite.models import get_model_config, list_models

    if config.models:
        unknown = [m for m in config.models if m not in list_models()]
        if unknown:
            raise UserError(
                f"{setting('--models', 'models')} {' '.join(unknown)}: unknown; choose from {', '.join(list_models())}"
            )
        return config.models
    demo = Path(config.run) / "demo.json"
    if demo.is_file():
        return tuple(json.loads(demo.read_text())["config"]["models"])
    return tuple(n for n in list_models() if not get_model_config(n).variant_of)


def _convert_at_deploy_size(name: str, out: Path, config: LatencyConfig) -> tuple[Path, tuple[int, int]]:
    from seg2tflite.converters import ConvertConfig, ParityError, convert_registered
    from seg2tflite.data import load_dataset
    from seg2tflite.models import get_model_config

    size = tuple(get_model_config(name).input_size)
    trained = Path(config.run) / "models" / name / "train" / "best.safetensors"
    spec = f"synthetic:size={size[0]}x{size[1]},train={config.calib_size},val=2,test=1"
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


def run_latency(config: LatencyConfig) -> Path:
    """Convert and time every model at its deploy size; return the JSON file written."""
    from seg2tflite.converters.stages import ConversionDir
    from seg2tflite.eval.bench import benchmark_artifact

    run = Path(config.run)
    rows = []
    for name in _models(config):
        folder, size = _convert_at_deploy_size(name, run / "deploy" / name, config)
        conversion = ConversionDir(folder)
        times = {}
        for stage in STAGES_TIMED:
            path = conversion.checkpoint() if stage == "pytorch" else conversion.artifact(stage)
            result = benchmark_artifact(path, size, config.threads, config.warmup, config.runs, isolate=config.isolate)
            times[stage] = result.median_ms
            print(f"{name} {size[0]}x{size[1]} {stage}: median {result.median_ms:.1f} ms")
        rows.append({
            "model": name,
            "input_size": list(size),
            "median_ms": times,
            "int8_over_float32": times["full_int8"] / times["float32"],
            "float32_over_pytorch": times["float32"] / times["pytorch"],
            "int8_over_pytorch": times["full_int8"] / times["pytorch"],
            "delegation": json.loads(conversion.parity_path.read_text()).get("delegation", {}),
        })  # fmt: skip
    path = run / DEPLOY_LATENCY_FILE
    record = {"threads": config.threads, "runs": config.runs, "versions": run_versions(), "rows": rows}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path
