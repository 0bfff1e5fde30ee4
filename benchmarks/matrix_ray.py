"""The matrix's evaluation on Ray: the demo's six families on one and on two local Ray workers.

Reads a demo run folder (``seg2tflite demo --out RUN``): every ``RUN/models/M/convert/model_V.tflite``
(int16x8 included: LiteRT runs it on its reference kernels, tens of times slower) is evaluated on the run's test split
(``RUN/demo.json``'s data spec) in shards of ``--shard-images`` images, as ``seg2tflite matrix
--ray`` does (``seg2tflite.app.matrix.run.evaluate_images``), once on a local Ray of one worker and
once of two. Prints the wall times and their ratio, checks both runs give the same confusion
matrices, measures each (model, variant)'s per-image cost, and estimates from it the wall time of a
validation set of ``--images`` images on ``--nodes`` nodes of ``--cores`` cores (the per-image
costs summed over the cells, divided by the cores; conversions and data loading left out).

    python benchmarks/matrix_ray.py --run runs/demo --limit 20 --images 2000 --nodes 8 --cores 16 --record results/matrix_ray.json
    python benchmarks/matrix_ray.py --render results/matrix_ray.json

A benchmark, not a test: not part of the default test run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SKIP: tuple[str, ...] = ()  # variants left out


def cells(run: Path, models: list[str] | None) -> list[tuple[str, str, Path]]:
    found = []
    for convert in sorted(run.glob("models/*/convert")):
        model = convert.parent.name
        if models and model not in models:
            continue
        for path in sorted(convert.glob("model_*.tflite")):
            variant = path.stem.removeprefix("model_")
            if variant not in SKIP:
                found.append((model, variant, path))
    return found


def evaluate_on_ray(jobs, data: str, n: int, shard: int, cpus: int) -> tuple[float, dict]:
    """Wall time and {(model, variant): (confusion counts, seconds per image)} on a local Ray of ``cpus`` workers."""
    import ray

    from seg2tflite.app.matrix.run import evaluate_images

    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=3)(evaluate_images)
        entry = {"eval": data, "eval_split": "test"}
        started = time.perf_counter()
        refs = {
            (model, variant, i): remote.remote(_entry(entry), variant, str(path), list(range(i, min(i + shard, n))))
            for model, variant, path in jobs
            for i in range(0, n, shard)
        }
        results = dict(zip(refs, ray.get(list(refs.values()))))
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    figures = {}
    for (model, variant, _), part in results.items():
        if "error" in part:
            raise SystemExit(f"{model} {variant}: {part['error']}")
        counts, seconds = figures.get((model, variant), (0, 0.0))
        figures[(model, variant)] = (counts + part["matrix"].mat, seconds + part["seconds"])
    return wall, {k: (counts, seconds / n) for k, (counts, seconds) in figures.items()}


def _entry(base: dict) -> dict:
    """An Entry's fields for ``evaluate_images`` (only the evaluation data is read)."""
    return {
        "name": "bench", "kind": "onnx", "source": "-", "weights": None, "input_size": (8, 8), "variants": ("float32",),
        "calib": base["eval"], **base,
    }  # fmt: skip


def render(record: dict) -> str:
    """The record as the Markdown table docs/matrix.md shows: wall times, then per-image costs."""
    walls, estimate = record["wall_seconds"], record["estimate"]
    lines = [
        "| Ray workers | wall (s) | ratio |",
        "| --: | --: | --: |",
        f"| 1 | {walls['1']:.1f} | 1.00 |",
        f"| 2 | {walls['2']:.1f} | {record['ratio']:.2f} |",
        "",
        f"| model | variant | ms per image (one thread) | core-hours for {estimate['images']} images |",
        "| --- | --- | --: | --: |",
    ]
    for name, seconds in record["per_image_seconds"].items():
        model, variant = name.split(" ")
        lines.append(f"| `{model}` | {variant} | {1000 * seconds:.1f} | {seconds * estimate['images'] / 3600:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["--render"]:
        print(render(json.loads(Path(sys.argv[2]).read_text())), end="")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="demo run folder")
    parser.add_argument("--models", nargs="+", default=None, help="models of the run (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    parser.add_argument("--shard-images", type=int, default=10, help="images per evaluation task")
    parser.add_argument("--images", type=int, default=2000, help="validation images of the estimate")
    parser.add_argument("--nodes", type=int, default=8, help="nodes of the estimate")
    parser.add_argument("--cores", type=int, default=16, help="cores per node of the estimate")
    parser.add_argument("--record", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from seg2tflite.data import load_dataset
    from seg2tflite.eval.run_dir import RunDir

    run = Path(args.run)
    data = RunDir(run).summary()["config"]["data"]
    if data.startswith("synthetic"):  # the demo wrote it to RUN/data
        data = f"folder:{RunDir(run).data_dir}"
    n = len(load_dataset(data, "test"))
    n = min(n, args.limit) if args.limit else n
    jobs = cells(run, args.models)
    print(f"{len(jobs)} files x {n} test images of {data}, shards of {args.shard_images}; {os.cpu_count()} cores here")
    walls, figures = {}, {}
    for cpus in (1, 2):
        walls[cpus], figures[cpus] = evaluate_on_ray(jobs, data, n, args.shard_images, cpus)
        print(f"{cpus} Ray worker{'s' * (cpus > 1)}: {walls[cpus]:.1f} s")
    same = all((figures[1][k][0] == figures[2][k][0]).all() for k in figures[1])
    print(f"ratio 1 / 2 workers: {walls[1] / walls[2]:.2f}; same confusion matrices: {same}")
    per_image = {f"{m} {v}": figures[1][(m, v)][1] for m, v, _ in jobs}
    total = sum(per_image.values())
    estimate = total * args.images / (args.nodes * args.cores)
    print("per-image cost (s, one thread, measured here):")
    for name, seconds in per_image.items():
        print(f"  {name:<40} {1000 * seconds:8.2f} ms")
    print(
        f"estimate: {args.images} images x {len(jobs)} files = {total * args.images / 3600:.2f} core-hours; "
        f"on {args.nodes} nodes x {args.cores} cores about {estimate / 60:.1f} min (evaluation alone, perfect spread)"
    )
    if args.record:
        from seg2tflite.atomic import atomic_write_text
        from seg2tflite.eval.record import run_versions

        record = {
            "command": ["python", "benchmarks/matrix_ray.py", *sys.argv[1:]], "versions": run_versions(), "run": str(run), "data": data, "test_images": n, "shard_images": args.shard_images, "cores_here": os.cpu_count(),
            "wall_seconds": {str(k): v for k, v in walls.items()}, "ratio": walls[1] / walls[2], "same_figures": bool(same),
            "per_image_seconds": per_image,
            "estimate": {"images": args.images, "nodes": args.nodes, "cores": args.cores, "minutes": estimate / 60},
        }  # fmt: skip
        atomic_write_text(args.record, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()  # no start-up lines from TensorFlow, absl or LiteRT
    main()
