"""Where a .tflite spends its time: every op timed on its own, delegated to XNNPACK or not.

LiteRT's Python API exposes no per-op profiler, so each op is cut out of the file into a graph of
its own (``single_op_model``: the op, its constant inputs, its other inputs as graph inputs; the
flatbuffer rewritten through ``converters.tflite_graph``), loaded the way the whole file is
(XNNPACK by default, which takes the op or leaves it to the builtin kernels), fed random values of
its input types and timed at batch 1. The sum over ops is set beside the whole file's latency:
a gap is what running the ops together saves (XNNPACK fuses a delegated partition, keeps its
layouts and skips the hand-overs between ops) or costs.

    seg2tflite bench --profile --artifact model_full_int8.tflite [--threads 2]

Each file is profiled in a fresh process (``profile_artifact``), so an op LiteRT aborts on fails
that file's profile only.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class OpTime:
    index: int  # the op's position in the file's graph
    op: str  # builtin name, e.g. BATCH_MATMUL
    dtype: str  # its first input's type: where int8 ops stand apart from float ones
    delegated: bool  # XNNPACK took it (else LiteRT's builtin kernels ran it)
    median_ms: float


@dataclass
class Profile:
    path: str
    threads: int
    xnnpack: bool
    whole_ms: float  # the whole file, median at batch 1
    ops: list[OpTime] = field(default_factory=list)
    untimed: list[str] = field(default_factory=list)  # "#index OP" of ops that do not load alone

    @property
    def sum_ms(self) -> float:
        return sum(t.median_ms for t in self.ops)

    def by_type(self) -> list[dict]:
        """One row per (op, dtype, delegated), slowest first."""
        rows: dict[tuple, dict] = {}
        for t in self.ops:
            row = rows.setdefault((t.op, t.dtype, t.delegated), {"op": t.op, "dtype": t.dtype, "delegated": t.delegated})
            row["count"] = row.get("count", 0) + 1
            row["ms"] = row.get("ms", 0.0) + t.median_ms
        return sorted(rows.values(), key=lambda r: -r["ms"])

    def as_dict(self) -> dict:
        return {
            "path": self.path, "threads": self.threads, "xnnpack": self.xnnpack, "whole_ms": self.whole_ms,
            "sum_ms": self.sum_ms, "by_type": self.by_type(), "ops": [asdict(t) for t in self.ops], "untimed": self.untimed,
        }  # fmt: skip


def _is_constant(model, tensor) -> bool:
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buffer is not None and (buffer.data is not None and len(buffer.data) > 0 or bool(getattr(buffer, "size", 0)))


def single_op_model(model, index: int) -> bytes:
    """The graph of op ``index`` of ``model`` (a ``tflite_graph.read_model`` ModelT) alone, serialized:
    its constant inputs kept, its other inputs the graph's inputs, its outputs the graph's outputs."""
    from seg2tflite.converters.tflite_graph import schema, write_model

    graph = model.subgraphs[0]
    op = copy.copy(graph.operators[index])
    used = [int(t) for t in list(op.inputs) + list(op.outputs) if int(t) >= 0]
    order = list(dict.fromkeys(used))
    new_index = {old: new for new, old in enumerate(order)}
    buffers = [schema.BufferT()]  # buffer 0 is the empty one by convention
    tensors = []
    for old in order:
        tensor = copy.copy(graph.tensors[old])
        if _is_constant(model, tensor):
            buffers.append(model.buffers[tensor.buffer])
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
        tensors.append(tensor)
    op.inputs = [new_index[int(t)] if int(t) >= 0 else -1 for t in op.inputs]
    op.outputs = [new_index[int(t)] for t in op.outputs]
    sub = schema.SubGraphT()
    sub.tensors = tensors
    sub.operators = [op]
    variable = [int(t) for t in graph.operators[index].inputs if int(t) >= 0 and not _is_constant(model, graph.tensors[int(t)])]
    sub.inputs = [new_index[t] for t in dict.fromkeys(variable)]  # once each, even for x * x
    sub.outputs = list(op.outputs)
    sub.name = f"op{index}"
    single = schema.ModelT()
    single.version = model.version
    single.operatorCodes = model.operatorCodes
    single.subgraphs = [sub]
    single.buffers = buffers
    single.description = b"seg2tflite single-op profile"
    return write_model(single)


def _random_inputs(interpreter, rng: np.random.Generator) -> None:
    for d in interpreter.get_input_details():
        dtype, shape = np.dtype(d["dtype"]), d["shape"]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            value = rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
        else:
            value = rng.standard_normal(shape).astype(dtype)
        interpreter.set_tensor(d["index"], value)


def _median_ms(interpreter, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _interpreter(content: bytes, threads: int, xnnpack: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from seg2tflite.quiet import muted_stderr

    kwargs = {"model_content": content, "num_threads": threads}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with muted_stderr():
        interpreter = Interpreter(**kwargs)
        interpreter.allocate_tensors()
    return interpreter


def latency_ms(content: bytes, threads: int = 2, xnnpack: bool = True, warmup: int = 3, runs: int = 20) -> float:
    """Median milliseconds of one call of the whole ``content`` at batch 1, on random inputs."""
    interpreter = _interpreter(content, threads, xnnpack)
    _random_inputs(interpreter, np.random.default_rng(0))
    return _median_ms(interpreter, warmup, runs)


def profile_tflite(
    path: str | Path, threads: int = 2, xnnpack: bool = True, warmup: int = 3, runs: int = 15, progress: bool = True
) -> Profile:
    """Every op of ``path`` timed alone (median of ``runs`` after ``warmup``), and the whole file."""
    from tqdm.auto import tqdm

    from seg2tflite.converters.tflite_graph import TENSOR_TYPES, opcode_name, read_model

    path = Path(path)
    content = path.read_bytes()
    rng = np.random.default_rng(0)
    profile = Profile(str(path), threads, xnnpack, latency_ms(content, threads, xnnpack, warmup, runs))
    model = read_model(content)
    graph = model.subgraphs[0]
    for index in tqdm(range(len(graph.operators)), desc=f"profile {path.name}", disable=not progress, unit="op"):
        op = graph.operators[index]
        name = opcode_name(model.operatorCodes[op.opcodeIndex])
        first = next((int(t) for t in op.inputs if int(t) >= 0), None)
        dtype = TENSOR_TYPES[graph.tensors[first].type].lower() if first is not None else "-"
        try:
            interpreter = _interpreter(single_op_model(model, index), threads, xnnpack)
            delegated = any(d["op_name"] == "DELEGATE" for d in interpreter._get_ops_details())
            _random_inputs(interpreter, rng)
            median = _median_ms(interpreter, warmup, runs)
        except (ValueError, RuntimeError):
            # an op that needs its graph (a call into another subgraph), or one with constant inputs
            # only (float16's weight DEQUANTIZEs: XNNPACK loads that graph but cannot run it); in
            # the whole file such an op runs once, at load
            profile.untimed.append(f"#{index} {name}")
            continue
        profile.ops.append(OpTime(index, name, dtype, delegated, median))
    return profile


def format_profile(profile: Profile, top: int = 10) -> str:
    """Time per op type (and dtype, delegated or not), then the ``top`` slowest ops."""
    lines = [
        f"{profile.path}: whole file {profile.whole_ms:.2f} ms; its {len(profile.ops)} ops one at a time "
        f"{profile.sum_ms:.2f} ms ({profile.threads} threads, {'XNNPACK' if profile.xnnpack else 'builtin kernels'})",
        f"{'op':<26}{'dtype':<9}{'XNNPACK':<9}{'count':>6}{'ms':>9}{'share':>8}",
    ]
    total = profile.sum_ms or 1.0
    for row in profile.by_type():
        where = "yes" if row["delegated"] else "no"
        lines.append(
            f"{row['op']:<26}{row['dtype']:<9}{where:<9}{row['count']:>6}{row['ms']:>9.3f}{100 * row['ms'] / total:>7.1f}%"
        )
    if profile.untimed:
        lines.append(f"not timed (they do not load alone): {', '.join(profile.untimed)}")
    lines.append(f"slowest {min(top, len(profile.ops))} ops:")
    for t in sorted(profile.ops, key=lambda t: -t.median_ms)[:top]:
        lines.append(f"  #{t.index:<5}{t.op:<24}{t.dtype:<9}{'XNNPACK' if t.delegated else 'builtin':<9}{t.median_ms:>8.3f} ms")
    return "\n".join(lines)


def profile_artifact(path: str | Path, threads: int = 2, xnnpack: bool = True) -> Profile:
    """``profile_tflite`` in a fresh process: a native crash is a ``UserError`` naming the file."""
    from seg2tflite.errors import UserError
    from seg2tflite.eval.bench import in_fresh_process

    path = Path(path)
    if path.suffix != ".tflite" or not path.is_file():
        raise UserError(f"{path}: not a .tflite file; only a .tflite has ops to profile")
    job = {"path": str(path.resolve()), "threads": threads, "xnnpack": xnnpack}
    result = in_fresh_process("seg2tflite.eval.profile", job, path, "the profiling process")
    ops = [OpTime(**t) for t in result["ops"]]
    return Profile(str(path), result["threads"], result["xnnpack"], result["whole_ms"], ops, result["untimed"])


def _child_main(argv: list[str]) -> int:
    from seg2tflite.errors import command_line_wording
    from seg2tflite.quiet import quiet_libraries

    job = json.loads(argv[0])
    quiet_libraries()
    with command_line_wording(job["command_line"]):
        result = profile_tflite(job["path"], job["threads"], job["xnnpack"], progress=False).as_dict()
    Path(job["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
