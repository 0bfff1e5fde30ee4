"""Evaluate any artifact on a dataset split: a checkpoint, an ONNX file, a SavedModel or a .tflite.

Every artifact goes through its own real runtime (``seg2tflite.converters.runtimes``): PyTorch
eager, ONNX Runtime, TensorFlow, the LiteRT interpreter. Images are preprocessed with the one
shared definition (``seg2tflite.data.Preprocess``), at the size and mean/std ``artifacts`` finds.

With ``workers > 1`` the split is cut into chunks and evaluated by that many processes (spawned,
so no runtime state is forked); each builds its runner once and returns a confusion matrix per
chunk, and the matrices are merged. The result is identical to a single-process run.
"""

from __future__ import annotations

import functools
import hashlib
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from seg2tflite.converters.compare import LogitComparison
from seg2tflite.data import load_dataset
from seg2tflite.errors import UserError, setting
from seg2tflite.eval.artifacts import RUNTIME_NAMES, ArtifactInfo, describe_artifact
from seg2tflite.eval.opening import check_memory, open_artifact  # noqa: F401 - open_artifact: this module's API too
from seg2tflite.metrics import ConfusionMatrix


@dataclass
class EvalResult:
    artifact: str
    kind: str  # one of KINDS
    data: str  # the data spec evaluated on
    split: str
    input_size: tuple[int, int]
    num_images: int
    class_names: tuple[str, ...]
    metrics: dict  # SegMetrics.as_dict(class_names): miou, pixel_accuracy, per_class_iou {name: IoU}, ...
    seconds: float  # wall time of the evaluation, runner start-up included
    data_sha256: str = ""  # digest of the evaluated images and masks, in order (same data, same digest)
    predictions: np.ndarray | None = field(default=None, repr=False)  # (N, H, W) argmax, uint8

    @property
    def miou(self) -> float | None:
        return self.metrics["miou"]

    def as_dict(self) -> dict:
        """JSON-ready, without the predictions."""
        return {
            "artifact": self.artifact,
            "kind": self.kind,
            "data": self.data,
            "split": self.split,
            "input_size": list(self.input_size),
            "num_images": self.num_images,
            "class_names": list(self.class_names),
            "metrics": self.metrics,
            "seconds": round(self.seconds, 3),
            "data_sha256": self.data_sha256,
        }


def format_eval(result: EvalResult) -> str:
    """A few readable lines for the terminal: headline metrics, then IoU per class."""

    def pct(v) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    m = result.metrics
    h, w = result.input_size
    lines = [
        f"{result.artifact} ({RUNTIME_NAMES[result.kind]}) on {result.data} [{result.split}], "
        f"{result.num_images} images at {h}x{w}, {result.seconds:.1f}s",
        f"mIoU {pct(m['miou'])} %  pixel accuracy {pct(m['pixel_accuracy'])} %  "
        f"mean class accuracy {pct(m['mean_class_accuracy'])} %",
    ]
    width = max(map(len, m["per_class_iou"]), default=0)
    lines += [f"  {name:<{width}}  IoU {pct(v):>6} %" for name, v in m["per_class_iou"].items()]
    return "\n".join(lines)


# -- running it ------------------------------------------------------------------------------


def dataset_for(info: ArtifactInfo, data_spec: str, split: str):
    """The split to evaluate ``info``'s artifact on; refused when the artifact's metadata says it
    predicts another number of classes than the data has."""
    from seg2tflite.data.spec import declares_classes

    dataset = load_dataset(data_spec, split, num_classes=None if declares_classes(data_spec) else info.num_classes)
    if info.num_classes is not None and info.num_classes != dataset.info.num_classes:
        raise UserError(
            f"{info.path}: the model predicts {info.num_classes} classes but the dataset has {dataset.info.num_classes} "
            f"({data_spec}); evaluate it on the data it was trained for"
        )
    return dataset


class _Evaluator:
    """One runner plus one dataset split: evaluates lists of item indices."""

    def __init__(self, info: ArtifactInfo, data: str, split: str, threads: int | None, xnnpack: bool = True):
        self.info = info
        self.dataset = dataset_for(info, data, split)
        self.num_classes = self.dataset.info.num_classes
        self.ignore_index = self.dataset.info.ignore_index
        self.preprocess = info.preprocess
        self.runner = open_artifact(info.path, threads=threads, input_size=info.input_size, xnnpack=xnnpack)

    def run(self, indices, keep_predictions: bool, on_item: Callable[[], None] | None = None):
        """The confusion matrix over ``indices``, their predictions (if kept) and item digests."""
        matrix = ConfusionMatrix(self.num_classes, self.ignore_index)
        predictions, digests = [], []
        for i in indices:
            image, mask = self.dataset[i]
            digests.append(hashlib.sha256(np.ascontiguousarray(image).tobytes() + np.ascontiguousarray(mask).tobytes()).digest())
            x, target = self.preprocess(image, mask)
            logits = np.asarray(self.runner(x[None]))
            self._check(logits)
            pred = logits[0].argmax(axis=0).astype(np.uint8 if logits.shape[1] <= 256 else np.uint16)
            matrix.update(pred, target)
            if keep_predictions:
                predictions.append(pred)
            if on_item is not None:
                on_item()
        return matrix, predictions, digests

    def _check(self, logits: np.ndarray) -> None:
        h, w = self.info.input_size
        if logits.ndim != 4 or logits.shape[0] != 1 or logits.shape[2:] != (h, w):
            raise UserError(f"{self.info.path}: output shape {logits.shape} is not (1, K, {h}, {w}); is the input size right?")
        if logits.shape[1] != self.num_classes:
            raise UserError(
                f"{self.info.path}: the model predicts {logits.shape[1]} classes but the dataset has "
                f"{self.num_classes} ({self.dataset.spec}); evaluate it on the data it was trained for"
            )
        if not np.isfinite(logits).all():
            raise UserError(f"{self.info.path}: the output holds NaN or Inf")


