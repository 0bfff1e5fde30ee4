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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg2tflite.atomic import atomic_write_bytes, atomic_write_text
from seg2tflite.calibration.representative import (
    CalibrationSet,
    dataset_source,
)
from seg2tflite.converters.config import ConvertConfig
from seg2tflite.converters.divergence import explain_float_failure
from seg2tflite.converters.images import ParityImages, calibration_set, parity_images
from seg2tflite.converters.manifest import artifact_hashes, build_manifest, package_versions, write_json
from seg2tflite.converters.offline import no_network
from seg2tflite.converters.onnx_export import PreparedOnnx, export_onnx, load_onnx, prepare_onnx, save_onnx
from seg2tflite.converters.onnx_to_tf import onnx_to_saved_model
from seg2tflite.converters.ops import OpReport, check_builtins_only, op_report
from seg2tflite.converters.parity import ParityError, ParityReport, apply_gates, format_table, measure_parity, raise_on_failure
from seg2tflite.converters.resume import StageCache, stage_key
from seg2tflite.converters.runtimes import OnnxRunner, SavedModelRunner, TFLiteRunner, TorchRunner
from seg2tflite.converters.stages import ONNX2TF_LOG, PARITY_FILE, STAGES, ConversionDir
from seg2tflite.converters.tflite_variants import build_tflite
from seg2tflite.data.base import SegmentationDataset
from seg2tflite.data.preprocess import Preprocess
from seg2tflite.errors import UserError

MAX_ONNX2TF_SAMPLES = 20  # onnx2tf's own test-data slot holds 20 images


def _tool_versions() -> dict:
    """The converter versions a built artifact depends on (a new onnx2tf or TF rebuilds it)."""
    versions = package_versions()
    return {name: versions.get(name) for name in ("onnx2tf", "tensorflow", "tf-keras", "onnx", "onnxsim")}


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


def _log_default(message: str) -> None:
    print(message, flush=True)


def _quiet(message: str) -> None:
    pass


