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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seg2tflite.app.matrix.runners import TASK_RETRIES, open_runner  # noqa: F401 - TASK_RETRIES: this module's API too
from seg2tflite.app.matrix.spec import LATENCY_BASELINE, Entry, Matrix
from seg2tflite.app.matrix.tasks import REFERENCE, convert_entry, evaluate_images, time_entry
from seg2tflite.atomic import atomic_write_text
from seg2tflite.errors import UserError

UPSTREAM = ("pytorch", "onnx", "saved_model")  # a broken gate here breaks every cell of the entry
SHARD_IMAGES = 32  # default images per evaluation task
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
    command: list[str] | None = None,
) -> MatrixRun:
    """Convert, evaluate and judge every cell of ``matrix`` into ``out``; write the record
    (``matrix.json``), the table (``report.md``) and JUnit XML (``junit.xml``). ``models`` maps an
    entry name to an in-memory PyTorch module (the pytest fixture; this process only); ``command``
    is what the record says ran it (default: this process's arguments)."""
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
        "command": command or sys.argv,
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


# -- evaluation tasks ------------------------------------------------------------------------


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