_WORKER: _Evaluator | None = None


_WORKER_ERROR: Exception | None = None


def _init_worker(info: ArtifactInfo, data: str, split: str, threads: int | None, xnnpack: bool) -> None:
    global _WORKER, _WORKER_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    try:
        _WORKER = _Evaluator(info, data, split, threads, xnnpack)
    except Exception as e:  # noqa: BLE001 - raised by the first chunk, so the parent gets the error itself
        _WORKER_ERROR = e


def _in_workers(workers: int, initargs: tuple, chunks: list[list[int]], keep_predictions: bool):
    """Yield ``_run_chunk`` of every chunk, computed by ``workers`` spawned processes.

    The workers start with SIGINT ignored, so a Ctrl-C reaches only this process: it stops them
    and raises KeyboardInterrupt once, with no worker tracebacks. A worker that dies (killed, or
    a native crash in a runtime) is a ``UserError`` naming the artifact."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # children inherit the ignore
    try:
        futures = [pool.submit(_run_chunk, c, keep_predictions) for c in chunks]
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    done = False
    try:
        for future in as_completed(futures):
            yield future.result()
        done = True
    except BrokenProcessPool:
        codes = [p.exitcode for p in list(getattr(pool, "_processes", {}).values()) if p.exitcode]
        how = f" (exit {codes[0]}{', signal ' + signal.Signals(-codes[0]).name if codes[0] < 0 else ''})" if codes else ""
        raise UserError(
            f"{initargs[0].path}: an evaluation worker died{how}; rerun with {setting('workers', '1', 'workers=1')} to see the runtime's own error"
        ) from None
    finally:
        pool.shutdown() if done else _stop(pool, futures)


def _stop(pool: ProcessPoolExecutor, futures) -> None:
    for future in futures:
        future.cancel()
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:  # still computing a chunk nobody waits for
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


def _run_chunk(indices: list[int], keep_predictions: bool):
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    matrix, predictions, digests = _WORKER.run(indices, keep_predictions)
    return indices, matrix, predictions, digests


def evaluate_artifact(
    path: str | Path,
    data_spec: str,
    split: str = "test",
    input_size: tuple[int, int] | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    workers: int = 1,
    threads: int | None = None,
    xnnpack: bool = True,
    limit: int | None = None,
    keep_predictions: bool = False,
    progress: bool = True,
) -> EvalResult:
    """mIoU and friends of the artifact at ``path`` over ``split`` of ``data_spec``.

    ``workers`` processes each run their own runner with ``threads`` threads (default: the CPU
    count shared out); ``limit`` evaluates only the first N images; ``keep_predictions`` keeps
    every image's argmax (for agreement between artifacts and for overlays); ``xnnpack=False``
    runs a .tflite on LiteRT's builtin kernels.
    """
    started = time.perf_counter()
    info = describe_artifact(path, input_size, mean, std)
    check_memory(info, workers)
    if workers < 1:
        raise UserError(f"{setting('workers')} {workers}: use 1 or more")
    if limit is not None and limit < 1:
        raise UserError(f"{setting('limit')} {limit}: use 1 or more images")
    dataset = dataset_for(info, data_spec, split)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise UserError(f"{setting('data', python='data_spec')} {data_spec}: the {split} split is empty")
    workers = min(workers, n)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    class_names = tuple(dataset.info.class_names)
    desc = f"eval {info.path.name}"

    if workers == 1:
        evaluator = _Evaluator(info, data_spec, split, threads, xnnpack)
        with tqdm(total=n, desc=desc, disable=not progress, unit="img") as bar:
            matrix, preds, digests = evaluator.run(range(n), keep_predictions, on_item=lambda: bar.update(1))
        predictions = np.stack(preds) if keep_predictions else None
    else:
        matrix = ConfusionMatrix(dataset.info.num_classes, dataset.info.ignore_index)
        predictions, digests = None, [b""] * n
        chunk = max(1, math.ceil(n / (workers * 4)))
        chunks = [list(range(i, min(i + chunk, n))) for i in range(0, n, chunk)]
        with tqdm(total=n, desc=desc, disable=not progress, unit="img") as bar:
            for indices, part, preds, item_digests in _in_workers(
                workers, (info, data_spec, split, threads, xnnpack), chunks, keep_predictions
            ):
                matrix.merge(part)
                for i, d in zip(indices, item_digests):
                    digests[i] = d
                if keep_predictions:
                    if predictions is None:
                        predictions = np.zeros((n, *preds[0].shape), preds[0].dtype)
                    predictions[indices] = np.stack(preds)
                bar.update(len(indices))

    return EvalResult(
        artifact=str(info.path),
        kind=info.kind,
        data=data_spec,
        split=split,
        input_size=info.input_size,
        num_images=n,
        class_names=class_names,
        metrics=matrix.compute().as_dict(class_names),
        seconds=time.perf_counter() - started,
        data_sha256=hashlib.sha256(b"".join(digests)).hexdigest(),
        predictions=predictions,
    )


def evaluate_shard(
    path: str | Path,
    data_spec: str,
    split: str,
    indices,
    input_size: tuple[int, int] | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    threads: int | None = None,
) -> tuple[ConfusionMatrix, list[bytes]]:
    """One shard of ``evaluate_artifact``: the confusion matrix over the split's items at
    ``indices`` and their digests. Merged (``ConfusionMatrix.merge``), the shards of a split give
    exactly the figures one ``evaluate_artifact`` run over it gives (the matrix's Ray tasks)."""
    info = describe_artifact(path, input_size, mean, std)
    matrix, _, digests = _Evaluator(info, data_spec, split, threads).run(list(indices), keep_predictions=False)
    return matrix, digests


# -- comparing two artifacts -----------------------------------------------------------------


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels where two stacks of predictions agree."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"prediction shapes differ: {a.shape} vs {b.shape}")
    return float((a == b).mean())


@dataclass(frozen=True)
class LogitDrift:
    max_abs: float  # largest |logit - reference logit| over all pixels, classes and images
    mean_abs: float
    logit_range: float  # max - min of the reference logits (to read max_abs against)
    argmax_agreement: float  # fraction of pixels with the same argmax
    num_images: int

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("max_abs", "mean_abs", "logit_range", "argmax_agreement", "num_images")}


