"""THE parity helper: every artifact against PyTorch and against the stage before it, then the gates.

``measure_parity`` streams real images through every runner (one image at a time, so full-size
logits of many stages never sit in memory together) and accumulates, per stage and per
reference: max and mean absolute logit drift, cosine similarity of the logits, argmax pixel
agreement and the mIoU of the stage's argmax against the reference's; plus each stage's mIoU
against the ground-truth masks. ``apply_gates`` marks each stage pass/fail/report by the
thresholds in ``ConvertConfig`` and ``raise_on_failure`` raises ``ParityError`` naming the stage
and the figure. Every conversion test and the pipeline use this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from seg2tflite.converters.compare import LogitComparison
from seg2tflite.converters.config import ConvertConfig
from seg2tflite.converters.runtimes import Runner
from seg2tflite.converters.stages import STAGES, previous_stage
from seg2tflite.errors import UserError
from seg2tflite.metrics import ConfusionMatrix

DEFAULT_GATES = ConvertConfig(input_size=(64, 64))  # only its gate thresholds are read


class ParityError(UserError):
    """A stage broke a parity gate; the message names the stage and the figure."""


@dataclass
class StageResult:
    stage: str
    previous: str | None
    vs_pytorch: dict = field(default_factory=dict)
    vs_previous: dict = field(default_factory=dict)
    miou: float = math.nan  # against the ground-truth masks, 0..1
    miou_drop_points: float = math.nan  # reference mIoU minus this one, in mIoU points (0..100 scale)
    nonfinite: int = 0  # NaN/Inf values in this stage's logits
    builtin: dict = field(default_factory=dict)  # a .tflite on LiteRT's builtin kernels: miou, vs_xnnpack
    # float16: the file against the float16 model it computes (float16_reference), the conversion's gate
    vs_float16_model: dict = field(default_factory=dict)
    gate: str = "report"  # "pass", "fail" or "report" (measured, not gated)
    failures: list[str] = field(default_factory=list)  # one line per broken gate
    notes: list[str] = field(default_factory=list)  # why a stage is not gated
    output: str = "logits"  # "classes": the file returns a class map (--output classes): argmax figures only


@dataclass
class ParityReport:
    stages: dict[str, StageResult]
    num_images: int
    image_names: list[str]
    logit_range: float  # max - min of the reference logits over all parity images
    pytorch_miou: float  # the reference's mIoU against the masks, 0..1
    reference: str = "pytorch"  # what "vs_pytorch" compares with: pytorch, or onnx for an ONNX input
    divergence: dict | None = None  # first diverging layer, when a float gate broke
    delegation: dict = field(default_factory=dict)  # .tflite stage -> what XNNPACK took (TFLiteRunner.delegation)
    client: dict = field(default_factory=dict)  # .tflite stage -> MediaPipe's row (app_client.client_figures)
    int8_sensitivity: list = field(default_factory=list)  # full int8's ops by SQNR vs float32, worst first (int8_sensitivity)

    @property
    def failures(self) -> list[str]:
        return [line for r in self.stages.values() for line in r.failures]

    def to_dict(self) -> dict:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(
            {
                "reference": self.reference,
                "num_images": self.num_images,
                "images": self.image_names,
                "logit_range": self.logit_range,
                "pytorch_miou": self.pytorch_miou,
                "stages": {name: vars(r).copy() for name, r in self.stages.items()},
                "failures": self.failures,
                "divergence": self.divergence,
                "delegation": self.delegation,
                "client": self.client,
                "int8_sensitivity": self.int8_sensitivity,
            }
        )

    @classmethod
    def from_dict(cls, data: dict) -> ParityReport:
        """The report ``to_dict`` wrote (parity.json), with its NaN/Inf restored."""

        def restore(v):
            if v is None:
                return math.nan
            if v in ("inf", "-inf"):
                return float(v)
            if isinstance(v, dict):
                return {k: restore(x) for k, x in v.items()}
            return v

        stages = {}
        for name, fields in data["stages"].items():
            fields = dict(fields)
            for key in ("vs_pytorch", "vs_previous"):
                fields[key] = restore(fields[key])
            for key in ("miou", "miou_drop_points"):
                fields[key] = restore(fields[key])
            fields["builtin"] = restore(fields.get("builtin") or {})
            fields["vs_float16_model"] = restore(fields.get("vs_float16_model") or {})
            stages[name] = StageResult(**fields)
        return cls(
            stages=stages,
            num_images=data["num_images"],
            image_names=list(data["images"]),
            logit_range=restore(data["logit_range"]),
            pytorch_miou=restore(data["pytorch_miou"]),
            reference=data["reference"],
            divergence=data.get("divergence"),
            delegation=data.get("delegation") or {},
            client={k: restore(v) for k, v in (data.get("client") or {}).items()},
            int8_sensitivity=[{k: restore(v) for k, v in row.items()} for row in data.get("int8_sensitivity") or []],
        )


def measure_parity(
    runners: dict[str, Runner],
    images: np.ndarray,
    masks: np.ndarray | None,
    num_classes: int,
    ignore_index: int = 255,
    image_names: list[str] | None = None,
    progress: bool = True,
    builtin: dict[str, Runner] | None = None,
    config: ConvertConfig | None = None,
    float16_reference: Runner | None = None,
) -> ParityReport:
    """Run ``images`` (N, 3, H, W) through every runner (named by stage, see ``STAGES``); the
    earliest stage present (pytorch, or onnx for an ONNX input) is the reference.

    A first pass runs the reference alone for its logit range, which the outlier counts and the
    decisive pixels are measured against. ``builtin`` holds, per .tflite stage, the same file on
    LiteRT's builtin kernels (no XNNPACK): it is compared with the XNNPACK runner image by image.
    ``float16_reference`` runs the float16 model a float16 file computes (default: built from the
    ``onnx`` runner's model, ``float16_reference.float16_model``); the float16 stage is gated against it.
    """
    config = config or DEFAULT_GATES
    builtin = builtin or {}
    if float16_reference is None and "float16" in runners and "onnx" in runners:
        float16_reference = _float16_runner(runners["onnx"], config)
    names = [s for s in STAGES if s in runners] + [s for s in runners if s not in STAGES]
    reference = names[0]
    lo, hi = math.inf, -math.inf
    for i in range(len(images)):
        ref = np.asarray(runners[reference](images[i : i + 1]), np.float32)
        lo, hi = min(lo, float(np.nanmin(ref))), max(hi, float(np.nanmax(ref)))
    logit_range = hi - lo

    def comparison() -> LogitComparison:
        drifts = (config.float_outlier_drift, config.float16_outlier_drift)
        return LogitComparison(num_classes, logit_range, drifts, config.float16_tie_margin)

    pairs_ref = {s: comparison() for s in names[1:]}
    pairs_prev = {s: comparison() for s in names[1:]}
    pairs_builtin = {s: comparison() for s in builtin}
    pair_float16 = comparison() if float16_reference is not None and "float16" in runners else None
    labels = {s: ConfusionMatrix(num_classes, ignore_index=ignore_index) for s in [*names, *(f"{s}@builtin" for s in builtin)]}
    nonfinite = dict.fromkeys(names, 0)
    for i in tqdm(range(len(images)), desc="parity", disable=not progress, leave=False):
        x = images[i : i + 1]
        outs = {}
        for s in [*names, *(f"{s}@builtin" for s in builtin)]:
            run = runners[s] if s in runners else builtin[s.removesuffix("@builtin")]
            out = np.asarray(run(x), np.float32)
            if out.shape[0] != 1 or out.shape[1] != num_classes or out.shape[2:] != x.shape[2:]:
                raise ParityError(f"{s}: logits have shape {out.shape}; expected (1, {num_classes}, {x.shape[2]}, {x.shape[3]})")
            if s in nonfinite:
                nonfinite[s] += int((~np.isfinite(out)).sum())
            outs[s] = out
        ref = outs[reference]
        for s in names[1:]:
            pairs_ref[s].update(ref, outs[s])
            pairs_prev[s].update(outs[previous_stage(s, names) or reference], outs[s])
        for s in builtin:
            pairs_builtin[s].update(outs[s], outs[f"{s}@builtin"])
        if pair_float16 is not None:
            pair_float16.update(np.asarray(float16_reference(x), np.float32), outs["float16"])
        if masks is not None:
            for s, out in outs.items():
                labels[s].update(out.argmax(1), masks[i : i + 1])
    base_miou = labels[reference].compute().miou if masks is not None else math.nan
    stages = {}
    for s in names:
        miou = labels[s].compute().miou if masks is not None else math.nan
        form = getattr(runners[s], "output_form", "logits")
        figures = _class_figures if form == "classes" else dict
        stages[s] = StageResult(
            stage=s,
            previous=previous_stage(s, names) if s != reference else None,
            vs_pytorch=figures(pairs_ref[s].result()) if s in pairs_ref else {},
            vs_previous=figures(pairs_prev[s].result()) if s in pairs_prev else {},
            miou=miou,
            miou_drop_points=100.0 * (base_miou - miou),
            nonfinite=nonfinite[s],
            output="classes" if form == "classes" else "logits",
        )
        if s in builtin:
            builtin_miou = labels[f"{s}@builtin"].compute().miou if masks is not None else math.nan
            stages[s].builtin = {"miou": builtin_miou, "vs_xnnpack": figures(pairs_builtin[s].result())}
        if s == "float16" and pair_float16 is not None:
            stages[s].vs_float16_model = figures(pair_float16.result())
    return ParityReport(stages, len(images), list(image_names or []), logit_range, base_miou, reference)


def _float16_runner(onnx_runner, config: ConvertConfig):
    from seg2tflite.converters.float16_reference import float16_model_of_runner
    from seg2tflite.converters.runtimes import OnnxRunner

    content = float16_model_of_runner(onnx_runner)
    return None if content is None else OnnxRunner(content, config.num_threads)


FLOAT16_MODEL = "the float16 model (model.onnx folded, rounded to float16)"

_CLASS_FIGURES = ("argmax_agreement", "miou_vs_reference", "decisive_share", "decisive_agreement")


def _class_figures(figures: dict) -> dict:
    """A class map's figures: the argmax ones (its one-hot "logits" have no drift to measure)."""
    return {"class_map": True, **{k: figures.get(k, math.nan) for k in _CLASS_FIGURES}}


def float_gate_failures(name: str, figures: dict, config: ConvertConfig, against: str, rule: str | None = None) -> list[str]:
    """The broken float gates of one comparison (``LogitComparison.result``): the onnx/saved_model/
    float32 rule, or float16's looser one, which leaves near-tied pixels out of the agreement
    (``rule``: "float" or "float16"; default: the stage's own). A class-map file
    (``_class_figures``: no drift figures) is gated on its agreement alone."""
    fp16 = STAGES.get(name.split("@")[0]) is not None and STAGES[name.split("@")[0]].gate == "float16"
    fp16 = fp16 if rule is None else rule == "float16"
    drift = config.float16_outlier_drift if fp16 else config.float_outlier_drift
    share = 0.0 if figures.get("class_map") else figures["outlier_share"][f"{drift:g}"]
    failures = []
    if fp16:
        agree, minimum, what = figures["decisive_agreement"], config.float16_min_agreement, "decisive-pixel argmax agreement"
        if math.isnan(agree):  # every pixel inside float16's rounding: nothing to gate on
            agree = 1.0
    else:
        agree, minimum, what = figures["argmax_agreement"], config.float_min_agreement, "argmax agreement"
    if not agree >= minimum:
        failures.append(f"{name}: {what} with {against} {100 * agree:.4f}% < {100 * minimum:.4f}%")
    if not share <= config.max_outlier_share:
        failures.append(
            f"{name}: {100 * share:.4f}% of the logits drift more than {drift:g} of the logit range from {against} "
            f"(limit {100 * config.max_outlier_share:.4f}%; max drift {figures['max_abs']:.3g})"
        )
    return failures


def apply_gates(report: ParityReport, config: ConvertConfig) -> list[str]:
    """Mark every stage pass/fail/report; return the failure lines (empty when all gates hold)."""
    for name, r in report.stages.items():
        notes, gated = [], False
        if r.nonfinite:
            notes.append(f"{name}: {r.nonfinite} NaN/Inf values in the logits")
        gate = STAGES[name].gate if name in STAGES else None
        if gate == "float16" and r.vs_float16_model and r.vs_pytorch:
            # the conversion against the float16 model it computes, by the float32 rule; the accuracy
            # against PyTorch is reported and, for a trained model with masks, gated by the mIoU budget
            gated = True
            notes += float_gate_failures(name, r.vs_float16_model, config, FLOAT16_MODEL, rule="float")
            notes += _miou_failures(name, r, report, config)
        elif gate in ("float", "float16") and r.vs_pytorch:
            gated = True
            notes += float_gate_failures(name, r.vs_pytorch, config, report.reference)
        elif gate == "quantized":
            if not config.trained:
                r.notes = ["untrained model: mIoU reported, not gated"]
            elif math.isnan(r.miou_drop_points):
                r.notes = ["no ground-truth masks: mIoU not measured, not gated"]
            else:
                gated = True
                notes += _miou_failures(name, r, report, config)
        notes += _kernel_failures(name, r, gate, config)
        r.failures = notes
        if notes:
            r.gate = "fail"
        elif gated or (name != report.reference and gate != "quantized"):
            r.gate = "pass"
    return report.failures


def _miou_failures(name: str, r: StageResult, report: ParityReport, config: ConvertConfig) -> list[str]:
    """The mIoU budget against the reference, for a trained model with masks (else nothing to gate)."""
    if not config.trained or math.isnan(r.miou_drop_points) or r.miou_drop_points <= config.max_miou_drop:
        return []
    return [
        f"{name}: mIoU {100 * r.miou:.2f} is {r.miou_drop_points:.2f} points below {report.reference}'s "
        f"{100 * report.pytorch_miou:.2f} (budget {config.max_miou_drop:g})"
    ]


def _kernel_failures(name: str, r: StageResult, gate: str | None, config: ConvertConfig) -> list[str]:
    """XNNPACK against LiteRT's builtin kernels on the same file: they must agree within the
    variant's own budget (the check that found LiteRT 2.1's int8 BATCH_MATMUL bug)."""
    if not r.builtin:
        return []
    if gate == "quantized":
        xnnpack, builtin = r.miou, r.builtin["miou"]
        if (
            config.trained
            and not (math.isnan(xnnpack) or math.isnan(builtin))
            and abs(xnnpack - builtin) * 100 > config.max_miou_drop
        ):
            return [
                f"{name}: XNNPACK and LiteRT's builtin kernels disagree: mIoU {100 * xnnpack:.2f} against {100 * builtin:.2f} "
                f"on the same file (budget {config.max_miou_drop:g} points)"
            ]
        return []
    return float_gate_failures(f"{name}@builtin", r.builtin["vs_xnnpack"], config, "XNNPACK")


def raise_on_failure(report: ParityReport, where: str = "") -> None:
    failures = report.failures
    if not failures:
        return
    message = f"parity gate broken: {failures[0]}"
    if len(failures) > 1:
        message += f" (and {len(failures) - 1} more: {'; '.join(failures[1:])})"
    if report.divergence and report.divergence.get("summary"):
        message += f". {report.divergence['summary']}"
    if where:
        message += f". Figures in {where}"
    raise ParityError(message)


def format_table(report: ParityReport, config: ConvertConfig | None = None) -> str:
    """The parity table printed on the terminal. ``outl%``: the share of logit values drifting more
    than the stage's outlier threshold (1e-3 of the range; float16 1e-2); ``builtin`` rows compare
    a .tflite on LiteRT's builtin kernels with the same file under XNNPACK."""
    config = config or DEFAULT_GATES
    width = max(13, *(len(name) + 1 for name in report.stages))
    head = (
        f"{'stage':<{width}}{'vs':<12}{'max|d|':>10}{'mean|d|':>10}{'max/range':>10}{'outl%':>9}"
        f"{'argmax%':>10}{'mIoU':>8}{'drop':>7}  gate"
    )
    ref = report.reference
    lines = [f"parity on {report.num_images} images; {ref} logit range {report.logit_range:.4g}", head, "-" * len(head)]
    for name, r in report.stages.items():
        rows = [(ref, r.vs_pytorch, r.miou)] + ([(r.previous, r.vs_previous, None)] if r.previous not in (None, ref) else [])
        if r.vs_float16_model:
            rows.append(("fp16 model", r.vs_float16_model, None))
        if r.builtin:
            rows.append(("builtin", r.builtin["vs_xnnpack"], r.builtin["miou"]))
        client = report.client.get(name)
        if client:  # MediaPipe's category mask: argmax agreement with the reference, mIoU
            rows.append(("mediapipe", {"argmax_agreement": client.get("vs_reference")}, client.get("miou")))
        if name == ref or not r.vs_pytorch:
            rows = [("-", {}, r.miou)]
        drift = (
            config.float16_outlier_drift if STAGES.get(name) and STAGES[name].gate == "float16" else config.float_outlier_drift
        )
        for j, (against, m, miou) in enumerate(rows):
            first = j == 0
            share = (m.get("outlier_share") or {}).get(f"{config.float_outlier_drift if against == 'fp16 model' else drift:g}")
            lines.append(
                f"{name if first else '':<{width}}{against:<12}"
                f"{_fmt(m.get('max_abs'), '.3g'):>10}{_fmt(m.get('mean_abs'), '.3g'):>10}"
                f"{_fmt(m.get('max_abs_over_range'), '.2e'):>10}{_fmt(None if share is None else 100 * share, '.4f'):>9}"
                f"{_fmt(None if m.get('argmax_agreement') is None else 100 * m['argmax_agreement'], '.3f'):>10}"
                f"{_fmt(None if miou is None else 100 * miou, '.2f'):>8}"
                f"{_fmt(r.miou_drop_points if first and name != ref else None, '+.2f'):>7}"
                f"  {r.gate if first else ''}"
            )
    refused = {name: client["refused"] for name, client in report.client.items() if "refused" in client}
    float_input = [name for name, why in refused.items() if "Per-channel image normalization" in why]
    if float_input:  # not a failure of the file: MediaPipe loads only --input uint8 files of such a model
        lines.append(
            f"mediapipe: {', '.join(float_input)} not run in MediaPipe's ImageSegmenter, which takes no per-channel "
            "normalisation: convert with --input uint8 for files it loads"
        )
    lines += [f"mediapipe: {why}" for name, why in refused.items() if name not in float_input]
    for line in report.failures:
        lines.append(f"FAIL {line}")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)
