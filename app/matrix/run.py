"""Running a matrix: one conversion per entry, evaluations per (entry, stage, shard of images), the cells.

Three phases, each a batch of tasks handed to one runner: in this process (``workers=1``), a pool
of spawned processes (``workers>1``) or Ray tasks (``ray="local"`` starts Ray on this machine's
cores, ``ray=ADDRESS`` joins a cluster). The conversion is the project's own (``convert_model``,
``convert_registered``, ``convert_onnx``), into ``OUT/entries/NAME/convert/``, so a re-run resumes
it; the evaluation is ``evaluate_shard``, whose confusion matrices add up to exactly the figures of
one sequential evaluation, cached per stage under ``OUT/entries/NAME/eval/`` by the artifact's
sha256 and the data. Artifacts travel through OUT, which every node must see at the same path (a
shared filesystem); results come back through Ray's object store. Every file is written whole or
not at all (``atomic``): a worker killed mid-task leaves no half-written file, and Ray runs the
task again (``TASK_RETRIES``).

A cell fails with the conversion's own gate lines (``ParityError``: the variant's stage, or a
stage before it), a variant that could not be built, or its budgets on the evaluation data: the
mIoU it loses against the float reference (``model.onnx``, which the float gates hold equal to
PyTorch) beyond ``max_miou_drop[variant]`` for a trained model, and its median time over
float32's beyond ``max_latency_ratio[variant]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seg2tflite.app.matrix.spec import LATENCY_BASELINE, Entry, Matrix
from seg2tflite.atomic import atomic_path, atomic_write_text
from seg2tflite.errors import UserError, one_line

REFERENCE = "onnx"  # the stage every variant's Δ is measured against
UPSTREAM = ("pytorch", "onnx", "saved_model")  # a broken gate here breaks every cell of the entry
TASK_RETRIES = 3  # Ray (and the process pool) run a task again when its worker dies
SHARD_IMAGES = 32  # default images per evaluation task
KILL_ONCE = "SEG2TFLITE_MATRIX_KILL_ONCE"  # tests: a path; the first task to write its summary dies mid-write
RECORD, REPORT, JUNIT = "matrix.json", "report.md", "junit.xml"


@dataclass
class MatrixRun:
    out: Path
    record: dict
    cells: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.cells if not c["passed"]]

    def cell(self, entry: str, variant: str) -> dict:
        return next(c for c in self.cells if c["entry"] == entry and c["variant"] == variant)


def run_matrix(
    matrix: Matrix,
    out: str | Path,
    *,
    ray: str | None = None,
    workers: int = 1,
    shard_images: int = SHARD_IMAGES,
    models: dict | None = None,
    log: Callable[[str], None] | None = print,
) -> MatrixRun:
    """Convert, evaluate and judge every cell of ``matrix`` into ``out``; write the record
    (``matrix.json``), the table (``report.md``) and JUnit XML (``junit.xml``). ``models`` maps an
    entry name to an in-memory PyTorch module (the pytest fixture; this process only)."""
    from seg2tflite.app.matrix.report import render_junit, render_table

    say = log or (lambda message: None)
    if workers < 1 or shard_images < 1:
        raise UserError(f"workers {workers} and shard images {shard_images}: use 1 or more")
    if models and (ray or workers > 1):
        raise UserError("an in-memory model runs in this process only; leave out ray and workers")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runner = open_runner(ray, workers)
    try:
        say(f"matrix: {len(matrix.entries)} entries, {len(matrix.cells)} cells, on {runner.name}")
        entries = {e.name: e for e in matrix.entries}
        args = [(e.to_dict(), str(out), (models or {}).get(e.name)) for e in matrix.entries]
        summaries = dict(zip(entries, runner.map(convert_entry, args, "convert")))
        for name, s in summaries.items():
            said = s["error"] or (_first(s) if s["stage_failures"] else "all gates passed")
            say(f"convert {name}: {said} ({s['node']['label']})")
        evaluations = _evaluate(entries, summaries, out, runner, shard_images, say)
        latency = _latency(entries, summaries, out, runner, say)
    finally:
        runner.close()
    cells = [
        judge_cell(entries[name], variant, summaries[name], evaluations.get(name, {}), latency.get(name, {}))
        for name, variant in matrix.cells
    ]
    from seg2tflite.converters.manifest import package_versions

    record = {
        "matrix": str(Path(matrix.path).resolve()) if matrix.path else None,
        "out": str(out),
        "runner": runner.name,
        "command": sys.argv,
        "versions": package_versions(),
        "seconds": time.perf_counter() - started,
        "entries": {name: {"spec": entries[name].to_dict(), "conversion": summaries[name]} for name in entries},
        "evaluations": {
            name: {s: {k: v for k, v in e.items() if k != "key"} for s, e in ev.items()} for name, ev in evaluations.items()
        },
        "cells": cells,
    }
    atomic_write_text(out / RECORD, json.dumps(record, indent=2, default=str) + "\n")
    atomic_write_text(out / REPORT, render_table(record) + "\n")
    atomic_write_text(out / JUNIT, render_junit(record))
    return MatrixRun(out, record, cells)


def _first(summary: dict) -> str:
    return next(line for lines in summary["stage_failures"].values() for line in lines)


# -- the cells -------------------------------------------------------------------------------


def judge_cell(entry: Entry, variant: str, conversion: dict, evaluations: dict, latency: dict) -> dict:
    """One (entry, variant) cell: its figures and every line that fails it, the first being the gate that broke."""
    failures: list[str] = []
    if conversion["error"]:
        failures.append(conversion["error"])
    stage_failures = conversion["stage_failures"]
    for stage in UPSTREAM:
        failures += stage_failures.get(stage, [])
    failures += stage_failures.get(variant, [])
    if variant in conversion["variant_failures"]:
        failures.append(conversion["variant_failures"][variant])
    status = "error" if conversion["error"] else "not built" if variant in conversion["variant_failures"] else "ok"
    if status == "ok" and failures:
        status = "gate broken"

    ev, ref = evaluations.get(variant), evaluations.get(REFERENCE)
    miou = ev["metrics"]["miou"] if ev and not ev.get("error") else None
    ref_miou = ref["metrics"]["miou"] if ref and not ref.get("error") else None
    for e in (ref, ev):
        if e and e.get("error"):
            failures.append(e["error"])
    delta = None if miou is None or ref_miou is None else 100.0 * (miou - ref_miou)
    budget = entry.max_miou_drop.get(variant)
    if delta is not None and entry.trained and budget is not None and -delta > budget:
        failures.append(
            f"{variant}: mIoU {100 * miou:.2f} is {-delta:.2f} points below {REFERENCE}'s {100 * ref_miou:.2f} on "
            f"{ev['num_images']} {entry.eval_split} images of the evaluation data (budget {budget:g})"
        )
    ratio, ceiling = None, entry.max_latency_ratio.get(variant)
    if ceiling is not None and latency.get(variant) and latency.get(LATENCY_BASELINE):
        ratio = latency[variant] / latency[LATENCY_BASELINE]
        if ratio > ceiling:
            failures.append(
                f"{variant}: median {latency[variant]:.2f} ms is {ratio:.2f}x {LATENCY_BASELINE}'s "
                f"{latency[LATENCY_BASELINE]:.2f} ms (ceiling {ceiling:g}x)"
            )
    elif ceiling is not None and latency.get("error"):
        failures.append(latency["error"])
    return {
        "entry": entry.name,
        "variant": variant,
        "conversion": status,
        "miou": miou,
        "reference_miou": ref_miou,
        "delta_points": delta,
        "budget_points": budget,
        "gated": entry.trained,
        "latency_ms": latency.get(variant),
        "latency_ratio": ratio,
        "max_latency_ratio": ceiling,
        "eval_images": ev["num_images"] if ev else None,
        "data_sha256": ev.get("data_sha256") if ev else None,
        "passed": not failures,
        "gate": failures[0] if failures else None,
        "failures": failures,
        "nodes": {"convert": conversion["node"]["label"], "evaluate": ev.get("nodes", []) if ev else []},
    }


# -- conversion task -------------------------------------------------------------------------


def node() -> dict:
    """Which machine (and, under Ray, which node) runs this task."""
    info = {"host": socket.gethostname(), "pid": os.getpid(), "node_id": None}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        info["node_id"] = ray.get_runtime_context().get_node_id()
    info["label"] = info["host"] + (f"/{info['node_id'][:8]}" if info["node_id"] else "")
    return info


def convert_entry(entry: dict, out: str, model=None) -> dict:
    """Task: the entry's conversion into OUT/entries/NAME/convert/ (resumed when already there);
    returns (and writes as convert.json) its summary: gate lines per stage, artifacts, sha256s."""
    from seg2tflite.converters.parity import ParityError

    entry = Entry.from_dict(entry)
    folder = Path(out) / "entries" / entry.name
    started = time.perf_counter()
    summary = {"entry": entry.name, "node": node(), "error": None, "stage_failures": {}, "variant_failures": {}}
    summary.update(artifacts={}, sha256={}, eval_images=None, class_names=None)
    result = None
    try:
        result = _convert(entry, folder / "convert", model)
    except ParityError as e:  # the gates, checked after everything was written
        result = getattr(e, "result", None)
        if result is None:
            summary["error"] = one_line(e)
    except UserError as e:
        summary["error"] = one_line(e)
    except Exception as e:  # noqa: BLE001 - the user's model or a library: one line in the cell, the next entry goes on
        summary["error"] = f"conversion failed: {type(e).__name__}: {one_line(e)}"
    if result is not None:
        _summarise(result, entry.variants, summary)
    if summary["error"] is None:
        try:
            from seg2tflite.data import load_dataset

            data = load_dataset(entry.eval, entry.eval_split, num_classes=entry.num_classes, option="eval")
            n = len(data) if entry.eval_limit is None else min(entry.eval_limit, len(data))
            summary.update(eval_images=n, class_names=list(data.info.class_names))
            if n == 0:
                summary["error"] = f"eval {entry.eval}: the {entry.eval_split} split is empty"
        except UserError as e:
            summary["error"] = one_line(e)
    summary["seconds"] = time.perf_counter() - started
    _write_summary(folder / "convert.json", summary)
    return summary


def _convert(entry: Entry, out_dir: Path, model):
    from seg2tflite.converters import convert_model, convert_onnx, convert_registered
    from seg2tflite.data import load_dataset
    from seg2tflite.models import IMAGENET_MEAN, IMAGENET_STD

    config = entry.convert_config()
    calib = load_dataset(entry.calib, entry.calib_split, num_classes=entry.num_classes, option="calib")
    parity = load_dataset(entry.calib, entry.parity_split, num_classes=entry.num_classes, option="calib")
    command = f"seg2tflite matrix: entry {entry.name}"
    quiet = {"command": command, "log": None, "progress": False}
    if entry.kind == "python" and model is None:
        raise UserError(f"entry {entry.name}: an in-memory model runs only in the process that holds it")
    if model is not None or entry.kind == "module":
        info = {"module": entry.source, "weights_file": entry.weights} if model is None else {}
        if model is None:
            from seg2tflite.app.user_module import build_user_model, load_weights

            model = build_user_model(entry.source)
            if entry.weights:
                load_weights(model, entry.weights)
        return convert_model(model, out_dir, config, calib, parity, mean=entry.mean, std=entry.std, model_info=info, **quiet)
    if entry.kind == "model":
        classes = entry.num_classes or (None if entry.weights else calib.info.num_classes)
        return convert_registered(
            entry.source, out_dir, config, calib, parity, num_classes=classes, checkpoint=entry.weights, seed=entry.seed,
            mean=entry.mean, std=entry.std, **quiet,
        )  # fmt: skip
    if entry.kind == "hf":
        model, mean, std = _hugging_face(entry)
        if "upsample_logits" not in entry.convert:  # Hugging Face heads return 1/4-resolution logits
            from dataclasses import replace

            config = replace(config, upsample_logits=True)
        return convert_model(model, out_dir, config, calib, parity, mean=mean, std=std, model_info={"hf": entry.source}, **quiet)
    mean, std = entry.mean or IMAGENET_MEAN, entry.std or IMAGENET_STD
    return convert_onnx(entry.source, out_dir, config, calib, parity, mean=tuple(mean), std=tuple(std), **quiet)


def _hugging_face(entry: Entry):
    """A Hugging Face segmentation checkpoint folder, read offline, with its own normalisation."""
    try:
        from transformers import AutoModelForSemanticSegmentation
    except ImportError:
        raise UserError(f"entry {entry.name}: hf needs the transformers package; pip install transformers") from None
    model = AutoModelForSemanticSegmentation.from_pretrained(entry.source, local_files_only=True).eval()
    mean, std = entry.mean, entry.std
    processor = Path(entry.source) / "preprocessor_config.json"
    if processor.is_file() and (mean is None or std is None):
        settings = json.loads(processor.read_text())
        mean = mean or tuple(settings.get("image_mean") or ()) or None
        std = std or tuple(settings.get("image_std") or ()) or None
    return model, mean, std


def _summarise(result, variants: tuple[str, ...], summary: dict) -> None:
    from seg2tflite.records import sha256_file

    for name, stage in result.parity.stages.items():
        if stage.failures:
            summary["stage_failures"][name] = list(stage.failures)
    for variant, failure in result.variant_failures.items():
        step, reason = failure.get("step", ""), failure.get("reason", "")
        summary["variant_failures"][variant] = f"{variant}: not built ({step}: {reason})"
    for stage, path in result.artifacts.items():
        path = Path(path)
        if path.is_file() and (stage == REFERENCE or stage in variants):
            summary["artifacts"][stage] = str(path)
            summary["sha256"][stage] = sha256_file(path)


def _write_summary(path: Path, summary: dict) -> None:
    data = (json.dumps(summary, indent=2, default=str) + "\n").encode()
    with atomic_path(path) as tmp:
        kill = os.environ.get(KILL_ONCE)
        if kill and not Path(kill).exists():  # the tests' killed worker: half the file, then SIGKILL
            Path(kill).write_text(f"{os.getpid()}\n")
            with open(tmp, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        tmp.write_bytes(data)


# -- evaluation tasks ------------------------------------------------------------------------


def evaluate_images(entry: dict, stage: str, artifact: str, indices: list[int]) -> dict:
    """Task: one shard of one stage's evaluation: its confusion matrix and image digests."""
    from seg2tflite.eval.evaluate import evaluate_shard

    entry = Entry.from_dict(entry)
    started = time.perf_counter()
    try:
        matrix, digests = evaluate_shard(artifact, entry.eval, entry.eval_split, indices, threads=1)
    except UserError as e:
        return {"error": f"{stage}: evaluation refused: {one_line(e)}", "node": node()}
    except Exception as e:  # noqa: BLE001 - a runtime's own error: one line in the cell
        return {"error": f"{stage}: evaluation failed: {type(e).__name__}: {one_line(e)}", "node": node()}
    return {"matrix": matrix, "digests": digests, "node": node(), "seconds": time.perf_counter() - started}


