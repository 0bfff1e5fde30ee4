"""The whole chain in one call: PyTorch -> ONNX -> SavedModel -> five .tflite, parity, manifest.

``convert_model`` takes any PyTorch segmentation module (registry model, torchvision, timm...),
``convert_onnx`` an existing ONNX file, ``convert_registered`` a registry name (built from a
checkpoint or from a seed, in which case the weights are saved beside the artifacts). All write
into ``out_dir``: model.onnx, saved_model/, model_<variant>.tflite, parity.json, manifest.json,
onnx2tf.log. Gates are checked after everything is written, so a failing run still leaves its
figures behind; then ``ParityError`` (a ``UserError``) is raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from seg2tflite.calibration.representative import CalibrationSet
from seg2tflite.converters.chain import Chain, ConvertResult
from seg2tflite.converters.checks import check_class_count, check_finite_weights
from seg2tflite.converters.config import ConvertConfig
from seg2tflite.converters.offline import no_network
from seg2tflite.converters.onnx_export import PreparedOnnx, export_onnx, load_onnx, prepare_onnx
from seg2tflite.converters.outputs import adapt_outputs
from seg2tflite.converters.stages import INTEGER_VARIANTS, ConversionDir
from seg2tflite.data.base import SegmentationDataset
from seg2tflite.data.preprocess import Preprocess
from seg2tflite.errors import UserError, setting
from seg2tflite.records import sha256_file


def _log_default(message: str) -> None:
    print(message, flush=True)


def _quiet(message: str) -> None:
    pass


def _class_name(module) -> str:
    return f"{type(module).__module__}.{type(module).__name__}"


def check_out_dir(out_dir: str | Path, config: ConvertConfig, weights: bool) -> None:
    """Before any export: refuse a record in ``out_dir`` that names files outside it, and a file of
    the user's in the way of one this conversion writes (``Chain.run`` claims the names later)."""
    from seg2tflite.converters.chain import names_written
    from seg2tflite.converters.resume import StageCache

    if Path(out_dir).is_dir():
        StageCache(Path(out_dir)).check(names_written(config, weights))


