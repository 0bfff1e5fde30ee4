"""The conversion settings and parity gates, as one frozen, validated dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from seg2tflite.converters.app_io import INPUTS, OUTPUTS
from seg2tflite.converters.int8_range_rules import RANGE_METHODS
from seg2tflite.converters.stages import CALIBRATED_VARIANTS, VARIANTS
from seg2tflite.errors import UserError, setting


@dataclass(frozen=True)
class ConvertConfig:
    input_size: tuple[int, int]  # (H, W) every artifact is fixed to
    opset: int = 20  # ONNX opset; 20 exports GELU as one Gelu op, which onnx2tf converts
    variants: tuple[str, ...] = VARIANTS  # which .tflite files to build
    calib_size: int = 200  # representative images for full_int8 / int16x8
    calib_seed: int = 0
    calib_min: int = 8  # refuse calibration data with fewer images than this
    calib_split: str = "train"  # split the calibration images are drawn from
    int8_io: str = "int8"  # full_int8 input/output type: "int8" or "float"
    int8_ranges: str = "auto"  # full_int8 activation ranges: "minmax", "percentile", "mse" or "auto" (int8_ranges.py)
    int8_bias_correction: bool = False  # full_int8: take the int8 weights' mean error out of the biases (int8_bias.py)
    image_input: str = "float"  # "float": normalised float32 in; "uint8": RGB pixels in, normalised in the graph
    image_output: str = "logits"  # "logits" at input size; "classes": int32 class map; "lowres": logits at output stride
    metadata: bool = True  # write TFLite metadata (name, normalisation, labels) into every .tflite
    parity_images: int = 16  # real images every artifact is compared on
    trained: bool = False  # gate quantized mIoU only for a trained model
    max_miou_drop: float = 1.0  # mIoU points a quantized variant may lose against PyTorch
    # Float gates. A logit value is an outlier when it drifts from PyTorch's by more than a fraction
    # of PyTorch's logit range; a gate allows at most ``max_outlier_share`` of them. Max and mean
    # drift stay reported: a discontinuous model (SegNet's unpooling) moves single values across a
    # near-tied window, and no float32 runtime can hold a max-drift bound there.
    float_min_agreement: float = 0.9999  # argmax pixel agreement for onnx/saved_model/float32
    float_outlier_drift: float = 1e-3  # onnx/saved_model/float32: drift beyond this x range is an outlier
    float16_min_agreement: float = 0.999  # on decisive pixels only (see float16_tie_margin)
    client_min_agreement: float = 0.999  # MediaPipe's category mask vs the reference's argmax, float files
    float16_outlier_drift: float = 1e-2  # float16: drift beyond this x range is an outlier
    float16_tie_margin: float = 0.01  # pixels whose top-two PyTorch logits are within this x range: reported, not gated
    max_outlier_share: float = 1e-4  # share of logit values allowed to be outliers
    locate_divergence: bool = True  # on a broken float gate, find the first diverging layer
    onnx_rewrites: bool = True  # apply onnx_surgery's workarounds (off only to show what they fix)
    num_threads: int | None = None  # LiteRT / ONNX Runtime threads (None: library default)
    output_key: str | None = None  # dict key / attribute holding the logits (default: 'out', 'logits', the only tensor)
    upsample_logits: bool = False  # resize lower-resolution logits bilinearly to the input size (both reference and export)

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.input_size) if _is_pair(self.input_size) else None
        if size is None or min(size) < 8:
            raise UserError(
                f"{setting('input_size')}: {self.input_size!r} is not two sizes >= 8; "
                f"pass {setting('input_size', 'H W', 'input_size=(H, W)')}"
            )
        object.__setattr__(self, "input_size", size)
        if not 7 <= self.opset <= 21:
            raise UserError(f"{setting('opset')}: {self.opset} is outside 7..21; use 17 or 20")
        variants = tuple(self.variants)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants or len(set(variants)) != len(variants):
            raise UserError(
                f"{setting('variants')}: {', '.join(unknown) or variants!r} not valid; choose from {', '.join(VARIANTS)}"
            )
        object.__setattr__(self, "variants", tuple(v for v in VARIANTS if v in variants))
        if self.int8_io not in ("int8", "float"):
            raise UserError(f"{setting('int8_io')}: {self.int8_io!r} is not valid; use int8 or float")
        if self.int8_ranges not in RANGE_METHODS:
            raise UserError(f"{setting('int8_ranges')}: {self.int8_ranges!r} is not valid; use {', '.join(RANGE_METHODS)}")
        if self.image_input not in INPUTS:
            raise UserError(f"{setting('image_input')}: {self.image_input!r} is not valid; use {' or '.join(INPUTS)}")
        if self.image_output not in OUTPUTS:
            raise UserError(f"{setting('image_output')}: {self.image_output!r} is not valid; use {', '.join(OUTPUTS)}")
        if self.calib_min < 1 or self.calib_size < self.calib_min:
            raise UserError(
                f"{setting('calib_size')}: {self.calib_size} is below the minimum of {self.calib_min} images; "
                f"raise {setting('calib_size')} to at least {self.calib_min}"
            )
        if self.parity_images < 1:
            raise UserError(f"{setting('parity_images')}: {self.parity_images} must be at least 1")
        for name in ("float_min_agreement", "float16_min_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # NaN fails this too
                raise UserError(f"{name}: {getattr(self, name)} must be a fraction in 0..1")
        for name in ("float_outlier_drift", "float16_outlier_drift", "float16_tie_margin", "max_outlier_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # NaN fails this too
                raise UserError(f"{name}: {getattr(self, name)} must be a fraction in 0..1")
        if not (math.isfinite(self.max_miou_drop) and self.max_miou_drop >= 0):
            raise UserError(f"{setting('max_miou_drop')} {self.max_miou_drop}: must be a finite number of mIoU points >= 0")
        if self.num_threads is not None and self.num_threads < 1:
            raise UserError(f"{setting('num_threads')}: {self.num_threads} must be at least 1")

    @property
    def needs_calibration(self) -> bool:
        return any(v in CALIBRATED_VARIANTS for v in self.variants)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_pair(value) -> bool:
    try:
        return len(value) == 2 and all(int(v) == v for v in value)
    except (TypeError, ValueError):
        return False
