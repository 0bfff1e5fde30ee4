"""Full int8 with every activation-range method on a run's trained models: mIoU, size, delegation, speed.

For each model of a run folder (``seg2tflite demo --out RUN``) the conversion's SavedModel is
quantized to full int8 once per range method (``seg2tflite.converters.int8_ranges``), calibrated
on exactly the images its conversion was (the names its ``manifest.json`` lists, checked), and
each file is evaluated on the run's test split in LiteRT with XNNPACK, beside the float32 file and
PyTorch's mIoU from the run record. ``auto`` is reported as the method it chose (its file is that
method's file) with the held-out scores it chose by. Latency: the float32 file and every int8
file loaded side by side in one fresh process, timed in turns (``eval.bench.benchmark_in_turns``,
``invoke()`` alone), the ratio int8 / float32 the median of the turns' ratios. Where the loss
sits: the float32 file's logits put on each int8 file's output grid (its output's scale and zero
point) and nothing else, scored the same way.

    python benchmarks/int8_ranges.py --run runs/demo
    python benchmarks/int8_ranges.py --run runs/demo --models segformer_b0 --record results/int8_ranges_seed0.json

Writes ``RUN/int8_ranges.json`` (and ``--record FILE``) and prints the table. A benchmark, not a
test: not part of the default test run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seg2tflite.converters.int8_range_rules import on_int8_grid
from seg2tflite.eval.run_dir import RunDir

RANGES = ("minmax", "percentile", "mse")
METHODS = tuple(f"{r}{tag}" for r in RANGES for tag in ("", "+bc"))  # +bc: with bias correction


def _data_spec(run: Path) -> str:
    if not RunDir(run).summary_path.is_file():  # a demo still under way: its synthetic data
        return f"folder:{run / 'data'}"
    data = RunDir(run).summary()["config"]["data"]
    return f"folder:{run / 'data'}" if data.startswith("synthetic") else data


def _arrays(dataset, preprocess) -> tuple[np.ndarray, np.ndarray]:
    pairs = [preprocess(np.asarray(dataset[i][0]), np.asarray(dataset[i][1])) for i in range(len(dataset))]
    return np.stack([p[0] for p in pairs]).astype(np.float32), np.stack([p[1] for p in pairs])


def _pytorch_miou(run: Path, model: str) -> float | None:
    from seg2tflite.eval.record import load_record

    rows = [r for r in load_record(run).rows if r.model == model and r.stage == "pytorch"]
    return 100 * rows[0].miou if rows and rows[0].miou is not None else None


def conversion_inputs(run: Path, model: str):
    """A run model's conversion folder, manifest, preprocessing, data spec and calibration set:
    exactly the images its conversion was calibrated on (checked against the manifest)."""
    from seg2tflite.calibration.representative import build_calibration_set
    from seg2tflite.data import Preprocess, load_dataset

    folder = RunDir(run).conversion(model)
    manifest = json.loads(folder.manifest_path.read_text())
    config, pre = manifest["config"], manifest["preprocessing"]
    preprocess = Preprocess(tuple(pre["size"]), tuple(pre["mean"]), tuple(pre["std"]))
    data = _data_spec(run)
    calib = build_calibration_set(
        load_dataset(data, config["calib_split"]), preprocess, size=config["calib_size"], seed=config["calib_seed"],
        min_size=config["calib_min"], progress=False,
    )  # fmt: skip
    if list(calib.names) != manifest["calibration"]["images"]:
        raise SystemExit(f"{model}: the calibration images differ from the conversion's; re-run the demo")
    return folder, manifest, preprocess, data, calib


def measure_model(run: Path, model: str, turns: int, threads: int, output: str = "logits") -> dict:
    """One model of a run: its conversion's SavedModel and calibration images, the run's test split;
    ``output="classes"``: the int8 files return the class map (``convert --output classes``)."""
    from seg2tflite.converters.app_io import AppIO
    from seg2tflite.data import load_dataset

    folder, manifest, preprocess, data, calib = conversion_inputs(run, model)
    config = manifest["config"]
    images, masks = _arrays(load_dataset(data, "test"), preprocess)
    k = manifest["model"].get("num_classes") or int(masks.max()) + 1
    app = AppIO(**manifest["app"]) if manifest.get("app") else None
    if output == "classes":
        app = AppIO(**{**(manifest.get("app") or {}), "output": "classes", "num_classes": k})
    out = compare_methods(
        folder.int8_source(), folder.artifact("float32"), calib, images, masks, k, config["int8_io"], app, turns,
        threads,
    )  # fmt: skip
    out["pytorch_miou"] = _pytorch_miou(run, model)
    out["demo_file"] = {"int8_ranges": manifest.get("int8_ranges"), "config": config.get("int8_ranges")}
    return out


def logits_grid(content: bytes) -> tuple[float, int] | None:
    """The int8 grid (scale, zero point) a file puts its class logits on: its int8 output, the int8
    tensor its last DEQUANTIZE reads, or what its ARG_MAX reads; None when they are not int8."""
    from seg2tflite.converters.tflite_graph import TFLiteGraph

    graph = TFLiteGraph.read(content)
    tensor = int(graph.graph.outputs[0])
    producer = graph.producer.get(tensor)
    if producer is not None and graph.name(producer) in ("DEQUANTIZE", "ARG_MAX"):
        tensor = int(producer.inputs[0])
    return graph.params(tensor) if graph.is_int8(tensor) else None


def _predictions(runner, images: np.ndarray, grid: tuple[float, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The argmax of a LiteRT runner (XNNPACK) on every image, and where its two largest
    logits are equal (int8 logits tie; argmax then takes the lower class index; a class map has none);
    with ``grid``, of the runner's logits put on that int8 grid first."""
    argmax, ties = [], []
    for i in range(len(images)):
        logits = runner(images[i : i + 1])
        logits = logits if grid is None else on_int8_grid(logits, *grid)
        top = np.sort(logits, axis=1)
        argmax.append(logits.argmax(1))
        ties.append(top[:, -1] == top[:, -2])
    return np.concatenate(argmax).astype(np.int64), np.concatenate(ties)


