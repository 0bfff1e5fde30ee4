"""Mixed precision against an accuracy budget: int8 everywhere except the layers that cost mIoU.

The SavedModel is calibrated once (the same representative dataset and settings as
``full_int8``, with the activation ranges its full-int8 file chose, ``converters.int8_ranges``);
every candidate is then a re-quantization of that calibrated model with some
ops or nodes left in float (TensorFlow's ``mlir_quantize`` deny lists, the mechanism behind its
quantization debugger), evaluated end to end on held-out images in LiteRT with its default
XNNPACK kernels, the runtime a phone runs.

The search measures, it does not guess: TensorFlow's per-layer debugger score (RMSE over the
quantization step) ranked SegFormer's attention-times-value matmuls as harmless, yet keeping
those in float is what brings its full-int8 mIoU back under XNNPACK (on LiteRT's builtin
kernels the same full-int8 file is close to float: the collapse is XNNPACK's int8 path, which
the debugger, running without it, cannot see). So:

1. full int8; done if it is within ``max_miou_drop`` points of the float32 TFLite model;
2. each op type kept in float alone, ranked by the mIoU it wins back; op types are added in
   that order until the model is within budget;
3. inside the chosen op types, each node in turn goes back to int8 and stays there if the
   model is still within budget (skipped for op types with more than ``max_node_trials``
   nodes, which are then kept whole). Single-node gains do not add up (SegFormer needs seven
   of its eight attention-times-value matmuls in float; any one alone wins back under 3
   points), so the nodes are removed from a set that works rather than added to one that
   does not.

4. speed (``prefer_speed``): the ops XNNPACK still leaves to the builtin kernels after
   ``converters.xnnpack_int8`` (which every candidate goes through: int8 BATCH_MATMULs with a
   zero-point-0 right-hand side, standalone activations as ADDs, SOFTMAX, GELU, RSQRT and the
   other ops it has no int8 kernel for as float islands) cut the graph into partitions. The op
   types the interpreter leaves undelegated are added to the float set (again while new ones
   appear, at most four rounds); that file replaces the result when it is measured faster
   (median at batch 1, the two files timed in turns) and within budget, or no less accurate than
   a result that is not. Op types XNNPACK has no kernel for at all (SegNet's unpooling SELECT_V2
   and logic ops) stay undelegated in float too; ``undelegated`` says so and the measurement
   decides.

``model_mixed_int8.tflite`` is the result; ``mixed_precision.json`` lists what was kept in
float, every trial's mIoU, the speed candidates' latency and delegation, and the size against
the float32 file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seg2tflite.atomic import atomic_write_bytes, atomic_write_text
from seg2tflite.calibration.representative import CalibrationSet
from seg2tflite.converters.int8_build import calibrated_with_ranges
from seg2tflite.converters.int8_ranges import quantize as quantize_int8
from seg2tflite.converters.manifest import artifact_hashes, write_json
from seg2tflite.converters.ops import op_report
from seg2tflite.converters.runtimes import tflite_miou
from seg2tflite.converters.stages import MANIFEST_FILE, STAGES
from seg2tflite.errors import UserError, setting
from seg2tflite.quiet import muted_stderr

MIXED_FILE = STAGES["mixed_int8"].file
REPORT_FILE = "mixed_precision.json"


@dataclass(frozen=True)
class MixedPrecisionConfig:
    max_miou_drop: float = 1.0  # mIoU points the result may lose against the float32 TFLite model
    max_node_trials: int = 32  # op types with more nodes than this are kept in float whole
    threads: int | None = None  # LiteRT threads while evaluating candidates
    prefer_speed: bool = True  # step 4: the ops XNNPACK cannot run in int8 kept in float, when that is faster

    def __post_init__(self) -> None:
        if not self.max_miou_drop >= 0:
            raise UserError(f"{setting('max_miou_drop')}: {self.max_miou_drop} must be >= 0 points")
        if self.max_node_trials < 0:
            raise UserError(f"{setting('max_node_trials')}: {self.max_node_trials} must be >= 0")


@dataclass
class MixedPrecisionResult:
    float32_miou: float  # points, the budget's reference
    full_int8_miou: float
    full_int8_builtin_kernels_miou: float  # the same model on LiteRT's builtin kernels, without XNNPACK
    miou: float  # of the chosen model
    within_budget: bool
    float_op_types: list[str]
    float_nodes: list[str]  # empty when whole op types are kept
    float_node_types: list[str]  # the op type of each of float_nodes
    size_bytes: int
    float32_size_bytes: int
    trials: list[dict] = field(default_factory=list)  # {"float": [...], "miou": x} in the order tried
    model: bytes = field(default=b"", repr=False)
    speed: dict = field(default_factory=dict)  # step 4: each candidate's float ops, mIoU, latency, delegation

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("model")
        d["size_vs_float32"] = self.size_bytes / self.float32_size_bytes
        return d


def calibrate(saved_model: str | Path, calibration: CalibrationSet, ranges: str = "minmax") -> bytes:
    """The SavedModel as a float .tflite carrying calibration ranges (``ranges``: the method full int8
    chose, ``converters.int8_ranges``), ready for ``quantize``."""
    return calibrated_with_ranges(saved_model, calibration.representative_dataset(), ranges)


def quantize(calibrated: bytes, float_ops: list[str] = (), float_nodes: list[str] = ()) -> bytes:
    """int8 (per-channel weights, float input/output) except ``float_ops`` types and ``float_nodes``
    (output tensor names), which stay float; layout and int8 ops as in full_int8 (``matmul_layout``,
    ``xnnpack_int8``)."""
    from seg2tflite.converters.matmul_layout import drop_matmul_transposes
    from seg2tflite.converters.xnnpack_int8 import xnnpack_int8_forms

    quantized = quantize_int8(calibrated, "float", float_ops=float_ops, float_nodes=float_nodes)
    return xnnpack_int8_forms(drop_matmul_transposes(quantized)[0])[0]


def quantizable_nodes(calibrated: bytes) -> dict[str, list[str]]:
    """Op type -> output tensor names of the ops that carry calibration statistics."""
    from ai_edge_litert.interpreter import Interpreter

    with muted_stderr():
        interpreter = Interpreter(model_content=calibrated)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    nodes: dict[str, list[str]] = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE") or not len(op["outputs"]):
            continue
        nodes.setdefault(op["op_name"], []).append(names[op["outputs"][0]])
    return nodes


def search_mixed_precision(
    saved_model: str | Path,
    float32_model: bytes | str | Path,
    calibration: CalibrationSet,
    images: np.ndarray,
    masks: np.ndarray,
    num_classes: int,
    config: MixedPrecisionConfig = MixedPrecisionConfig(),
    log: Callable[[str], None] = print,
    progress: bool = True,
    ranges: str = "minmax",
    latency: Callable[[bytes], float] | None = None,
) -> MixedPrecisionResult:
    """The smallest set of float ops (by the greedy search above) that keeps the int8 model within
    budget, then, with ``prefer_speed``, the faster of it and the same with the ops XNNPACK left
    undelegated in float, timed by ``latency`` (a file's median ms at batch 1, e.g.
    ``seg2tflite.eval.profile.latency_ms``)."""
    if config.prefer_speed and latency is None:
        raise ValueError("prefer_speed times the candidates: pass latency (e.g. seg2tflite.eval.profile.latency_ms)")
    calibrated = calibrate(saved_model, calibration, ranges)
    found = _accuracy_search(calibrated, float32_model, images, masks, num_classes, config, log, progress)
    if config.prefer_speed:
        found = _prefer_speed(calibrated, found, images, masks, num_classes, config, log, latency)
    return found


def _accuracy_search(calibrated, float32_model, images, masks, num_classes, config, log, progress) -> MixedPrecisionResult:
    nodes_by_type = quantizable_nodes(calibrated)
    float32_bytes = float32_model if isinstance(float32_model, bytes) else Path(float32_model).read_bytes()
    reference = tflite_miou(float32_bytes, images, masks, num_classes, config.threads)
    target = reference - config.max_miou_drop
    trials: list[dict] = []
    bar = tqdm(desc="mixed precision", unit="trial", disable=not progress, leave=False)

    def trial(float_ops=(), float_nodes=()) -> tuple[float, bytes]:
        model = quantize(calibrated, float_ops, float_nodes)
        miou = tflite_miou(model, images, masks, num_classes, config.threads)
        trials.append({"float_ops": list(float_ops), "float_nodes": list(float_nodes), "miou": miou})
        bar.update(1)
        bar.set_postfix(miou=f"{miou:.2f}", target=f"{target:.2f}")
        return miou, model

    def result(miou, model, ops=(), nodes=()) -> MixedPrecisionResult:
        bar.close()
        node_type = {n: op for op, names in nodes_by_type.items() for n in names}
        return MixedPrecisionResult(
            reference, full_miou, builtin_miou, miou, miou >= target, list(ops), list(nodes), [node_type[n] for n in nodes],
            len(model), len(float32_bytes), trials, model,
        )  # fmt: skip

    full_miou, full_model = trial()
    builtin_miou = tflite_miou(full_model, images, masks, num_classes, config.threads, xnnpack=False)
    log(
        f"float32 TFLite {reference:.2f}% mIoU, full int8 {full_miou:.2f}% with XNNPACK, {builtin_miou:.2f}% on LiteRT's "
        f"builtin kernels (budget: {target:.2f}%)"
    )
    if full_miou >= target:
        return result(full_miou, full_model)

    gains = {op: trial([op])[0] - full_miou for op in sorted(nodes_by_type)}
    chosen, miou, model = [], full_miou, full_model
    for op in sorted(gains, key=lambda o: -gains[o]):
        if gains[op] <= 0:
            break
        chosen.append(op)
        miou, model = trial(chosen)
        if miou >= target:
            break
    if miou < target:
        log(f"keeping every op type that helps in float still gives {miou:.2f}% mIoU, under the budget of {target:.2f}%")
        return result(miou, model, chosen)
    log(f"op types kept in float: {', '.join(chosen)} -> {miou:.2f}%; narrowing to nodes")

    whole = [op for op in chosen if len(nodes_by_type[op]) > config.max_node_trials]
    kept = [n for op in chosen if op not in whole for n in nodes_by_type[op]]
    best = (miou, model, chosen, [])
    for node in list(kept):
        fewer = [n for n in kept if n != node]
        node_miou, node_model = trial(whole, fewer)
        if node_miou >= target:
            kept = fewer
            best = (node_miou, node_model, whole, kept)
    miou, model, ops, nodes = best
    return result(miou, model, ops, nodes)


def undelegated_op_types(model: bytes, threads: int | None) -> list[str]:
    """Op types of ``model`` LiteRT's interpreter left to the builtin kernels after XNNPACK took
    what it could (the float/int8 boundary ops aside: they exist because of the float set)."""
    from seg2tflite.converters.runtimes import TFLiteRunner

    kept = TFLiteRunner(model, threads).delegation["not_delegated"]
    return [op for op in kept if op not in ("QUANTIZE", "DEQUANTIZE")]


def _prefer_speed(calibrated, found, images, masks, num_classes, config, log, latency) -> MixedPrecisionResult:
    """Step 4: the op types XNNPACK leaves undelegated added to ``found``'s float set; kept when
    faster and within budget, or faster and no less accurate."""
    ops, model = list(found.float_op_types), found.model
    undelegated = first = undelegated_op_types(model, config.threads)
    for _ in range(4):  # a float op's new QUANTIZE/DEQUANTIZE neighbours may shift what XNNPACK takes
        missing = [op for op in undelegated if op not in ops]
        if not missing:
            break
        ops += missing
        model = quantize(calibrated, ops, found.float_nodes)
        undelegated = undelegated_op_types(model, config.threads)
    if model is found.model:
        found.speed = {"chosen": "accuracy", "note": "XNNPACK already takes every op"}
        return found
    miou = tflite_miou(model, images, masks, num_classes, config.threads)
    times = {"accuracy": [], "undelegated_in_float": []}
    for _ in range(3):  # in turns, so a busy moment slows both
        times["accuracy"].append(latency(found.model))
        times["undelegated_in_float"].append(latency(model))
    median = {k: float(np.median(v)) for k, v in times.items()}
    within = miou >= found.float32_miou - config.max_miou_drop
    # faster, and within budget or at least as accurate as a choice that is not
    faster = median["undelegated_in_float"] < median["accuracy"] and (within or miou >= found.miou)
    found.speed = {
        "candidates": {
            "accuracy": {"float_op_types": found.float_op_types, "miou": found.miou, "median_ms": median["accuracy"],
                         "undelegated": first},
            "undelegated_in_float": {"float_op_types": ops, "miou": miou, "median_ms": median["undelegated_in_float"],
                              "undelegated": undelegated},
        },
        "chosen": "undelegated_in_float" if faster else "accuracy",
    }  # fmt: skip
    log(
        f"undelegated op types in float too ({', '.join(o for o in ops if o not in found.float_op_types)}): {miou:.2f}% mIoU, "
        f"{median['undelegated_in_float']:.2f} ms against {median['accuracy']:.2f} ms -> {found.speed['chosen']}"
    )
    if faster:
        found.model, found.miou, found.float_op_types, found.size_bytes = model, miou, ops, len(model)
        found.within_budget = within
    return found


def write_mixed_precision(out_dir: str | Path, found: MixedPrecisionResult, extra: dict | None = None) -> tuple[Path, Path]:
    """``model_mixed_int8.tflite`` and ``mixed_precision.json`` (with its op list) in ``out_dir``."""
    out_dir = Path(out_dir)
    ops = op_report(found.model)
    record = {**found.to_dict(), "ops": ops.to_dict(), **(extra or {})}
    model_path, report_path = out_dir / MIXED_FILE, out_dir / REPORT_FILE
    atomic_write_bytes(model_path, found.model)
    atomic_write_text(report_path, json.dumps(record, indent=2) + "\n")
    manifest = out_dir / MANIFEST_FILE
    if manifest.is_file():  # the folder's manifest records the new file, so its preprocessing applies to it
        recorded = json.loads(manifest.read_text())
        recorded.setdefault("artifacts", {}).update(artifact_hashes(out_dir, [MIXED_FILE]))
        write_json(manifest, recorded)
    return model_path, report_path


def format_mixed_precision(found: MixedPrecisionResult) -> str:
    kinds = ", ".join(f"{found.float_node_types.count(t)} {t}" for t in dict.fromkeys(found.float_node_types))
    what = ", ".join(filter(None, [", ".join(f"every {t}" for t in found.float_op_types), kinds])) or "nothing"
    lines = [
        f"float32 TFLite {found.float32_miou:.2f}%, full int8 {found.full_int8_miou:.2f}% "
        f"({found.full_int8_builtin_kernels_miou:.2f}% without XNNPACK), mixed {found.miou:.2f}% mIoU "
        f"({'within' if found.within_budget else 'OUTSIDE'} budget) after {len(found.trials)} trials",
        f"kept in float: {what}",
        f"size {found.size_bytes / 1e6:.2f} MB = {found.size_bytes / found.float32_size_bytes:.2f}x float32",
    ]
    lines += [f"  {n}" for n in found.float_nodes]
    candidates = found.speed.get("candidates")
    if candidates:
        timed = ", ".join(f"{name} {c['median_ms']:.2f} ms" for name, c in candidates.items())
        lines.append(f"speed: {timed} -> {found.speed['chosen']}")
    return "\n".join(lines)
