"""Published reference figures (parameters, float mIoU, int8 drop), as data with their sources.

Each cites its paper or public repository. They are measured on other datasets (ADE20K, Pascal VOC,
Cityscapes, CamVid) at other sizes, so the report shows them beside our figures
for orientation only, under a heading that says so. ``MODEL_ANCHORS`` maps a registered model
name to the published rows that concern it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedAccuracy:
    model: str  # the published model, as its source names it
    dataset: str  # e.g. "ADE20K val"
    miou: float  # percentage
    source: str


@dataclass(frozen=True)
class PublishedParams:
    model: str
    params_m: float  # millions of parameters
    note: str  # e.g. "encoder 3.4M + decoder 0.4M"
    source: str


@dataclass(frozen=True)
class PublishedQuantization:
    model: str
    setting: str  # dataset and method, e.g. "VOC, PTQ"
    float_miou: float  # percentage
    int8_miou: float  # percentage
    source: str

    @property
    def drop(self) -> float:
        """int8 minus float, in mIoU points (negative is a loss)."""
        return round(self.int8_miou - self.float_miou, 2)


SEGFORMER_PAPER = "Xie et al. 2021, arXiv 2105.15203, Tables 1a/2"
DEEPLAB_ZOO = "tensorflow/models research/deeplab g3doc/model_zoo.md"
SEGNET_PAPER = "Badrinarayanan et al., arXiv 1511.00561v3, Tables 2/3"

PARAMS = {
    "segformer_b0": PublishedParams("SegFormer MiT-B0", 3.8, "encoder 3.4M + decoder 0.4M", SEGFORMER_PAPER),
    "segformer_b1": PublishedParams("SegFormer MiT-B1", 13.7, "encoder 13.1M + decoder 0.6M", SEGFORMER_PAPER),
    "segformer_b2": PublishedParams("SegFormer MiT-B2", 27.5, "encoder 24.2M + decoder 3.3M", SEGFORMER_PAPER),
    "segformer_b5": PublishedParams("SegFormer MiT-B5", 84.7, "encoder 81.4M + decoder 3.3M", SEGFORMER_PAPER),
    "deeplabv3plus_mobilenetv2": PublishedParams(
        "DeepLabV3+ MobileNetV2", 15.4, "SegFormer paper's Table 2 row", "SegFormer paper, Table 2"
    ),
    "segnet_vgg16": PublishedParams(
        "SegNet (VGG16 encoder)", 29.44, "encoder 14.7M; 29.44M in total", SEGNET_PAPER + "; total: PMC12440891, Table 2"
    ),
}

ACCURACY = {
    "segformer_b0": (
        PublishedAccuracy("SegFormer MiT-B0, 512x512", "ADE20K", 37.4, SEGFORMER_PAPER),
        PublishedAccuracy("SegFormer MiT-B0", "Cityscapes", 76.2, SEGFORMER_PAPER),
    ),
    "segformer_b1": (PublishedAccuracy("SegFormer MiT-B1", "ADE20K", 42.2, SEGFORMER_PAPER),),
    "segformer_b2": (PublishedAccuracy("SegFormer MiT-B2", "ADE20K", 46.5, SEGFORMER_PAPER),),
    "segformer_b5": (PublishedAccuracy("SegFormer MiT-B5", "ADE20K", 51.0, SEGFORMER_PAPER),),
    "deeplabv3plus_mobilenetv2": (
        PublishedAccuracy("DeepLabV3+ MobileNetV2", "ADE20K", 34.0, "SegFormer paper, Table 2"),
        PublishedAccuracy("DeepLabV3+ MobileNetV2", "Cityscapes", 75.2, "SegFormer paper, Table 2"),
        PublishedAccuracy("DeepLab MobileNetV2 OS16", "VOC val", 75.32, DEEPLAB_ZOO),
    ),
    "deeplabv3plus_xception65": (PublishedAccuracy("DeepLabV3+ Xception-65 OS16", "VOC val", 82.20, DEEPLAB_ZOO),),
    "segnet_vgg16": (PublishedAccuracy("SegNet (VGG16 encoder)", "CamVid", 60.10, SEGNET_PAPER),),
}

QUANTIZATION = {
    "deeplabv3plus_mobilenetv2": (
        PublishedQuantization(
            "DeepLab MobileNetV2",
            "VOC, 8-bit QAT (TFLite 2.2 MB)",
            75.32,
            74.26,
            "tensorflow/models research/deeplab g3doc/quantize.md",
        ),
        PublishedQuantization(
            "MNv2 + DeepLabV3 512x512", "VOC, PTQ", 75.30, 73.95, "tensorflow/models official/projects/qat/vision/README.md"
        ),
        PublishedQuantization(
            "MNv2 + DeepLabV3 512x512", "VOC, QAT", 75.30, 74.68, "tensorflow/models official/projects/qat/vision/README.md"
        ),
        PublishedQuantization(
            "MNv2 + DeepLabV3+", "Cityscapes, PTQ", 73.84, 72.33, "tensorflow/models official/projects/qat/vision/README.md"
        ),
        PublishedQuantization(
            "MNv2 + DeepLabV3+", "Cityscapes, QAT", 73.84, 73.49, "tensorflow/models official/projects/qat/vision/README.md"
        ),
        PublishedQuantization(
            "DeepLabV3+ MobileNet (PyTorch)", "VOC, PTQ", 72.32, 72.08, "github.com/quic/aimet-model-zoo README.md"
        ),
    ),
    "deeplabv3plus_xception65": (
        PublishedQuantization(
            "DeepLabV3+ Xception (PyTorch)",
            "VOC, W8A8 PTQ, percentile ranges",
            87.71,
            87.21,
            "github.com/quic/aimet-model-zoo README.md",
        ),
    ),
    "segnet_vgg16": (
        PublishedQuantization("SegNet (PyTorch)", "CamVid, W8A8 PTQ", 50.48, 50.59, "github.com/quic/aimet-model-zoo README.md"),
    ),
    "segformer_b0": (
        PublishedQuantization(
            "SegFormer-B0 (Paddle)",
            "convolutions only quantized (Paddle ACT)",
            75.23,
            75.22,
            "PaddlePaddle/PaddleSeg deploy/slim/act/readme.md",
        ),
    ),
}

# Figures with no number to put in a table, shown as notes.
NOTES = {
    "segformer_b0": (
        "No published full-int8 TFLite result for SegFormer; TensorRT declines INT8 for it "
        "(NVIDIA TAO docs; open-mmlab/mmdeploy issue 337, LayerNorm blamed)."
    ),
}

LATENCY_ANCHOR = (
    "TFLite DeepLabV3 MobileNetV2 257x257 (2.7 MB): Pixel 3 CPU 4 threads 37 ms, GPU 16 ms; "
    "Pixel 4 CPU 23 ms; iPhone XS CPU 2 threads 25 ms "
    "(tensorflow lite g3doc examples/segmentation/overview.md)"
)


def anchors_for(model: str) -> dict:
    """Everything published about a registered model name (empty lists where nothing is)."""
    return {
        "params": PARAMS.get(model),
        "accuracy": ACCURACY.get(model, ()),
        "quantization": QUANTIZATION.get(model, ()),
        "note": NOTES.get(model),
    }