def per_image_confusions(predictions: np.ndarray, masks: np.ndarray, k: int) -> np.ndarray:
    """One K x K confusion matrix per image (rows ground truth, ignore label 255 dropped)."""
    out = np.zeros((len(masks), k, k), np.int64)
    for i, (pred, mask) in enumerate(zip(predictions, masks)):
        kept = mask != 255
        out[i] = np.bincount(mask[kept].astype(np.int64) * k + np.clip(pred[kept], 0, k - 1), minlength=k * k).reshape(k, k)
    return out


def miou_points(confusion: np.ndarray) -> np.ndarray:
    """mIoU in points of summed confusion matrices (..., K, K), classes in neither left out, as ``metrics``."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    union = confusion.sum(-1) + confusion.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * np.nanmean(np.where(union > 0, tp / union, np.nan), axis=-1)


def paired_interval(base: np.ndarray, other: np.ndarray, rounds: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of mIoU(other) - mIoU(base) over the test images, by a paired bootstrap
    (the same resampled images for both): how far a difference of two files is from noise."""
    picks = np.random.default_rng(seed).integers(0, len(base), (rounds, len(base)))
    deltas = miou_points(other[picks].sum(1)) - miou_points(base[picks].sum(1))
    return [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))]


def compare_methods(saved_model, float32: Path, calib, images, masks, k, int8_io="int8", app=None, turns=10, threads=2) -> dict:
    """Full int8 of ``saved_model`` with every method (and ``auto``, with and without bias
    correction), each evaluated on ``images``/``masks`` beside the ``float32`` file and timed
    against it in turns."""
    from seg2tflite.converters.runtimes import TFLiteRunner
    from seg2tflite.converters.tflite_variants import build_variant
    from seg2tflite.eval.bench import benchmark_in_turns

    float32_runner = TFLiteRunner(float32, threads)
    float32_argmax = _predictions(float32_runner, images)[0]
    float32_miou = float(miou_points(per_image_confusions(float32_argmax, masks, k).sum(0)))
    out = {"float32_miou": float32_miou, "float32_bytes": float32.stat().st_size}
    methods: dict[str, dict] = {}
    confusions: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as work:
        paths = [float32]
        for method in METHODS:
            t = time.perf_counter()
            content, record = build_variant(
                saved_model, "full_int8", calib, int8_io, app=app, int8_ranges=method.removesuffix("+bc"),
                int8_bias_correction=method.endswith("+bc"),
            )  # fmt: skip
            path = Path(work) / f"{method}.tflite"
            path.write_bytes(content)
            paths.append(path)
            runner = TFLiteRunner(content, threads, app=app)  # one load: its delegation and its predictions
            delegation = runner.delegation
            argmax, ties = _predictions(runner, images)
            confusions[method] = per_image_confusions(argmax, masks, k)
            off = argmax != float32_argmax
            methods[method] = {
                "miou": float(miou_points(confusions[method].sum(0))),
                "pixels_off_float32": float(off.mean()),
                "pixels_off_float32_on_ties": float((off & ties).mean()),  # off where its int8 logits tie
                "vs_minmax_interval": paired_interval(confusions["minmax"], confusions[method]),
                "bytes": len(content),
                "delegated_ops": delegation["delegated"],
                "ops": delegation["ops"],
                "narrower_than_minmax": record["narrower_than_minmax"],
                "tensors": record["tensors"],
                "build_seconds": round(time.perf_counter() - t, 1),
            }
            grid = logits_grid(content)
            if grid is not None:  # what the output's int8 grid alone costs: the float32 file's logits put on it
                on_grid = _predictions(float32_runner, images, grid)[0]
                methods[method]["output_grid_miou"] = float(miou_points(per_image_confusions(on_grid, masks, k).sum(0)))
        out["auto"] = {}
        for tag in ("", "+bc"):
            record = build_variant(
                saved_model, "full_int8", calib, int8_io, app=app, int8_ranges="auto", int8_bias_correction=bool(tag)
            )[1]
            out["auto"][f"auto{tag}"] = {"chose": record["method"] + tag, "held_out_scores": record["held_out_scores"]}
        if turns:
            medians = np.array(benchmark_in_turns(paths, tuple(images.shape[2:]), threads=threads, turns=turns))
            for i, method in enumerate(METHODS, start=1):
                methods[method]["int8_over_float32"] = float(np.median(medians[i] / medians[0]))
                methods[method]["median_ms"] = float(np.median(medians[i]))
            out["float32_median_ms"] = float(np.median(medians[0]))
    out["methods"] = methods
    return out


