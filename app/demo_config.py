"""Settings of the main job (``seg2tflite demo``), apart from the job so ``--help`` stays light."""

from __future__ import annotations

from dataclasses import dataclass

DEMO_MODELS = (
    "segformer_b0",
    "segnet_vgg16",
    "deeplabv3plus_mobilenetv2",
    "deeplabv3plus_xception65",
    "unet_mediatek",
    "attendseg",
)

# Steps sized so the whole demo stays under 25 minutes on a 2-core CPU, batch 8 (measured s per
# step: segformer_b0 0.18, deeplabv3plus_mobilenetv2 0.40 and deeplabv3plus_xception65 1.2 at
# 96x96; segnet_vgg16 1.1 at 64x64). The demo's own loop on one thread, all six in one run:
# segformer_b0 0.17, unet_mediatek 0.12, attendseg 0.20, deeplabv3plus_mobilenetv2 0.34,
# segnet_vgg16 0.68, deeplabv3plus_xception65 1.42. unet_mediatek with the default settings on an
# idle 2-core machine: train 39 s (val mIoU 43.2% after 400 steps), convert 11 s, measure 17 s;
# attendseg (0.11 s per step on 2 threads, like segformer_b0) reaches 48.1% after 300 steps,
# convert 20 s, measure 16 s. Both have many small ops: on a CPU that something else is using,
# PyTorch's two threads wait on each other and a step costs 5-10x more.
DEFAULT_TRAIN_STEPS = {
    "segformer_b0": 500,
    "segnet_vgg16": 240,
    "deeplabv3plus_mobilenetv2": 300,
    "deeplabv3plus_xception65": 120,  # 41.0% val mIoU (43.9% after 150): 30 steps (~40 s) for the two new families
    "unet_mediatek": 400,
    "attendseg": 300,
}
# SegNet-VGG16 costs about 5x the others per pixel (measured 2.3 s per step at 96x96): at 64x64 it
# gets twice the steps in its share of the budget (measured val mIoU 38% after 240 steps at 64x64,
# 14% after 120 steps at 96x96). Its from-scratch training is fragile: a 220-step schedule reached
# only 15%. --input-size overrides this for every model.
DEFAULT_INPUT_SIZE = {"segnet_vgg16": (64, 64)}
# Without class weights SegNet's 240 steps settle on the background everywhere for two seeds in
# three (--seed 1 and 2: 10.5% val mIoU); with its paper's median frequency balancing they reach
# 33% and 38%.
DEFAULT_CLASS_WEIGHTING = {"segnet_vgg16": "median_frequency"}
FALLBACK_TRAIN_STEPS = 300
# colour_hint 0.9 (default 0.6) makes the classes learnable in a few CPU minutes: measured,
# segformer_b0 reaches 56% val mIoU after 400 steps at lr 2e-3 (23% at the default hint).
DEMO_DATA = "synthetic:size=96,train=1000,val=100,test=50,colour_hint=0.9"


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    models: tuple[str, ...] = DEMO_MODELS
    # A synthetic spec is written to OUT/data (the folder layout) and read back from there.
    data: str = DEMO_DATA
    input_size: tuple[int, int] | None = None  # train/convert/evaluate size; None: 96x96 (SegNet 64x64)
    train_steps: int | None = None  # None: the per-model defaults above
    batch_size: int = 8
    lr: float = 2e-3
    val_images: int | None = 50  # validation images per check during training (None: the whole split)
    calib_size: int = 64  # representative images for full int8 / int16x8
    parity_images: int = 8  # images the conversion gates compare every stage on
    eval_split: str = "test"
    eval_limit: int | None = None  # evaluate only the first N images of the split
    workers: int = 2  # processes evaluating each .tflite
    bench_threads: int = 2
    bench_runs: int = 10  # timed runs per artifact (int16x8 takes ~1 s a run on 2 cores)
    # int16x8 runs on LiteRT's reference kernels (XNNPACK has none), 30-40x float32's time per
    # image: evaluated on the first N test images only (its table row says so, and its change in
    # mIoU and agreement are against PyTorch on the same images). None: the whole split.
    int16x8_eval_images: int | None = 10
    max_miou_drop: float = 1.0  # the quantized-stage mIoU budget, in points
    image_input: str = "float"  # every .tflite's input: "float" or "uint8" (convert --input)
    image_output: str = "logits"  # every .tflite's output: "logits", "classes" or "lowres" (convert --output)
    int8_ranges: str = "auto"  # full int8's activation ranges (convert --int8-ranges)
    int8_bias_correction: bool = False  # full int8's bias correction (convert --int8-bias-correction)
    seed: int = 0
    strict: bool = False  # exit non-zero when any conversion gate fails
    progress: bool = True

    def model_input_size(self, name: str) -> tuple[int, int]:
        return tuple(self.input_size or DEFAULT_INPUT_SIZE.get(name, (96, 96)))
