"""Latency and memory of an artifact at batch 1, each measured in a fresh process.

The artifact is loaded and run in a child Python process (``python -m seg2tflite.eval.bench``), so the peak
memory it reports belongs to that artifact alone: ``peak_rss_mb`` is the child's RSS high-water
mark (``VmHWM``, see ``_maxrss_mb``) after the timed runs, ``baseline_rss_mb`` the same
mark after the runtime's imports but before the artifact was loaded. Latency is wall time per
call of the runner (``seg2tflite.converters.runtimes``: LiteRT with XNNPACK, ONNX Runtime intra-op threads,
PyTorch ``set_num_threads``) on a fixed random input, after ``warmup`` untimed calls; an int8
model's runner includes the input quantization and output dequantization, as a Python caller pays
them. For a .tflite, ``invoke_median_ms`` is the file alone: the interpreter's ``invoke()`` with its
input already set, as LiteRT's own benchmark tool times it, without the runner's NumPy work (the
NCHW/NHWC transposes and int8 (de)quantization an app in the file's own layout and types skips).
``benchmark_in_turns`` times several artifacts side by side in one fresh process, in alternating
turns, for comparisons finer than the machine's drift between processes.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from seg2tflite.errors import UserError, command_line_flags, command_line_wording, setting

IDLE_SECONDS = 0.03  # the thread pool of the file timed before spins a while after its last job before it sleeps


@dataclass(frozen=True)
class BenchResult:
    artifact: str
    kind: str  # pytorch, onnx, tf, tflite
    runtime: str  # pytorch, onnxruntime, tensorflow, litert
    input_size: tuple[int, int]  # (H, W), batch 1
    threads: int
    warmup: int
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    load_seconds: float  # building the runner (reading the file, creating the session/interpreter)
    baseline_rss_mb: float  # RSS high-water mark of the fresh process after imports, before loading
    peak_rss_mb: float  # RSS high-water mark after loading and all runs
    invoke_median_ms: float | None = None  # a .tflite: interpreter.invoke() alone, the file's own latency

    def as_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        return cls(**{**d, "input_size": tuple(d["input_size"])})


def _maxrss_mb() -> float:
    """This process's RSS high-water mark in MiB.

    On Linux it is read from ``VmHWM`` in /proc/self/status: ``ru_maxrss`` would carry over the
    high-water mark of the process that forked us (Linux keeps it across exec), so a benchmark
    started from a large process (a test run with TensorFlow loaded) would report that instead.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def measure(path: str, input_size: tuple[int, int], threads: int, warmup: int, runs: int) -> BenchResult:
    """Time the artifact in THIS process (``benchmark_artifact`` calls it in a fresh one)."""
    from seg2tflite.eval.artifacts import RUNTIME_NAMES, artifact_kind
    from seg2tflite.eval.opening import open_artifact

    kind = artifact_kind(path)
    _import_runtime(kind)
    baseline = _maxrss_mb()
    started = time.perf_counter()
    runner = open_artifact(path, threads=threads, input_size=tuple(input_size))
    load_seconds = time.perf_counter() - started
    x = np.random.default_rng(0).standard_normal((1, 3, *input_size), dtype=np.float32)
    for _ in range(warmup):
        runner(x)
    ms = np.asarray([_timed_ms(lambda: runner(x)) for _ in range(runs)])
    interpreter = getattr(runner, "interpreter", None)  # a .tflite: its input is set by the runs above
    invoke_ms = [_timed_ms(interpreter.invoke) for _ in range(runs)] if interpreter is not None else None
    return BenchResult(
        artifact=str(path),
        kind=kind,
        runtime=RUNTIME_NAMES[kind],
        input_size=tuple(input_size),
        threads=threads,
        warmup=warmup,
        runs=runs,
        median_ms=float(np.median(ms)),
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()),
        min_ms=float(ms.min()),
        load_seconds=load_seconds,
        baseline_rss_mb=baseline,
        peak_rss_mb=_maxrss_mb(),
        invoke_median_ms=float(np.median(invoke_ms)) if invoke_ms else None,
    )


