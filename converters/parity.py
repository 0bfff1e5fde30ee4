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
from seg2tflite.converters.stages import FLOAT_STAGES, QUANTIZED_VARIANTS, STAGES, previous_stage
from seg2tflite.errors import UserError
from seg2tflite.metrics import ConfusionMatrix


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
    gate: str = "report"  # "pass", "fail" or "report" (measured, not gated)
    failures: list[str] = field(default_factory=list)  # one line per broken gate
    notes: list[str] = field(default_factory=list)  # why a stage is not gated


@dataclass
class ParityReport:
    stages: dict[str, StageResult]
    num_images: int
    image_names: list[str]
    logit_range: float  # max - min of the reference logits over all parity images
    pytorch_miou: float  # the reference's mIoU against the masks, 0..1
    reference: str = "pytorch"  # what "vs_pytorch" compares with: pytorch, or onnx for an ONNX input
    divergence: dict | None = None  # first diverging layer, when a float gate broke

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
            stages[name] = StageResult(**fields)
        return cls(
            stages=stages,
            num_images=data["num_images"],
            image_names=list(data["images"]),
            logit_range=restore(data["logit_range"]),
            pytorch_miou=restore(data["pytorch_miou"]),
            reference=data["reference"],
            divergence=data.get("divergence"),
        )


def measure_parity(
    runners: dict[str, Runner],
    images: np.ndarray,
    masks: np.ndarray | None,
    num_classes: int,
    ignore_index: int = 255,
    image_names: list[str] | None = None,
    progress: bool = True,
) -> ParityReport:
    """Run ``images`` (N, 3, H, W) through every runner (named by stage, see ``STAGES``); the
    earliest stage present (pytorch, or onnx for an ONNX input) is the reference."""
    names = [s for s in STAGES if s in runners] + [s for s in runners if s not in STAGES]
    reference = names[0]
    pairs_ref = {s: LogitComparison(num_classes) for s in names[1:]}
    pairs_prev = {s: LogitComparison(num_classes) for s in names[1:]}
    labels = {s: ConfusionMatrix(num_classes, ignore_index=ignore_index) for s in names}
    nonfinite = dict.fromkeys(names, 0)
    lo, hi = math.inf, -math.inf
    for i in tqdm(range(len(images)), desc="parity", disable=not progress, leave=False):
        x = images[i : i + 1]
        outs = {}
        for s in names:
            out = np.asarray(runners[s](x), np.float32)
            if out.shape[0] != 1 or out.shape[1] != num_classes or out.shape[2:] != x.shape[2:]:
                raise ParityError(f"{s}: logits have shape {out.shape}; expected (1, {num_classes}, {x.shape[2]}, {x.shape[3]})")
            nonfinite[s] += int((~np.isfinite(out)).sum())
            outs[s] = out
        ref = outs[reference]
        lo, hi = min(lo, float(np.nanmin(ref))), max(hi, float(np.nanmax(ref)))
        for s in names[1:]:
            pairs_ref[s].update(ref, outs[s])
            pairs_prev[s].update(outs[previous_stage(s, names) or reference], outs[s])
        if masks is not None:
            for s in names:
                labels[s].update(outs[s].argmax(1), masks[i : i + 1])
    logit_range = hi - lo
    base_miou = labels[reference].compute().miou if masks is not None else math.nan
    stages = {}
    for s in names:
        miou = labels[s].compute().miou if masks is not None else math.nan
        stages[s] = StageResult(
            stage=s,
            previous=previous_stage(s, names) if s != reference else None,
            vs_pytorch=pairs_ref[s].result(logit_range) if s in pairs_ref else {},
            vs_previous=pairs_prev[s].result(logit_range) if s in pairs_prev else {},
            miou=miou,
            miou_drop_points=100.0 * (base_miou - miou),
            nonfinite=nonfinite[s],
        )
    return ParityReport(stages, len(images), list(image_names or []), logit_range, base_miou, reference)


def apply_gates(report: ParityReport, config: ConvertConfig) -> list[str]:
    """Mark every stage pass/fail/report; return the failure lines (empty when all gates hold)."""
    for name, r in report.stages.items():
        notes, gated = [], False
        if r.nonfinite:
            notes.append(f"{name}: {r.nonfinite} NaN/Inf values in the logits")
        if name in FLOAT_STAGES and r.vs_pytorch:
            gated = True
            agree, drift = r.vs_pytorch["argmax_agreement"], r.vs_pytorch["max_abs_over_range"]
            if not agree >= config.float_min_agreement:
                notes.append(
                    f"{name}: argmax agreement with {report.reference} {100 * agree:.4f}% < {100 * config.float_min_agreement:.4f}%"
                )
            if not drift <= config.float_max_drift:
                notes.append(
                    f"{name}: max abs logit drift {r.vs_pytorch['max_abs']:.3g} is {drift:.3g} of the logit range "
                    f"(limit {config.float_max_drift:g})"
                )
        elif name == "float16" and r.vs_pytorch:
            gated = True
            agree = r.vs_pytorch["argmax_agreement"]
            if not agree >= config.float16_min_agreement:
                notes.append(
                    f"{name}: argmax agreement with {report.reference} {100 * agree:.3f}% < {100 * config.float16_min_agreement:.3f}%"
                )
        elif name in QUANTIZED_VARIANTS:
            if not config.trained:
                r.notes = ["untrained model: mIoU reported, not gated"]
            elif math.isnan(r.miou_drop_points):
                r.notes = ["no ground-truth masks: mIoU not measured, not gated"]
            else:
                gated = True
                if not r.miou_drop_points <= config.max_miou_drop:
                    notes.append(
                        f"{name}: mIoU {100 * r.miou:.2f} is {r.miou_drop_points:.2f} points below {report.reference}'s "
                        f"{100 * report.pytorch_miou:.2f} (budget {config.max_miou_drop:g})"
                    )
        r.failures = notes
        if notes:
            r.gate = "fail"
        elif gated or (name != report.reference and name not in QUANTIZED_VARIANTS):
            r.gate = "pass"
    return report.failures


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


def format_table(report: ParityReport) -> str:
    """The parity table printed on the terminal."""
    head = (
        f"{'stage':<13}{'vs':<12}{'max|d|':>10}{'mean|d|':>10}{'max/range':>10}{'cosine':>10}"
        f"{'argmax%':>10}{'mIoU':>8}{'drop':>7}  gate"
    )
    ref = report.reference
    lines = [f"parity on {report.num_images} images; {ref} logit range {report.logit_range:.4g}", head, "-" * len(head)]
    for name, r in report.stages.items():
        rows = [(ref, r.vs_pytorch)] + ([(r.previous, r.vs_previous)] if r.previous not in (None, ref) else [])
        if name == ref or not r.vs_pytorch:
            rows = [("-", {})]
        for j, (against, m) in enumerate(rows):
            first = j == 0
            lines.append(
                f"{name if first else '':<13}{against:<12}"
                f"{_fmt(m.get('max_abs'), '.3g'):>10}{_fmt(m.get('mean_abs'), '.3g'):>10}"
                f"{_fmt(m.get('max_abs_over_range'), '.2e'):>10}{_fmt(m.get('cosine'), '.6f'):>10}"
                f"{_fmt(None if m.get('argmax_agreement') is None else 100 * m['argmax_agreement'], '.3f'):>10}"
                f"{_fmt(100 * r.miou if first else None, '.2f'):>8}"
                f"{_fmt(r.miou_drop_points if first and name != ref else None, '+.2f'):>7}"
                f"  {r.gate if first else ''}"
            )
    for line in report.failures:
        lines.append(f"FAIL {line}")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)