def record_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of every benchmark that writes a record: --record, --render."""
    parser.add_argument("--record", type=Path, default=None, help="also write the record here")
    parser.add_argument("--render", type=Path, default=None, help="only print the table of a record this wrote")
    return parser


def run_parser(doc: str) -> argparse.ArgumentParser:
    """The options of every benchmark over a demo run folder: --run, --models, --record, --render."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run folder written by `seg2tflite demo`")
    parser.add_argument("--models", nargs="+", default=None, help="default: the run's models (demo.json)")
    return record_options(parser)


def rendered_only(parser: argparse.ArgumentParser, args, render, required: str | None = "run") -> bool:
    """With --render, print that record's table and say so; otherwise the option ``required`` must be given."""
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return True
    if required and getattr(args, required) is None:
        parser.error(f"--{required} is required")
    return False


def write_record(results: dict, paths: list) -> None:
    """A benchmark's record, the same JSON at every path given (the run's copy, ``--record``)."""
    text = json.dumps(results, indent=2) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def render(results: dict) -> str:
    lines = [
        "| model | PyTorch | float32 | "
        + " | ".join(f"{m} (Δ)" for m in METHODS)
        + " | auto | auto+bc | int8/float32 ms | XNNPACK ops |",
        "| --- | --: | --: | " + " | ".join("--:" for _ in METHODS) + " | --- | --- | --: | --: |",
    ]
    for model, r in results["models"].items():
        ref = r["pytorch_miou"] if r["pytorch_miou"] is not None else r["float32_miou"]
        cells = [f"{r['methods'][m]['miou']:.2f} ({r['methods'][m]['miou'] - ref:+.2f})" for m in METHODS]
        chose = [r["auto"][a]["chose"] for a in ("auto", "auto+bc")]
        m = r["methods"][chose[1]]
        ratio = m.get("int8_over_float32")
        lines.append(
            f"| `{model}` | {ref:.2f} | {r['float32_miou']:.2f} | " + " | ".join(cells)
            + f" | {chose[0]} | {chose[1]} | {'-' if ratio is None else f'{ratio:.2f}'} | {m['delegated_ops']}/{m['ops']} |"
        )  # fmt: skip
    measured = {model: r for model, r in results["models"].items() if "pixels_off_float32" in r["methods"]["minmax"]}
    grid = any("output_grid_miou" in m for r in measured.values() for m in r["methods"].values())
    if measured:  # records written since the test images' agreement is kept
        lines += [
            "",
            f"| model | auto | test pixels off float32{'' if results.get('output') == 'classes' else ' (on int8 ties)'}: minmax "
            "| auto | auto - minmax mIoU (95% interval) |" + (" auto Δ | its output grid alone Δ |" if grid else ""),
            "| --- | --- | --: | --: | --: |" + (" --: | --: |" if grid else ""),
        ]
        for model, r in measured.items():
            chose, minmax = r["methods"][r["auto"]["auto"]["chose"]], r["methods"]["minmax"]
            low, high = chose["vs_minmax_interval"]

            def off(m: dict) -> str:
                ties = m.get("pixels_off_float32_on_ties") if results.get("output") != "classes" else None  # a class map has none
                return f"{100 * m['pixels_off_float32']:.2f}%" + ("" if ties is None else f" ({100 * ties:.2f}%)")

            ref = r["pytorch_miou"] if r["pytorch_miou"] is not None else r["float32_miou"]
            alone = f" {chose['miou'] - ref:+.2f} | " + (
                f"{chose['output_grid_miou'] - r['float32_miou']:+.2f} |" if "output_grid_miou" in chose else "- |"
            )
            lines.append(
                f"| `{model}` | {r['auto']['auto']['chose']} | {off(minmax)} | {off(chose)} | "
                f"{chose['miou'] - minmax['miou']:+.2f} ({low:+.2f} to {high:+.2f}) |" + (alone if grid else "")
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__)
    parser.add_argument("--turns", type=int, default=10, help="latency turns (0: no latency)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", choices=("logits", "classes"), default="logits", help="what the int8 files return")
    args = parser.parse_args(argv)
    if rendered_only(parser, args, render):
        return 0
    from seg2tflite.converters.manifest import package_versions

    models = args.models or RunDir(args.run).summary()["config"]["models"]
    results = {"command": ["python", "benchmarks/int8_ranges.py", *(argv or sys.argv[1:])], "versions": package_versions()}
    demo = RunDir(args.run).summary_path
    results["seed"] = json.loads(demo.read_text())["config"].get("seed") if demo.is_file() else None
    results["models"] = {}
    for model in models:
        t = time.perf_counter()
        measured = measure_model(args.run, model, args.turns, args.threads, args.output)
        results["models"][model] = {"command": results["command"], **measured}  # rows of several goes keep theirs
        print(f"{model}: {time.perf_counter() - t:.0f} s", flush=True)
    results["output"] = args.output
    earlier = args.run / ("int8_ranges.json" if args.output == "logits" else "int8_ranges_classes.json")
    if earlier.is_file():  # a run's models measured in several goes: one record
        results["models"] = {**json.loads(earlier.read_text()).get("models", {}), **results["models"]}
    write_record(results, [earlier, *([args.record] if args.record else [])])
    print(render(results))
    return 0


if __name__ == "__main__":
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()  # no start-up lines from TensorFlow, absl or LiteRT
    sys.exit(main())