def measure_in_turns(
    paths: list[str], input_size: tuple[int, int], threads: int, turns: int, block_ms: float, warmup: int = 1, invoke: bool = True
) -> list[list[float]]:
    """Several artifacts loaded side by side in THIS process and timed in turns (the order reversed
    every other turn): each turn, each one as many times as fill about ``block_ms`` (at least once).
    Returns every artifact's per-turn medians. Artifacts timed next to each other meet the same
    machine state, which a fresh process per artifact, seconds apart, does not. ``invoke``: a
    .tflite's ``invoke()`` alone (only .tflite files then); else the runner's call, as ``measure``'s
    ``median_ms``."""
    from seg2tflite.eval.artifacts import artifact_kind
    from seg2tflite.eval.opening import open_artifact

    x = np.random.default_rng(0).standard_normal((1, 3, *input_size), dtype=np.float32)
    calls, runs = [], []
    for path in paths:
        _import_runtime(artifact_kind(path))
        runner = open_artifact(path, threads=threads, input_size=tuple(input_size))
        interpreter = getattr(runner, "interpreter", None)
        if invoke and interpreter is None:
            raise UserError(f"{path}: not a .tflite; only LiteRT files are timed by invoke()")
        for _ in range(max(1, warmup)):
            runner(x)  # also sets a .tflite's input, in the file's layout and type
        call = interpreter.invoke if invoke else (lambda runner=runner: runner(x))
        calls.append(call)
        runs.append(max(1, round(block_ms / _timed_ms(call))))
    medians: list[list[float]] = [[] for _ in paths]
    for turn in range(turns):
        for i in range(len(paths)) if turn % 2 == 0 else reversed(range(len(paths))):
            time.sleep(IDLE_SECONDS)  # the previous artifact's thread pool stops spinning
            medians[i].append(float(np.median([_timed_ms(calls[i]) for _ in range(runs[i])])))
    return medians


def benchmark_in_turns(
    paths,
    input_size: tuple[int, int],
    threads: int = 1,
    turns: int = 30,
    block_ms: float = 250.0,
    warmup: int = 1,
    invoke: bool = True,
) -> list[list[float]]:
    """``measure_in_turns`` in a fresh process: an artifact that crashes its runtime fails this call only."""
    paths = [Path(p) for p in paths]
    job = {"paths": [str(p.resolve()) for p in paths], "input_size": list(input_size), "threads": threads}
    job.update(turns=turns, block_ms=block_ms, warmup=warmup, invoke=invoke)
    return in_fresh_process("seg2tflite.eval.bench", job, paths[0].parent, "the timing process")["turns_ms"]


