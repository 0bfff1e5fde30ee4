"""One conversion under way, step by step: data, ONNX, SavedModel, each .tflite, parity, manifest.

``Chain.run`` takes the steps in order; each step records what it built in ``stages.json`` (see
``resume``), so a re-run keeps what is whole and unchanged. Every .tflite is built and first
loaded in a child process (``isolated``), so a native crash fails only that variant.
The parity step (every artifact against PyTorch, gated, and what explains a failure) is
``chain_parity.ParitySteps``, which ``Chain`` takes in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg2tflite.atomic import atomic_write_bytes, atomic_write_text, private_tempdir
from seg2tflite.calibration.representative import CalibrationSet
from seg2tflite.converters.app_io import AppIO
from seg2tflite.converters.chain_parity import ParitySteps
from seg2tflite.converters.checks import check_class_count, check_module_classes
from seg2tflite.converters.config import ConvertConfig
from seg2tflite.converters.gpu_check import gpu_compatibility, gpu_line
from seg2tflite.converters.images import ParityImages, calibration_set, parity_images, resolve_data
from seg2tflite.converters.int8_range_rules import RULES_REVISION
from seg2tflite.converters.int8_ranges import RANGES_FILE
from seg2tflite.converters.int8_sensitivity import SENSITIVITY_FILE
from seg2tflite.converters.isolated import VariantError, VariantFailure, VariantWorker, failure_message
from seg2tflite.converters.manifest import artifact_hashes, build_manifest, package_versions, write_json
from seg2tflite.converters.metadata import ModelMetadata, class_labels, model_metadata
from seg2tflite.converters.onnx_export import PreparedOnnx, save_onnx
from seg2tflite.converters.onnx_to_tf import ConversionError, onnx_to_saved_model
from seg2tflite.converters.ops import OpReport, check_builtins_only, op_report
from seg2tflite.converters.parity import ParityError, ParityReport, format_table, raise_on_failure
from seg2tflite.converters.resume import StageCache, stage_key
from seg2tflite.converters.runtimes import TFLiteRunner
from seg2tflite.converters.stages import (
    INTEGER_FORM,
    INTEGER_VARIANTS,
    MANIFEST_FILE,
    ONNX2TF_LOGS,
    PARITY_FILE,
    REFERENCE,
    STAGES,
    ConversionDir,
)
from seg2tflite.data.preprocess import Preprocess

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
    variant_failures: dict[str, dict] = field(default_factory=dict)  # variant -> VariantFailure.to_dict()

    @property
    def table(self) -> str:
        return format_table(self.parity)


def names_written(config: ConvertConfig, weights: bool) -> list[str]:
    """Every name a conversion with ``config`` may write into its folder (``weights``: the seeded
    PyTorch weights too); ``StageCache.claim`` refuses a file of the user's under any of them."""
    reference = STAGES[REFERENCE].file
    names = [reference, str(Path(reference).with_suffix(".json"))] if weights else []
    saved_models = ("saved_model", INTEGER_FORM) if set(config.variants) & set(INTEGER_VARIANTS) else ("saved_model",)
    names += [STAGES[s].file for s in ("onnx", *saved_models, *config.variants)]
    names += [RANGES_FILE, SENSITIVITY_FILE] if "full_int8" in config.variants else []
    return names + [ONNX2TF_LOGS[s] for s in saved_models] + [PARITY_FILE, MANIFEST_FILE]


