"""The matrix's tasks, each a plain function of plain arguments (Ray pickles them by reference):
``convert_entry`` (one per entry), ``evaluate_images`` (one per entry, stage and shard of images)
and ``time_entry`` (one per entry with latency ceilings). Each returns a plain dict, a one-line
error instead of raising, and names the node that ran it."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from seg2tflite.app.matrix.spec import Entry
from seg2tflite.atomic import atomic_write_text
from seg2tflite.errors import UserError, one_line

REFERENCE = "onnx"  # the stage every variant's Δ is measured against


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
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")


# -- evaluation and latency tasks ----------------------------------------------------------


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


def time_entry(paths: dict) -> dict:
    """Task: the median time of each file (batch 1, one thread, each in a fresh process), on one node."""
    from seg2tflite.eval.bench import benchmark_artifact

    try:
        return {stage: benchmark_artifact(path, threads=1, warmup=3, runs=20).median_ms for stage, path in paths.items()}
    except UserError as e:
        return {"error": f"latency: {one_line(e)}"}
