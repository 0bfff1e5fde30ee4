"""Why a float stage broke its parity gate, in one summary line for the manifest and the log.

``explain_float_failure`` takes the first broken float stage and says what broke it: a NaN
reference, a kernel difference (the file matches under XNNPACK but not on LiteRT's builtin
kernels), ONNX export, the first diverging layer of the SavedModel (``divergence_tf``) or the
first diverging op of the float32 .tflite (``divergence_tflite``); drift in a few pixels with
every decisive argmax equal is called a flipped near-tie, beside PyTorch's own float64 noise
floor (``float64_noise_floor``). ``explain_float16_failure`` asks whether a float16 file that
broke its gate is the model with float16 weights (``float16_weights``).
"""

from __future__ import annotations

import numpy as np
import onnx

from seg2tflite.converters.compare import LogitComparison
from seg2tflite.converters.divergence_tf import locate_divergence
from seg2tflite.converters.divergence_tflite import locate_tflite_divergence_from_onnx
from seg2tflite.converters.parity import ParityReport, StageResult, float_gate_failures
from seg2tflite.converters.runtimes import OnnxRunner
from seg2tflite.converters.stages import FLOAT_STAGES, INTEGER_FORM

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


def _is_near_tie(drift: dict) -> bool:
    """Every decisive pixel's argmax equal (flips only where PyTorch's top two logits are near-tied)
    and the drift in a few values: a flipped near-tie, not a wrong function. A class-map file
    (``--output classes``) has no drift figures: never."""
    if drift.get("class_map"):
        return False
    decisive = drift.get("decisive_agreement", drift["argmax_agreement"])
    agree = drift["argmax_agreement"] == 1.0 or decisive == 1.0
    return agree and drift["max_abs"] > LOCALIZED_DRIFT_RATIO * drift["mean_abs"]


def _kernel_disagreement(stage: str, r: StageResult) -> str:
    """The stage matches PyTorch under XNNPACK; only the same file on LiteRT's builtin kernels broke the gate."""
    ours, twin = r.vs_pytorch, r.builtin["vs_xnnpack"]
    text = (
        f"model_{stage}.tflite matches PyTorch under XNNPACK (max drift {ours['max_abs']:.3g}), but LiteRT's builtin "
        f"kernels compute the same file differently (max {twin['max_abs']:.3g}, mean {twin['mean_abs']:.3g} from XNNPACK)"
    )
    if _is_near_tie(twin):
        return text + (
            " in a few values with every argmax equal: the signature of a discontinuous op (max pooling or unpooling "
            "with tied windows) whose ties the two kernels' rounding breaks differently, not of a wrong conversion"
        )
    return text + ": a kernel difference in LiteRT itself; the XNNPACK figures are the ones users get"