@dataclass
class _Chain:
    """One conversion under way: what its steps share. The steps run in the order of ``run``."""

    prepared: PreparedOnnx
    torch_model: object | None  # the module parity is measured against (None for an ONNX input)
    deploy_model: object | None  # the module the ONNX graph was exported from
    folder: ConversionDir
    config: ConvertConfig
    preprocess: Preprocess
    log: Callable[[str], None]
    progress: bool
    seconds: dict[str, float]
    cache: StageCache | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # stage -> what it was built from (resume)
    ops: dict[str, OpReport] = field(default_factory=dict)
    quantization: dict[str, dict] = field(default_factory=dict)
    delegation: dict[str, dict] = field(default_factory=dict)  # variant -> what XNNPACK took

    def run(self, calib_data, parity_data, model_info: dict, command) -> ConvertResult:
        self.folder.path.mkdir(parents=True, exist_ok=True)
        calib, parity = self.read_data(calib_data, parity_data)
        self.cache = StageCache(self.folder.path)
        self.write_onnx()
        sample = np.ascontiguousarray(parity.images.transpose(0, 2, 3, 1))  # NHWC: onnx2tf checks its layouts on these
        self.build_saved_model(sample)
        for variant in self.config.variants:
            self.build_tflite(variant, calib)
        full_int8 = self.ops.get("full_int8")
        if full_int8 is not None and full_int8.float_ops:
            self.log(f"full_int8: {len(full_int8.float_ops)} ops still run in float: {', '.join(full_int8.float_ops)}")
        report = self.check_parity(parity, sample)
        manifest = self.write_manifest(report, calib, parity, model_info, command)
        result = ConvertResult(self.folder.path, self.artifacts, report, self.ops, manifest, self.seconds)
        try:
            raise_on_failure(report, where=str(self.folder.parity_path))
        except ParityError as e:
            e.result = result  # everything was written; callers may still read the figures
            raise
        return result

    def read_data(self, calib_data, parity_data) -> tuple[CalibrationSet | None, ParityImages]:
        t = time.perf_counter()
        num_classes = self.prepared.num_classes
        for data in (calib_data, parity_data):
            dataset_classes = getattr(getattr(data, "info", None), "num_classes", None)
            if dataset_classes is not None and dataset_classes != num_classes:
                raise UserError(
                    f"--num-classes: the model predicts {num_classes} classes but {dataset_source(data)} has "
                    f"{dataset_classes}; pass --num-classes {dataset_classes} (or a checkpoint with that head)"
                )
        config = self.config
        calib = calibration_set(calib_data, self.preprocess, config, self.progress) if config.needs_calibration else None
        parity = parity_images(calib_data, parity_data, calib, self.preprocess, config)
        self.seconds["data"] = time.perf_counter() - t
        if calib is not None:
            self.log(f"calibration: {len(calib)} images from {calib.source}")
        self.log(f"parity: {len(parity.images)} images from {parity.source}")
        return calib, parity

    def write_onnx(self) -> None:
        key = self.keys["onnx"] = stage_key(self.prepared.model.SerializeToString())
        path = self.artifacts["onnx"] = self.folder.artifact("onnx")
        if not self.cache.fresh("onnx", key):
            save_onnx(self.prepared.model, path)
            self.cache.record("onnx", key, [path.name])
        for rewrite in self.prepared.rewrites:
            self.log(f"onnx rewrite: {rewrite}")

    def build_saved_model(self, sample: np.ndarray) -> None:
        t = time.perf_counter()
        samples = sample[:MAX_ONNX2TF_SAMPLES]
        path = self.folder.artifact("saved_model")
        key = self.keys["saved_model"] = stage_key(self.keys["onnx"], samples.tobytes(), _tool_versions())
        if self.cache.fresh("saved_model", key):
            self.log(f"saved_model: unchanged since the last run, kept ({path})")
        else:
            path, onnx2tf_log = onnx_to_saved_model(self.prepared.model, path, samples)
            atomic_write_text(self.folder / ONNX2TF_LOG, onnx2tf_log)
            self.cache.record("saved_model", key, [path.name, ONNX2TF_LOG])
            self.seconds["onnx2tf"] = time.perf_counter() - t
            self.log(f"saved_model: {path} ({self.seconds['onnx2tf']:.1f}s)")
        self.artifacts["saved_model"] = path

    def build_tflite(self, variant: str, calib: CalibrationSet | None) -> None:
        t = time.perf_counter()
        path = self.folder.artifact(variant)
        calibrated = STAGES[variant].calibrated
        calib_key = stage_key(calib.images.tobytes()) if calibrated else None
        key = self.keys[variant] = stage_key(self.keys["saved_model"], variant, calib_key, self.config.int8_io)
        kept = self.cache.fresh(variant, key)
        if kept:
            content = path.read_bytes()
            self.log(f"{path.name}: unchanged since the last run, kept")
        else:
            content = build_tflite(self.artifacts["saved_model"], variant, calib, self.config.int8_io, self.progress)
        report = op_report(content)
        check_builtins_only(report, path.name)
        if not kept:
            atomic_write_bytes(path, content)
            self.cache.record(variant, key, [path.name])
            self.seconds[variant] = time.perf_counter() - t
            self.log(
                f"{path.name}: {len(content) / 1e6:.2f} MB, {sum(report.counts.values())} ops ({self.seconds[variant]:.1f}s)"
            )
        self.artifacts[variant] = path
        self.ops[variant] = report
        runner = TFLiteRunner(content)
        self.quantization[variant] = runner.io_quantization
        delegation = self.delegation[variant] = runner.delegation
        if runner.delegate != "xnnpack":
            self.log(f"{path.name}: LiteRT delegate {runner.delegate}")
        elif delegation["delegated"] < delegation["ops"]:
            kept = ", ".join(f"{n} {op}" for op, n in delegation["not_delegated"].items())
            self.log(
                f"{path.name}: XNNPACK takes {delegation['delegated']} of {delegation['ops']} ops; builtin kernels run {kept}"
            )

    def check_parity(self, parity: ParityImages, sample: np.ndarray) -> ParityReport:
        """Every artifact against PyTorch (kept from parity.json when nothing changed), gated."""
        t = time.perf_counter()
        config = self.config
        built_files = {stage: self.cache.stages[stage]["files"] for stage in ("onnx", "saved_model", *config.variants)}
        key = stage_key(
            built_files, parity.images.tobytes(), None if parity.masks is None else parity.masks.tobytes(),
            config.to_dict(), self.torch_model is not None,
        )  # fmt: skip
        if self.cache.fresh("parity", key):
            report = ParityReport.from_dict(json.loads(self.folder.parity_path.read_text()))
            self.log("parity: inputs unchanged since the last run, figures kept from parity.json")
            self.log(format_table(report, self.config))
            return report
        runners = {}
        if self.torch_model is not None:
            runners["pytorch"] = TorchRunner(self.torch_model)
        runners["onnx"] = OnnxRunner(self.artifacts["onnx"], config.num_threads)
        runners["saved_model"] = SavedModelRunner(self.artifacts["saved_model"])
        builtin = {}  # a file XNNPACK took nothing of already ran on the builtin kernels alone
        for variant in config.variants:
            runners[variant] = TFLiteRunner(self.artifacts[variant], config.num_threads)
            if self.delegation[variant]["delegated"]:
                builtin[variant] = TFLiteRunner(self.artifacts[variant], config.num_threads, xnnpack=False)
        report = measure_parity(
            runners, parity.images, parity.masks, self.prepared.num_classes, image_names=parity.names,
            progress=self.progress, builtin=builtin, config=config,
        )  # fmt: skip
        report.delegation = dict(self.delegation)
        apply_gates(report, config)
        self.seconds["parity"] = time.perf_counter() - t
        if config.locate_divergence:
            t = time.perf_counter()
            report.divergence = explain_float_failure(
                report, self.prepared.model, sample[:1], self.deploy_model, config, self.log, parity.images
            )
            if report.divergence is not None:
                self.seconds["divergence"] = time.perf_counter() - t
        write_json(self.folder.parity_path, report.to_dict())
        self.cache.record("parity", key, [PARITY_FILE])
        self.log(format_table(report, self.config))
        return report

    def write_manifest(self, report: ParityReport, calib, parity: ParityImages, model_info: dict, command) -> dict:
        config, (h, w), k = self.config, self.config.input_size, self.prepared.num_classes
        names = [self.artifacts[stage].name for stage in ("onnx", "saved_model", *config.variants)]
        manifest = build_manifest(
            command=command,
            config=config.to_dict(),
            model=model_info,
            layouts={
                "pytorch": {"input": "NCHW float32 (1, 3, H, W), normalised", "output": "NCHW logits (1, K, H, W)"},
                "onnx": {"input": f"{self.prepared.input_name}: NCHW (1, 3, {h}, {w})",
                         "output": f"{self.prepared.output_name}: NCHW (1, {k}, {h}, {w})"},
                "saved_model": {"input": f"NHWC (1, {h}, {w}, 3)", "output": f"NHWC (1, {h}, {w}, {k})", "signature": "serving_default"},
                "tflite": {"input": f"NHWC (1, {h}, {w}, 3)", "output": f"NHWC (1, {h}, {w}, {k})"},
            },
            preprocessing={"size": list(self.preprocess.size), "mean": list(self.preprocess.mean), "std": list(self.preprocess.std)},
            quantization=self.quantization,
            litert_delegation=self.delegation,
            ops={v: r.to_dict() for v, r in self.ops.items()},
            onnx_rewrites=self.prepared.rewrites,
            calibration=None if calib is None else {
                "source": calib.source, "count": len(calib), "seed": config.calib_seed, "images": list(calib.names)
            },
            parity={"source": parity.source, "images": parity.names, "failures": report.failures,
                    "divergence": (report.divergence or {}).get("summary")},
            artifacts=artifact_hashes(self.folder.path, names),
            stage_keys={stage: entry["key"] for stage, entry in self.cache.stages.items()},
            seconds=self.seconds,
        )  # fmt: skip
        write_json(self.folder.manifest_path, manifest)
        return manifest


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
        chain = _Chain(prepared, model, deploy, ConversionDir(out_dir), config, preprocess, log or _quiet, progress, seconds)
        return chain.run(calib_data, parity_data, info, command)


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
        chain = _Chain(prepared, None, None, ConversionDir(out_dir), config, preprocess, log or _quiet, progress, seconds)
        return chain.run(calib_data, parity_data, info, command)


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
    from seg2tflite.models.registry import check_input_size, create_model, get_model_config

    try:
        get_model_config(name)
    except KeyError as e:
        raise UserError(f"--model: {e.args[0]}") from None
    check_input_size(name, config.input_size)
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
        weights = save_checkpoint(model, ConversionDir(out_dir).artifact("pytorch"), extra={"seed": seed})
        info["weights"] = weights.name
    return convert_model(
        model, out_dir, config, calib_data, parity_data, command=command, model_info=info, log=log, progress=progress
    )


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