def _evaluate(entries: dict, summaries: dict, out: Path, runner, shard_images: int, say) -> dict:
    """Every stage with an artifact: the cached figures when their key matches, else its shards as tasks."""
    from seg2tflite.metrics import ConfusionMatrix

    evaluations: dict[str, dict] = {name: {} for name in entries}
    jobs, args = [], []
    for name, entry in entries.items():
        s = summaries[name]
        if s["eval_images"] is None:
            continue
        for stage, artifact in s["artifacts"].items():
            key = _key(s["sha256"][stage], entry.eval, entry.eval_split, s["eval_images"])
            cached = _read_cache(out / "entries" / name / "eval" / f"{stage}.json", key)
            if cached is not None:
                evaluations[name][stage] = cached
                continue
            n = s["eval_images"]
            shards = [list(range(i, min(i + shard_images, n))) for i in range(0, n, shard_images)]
            jobs.append((name, stage, key, len(shards)))
            args += [(entry.to_dict(), stage, artifact, shard) for shard in shards]
    say(f"evaluate: {len(jobs)} stages to evaluate in {len(args)} tasks, {sum(map(len, evaluations.values()))} cached")
    results = iter(runner.map(evaluate_images, args, "evaluate"))
    for name, stage, key, count in jobs:
        parts = [next(results) for _ in range(count)]
        errors = [p["error"] for p in parts if "error" in p]
        nodes = sorted({p["node"]["label"] for p in parts})
        if errors:
            evaluations[name][stage] = {"error": errors[0], "nodes": nodes}
            continue
        matrix = ConfusionMatrix(parts[0]["matrix"].num_classes, parts[0]["matrix"].ignore_index)
        for p in parts:
            matrix.merge(p["matrix"])
        names = summaries[name]["class_names"]
        digests = b"".join(d for p in parts for d in p["digests"])
        figures = {
            "key": key,
            "num_images": summaries[name]["eval_images"],
            "metrics": matrix.compute().as_dict(tuple(names)),
            "data_sha256": hashlib.sha256(digests).hexdigest(),
            "nodes": nodes,
            "shards": count,
            "seconds": sum(p["seconds"] for p in parts),
        }
        atomic_write_text(out / "entries" / name / "eval" / f"{stage}.json", json.dumps(figures, indent=2) + "\n")
        evaluations[name][stage] = figures
    return evaluations


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _read_cache(path: Path, key: str) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key and isinstance(data.get("metrics"), dict) else None


