"""The mixed-precision search before and after chosen activation ranges: how many ops each model still keeps in float.

For each model of a run folder (``seg2tflite demo --out RUN``) the search of ``compress --methods
mixed`` (``converters.int8_mixed``, accuracy steps only: what it keeps in float to meet the
budget, not what it adds for speed) runs twice on the conversion's SavedModel and calibration
images: with min/max ranges (the TF converter's, what the search had before) and with the ranges
the conversion's full-int8 file got (``int8_ranges.json``, ``auto``'s choice). Each result is
measured on the run's validation images against the float32 TFLite file, as the command does;
the ops kept in float are counted in the written file (``converters.ops.op_report``).

    python benchmarks/mixed_ranges.py --run runs/seed0 --record results/mixed_ranges_seed0.json

A benchmark, not a test: not part of the default test run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from int8_ranges import _arrays, conversion_inputs, rendered_only, run_parser, write_record  # noqa: E402

from seg2tflite.eval.run_dir import RunDir  # noqa: E402


def measure_model(run: Path, model: str, budget: float, val_images: int, threads: int) -> dict:
    from seg2tflite.converters.int8_mixed import MixedPrecisionConfig, search_mixed_precision
    from seg2tflite.converters.int8_ranges import RANGES_FILE
    from seg2tflite.converters.ops import BOUNDARY_OPS, op_report
    from seg2tflite.data import load_dataset

    folder, manifest, preprocess, data, calib = conversion_inputs(run, model)
    val = load_dataset(data, "val")
    images, masks = _arrays(val, preprocess)
    images, masks = images[:val_images], masks[:val_images]
    k = manifest["model"].get("num_classes") or int(masks.max()) + 1
    chosen = json.loads((folder.path / RANGES_FILE).read_text())["method"]
    out: dict = {"chosen_ranges": chosen, "val_images": len(images)}
    for ranges in dict.fromkeys(("minmax", chosen)):
        t = time.perf_counter()
        found = search_mixed_precision(
            folder.int8_source(), folder.artifact("float32"), calib, images, masks, k,
            MixedPrecisionConfig(budget, threads=threads, prefer_speed=False), log=lambda _: None, progress=False,
            ranges=ranges,
        )  # fmt: skip
        report = op_report(found.model)
        out[ranges] = {
            "float32_miou": found.float32_miou,
            "full_int8_miou": found.full_int8_miou,
            "miou": found.miou,
            "within_budget": found.within_budget,
            "float_op_types": found.float_op_types,
            "float_nodes": [f"{op} -> {node}" for op, node in zip(found.float_node_types, found.float_nodes)],
            "float_ops": len(report.float_ops),
            "ops": sum(n for name, n in report.counts.items() if name not in BOUNDARY_OPS),
            "trials": len(found.trials),
            "size_bytes": found.size_bytes,
            "float32_size_bytes": found.float32_size_bytes,
            "seconds": round(time.perf_counter() - t, 1),
        }
    return out


def render(results: dict) -> str:
    def kept(found: dict) -> str:
        nodes = found.get("float_nodes") or []  # absent: a search of one trial, nothing kept
        types = found["float_op_types"]
        return ", ".join(types) + " (every node)" if types else (", ".join(n.split(" -> ")[0] for n in nodes) or "none")

    lines = [
        "| model | chosen ranges | full int8 Δ: min/max | chosen | mixed Δ: min/max | chosen | kept in float: min/max | chosen |",
        "| --- | --- | --: | --: | --: | --: | --- | --- |",
    ]
    for model, r in results["models"].items():
        before, after = r["minmax"], r[r["chosen_ranges"]]

        def delta(found: dict, key: str) -> str:
            return f"{found[key] - found['float32_miou']:+.2f}"

        lines.append(
            f"| `{model}` | {r['chosen_ranges']} | {delta(before, 'full_int8_miou')} | {delta(after, 'full_int8_miou')} | "
            f"{delta(before, 'miou')} | {delta(after, 'miou')} | {kept(before)} | {kept(after)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__)
    parser.add_argument("--max-miou-drop", type=float, default=0.5, help="the search's budget, points against float32")
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if rendered_only(parser, args, render):
        return 0
    from seg2tflite.converters.manifest import package_versions

    models = args.models or RunDir(args.run).summary()["config"]["models"]
    results = {"command": ["python", "benchmarks/mixed_ranges.py", *(argv or sys.argv[1:])], "versions": package_versions()}
    results.update(max_miou_drop=args.max_miou_drop, models={})
    earlier = args.run / "mixed_ranges.json"
    if earlier.is_file() and json.loads(earlier.read_text())["max_miou_drop"] == args.max_miou_drop:
        results["models"] = json.loads(earlier.read_text())["models"]  # a run's models measured in several goes: one record
    for model in models:
        t = time.perf_counter()
        measured = measure_model(args.run, model, args.max_miou_drop, args.val_images, args.threads)
        results["models"][model] = {"command": results["command"], **measured}  # rows of several goes keep theirs
        print(f"{model}: {time.perf_counter() - t:.0f} s", flush=True)
        write_record(results, [earlier, *([args.record] if args.record else [])])
    print(render(results), end="")
    return 0


if __name__ == "__main__":
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()  # no start-up lines from TensorFlow, absl or LiteRT
    sys.exit(main())