def explain_float_failure(
    report: ParityReport, onnx_model, image_nhwc, deploy_model, config, log, parity_images=None
) -> dict | None:
    """Say where the first broken float stage went wrong; None when the float stages all pass."""
    broken = next((s for s in (*FLOAT_STAGES, INTEGER_FORM) if s in report.stages and report.stages[s].gate == "fail"), None)
    if broken is None:
        return None
    reference = report.stages.get(report.reference)
    if reference is not None and reference.nonfinite:  # first: a NaN reference explains every broken gate
        return {
            "stage": broken,
            "summary": f"{report.reference}'s own logits hold {reference.nonfinite} NaN/Inf values: the model (its weights "
            "or its forward) computes NaN before any conversion, so no stage can match it; check the checkpoint",
            "first": None,
        }
    if not float_gate_failures(broken, report.stages[broken].vs_pytorch, config, report.reference):
        return {"stage": broken, "summary": _kernel_disagreement(broken, report.stages[broken]), "first": None}
    if broken == "onnx":
        found = {
            "summary": "ONNX Runtime already differs from PyTorch: the deploy form or torch.onnx.export is at fault "
            "(compare model(x) with seg2tflite.models.deploy_form(model)(x) first)",
            "first": None,
        }
    elif broken == INTEGER_FORM:  # its graph is not the one located below
        found = {
            "summary": "the int8 form's SavedModel differs where the float one passes: compare model(x) with "
            "seg2tflite.models.integer_form(model)(x) first, then its ONNX export",
            "first": None,
        }
    elif broken == "saved_model":
        log("saved_model broke parity; locating the first diverging layer...")
        found = locate_divergence(
            onnx_model, image_nhwc, torch_model=deploy_model, rel_tol=config.float_outlier_drift, workarounds=config.onnx_rewrites
        )
    elif onnx_model is None or image_nhwc is None:
        found = {
            "summary": "the SavedModel passes but model_float32.tflite does not: the TF -> TFLite converter changed the function",
            "first": None,
        }
    else:
        log("model_float32.tflite broke parity where the SavedModel did not; locating the first diverging .tflite op...")
        found = locate_tflite_divergence_from_onnx(
            onnx_model, image_nhwc, deploy_model, rel_tol=config.float_outlier_drift, workarounds=config.onnx_rewrites
        )
    drift = report.stages[broken].vs_pytorch
    if _is_near_tie(drift) and not report.stages[broken].nonfinite:
        floor_text = ""
        if deploy_model is not None and parity_images is not None:
            floor = found["float64_noise_floor"] = float64_noise_floor(deploy_model, parity_images)
            floor_text = (
                f" PyTorch's own float32 logits differ from float64 by {floor['max_abs']:.3g} "
                f"({floor['max_abs_over_range']:.3g} of the range) on the same images."
            )
        found["summary"] = (
            f"the drift sits in a few pixels (max {drift['max_abs']:.3g}, mean {drift['mean_abs']:.3g}) and every "
            "decisive pixel's argmax agrees: the signature of a discontinuous op (max pooling or unpooling with near-tied windows) that "
            f"rounding differences of ~1e-7 flip, rather than of a wrong conversion.{floor_text} "
            f"Otherwise: {found['summary']}"
        )
    return {"stage": broken, **found}


def float16_weights(model: onnx.ModelProto) -> bytes:
    """``model`` folded as the TFLite converter folds it, every float32 weight then rounded to
    float16 and back, serialized: the function a float16 .tflite computes on a CPU (float16
    weights, float32 arithmetic); ``float16_reference.float16_model``."""
    from seg2tflite.converters.float16_reference import float16_model

    return float16_model(model)


def explain_float16_failure(report: ParityReport, onnx_model, float16_run, images: np.ndarray, config) -> dict | None:
    """When only float16 broke its gate: is the file the model with float16 weights (then the drift
    is the model's own response to that rounding), or did the conversion change more? None when
    float16 passed."""
    r = report.stages.get("float16")
    if r is None or onnx_model is None or r.gate != "fail":
        return None
    if r.vs_float16_model:  # measured by the gate itself
        figures = r.vs_float16_model
    else:
        rounded = OnnxRunner(float16_weights(onnx_model), config.num_threads)
        comparison = None
        for i in range(len(images)):
            x = images[i : i + 1]
            ref, out = np.asarray(rounded(x), np.float32), np.asarray(float16_run(x), np.float32)
            comparison = comparison or LogitComparison(num_classes=ref.shape[1], logit_range=report.logit_range)
            comparison.update(ref, out)
        figures = comparison.result()
    share = figures["outlier_share"][f"{config.float_outlier_drift:g}"]
    if not float_gate_failures("model_float16.tflite", figures, config, "the float16-weight model"):
        summary = (
            f"model_float16.tflite computes the model with its weights rounded to float16 (model.onnx so rounded, in "
            f"ONNX Runtime) within the float32 gate (max drift {figures['max_abs']:.3g}, {100 * share:.4f}% outliers): "
            "the drift from PyTorch is the model's own response to float16 weights, not a conversion error (layers "
            "that amplify small weight changes, or a discontinuous op such as an unpooling whose near-tied inputs "
            "that rounding reorders): float16 costs this model that much, whoever converts it"
        )
    else:
        summary = (
            f"model_float16.tflite also differs from the model with float16-rounded weights (max drift "
            f"{figures['max_abs']:.3g}, {100 * share:.4f}% of the values beyond {config.float_outlier_drift:g} of the "
            "range): the float16 conversion changed more than the weights' precision"
        )
    kept = ("max_abs", "mean_abs", "argmax_agreement", "outlier_share")
    return {"stage": "float16", "summary": summary, "first": None, "float16_weights": {k: figures[k] for k in kept}}