# -- latency tasks ---------------------------------------------------------------------------


def time_entry(paths: dict) -> dict:
    """Task: the median time of each file (batch 1, one thread, each in a fresh process), on one node."""
    from seg2tflite.eval.bench import benchmark_artifact

    try:
        return {stage: benchmark_artifact(path, threads=1, warmup=3, runs=20).median_ms for stage, path in paths.items()}
    except UserError as e:
        return {"error": f"latency: {one_line(e)}"}


def _latency(entries: dict, summaries: dict, out: Path, runner, say) -> dict:
    latency, jobs = {}, []
    for name, entry in entries.items():
        stages = [LATENCY_BASELINE, *entry.max_latency_ratio] if entry.max_latency_ratio else []
        paths = {s: summaries[name]["artifacts"][s] for s in dict.fromkeys(stages) if s in summaries[name]["artifacts"]}
        if not paths:
            continue
        key = _key(*(summaries[name]["sha256"][s] for s in paths))
        cached = _read_cache(out / "entries" / name / "latency.json", key)
        if cached is not None:
            latency[name] = cached["metrics"]
            continue
        jobs.append((name, key, paths))
    if jobs:
        say(f"latency: {len(jobs)} entries")
    for (name, key, _), medians in zip(jobs, runner.map(time_entry, [(paths,) for _, _, paths in jobs], "latency")):
        latency[name] = medians
        if "error" not in medians:
            atomic_write_text(out / "entries" / name / "latency.json", json.dumps({"key": key, "metrics": medians}) + "\n")
    return latency