@dataclass
class Chain(ParitySteps):
    """One conversion under way: what its steps share. The steps run in the order of ``run``."""

    prepared: PreparedOnnx
    integer_form: PreparedOnnx | None  # the integer variants' ONNX graph, when they are built and it is another
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
    gpu: dict[str, dict] = field(default_factory=dict)  # variant -> what the GPU delegate's checks refuse
    failures: dict[str, VariantFailure] = field(default_factory=dict)  # variants that crashed or cannot load
    worker: VariantWorker | None = None  # builds and first loads each variant in a child process
    before_writing: Callable[[], dict] | None = None  # runs after the last refusal, before the first write
    model_source: str = ""  # the ONNX file converted, for messages
    metadata: ModelMetadata | None = None  # written into every .tflite (config.metadata)
    int8_ranges: dict | None = None  # how full int8's activation ranges were chosen (RANGES_FILE)
    # builds ``integer_form`` and names its class from the calibration images, once they are read
    export_integer_form: Callable[[np.ndarray | None], tuple[PreparedOnnx, str] | None] | None = None

    @property
    def app(self) -> AppIO:
        """The app's ends of every .tflite (``--input``, ``--output``), with this conversion's
        normalisation and class count."""
        mean, std = tuple(self.preprocess.mean), tuple(self.preprocess.std)
        return AppIO(self.config.image_input, self.config.image_output, mean, std, self.prepared.num_classes)

    def run(self, calib_data, parity_data, model_info: dict, command) -> ConvertResult:
        onnx_source = None if self.torch_model is not None else self.model_source
        calib_data, parity_data = resolve_data(calib_data, parity_data, self.config)
        if model_info.get("module"):  # a model of the user's own: --num-classes cannot change its head
            check_module_classes(model_info["module"], self.prepared.num_classes, (calib_data, parity_data))
        check_class_count(self.prepared.num_classes, (calib_data, parity_data), onnx_source)
        calib, parity = self.read_data(calib_data, parity_data)
        if self.export_integer_form is not None:
            t = time.perf_counter()
            integer = self.export_integer_form(None if calib is None else calib.images)
            self.seconds["onnx_export"] = self.seconds.get("onnx_export", 0.0) + time.perf_counter() - t
            if integer is not None:  # the integer variants get a form of their own (INTEGER_FORM)
                self.integer_form, model_info = integer[0], {**model_info, "integer_deploy_class": integer[1]}
        if self.config.metadata:
            labels = class_labels(self.prepared.num_classes, calib_data, parity_data)
            self.metadata = model_metadata(model_info, labels, self.preprocess.mean, self.preprocess.std)
        self.folder.path.mkdir(parents=True, exist_ok=True)
        self.cache = StageCache(self.folder.path)
        self.cache.claim(self.names_written())  # a file of the user's in the way is refused, never replaced
        if self.before_writing is not None:
            model_info = {**model_info, **self.before_writing()}
        self.forget_other_runs(model_info)
        self.write_onnx()
        sample = np.ascontiguousarray(parity.images.transpose(0, 2, 3, 1))  # NHWC: onnx2tf checks its layouts on these
        self.build_saved_model("saved_model", self.prepared, self.keys["onnx"], sample)
        if self.integer_form is not None:
            onnx_key = stage_key(self.integer_form.model.SerializeToString())
            self.build_saved_model(INTEGER_FORM, self.integer_form, onnx_key, sample)
        with private_tempdir("variants") as work, VariantWorker(work, self.progress) as worker:
            self.worker = worker
            worker.set_calibration(None if calib is None else calib.images, "" if calib is None else calib.source)
            for variant in self.config.variants:
                self.build_tflite(variant, calib)
        full_int8 = self.ops.get("full_int8")
        if full_int8 is not None and full_int8.float_ops:
            self.log(f"full_int8: {len(full_int8.float_ops)} ops still run in float: {', '.join(full_int8.float_ops)}")
        if full_int8 is not None and full_int8.float_islands:
            islands = ", ".join(f"{count} {name}" for name, count in full_int8.float_islands.items())
            self.log(f"full_int8: int8 ops computed in float32 for XNNPACK (int8 in and out): {islands}")
        report = self.check_parity(parity, sample)
        manifest = self.write_manifest(report, calib, parity, model_info, command)
        result = ConvertResult(self.folder.path, self.artifacts, report, self.ops, manifest, self.seconds, self.failure_dicts)
        try:
            if self.failures:
                raise VariantError(failure_message(self.failures, len(self.config.variants), self.folder.manifest_path, report))
            raise_on_failure(report, where=str(self.folder.parity_path))
        except ParityError as e:
            e.result = result  # everything was written; callers may still read the figures
            raise
        return result

    def names_written(self) -> list[str]:
        """Every name this conversion may write into its folder."""
        return names_written(self.config, weights=self.before_writing is not None)

    @property
    def built(self) -> tuple[str, ...]:
        """The variants built and checked (all asked for, less those that failed)."""
        return tuple(v for v in self.config.variants if v not in self.failures)

    @property
    def saved_models(self) -> tuple[str, ...]:
        """The SavedModel stages this conversion builds."""
        return ("saved_model", INTEGER_FORM) if self.integer_form is not None else ("saved_model",)

    @property
    def failure_dicts(self) -> dict[str, dict]:
        return {variant: failure.to_dict() for variant, failure in self.failures.items()}

    def fail_variant(self, variant: str, failure: VariantFailure) -> None:
        """A variant that crashed or cannot be loaded: no file of it stays, the others go on."""
        self.failures[variant] = failure
        self.cache.forget(variant)
        self.folder.artifact(variant).unlink(missing_ok=True)
        self.log(f"{self.folder.artifact(variant).name}: FAILED, not kept: {failure.line()}")

    def read_data(self, calib_data, parity_data) -> tuple[CalibrationSet | None, ParityImages]:
        t = time.perf_counter()
        config = self.config
        calib = calibration_set(calib_data, self.preprocess, config, self.progress) if config.needs_calibration else None
        parity = parity_images(calib_data, parity_data, calib, self.preprocess, config)
        self.seconds["data"] = time.perf_counter() - t
        if calib is not None:
            self.log(f"calibration: {len(calib)} images from {calib.source}")
        self.log(f"parity: {len(parity.images)} images from {parity.source}")
        return calib, parity

    def forget_other_runs(self, model_info: dict) -> None:
        """Record the weights this run saved (the PyTorch stage), then delete what an earlier run
        into this folder built that this one does not: no file of another run stays beside this one."""
        stages = ["onnx", *self.saved_models, *self.config.variants, "parity"]
        weights = model_info.get("weights")
        if weights:
            names = [weights, Path(weights).with_suffix(".json").name]
            self.cache.record("pytorch", stage_key(artifact_hashes(self.folder.path, names)), names)
            stages.append("pytorch")
        checkpoint = model_info.get("checkpoint")
        keep = (Path(checkpoint), Path(checkpoint).with_suffix(".json")) if checkpoint else ()
        for name in self.cache.forget_others(stages, keep):
            self.log(f"{name}: removed, left by an earlier conversion into this folder that this one does not build")

    def write_onnx(self) -> None:
        key = self.keys["onnx"] = stage_key(self.prepared.model.SerializeToString())
        path = self.artifacts["onnx"] = self.folder.artifact("onnx")
        if not self.cache.fresh("onnx", key):
            save_onnx(self.prepared.model, path)
            self.cache.record("onnx", key, [path.name])
        for rewrite in self.prepared.rewrites:
            self.log(f"onnx rewrite: {rewrite}")

    def build_saved_model(self, stage: str, prepared: PreparedOnnx, onnx_key: str, sample: np.ndarray) -> None:
        """onnx2tf: ``prepared`` into the SavedModel of ``stage`` (``saved_model`` or ``INTEGER_FORM``)."""
        t = time.perf_counter()
        samples = sample[:MAX_ONNX2TF_SAMPLES]
        path, log = self.folder.artifact(stage), ONNX2TF_LOGS[stage]
        key = self.keys[stage] = stage_key(onnx_key, samples.tobytes(), _tool_versions())
        if self.cache.fresh(stage, key):
            self.log(f"{stage}: unchanged since the last run, kept ({path})")
        else:
            try:
                path, onnx2tf_log = onnx_to_saved_model(prepared.model, path, samples, workarounds=self.config.onnx_rewrites)
            except ConversionError as e:  # its log stays in the folder, named in the one line
                atomic_write_text(self.folder / log, e.log)
                raise ConversionError(f"{e}; onnx2tf's whole log: {self.folder / log}", e.log) from None
            atomic_write_text(self.folder / log, onnx2tf_log)
            self.cache.record(stage, key, [path.name, log])
            seconds = self.seconds[ONNX2TF_LOGS[stage].removesuffix(".log")] = time.perf_counter() - t
            self.log(f"{stage}: {path} ({seconds:.1f}s)")
        self.artifacts[stage] = path

    def build_tflite(self, variant: str, calib: CalibrationSet | None) -> None:
        t = time.perf_counter()
        path = self.folder.artifact(variant)
        calibrated = STAGES[variant].calibrated
        calib_key = stage_key(calib.images.tobytes()) if calibrated else None
        app, metadata = self.app, None if self.metadata is None else self.metadata.to_dict()
        ranges = (self.config.int8_ranges, self.config.int8_bias_correction, RULES_REVISION) if variant == "full_int8" else ()
        source = INTEGER_FORM if STAGES[variant].integer and INTEGER_FORM in self.artifacts else "saved_model"
        key = self.keys[variant] = stage_key(
            self.keys[source], variant, calib_key, self.config.int8_io, app.to_dict(), metadata, *ranges
        )
        kept = self.cache.fresh(variant, key)
        app_job = None if app.default else app.to_dict()
        if kept:
            outcome = self.worker.check(path, variant, app_job)  # a LiteRT upgrade may not take it any more
        else:
            outcome = self.worker.build(
                self.artifacts[source], variant, self.config.int8_io, app_job, metadata, self.config.int8_ranges,
                self.config.int8_bias_correction,
            )  # fmt: skip
        if isinstance(outcome, VariantFailure):
            self.fail_variant(variant, outcome)
            return
        content = outcome.content
        if kept:
            self.log(f"{path.name}: unchanged since the last run, kept")
        report = op_report(content)
        check_builtins_only(report, path.name)
        names = [path.name]
        if variant == "full_int8":
            names.append(RANGES_FILE)
            self.int8_ranges = self.record_ranges(outcome.int8_ranges, kept)
        if not kept:
            atomic_write_bytes(path, content)
            self.cache.record(variant, key, names)
            self.seconds[variant] = time.perf_counter() - t
            self.log(
                f"{path.name}: {len(content) / 1e6:.2f} MB, {sum(report.counts.values())} ops ({self.seconds[variant]:.1f}s)"
            )
        self.artifacts[variant] = path
        self.ops[variant] = report
        self.quantization[variant] = outcome.quantization
        # the worker has loaded it safely; read back what XNNPACK took of it here
        delegation = self.delegation[variant] = TFLiteRunner(content, app=self.app).delegation
        gpu = self.gpu[variant] = gpu_compatibility(content)
        if (gpu["checked"] and not gpu["compatible"]) or gpu.get("outside_gpu_rules"):
            self.log(gpu_line(path.name, gpu))
        if outcome.delegate != "xnnpack":
            self.log(f"{path.name}: LiteRT delegate {outcome.delegate}")
        elif delegation["delegated"] < delegation["ops"]:
            kept = ", ".join(f"{n} {op}" for op, n in delegation["not_delegated"].items())
            self.log(
                f"{path.name}: XNNPACK takes {delegation['delegated']} of {delegation['ops']} ops; builtin kernels run {kept}"
            )

    def record_ranges(self, built: dict | None, kept: bool) -> dict | None:
        """How full int8's activation ranges were chosen: written beside the file when it is built,
        read back when it is kept; logged once."""
        path = self.folder.path / RANGES_FILE
        if kept:
            try:
                built = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
        else:
            atomic_write_text(path, json.dumps(built, indent=2) + "\n")
        if built and built.get("held_out_scores"):
            scores = ", ".join(f"{m} {s['disagreement']:.2%}" for m, s in built["held_out_scores"].items())
            self.log(f"full_int8: {built['method']} activation ranges (held-out pixels off the float argmax: {scores})")
        elif built:
            self.log(f"full_int8: {built['method']} activation ranges")
        return built

    def tflite_output_layout(self) -> str:
        """What every .tflite returns (``--output``), read from a built file for the low-res stride."""
        (h, w), k = self.config.input_size, self.prepared.num_classes
        if self.app.output == "classes":
            return f"(1, {h}, {w}) int32 class ids (ARG_MAX in the graph)"
        if self.app.output == "lowres" and self.built:
            shape = TFLiteRunner(self.artifacts[self.built[0]], app=self.app).output["shape"]
            stride = h // int(shape[1])
            return f"NHWC (1, {shape[1]}, {shape[2]}, {k}) logits at output stride {stride}" + (
                " (upsample bilinear, half-pixel centers)" if stride > 1 else " (no trailing resize to cut)"
            )
        return f"NHWC (1, {h}, {w}, {k})"

    def write_manifest(self, report: ParityReport, calib, parity: ParityImages, model_info: dict, command) -> dict:
        config, (h, w), k = self.config, self.config.input_size, self.prepared.num_classes
        names = [self.artifacts[stage].name for stage in ("onnx", *self.saved_models, *self.built)]
        manifest = build_manifest(
            command=command,
            config=config.to_dict(),
            model=model_info,
            layouts={
                "pytorch": {"input": "NCHW float32 (1, 3, H, W), normalised", "output": "NCHW logits (1, K, H, W)"},
                "onnx": {"input": f"{self.prepared.input_name}: NCHW (1, 3, {h}, {w})",
                         "output": f"{self.prepared.output_name}: NCHW (1, {k}, {h}, {w})"},
                "saved_model": {"input": f"NHWC (1, {h}, {w}, 3)", "output": f"NHWC (1, {h}, {w}, {k})", "signature": "serving_default"},
                "tflite": {"input": f"NHWC (1, {h}, {w}, 3)" + (" uint8 RGB pixels 0..255" if self.app.input == "uint8" else ""),
                           "output": self.tflite_output_layout()},
            },
            app=None if self.app.default else self.app.to_dict(),
            tflite_metadata=None if self.metadata is None else self.metadata.to_dict(),
            preprocessing={"size": list(self.preprocess.size), "mean": list(self.preprocess.mean), "std": list(self.preprocess.std)},
            quantization=self.quantization,
            int8_ranges=self.int8_ranges,
            litert_delegation=self.delegation,
            gpu_delegate=self.gpu,
            ops={v: r.to_dict() for v, r in self.ops.items()},
            onnx_rewrites=self.prepared.rewrites,
            calibration=None if calib is None else {
                "source": calib.source, "count": len(calib), "seed": config.calib_seed, "images": list(calib.names)
            },
            parity={"source": parity.source, "images": parity.names, "failures": report.failures,
                    "divergence": (report.divergence or {}).get("summary")},
            artifacts=artifact_hashes(self.folder.path, names),
            variant_failures=self.failure_dicts,
            stage_keys={stage: entry["key"] for stage, entry in self.cache.stages.items()},
            seconds=self.seconds,
        )  # fmt: skip
        write_json(self.folder.manifest_path, manifest)
        return manifest
