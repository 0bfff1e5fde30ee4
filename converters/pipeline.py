"""The whole chain in one call: PyTorch -> ONNX -> SavedModel -> five .tflite, parity, manifest.

``convert_model`` takes any PyTorch segmentation module (registry model, torchvision, timm...),
``convert_onnx`` an existing ONNX file, ``convert_registered`` a registry name (built from a
checkpoint or from a seed, in which case the weights are saved beside the artifacts). All write
into ``out_dir``: model.onnx, saved_model/, model_<variant>.tflite, parity.json, manifest.json,
onnx2tf.log. Gates are checked after everything is written, so a failing run still leaves its
figures behind; then ``ParityError`` (a ``UserError``) is raised.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from seg2tflite.calibration.representative import (
    CalibrationSet,
    build_calibration_set,
    check_disjoint,
    dataset_source,
)
from seg2tflite.converters.config import CALIBRATED_VARIANTS, ConvertConfig
from seg2tflite.converters.divergence import locate_divergence
from seg2tflite.converters.manifest import artifact_hashes, build_manifest, package_versions, write_json
from seg2tflite.converters.offline import no_network
from seg2tflite.converters.onnx_export import PreparedOnnx, export_onnx, load_onnx, prepare_onnx, save_onnx
from seg2tflite.converters.onnx_to_tf import onnx_to_saved_model
from seg2tflite.converters.ops import OpReport, check_builtins_only, op_report
from seg2tflite.converters.parity import ParityError, ParityReport, apply_gates, format_table, measure_parity, raise_on_failure
from seg2tflite.converters.resume import StageCache, stage_key
from seg2tflite.converters.runtimes import OnnxRunner, SavedModelRunner, TFLiteRunner, TorchRunner
from seg2tflite.converters.tflite_variants import build_tflite
from seg2tflite.atomic import atomic_write_bytes, atomic_write_text
from seg2tflite.data.base import SegmentationDataset
from seg2tflite.data.preprocess import Preprocess
from seg2tflite.errors import UserError

ONNX_FILE = "model.onnx"
SAVED_MODEL_DIR = "saved_model"
MAX_ONNX2TF_SAMPLES = 20  # onnx2tf's own test-data slot holds 20 images


def _tool_versions() -> dict:
    """The converter versions a built artifact depends on (a new onnx2tf or TF rebuilds it)."""
    versions = package_versions()
    return {name: versions.get(name) for name in ("onnx2tf", "tensorflow", "tf-keras", "onnx", "onnxsim")}


def tflite_name(variant: str) -> str:
    return f"model_{variant}.tflite"


@dataclass
class ConvertResult:
    out_dir: Path
    artifacts: dict[str, Path]  # stage -> file or folder
    parity: ParityReport
    ops: dict[str, OpReport]  # variant -> operators
    manifest: dict
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return format_table(self.parity)


@dataclass
class _Images:
    images: np.ndarray  # (N, 3, H, W) float32, preprocessed
    masks: np.ndarray | None  # (N, H, W) int64
    names: list[str]
    source: str


def _log_default(message: str) -> None:
    print(message, flush=True)


def _parity_images(
    calib_data, parity_data: SegmentationDataset | None, calib: CalibrationSet | None, preprocess: Preprocess, config: ConvertConfig
) -> _Images:
    """Real images for parity: from ``parity_data``, else the calibration split minus the calibration images."""
    if parity_data is not None:
        if isinstance(calib_data, SegmentationDataset):
            check_disjoint(calib_data, parity_data)
        dataset, exclude = parity_data, set()
    elif isinstance(calib_data, SegmentationDataset):
        dataset, exclude = calib_data, set(calib.indices if calib else ())
    else:  # pre-built calibration array, no masks
        n = min(config.parity_images, len(calib_data))
        return _Images(calib_data.images[:n], None, list(calib_data.names[:n]), calib_data.source)
    rng = np.random.default_rng(config.calib_seed + 1)
    candidates = [int(i) for i in rng.permutation(len(dataset)) if int(i) not in exclude]
    if not candidates:  # tiny split: every image went into calibration
        candidates = [int(i) for i in rng.permutation(len(dataset))]
    chosen = candidates[: config.parity_images]
    images, masks = [], []
    for i in chosen:
        image, mask = dataset[i]
        x, y = preprocess(np.asarray(image), np.asarray(mask))
        images.append(x)
        masks.append(y)
    return _Images(np.stack(images).astype(np.float32), np.stack(masks), [dataset.item_name(i) for i in chosen], dataset_source(dataset))


def _calibration(calib_data, preprocess: Preprocess, config: ConvertConfig, progress: bool) -> CalibrationSet:
    if isinstance(calib_data, CalibrationSet):
        if calib_data.images.shape[2:] != tuple(config.input_size):
            raise UserError(
                f"{calib_data.source}: calibration images are {calib_data.images.shape[2:]}, the model input is "
                f"{tuple(config.input_size)}; preprocess them at --input-size"
            )
        return calib_data
    if not isinstance(calib_data, SegmentationDataset):
        raise UserError("--calib-data: expected a dataset split or a calibration array")
    return build_calibration_set(
        calib_data, preprocess, size=config.calib_size, seed=config.calib_seed, min_size=config.calib_min, progress=progress
    )


LOCALIZED_DRIFT_RATIO = 1e3  # max/mean drift above this, with every argmax equal: a flipped near-tie


def float64_noise_floor(model, images: np.ndarray) -> dict:
    """How far PyTorch's own float32 logits are from the same model computed in float64: the drift
    no runtime can be expected to beat (max abs difference, and as a fraction of the logit range)."""
    import copy

    import torch

    exact = copy.deepcopy(model).double().eval()
    worst, lo, hi = 0.0, np.inf, -np.inf
    with torch.no_grad():
        for i in range(len(images)):
            x = torch.from_numpy(images[i : i + 1])
            y32 = model(x).double()
            y64 = exact(x.double())
            worst = max(worst, float((y32 - y64).abs().max()))
            lo, hi = min(lo, float(y64.min())), max(hi, float(y64.max()))
    return {"max_abs": worst, "max_abs_over_range": worst / (hi - lo) if hi > lo else float("inf")}


def _explain_float_failure(
    report: ParityReport, prepared: PreparedOnnx, image_nhwc, deploy_model, config, log, parity_images=None
) -> dict | None:
    """Say where the first broken float stage went wrong; None when the float stages all pass."""
    broken = next((s for s in ("onnx", "saved_model", "float32") if s in report.stages and report.stages[s].gate == "fail"), None)
    if broken is None:
        return None
    if broken == "onnx":
        found = {
            "summary": "ONNX Runtime already differs from PyTorch: the deploy form or torch.onnx.export is at fault "
            "(compare model(x) with seg2tflite.models.deploy_form(model)(x) first)",
            "first": None,
        }
    elif broken == "saved_model":
        log("saved_model broke parity; locating the first diverging layer...")
        found = locate_divergence(prepared.model, image_nhwc, torch_model=deploy_model, rel_tol=config.float_max_drift)
    else:
        found = {
            "summary": "the SavedModel passes but model_float32.tflite does not: the TF -> TFLite converter changed "
            "the function (compare the SavedModel and TFLite outputs op by op)",
            "first": None,
        }
    drift = report.stages[broken].vs_pytorch
    if drift["argmax_agreement"] == 1.0 and drift["max_abs"] > LOCALIZED_DRIFT_RATIO * drift["mean_abs"]:
        floor_text = ""
        if deploy_model is not None and parity_images is not None:
            floor = found["float64_noise_floor"] = float64_noise_floor(deploy_model, parity_images)
            floor_text = (
                f" PyTorch's own float32 logits differ from float64 by {floor['max_abs']:.3g} "
                f"({floor['max_abs_over_range']:.3g} of the range) on the same images."
            )
        found["summary"] = (
            f"the drift sits in a few pixels (max {drift['max_abs']:.3g}, mean {drift['mean_abs']:.3g}) and every "
            "argmax agrees: the signature of a discontinuous op (max pooling or unpooling with near-tied windows) that "
            f"rounding differences of ~1e-7 flip, rather than of a wrong conversion.{floor_text} "
            f"Otherwise: {found['summary']}"
        )
    return {"stage": broken, **found}


def _run_chain(
    prepared: PreparedOnnx,
    torch_model,
    deploy_model,
    out_dir: Path,
    config: ConvertConfig,
    calib_data,
    parity_data: SegmentationDataset | None,
    preprocess: Preprocess,
    model_info: dict,
    command: list[str] | str | None,
    log: Callable[[str], None] | None,
    progress: bool,
    seconds: dict[str, float],
) -> ConvertResult:
    log = log or (lambda message: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    num_classes = prepared.num_classes
    for data in (calib_data, parity_data):
        dataset_classes = getattr(getattr(data, "info", None), "num_classes", None)
        if dataset_classes is not None and dataset_classes != num_classes:
            raise UserError(
                f"--num-classes: the model predicts {num_classes} classes but {dataset_source(data)} has "
                f"{dataset_classes}; pass --num-classes {dataset_classes} (or a checkpoint with that head)"
            )
    calib = _calibration(calib_data, preprocess, config, progress) if config.needs_calibration else None
    parity = _parity_images(calib_data, parity_data, calib, preprocess, config)
    seconds["data"] = time.perf_counter() - t
    if calib is not None:
        log(f"calibration: {len(calib)} images from {calib.source}")
    log(f"parity: {len(parity.images)} images from {parity.source}")

    cache = StageCache(out_dir)
    artifacts: dict[str, Path] = {}
    onnx_key = stage_key(prepared.model.SerializeToString())
    onnx_path = out_dir / ONNX_FILE
    if not cache.fresh("onnx", onnx_key):
        save_onnx(prepared.model, onnx_path)
        cache.record("onnx", onnx_key, [ONNX_FILE])
    artifacts["onnx"] = onnx_path
    for rewrite in prepared.rewrites:
        log(f"onnx rewrite: {rewrite}")

    t = time.perf_counter()
    sample = np.ascontiguousarray(parity.images.transpose(0, 2, 3, 1))  # onnx2tf's layout checks run on these
    saved_model = out_dir / SAVED_MODEL_DIR
    saved_model_key = stage_key(onnx_key, sample[:MAX_ONNX2TF_SAMPLES].tobytes(), _tool_versions())
    if cache.fresh("saved_model", saved_model_key):
        log(f"saved_model: unchanged since the last run, kept ({saved_model})")
    else:
        saved_model, onnx2tf_log = onnx_to_saved_model(prepared.model, saved_model, sample[:MAX_ONNX2TF_SAMPLES])
        atomic_write_text(out_dir / "onnx2tf.log", onnx2tf_log)
        cache.record("saved_model", saved_model_key, [SAVED_MODEL_DIR, "onnx2tf.log"])
        seconds["onnx2tf"] = time.perf_counter() - t
        log(f"saved_model: {saved_model} ({seconds['onnx2tf']:.1f}s)")
    artifacts["saved_model"] = saved_model

    calib_key = stage_key(calib.images.tobytes()) if calib is not None else None
    ops: dict[str, OpReport] = {}
    quantization: dict[str, dict] = {}
    delegates: dict[str, str] = {}
    for variant in config.variants:
        t = time.perf_counter()
        path = out_dir / tflite_name(variant)
        uses_calibration = variant in CALIBRATED_VARIANTS
        key = stage_key(saved_model_key, variant, calib_key if uses_calibration else None, config.int8_io)
        kept = cache.fresh(variant, key)
        if kept:
            content = path.read_bytes()
            log(f"{path.name}: unchanged since the last run, kept")
        else:
            content = build_tflite(saved_model, variant, calib, config.int8_io, progress)
        report = op_report(content)
        check_builtins_only(report, tflite_name(variant))
        if not kept:
            atomic_write_bytes(path, content)
            cache.record(variant, key, [path.name])
            seconds[variant] = time.perf_counter() - t
            log(f"{path.name}: {len(content) / 1e6:.2f} MB, {sum(report.counts.values())} ops ({seconds[variant]:.1f}s)")
        artifacts[variant] = path
        ops[variant] = report
        runner = TFLiteRunner(content)
        quantization[variant] = runner.io_quantization
        delegates[variant] = runner.delegate
        if runner.delegate != "xnnpack":
            log(f"{path.name}: LiteRT delegate {runner.delegate}")
    if "full_int8" in ops and ops["full_int8"].float_ops:
        log(f"full_int8: {len(ops['full_int8'].float_ops)} ops still run in float: {', '.join(ops['full_int8'].float_ops)}")

    t = time.perf_counter()
    built_files = {stage: cache.stages[stage]["files"] for stage in ("onnx", "saved_model", *config.variants)}
    parity_key = stage_key(
        built_files, parity.images.tobytes(), None if parity.masks is None else parity.masks.tobytes(),
        config.to_dict(), torch_model is not None,
    )  # fmt: skip
    if cache.fresh("parity", parity_key):
        report = ParityReport.from_dict(json.loads((out_dir / "parity.json").read_text()))
        log("parity: inputs unchanged since the last run, figures kept from parity.json")
    else:
        runners = {}
        if torch_model is not None:
            runners["pytorch"] = TorchRunner(torch_model)
        runners["onnx"] = OnnxRunner(onnx_path, config.num_threads)
        runners["saved_model"] = SavedModelRunner(saved_model)
        for variant in config.variants:
            runners[variant] = TFLiteRunner(artifacts[variant], config.num_threads)
        report = measure_parity(runners, parity.images, parity.masks, num_classes, image_names=parity.names, progress=progress)
        apply_gates(report, config)
        seconds["parity"] = time.perf_counter() - t
        if config.locate_divergence:
            t = time.perf_counter()
            report.divergence = _explain_float_failure(report, prepared, sample[:1], deploy_model, config, log, parity.images)
            if report.divergence is not None:
                seconds["divergence"] = time.perf_counter() - t
        write_json(out_dir / "parity.json", report.to_dict())
        cache.record("parity", parity_key, ["parity.json"])
    log(format_table(report))

    names = [ONNX_FILE, SAVED_MODEL_DIR] + [tflite_name(v) for v in config.variants]
    manifest = build_manifest(
        command=command,
        config=config.to_dict(),
        model=model_info,
        layouts={
            "pytorch": {"input": "NCHW float32 (1, 3, H, W), normalised", "output": "NCHW logits (1, K, H, W)"},
            "onnx": {"input": f"{prepared.input_name}: NCHW (1, 3, {config.input_size[0]}, {config.input_size[1]})",
                     "output": f"{prepared.output_name}: NCHW (1, {num_classes}, {config.input_size[0]}, {config.input_size[1]})"},
            "saved_model": {"input": f"NHWC (1, {config.input_size[0]}, {config.input_size[1]}, 3)",
                            "output": f"NHWC (1, {config.input_size[0]}, {config.input_size[1]}, {num_classes})",
                            "signature": "serving_default"},
            "tflite": {"input": f"NHWC (1, {config.input_size[0]}, {config.input_size[1]}, 3)",
                       "output": f"NHWC (1, {config.input_size[0]}, {config.input_size[1]}, {num_classes})"},
        },
        preprocessing={"size": list(preprocess.size), "mean": list(preprocess.mean), "std": list(preprocess.std)},
        quantization=quantization,
        litert_delegate=delegates,
        ops={v: r.to_dict() for v, r in ops.items()},
        onnx_rewrites=prepared.rewrites,
        calibration=None if calib is None else {
            "source": calib.source, "count": len(calib), "seed": config.calib_seed, "images": list(calib.names)
        },
        parity={"source": parity.source, "images": parity.names, "failures": report.failures,
                "divergence": (report.divergence or {}).get("summary")},
        artifacts=artifact_hashes(out_dir, names),
        stage_keys={stage: entry["key"] for stage, entry in cache.stages.items()},
        seconds=seconds,
    )
    write_json(out_dir / "manifest.json", manifest)
    result = ConvertResult(out_dir, artifacts, report, ops, manifest, seconds)
    try:
        raise_on_failure(report, where=str(out_dir / "parity.json"))
    except ParityError as e:
        e.result = result  # everything was written; callers may still read the figures
        raise
    return result


def convert_model(
    model,
    out_dir: str | Path,
    config: ConvertConfig,
    calib_data: SegmentationDataset | CalibrationSet,
    parity_data: SegmentationDataset | None = None,
    *,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    command: list[str] | str | None = None,
    model_info: dict | None = None,
    log: Callable[[str], None] | None = _log_default,
    progress: bool = True,
) -> ConvertResult:
    """Convert any PyTorch segmentation module (``forward(x) -> (B, K, H, W)`` logits).

    The ONNX graph is exported from ``model.to_deploy()`` when the model has one; PyTorch parity
    is measured against ``model`` itself. ``mean``/``std`` default to the model's registry config,
    else ImageNet's.
    """
    from seg2tflite.models.registry import IMAGENET_MEAN, IMAGENET_STD, deploy_form

    seconds: dict[str, float] = {}
    cfg = getattr(model, "model_config", None)
    mean = tuple(mean or getattr(cfg, "mean", IMAGENET_MEAN))
    std = tuple(std or getattr(cfg, "std", IMAGENET_STD))
    preprocess = Preprocess(tuple(config.input_size), mean, std)
    model = model.eval()
    t = time.perf_counter()
    deploy = deploy_form(model).eval()
    exported = export_onnx(deploy, config.input_size, config.opset)
    prepared = prepare_onnx(exported, config.input_size, f"{type(model).__name__} (exported)", config.onnx_rewrites)
    seconds["onnx_export"] = time.perf_counter() - t
    info = {
        "class": f"{type(model).__module__}.{type(model).__name__}",
        "deploy_class": f"{type(deploy).__module__}.{type(deploy).__name__}",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "num_classes": prepared.num_classes,
        **({"name": cfg.name, "family": cfg.family} if cfg is not None else {}),
        **(model_info or {}),
    }
    with no_network():
        return _run_chain(prepared, model, deploy, Path(out_dir), config, calib_data, parity_data, preprocess, info, command, log, progress, seconds)


def convert_onnx(
    onnx_path: str | Path,
    out_dir: str | Path,
    config: ConvertConfig,
    calib_data: SegmentationDataset | CalibrationSet,
    parity_data: SegmentationDataset | None = None,
    *,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    command: list[str] | str | None = None,
    model_info: dict | None = None,
    log: Callable[[str], None] | None = _log_default,
    progress: bool = True,
) -> ConvertResult:
    """Convert an existing ONNX file (NCHW image in, NCHW logits out); parity starts at ONNX Runtime."""
    seconds: dict[str, float] = {}
    prepared = prepare_onnx(load_onnx(onnx_path), config.input_size, str(onnx_path), config.onnx_rewrites)
    preprocess = Preprocess(tuple(config.input_size), tuple(mean), tuple(std))
    info = {"onnx_source": str(onnx_path), "num_classes": prepared.num_classes, **(model_info or {})}
    with no_network():
        return _run_chain(prepared, None, None, Path(out_dir), config, calib_data, parity_data, preprocess, info, command, log, progress, seconds)


def convert_registered(
    name: str,
    out_dir: str | Path,
    config: ConvertConfig,
    calib_data: SegmentationDataset | CalibrationSet,
    parity_data: SegmentationDataset | None = None,
    *,
    num_classes: int | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    command: list[str] | str | None = None,
    log: Callable[[str], None] | None = _log_default,
    progress: bool = True,
) -> ConvertResult:
    """``seg2tflite convert --model NAME``: build the registry model, save seeded weights, convert."""
    import torch

    from seg2tflite.models.checkpoint import save_checkpoint
    from seg2tflite.models.registry import create_model, get_model_config

    try:
        get_model_config(name)
    except KeyError as e:
        raise UserError(f"--model: {e.args[0]}") from None
    if checkpoint is not None and num_classes is None:
        from seg2tflite.models.checkpoint import read_checkpoint_config

        try:  # this project's checkpoint says its head size; other formats get the registry default
            num_classes = read_checkpoint_config(checkpoint).get("num_classes")
        except UserError:
            pass
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, checkpoint=None if checkpoint is None else str(checkpoint))
    info = {"checkpoint": str(checkpoint) if checkpoint else None, "seed": None if checkpoint else seed}
    if checkpoint is None:
        weights = save_checkpoint(model, Path(out_dir) / "model.safetensors", extra={"seed": seed})
        info["weights"] = weights.name
    return convert_model(model, out_dir, config, calib_data, parity_data, command=command, model_info=info, log=log, progress=progress)


def resolve_onnx_input_size(onnx_path: str | Path, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """The input size to convert an ONNX file at: the one given, else the one fixed in the file."""
    from seg2tflite.converters.onnx_export import onnx_input_size

    if input_size is not None:
        return tuple(int(s) for s in input_size)
    size = onnx_input_size(onnx_path)
    if size is None:
        model = load_onnx(onnx_path)
        graph_input = model.graph.input[0]
        dims = [d.dim_value or d.dim_param or "?" for d in graph_input.type.tensor_type.shape.dim]
        raise UserError(f"{onnx_path}: input {graph_input.name!r} has dynamic dimensions {dims}; pass --input-size H W")
    return size