# -- runners ---------------------------------------------------------------------------------


def open_runner(ray: str | None, workers: int):
    if ray:
        return RayRunner(ray)
    return PoolRunner(workers) if workers > 1 else InlineRunner()


class InlineRunner:
    """Every task in this process, one after the other (the sequential reference)."""

    name = "this process"

    def map(self, fn, args: list[tuple], kind: str) -> list:
        return [fn(*a) for a in args]

    def close(self) -> None:
        pass


class PoolRunner:
    """Tasks in ``workers`` spawned processes; the tasks of a pool whose worker died run again in a fresh pool."""

    def __init__(self, workers: int):
        self.workers = workers
        self.name = f"a pool of {workers} processes"

    def map(self, fn, args: list[tuple], kind: str) -> list:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        results: dict[int, object] = {}
        for attempt in range(TASK_RETRIES + 1):
            todo = [i for i in range(len(args)) if i not in results]
            if not todo:
                break
            with ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {i: pool.submit(fn, *args[i]) for i in todo}
                for i, future in futures.items():
                    try:
                        results[i] = future.result()
                    except BrokenProcessPool:
                        if attempt == TASK_RETRIES:
                            raise UserError(
                                f"matrix: a {kind} worker died {TASK_RETRIES + 1} times; rerun with --workers 1"
                            ) from None
        return [results[i] for i in range(len(args))]

    def close(self) -> None:
        pass


class RayRunner:
    """Tasks on Ray: ``local`` starts Ray on this machine's cores, anything else is a cluster address."""

    def __init__(self, address: str):
        try:
            import ray
        except ImportError:
            raise UserError('--ray: Ray is not installed; pip install "seg2tflite[ray]" (plain ray, not ray[default])') from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            settings = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            try:
                if address == "local":
                    ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=200 * 2**20, **settings)
                else:
                    ray.init(address=address, **settings)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(f"--ray {address}: cannot join Ray ({one_line(e)}); start it with `ray start --head`") from None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.name = f"Ray ({address}, {len(nodes)} node{'s' * (len(nodes) != 1)})"

    def map(self, fn, args: list[tuple], kind: str) -> list:
        if not args:
            return []
        remote = self.ray.remote(num_cpus=1, max_retries=TASK_RETRIES, scheduling_strategy="SPREAD")(fn)
        return self.ray.get([remote.remote(*a) for a in args])

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