def _timed_ms(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000.0


def _import_runtime(kind: str) -> None:
    """Import the runtime before the baseline memory mark, so the mark covers the library."""
    import seg2tflite.converters.runtimes  # noqa: F401

    if kind == "pytorch":
        import torch  # noqa: F401

        import seg2tflite.models  # noqa: F401
    elif kind == "onnx":
        import onnxruntime  # noqa: F401
    elif kind == "saved_model":
        import tensorflow  # noqa: F401
    else:
        import ai_edge_litert.interpreter  # noqa: F401


def benchmark_artifact(
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    threads: int = 1,
    warmup: int = 5,
    runs: int = 30,
    isolate: bool = True,
) -> BenchResult:
    """Median/p90 latency at batch 1 and peak memory of ``path``, run in a fresh subprocess.

    ``input_size`` defaults to the one in the artifact's metadata (manifest or checkpoint config).
    ``isolate=False`` measures in this process instead (for a checkpoint of a model registered
    only here, e.g. in a test); its memory figures are then this process's, not the artifact's.
    """
    from seg2tflite.eval.artifacts import ArtifactInfo, checked_size, read_metadata
    from seg2tflite.eval.opening import check_memory

    path = Path(path)
    meta = read_metadata(path)
    size = input_size if input_size is not None else meta["input_size"]
    if size is None:
        raise UserError(
            f"{path}: no manifest.json or checkpoint config gives the input size; pass {setting('input_size', 'H W')}"
        )
    size = checked_size(size)
    if threads < 1 or warmup < 0 or runs < 1:
        raise UserError(f"bench: need threads >= 1, warmup >= 0 and runs >= 1 (got {threads}, {warmup}, {runs})")
    check_memory(ArtifactInfo(path, meta["kind"], size, (0.0,) * 3, (1.0,) * 3, meta["model"], meta["num_classes"]))
    if not isolate:
        return measure(str(path), size, threads, warmup, runs)
    job = {"path": str(path.resolve()), "input_size": list(size), "threads": threads, "warmup": warmup, "runs": runs}
    result = in_fresh_process("seg2tflite.eval.bench", job, path, "the benchmark process")
    result["artifact"] = str(path)
    return BenchResult.from_dict(result)


def in_fresh_process(module: str, job: dict, path: Path, what: str) -> dict:
    """Run ``python -m module JOB`` (``JOB``: ``job`` as JSON plus the file to write its result to)
    and return that result; a child that dies or reports an error is a ``UserError`` naming ``path``."""
    root = str(Path(__file__).resolve().parents[1])  # so the child imports this checkout's packages
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from seg2tflite.atomic import private_tempdir

    with private_tempdir("bench") as tmp:
        out = Path(tmp) / "result.json"
        job = {**job, "out": str(out), "command_line": command_line_flags()}  # the child words its errors as we do
        proc = subprocess.run([sys.executable, "-m", module, json.dumps(job)], env=env, cwd=root, capture_output=True, text=True)
        result = json.loads(out.read_text()) if out.is_file() else None
    if result is None or proc.returncode != 0:
        if proc.returncode < 0:
            how = f"was killed by {signal.Signals(-proc.returncode).name}"
        else:
            how = f"failed (exit {proc.returncode})"
        last = next((line.strip() for line in reversed((proc.stderr or proc.stdout).splitlines()) if line.strip()), "")
        raise UserError(f"{path}: {what} {how}{f': {last[:300]}' if last else ''}")
    if "error" in result:
        raise UserError(result["error"])
    return result


def benchmark_artifacts(paths, progress: bool = True, **kwargs) -> list[BenchResult]:
    """``benchmark_artifact`` over several artifacts, one fresh process each, with a progress bar."""
    paths = list(paths)
    results = []
    with tqdm(paths, desc="bench", disable=not progress, unit="artifact") as bar:
        for path in bar:
            bar.set_postfix_str(Path(path).name)
            results.append(benchmark_artifact(path, **kwargs))
    return results


def format_bench(results: list[BenchResult]) -> str:
    """A table for the terminal, one line per artifact (``invoke ms``: a .tflite's ``invoke()`` alone)."""
    header = (
        f"{'artifact':<40} {'runtime':<12} {'size':>9} {'threads':>7} {'median ms':>10} {'p90 ms':>9} {'invoke ms':>10} "
        f"{'peak RSS MB':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        name = r.artifact if len(r.artifact) <= 40 else "..." + r.artifact[-37:]
        size = f"{r.input_size[0]}x{r.input_size[1]}"
        invoke = f"{r.invoke_median_ms:.2f}" if r.invoke_median_ms is not None else "-"
        lines.append(
            f"{name:<40} {r.runtime:<12} {size:>9} {r.threads:>7} {r.median_ms:>10.2f} {r.p90_ms:>9.2f} {invoke:>10} "
            f"{r.peak_rss_mb:>12.0f}"
        )
    return "\n".join(lines)


def _child_main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    out = Path(job["out"])
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()
    try:
        with command_line_wording(job["command_line"]):
            if "paths" in job:
                turns_ms = measure_in_turns(
                    job["paths"],
                    tuple(job["input_size"]),
                    job["threads"],
                    job["turns"],
                    job["block_ms"],
                    job["warmup"],
                    job["invoke"],
                )
                result = {"turns_ms": turns_ms}
            else:
                result = measure(job["path"], tuple(job["input_size"]), job["threads"], job["warmup"], job["runs"]).as_dict()
    except UserError as e:
        result = {"error": str(e)}
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
