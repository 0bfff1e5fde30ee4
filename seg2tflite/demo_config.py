"""Settings of the main job (``seg2tflite demo``), apart from the job so ``--help`` stays light."""

from __future__ import annotations

from dataclasses import dataclass

DEMO_MODELS = ("segformer_b0", "segnet_vgg16", "deeplabv3plus_mobilenetv2", "deeplabv3plus_xception65")

# Steps sized so each model trains in about 2-4 minutes on a 2-core CPU at 96x96, batch 8
# (measured: 0.2, 2.3, 0.4 and 1.2 s per step respectively).
DEFAULT_TRAIN_STEPS = {
    "segformer_b0": 600,
    "segnet_vgg16": 120,
    "deeplabv3plus_mobilenetv2": 400,
    "deeplabv3plus_xception65": 180,
}
FALLBACK_TRAIN_STEPS = 300
# colour_hint 0.9 (default 0.6) makes the classes learnable in a few CPU minutes: measured,
# segformer_b0 reaches 56% val mIoU after 400 steps at lr 2e-3 (23% at the default hint).
DEMO_DATA = "synthetic:size=96,train=1000,val=100,test=100,colour_hint=0.9"


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    models: tuple[str, ...] = DEMO_MODELS
    # A synthetic spec is written to OUT/data (the folder layout) and read back from there.
    data: str = DEMO_DATA
    input_size: tuple[int, int] = (96, 96)  # what every model is trained, converted and evaluated at
    train_steps: int | None = None  # None: the per-model defaults above
    batch_size: int = 8
    lr: float = 2e-3
    calib_size: int = 64  # representative images for full int8 / int16x8
    eval_split: str = "test"
    eval_limit: int | None = None  # evaluate only the first N images of the split
    workers: int = 2  # processes evaluating each .tflite
    bench_threads: int = 2
    bench_runs: int = 20
    max_miou_drop: float = 1.0  # the quantized-stage mIoU budget, in points
    seed: int = 0
    strict: bool = False  # exit non-zero when any conversion gate fails
    progress: bool = True