def convert_model(
    model,
    out_dir: str | Path,
    config: ConvertConfig,
    calib_data: SegmentationDataset | CalibrationSet | str | np.ndarray,
    parity_data: SegmentationDataset | str | None = None,
    *,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    command: list[str] | str | None = None,
    model_info: dict | None = None,
    log: Callable[[str], None] | None = _log_default,
    progress: bool = True,
    before_writing: Callable[[], dict] | None = None,
) -> ConvertResult:
    """Convert any PyTorch segmentation module: ``forward(x)`` returns (B, K, H, W) logits, or a
    tuple/dict/object holding them (``outputs.find_logits``; ``config.output_key`` names the key),
    at input resolution or, with ``config.upsample_logits``, lower. ``calib_data`` is a dataset
    split, a data spec string (``"folder:PATH"``, calibrated from ``config.calib_split``), a
    ``CalibrationSet`` or a (N, 3, H, W) float32 array of preprocessed images; ``parity_data`` a
    split or a spec string (its ``val`` split), else parity images come from the calibration data.

    The ONNX graph is exported from ``model.to_deploy()`` when the model has one, and the integer
    variants' from ``to_deploy(integer=True)`` when that is another form; PyTorch parity is
    measured against ``model`` itself. ``mean``/``std`` default to the model's registry config,
    else ImageNet's. ``before_writing()`` runs once everything that can be refused was checked,
    before the first file goes into ``out_dir``; what it returns is added to the model info.
    """
    from seg2tflite.models.registry import IMAGENET_MEAN, IMAGENET_STD, deploy_form, integer_form

    check_out_dir(out_dir, config, weights=before_writing is not None)
    seconds: dict[str, float] = {}
    cfg = getattr(model, "model_config", None)
    mean = tuple(mean or getattr(cfg, "mean", IMAGENET_MEAN))
    std = tuple(std or getattr(cfg, "std", IMAGENET_STD))
    preprocess = Preprocess(tuple(config.input_size), mean, std)
    model = model.eval()
    check_finite_weights(model)
    t = time.perf_counter()
    deploy = deploy_form(model, config.opset).eval()
    classes = {"class": _class_name(model), "deploy_class": _class_name(deploy)}
    source = f"{classes['class'].rsplit('.', 1)[1]} (exported)"
    trained = model

    def export_integer_form(calibration: np.ndarray | None) -> tuple[PreparedOnnx, str] | None:
        """The integer variants' own graph (INTEGER_FORM) and its class, when the model has one;
        a form may be fitted to the calibration images (N, 3, H, W)."""
        import torch

        images = None if calibration is None else torch.from_numpy(np.ascontiguousarray(calibration))
        integer = integer_form(trained, config.opset, images)
        if integer is None:
            return None
        adapted = adapt_outputs(trained, integer.eval(), config.input_size, config.output_key, config.upsample_logits)[1]
        exported = export_onnx(adapted, config.input_size, config.opset, [])
        return prepare_onnx(exported, config.input_size, f"{source}, int8 form", config.onnx_rewrites), _class_name(integer)

    model, deploy, output = adapt_outputs(model, deploy, config.input_size, config.output_key, config.upsample_logits)
    export_notes: list[str] = []
    exported = export_onnx(deploy, config.input_size, config.opset, export_notes)
    prepared = prepare_onnx(exported, config.input_size, source, config.onnx_rewrites)
    prepared.rewrites[:0] = export_notes
    seconds["onnx_export"] = time.perf_counter() - t
    info = {
        **classes,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "output": output.to_dict(),
        "num_classes": prepared.num_classes,
        **({"name": cfg.name, "family": cfg.family} if cfg is not None else {}),
        **(model_info or {}),
    }
    checkpoint = info.get("checkpoint")
    if isinstance(checkpoint, str) and "checkpoint_sha256" not in info and Path(checkpoint).is_file():
        info["checkpoint_sha256"] = sha256_file(checkpoint)  # what ConversionDir.checkpoint checks before reading it
    with no_network():
        folder = ConversionDir(out_dir)
        chain = Chain(prepared, None, model, deploy, folder, config, preprocess, log or _quiet, progress, seconds)
        chain.before_writing = before_writing
        if set(config.variants) & set(INTEGER_VARIANTS):
            chain.export_integer_form = export_integer_form
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
    check_out_dir(out_dir, config, weights=False)
    seconds: dict[str, float] = {}
    prepared = prepare_onnx(load_onnx(onnx_path), config.input_size, str(onnx_path), config.onnx_rewrites)
    preprocess = Preprocess(tuple(config.input_size), tuple(mean), tuple(std))
    info = {"onnx_source": str(onnx_path), "num_classes": prepared.num_classes, **(model_info or {})}
    with no_network():
        chain = Chain(prepared, None, None, None, ConversionDir(out_dir), config, preprocess, log or _quiet, progress, seconds)
        chain.model_source = str(onnx_path)
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
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> ConvertResult:
    """``seg2tflite convert --model NAME``: build the registry model, save seeded weights, convert.

    ``mean``/``std`` (default: the model's registry config) are the normalisation the weights were
    trained with; the manifest records them and every stage is measured with them."""
    import torch

    from seg2tflite.models.checkpoint import save_checkpoint
    from seg2tflite.models.registry import check_input_size, create_model, get_model_config

    try:
        get_model_config(name)
    except KeyError as e:
        raise UserError(f"{setting('model', python='name')}: {e.args[0]}") from None
    check_input_size(name, config.input_size)
    if checkpoint is not None and num_classes is None:
        from seg2tflite.models.checkpoint import read_checkpoint_config

        try:  # this project's checkpoint says its head size; other formats get the registry default
            num_classes = read_checkpoint_config(checkpoint).get("num_classes")
        except UserError:
            pass
    # The head against the data before anything is built or written into out_dir.
    check_class_count(get_model_config(name).num_classes if num_classes is None else int(num_classes), (calib_data, parity_data))
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, checkpoint=None if checkpoint is None else str(checkpoint))
    info = {"checkpoint": str(checkpoint) if checkpoint else None, "seed": None if checkpoint else seed}

    def save_weights() -> dict:  # seeded weights go beside the artifacts, once nothing is refused any more
        saved = save_checkpoint(model, ConversionDir(out_dir).artifact("pytorch"), extra={"seed": seed})
        return {"weights": saved.name, "weights_sha256": sha256_file(saved)}  # what evaluate checks the manifest by

    return convert_model(
        model, out_dir, config, calib_data, parity_data, mean=mean, std=std, command=command, model_info=info, log=log,
        progress=progress, before_writing=None if checkpoint else save_weights,
    )  # fmt: skip