def _stamp(path: str | Path) -> tuple:
    """What says a file (or every file of a folder) is unchanged: names, sizes, modification times."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=4)
def _reference_logits(
    reference: str, stamp: tuple, data_spec: str, split: str, n: int, info: ArtifactInfo, threads: int | None
) -> tuple[np.ndarray, ...]:
    """The reference's logits on the first ``n`` images, computed once per process for all the
    stages compared with it (``stamp`` keys the cache to the file as it is on disk)."""
    dataset = load_dataset(data_spec, split, num_classes=info.num_classes)
    run = open_artifact(reference, threads)
    logits = tuple(np.asarray(run(info.preprocess.image(dataset[i][0])[None]), np.float32) for i in range(n))
    for array in logits:
        array.setflags(write=False)  # shared by every later comparison
    return logits


def compare_artifacts(
    path: str | Path,
    reference: str | Path,
    data_spec: str,
    split: str = "test",
    limit: int | None = 8,
    input_size: tuple[int, int] | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> LogitDrift:
    """Logit drift and argmax agreement of ``path`` against ``reference`` on the same images.

    Both artifacts must take the same input size; the preprocessing is ``reference``'s (with the
    given overrides), so both see exactly the same tensors.
    """
    ref_info = describe_artifact(reference, input_size, mean, std)
    info = describe_artifact(path, input_size or ref_info.input_size, mean or ref_info.mean, std or ref_info.std)
    if info.input_size != ref_info.input_size:
        raise UserError(
            f"{path}: input size {info.input_size} differs from {reference}'s {ref_info.input_size}; pass {setting('input_size')}"
        )
    dataset = dataset_for(ref_info, data_spec, split)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise UserError(f"{setting('data', python='data_spec')} {data_spec}: the {split} split is empty")
    references = _reference_logits(str(Path(reference).resolve()), _stamp(reference), data_spec, split, n, ref_info, threads)
    run = open_artifact(path, threads)
    comparison = None
    for i in tqdm(range(n), desc=f"compare {Path(path).name}", disable=not progress, unit="img"):
        x = ref_info.preprocess.image(dataset[i][0])[None]
        ref, out = references[i], np.asarray(run(x), np.float32)
        if ref.shape != out.shape:
            raise UserError(f"{path}: output shape {out.shape} differs from {reference}'s {ref.shape}")
        comparison = comparison or LogitComparison(num_classes=ref.shape[1])
        comparison.update(ref, out)
    figures = comparison.result()
    return LogitDrift(figures["max_abs"], figures["mean_abs"], comparison.logit_range, figures["argmax_agreement"], n)
