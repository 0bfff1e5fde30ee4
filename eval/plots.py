"""The report's figures: accuracy against size and latency, and prediction overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from seg2tflite.atomic import atomic_path  # noqa: E402

STAGE_MARKERS = {
    "pytorch": "o",
    "onnx": "s",
    "saved_model": "D",
    "saved_model_int8": "d",
    "float32": "^",
    "float16": "v",
    "dynamic_int8": "P",
    "full_int8": "X",
    "int16x8": "*",
    "mixed_int8": "h",
}
IGNORE_COLOUR = (255, 255, 255)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _plain(value: float, _pos=None) -> str:
    return f"{value:g}"


def _plain_minor(value: float, _pos=None) -> str:
    """Label the 2x and 5x minor ticks of a log axis, so a narrow range still has numbers."""
    mantissa = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


def plotted_miou(row: dict, reference: dict | None) -> float | None:
    """Where a table row sits on the mIoU axis. A row measured on fewer images than PyTorch's (the
    demo's int16x8) sits at PyTorch's mIoU plus its Δ on those images: its own mIoU on 10 images
    is not comparable with the others' on the whole test split."""
    if (
        reference is None
        or row["num_images"] >= reference["num_images"]
        or None in (row["miou_delta_pts"], reference["miou_pct"])
    ):
        return row["miou_pct"]
    return round(reference["miou_pct"] + row["miou_delta_pts"], 2)


def plot_tradeoff(rows: list[dict], path: str | Path) -> dict[str, list[tuple]]:
    """mIoU (%) against file size and against median latency; colour = model, marker = stage.

    ``rows`` are ``report_rows.table_rows`` dicts. Rows without a latency are left out of that panel;
    compressed variants (``base_model`` set to another model) have their own plot. Returns the
    points drawn, ``(model, stage, x, mIoU)`` per panel (``file_mb``, ``latency_median_ms``).
    """
    rows = [r for r in rows if r.get("base_model") in (None, r["model"])]
    models = list(dict.fromkeys(r["model"] for r in rows))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    reference = {r["model"]: r for r in rows if r["stage"] == "pytorch"}
    labels = {r["stage"]: r["stage_label"].replace("(first", "(its Δ on the first") for r in rows}

    def miou(r: dict) -> float | None:
        return plotted_miou(r, reference.get(r["model"]))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    panels = [("file_mb", "file size (MB, log scale)"), ("latency_median_ms", "median latency at batch 1 (ms, log scale)")]
    drawn: dict[str, list[tuple]] = {key: [] for key, _ in panels}
    for ax, (key, xlabel) in zip(axes, panels):
        for model in models:
            points = [r for r in rows if r["model"] == model and r[key] is not None and miou(r) is not None]
            for r in points:
                drawn[key].append((model, r["stage"], r[key], miou(r)))
                ax.scatter(
                    r[key], miou(r), marker=STAGE_MARKERS.get(r["stage"], "o"), s=70,
                    color=colours[model], edgecolors="black", linewidths=0.5, zorder=3,
                )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_plain))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_plain_minor))
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mIoU (%)")
    axes[0].set_title("accuracy against size")
    axes[1].set_title("accuracy against latency")
    model_handles = [Patch(color=colours[m], label=m) for m in models]
    stage_handles = [
        Line2D(
            [],
            [],
            marker=STAGE_MARKERS.get(s, "o"),
            color="grey",
            markeredgecolor="black",
            linestyle="",
            markersize=8,
            label=labels[s],
        )
        for s in STAGE_MARKERS
        if s in labels
    ]
    first = fig.legend(handles=model_handles, title="model", loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    fig.add_artist(first)
    fig.legend(
        handles=stage_handles,
        title="stage",
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95 - 0.06 * (len(models) + 2)),
        frameon=False,
    )
    fig.tight_layout()
    _save(fig, Path(path))
    return drawn


def colourise(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class-index map (H, W) -> RGB (H, W, 3) with the dataset palette; ignored pixels white."""
    lut = np.tile(np.asarray(IGNORE_COLOUR, np.uint8), (256, 1))
    lut[: len(palette)] = palette
    return lut[labels.astype(np.int64).clip(0, 255)]


def plot_overlays(
    samples: dict[str, dict[str, np.ndarray]],
    path: str | Path,
    stages: tuple[str, ...],
    labels: dict[str, str],
    max_images: int = 3,
) -> None:
    """One block per model: rows of image / ground truth / each stage's prediction, with a legend.

    ``samples`` maps a model name to its saved sample (see ``seg2tflite.eval.report``); stages missing from
    a sample are skipped.
    """
    blocks = []
    for model, sample in samples.items():
        shown = [s for s in stages if f"pred_{s}" in sample]
        blocks.append((model, sample, shown, min(max_images, len(sample["image"]))))
    ncols = 2 + max(len(shown) for _, _, shown, _ in blocks)
    nrows = sum(n for *_, n in blocks)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.3 * nrows + 0.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    row = 0
    legend = {}  # only the classes that appear in the panels, so 150 ADE20K classes do not flood it
    for model, sample, shown, n in blocks:
        palette = sample["palette"]
        maps = [sample["target"][:n], *(sample[f"pred_{s}"][:n] for s in shown)]
        present = set(np.unique(np.concatenate([m.ravel() for m in maps])).tolist())
        for k, (name, colour) in enumerate(zip(sample["class_names"], palette)):
            if k in present:
                legend.setdefault(str(name), tuple(int(c) for c in colour))
        titles = ["image", "ground truth", *(labels.get(s, s) for s in shown)]
        for i in range(n):
            panels = [sample["image"][i], colourise(sample["target"][i], palette)]
            panels += [colourise(sample[f"pred_{s}"][i], palette) for s in shown]
            for j, panel in enumerate(panels):
                ax = axes[row, j]
                ax.imshow(panel, interpolation="nearest")
                if i == 0:
                    ax.set_title(titles[j], fontsize=9)
            axes[row, 0].text(
                -0.08, 0.5, model if i == 0 else "", transform=axes[row, 0].transAxes,
                rotation=90, ha="right", va="center", fontsize=9, fontweight="bold",
            )  # fmt: skip
            row += 1
    handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="black", linewidth=0.5, label=n) for n, c in legend.items()]
    handles.append(Patch(facecolor=np.asarray(IGNORE_COLOUR) / 255.0, edgecolor="black", linewidth=0.5, label="ignored"))
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 9), frameon=False, fontsize=8, bbox_to_anchor=(0.5, 0.0)
    )
    fig.tight_layout(rect=(0.02, 0.05, 1.0, 1.0))
    _save(fig, Path(path))


def plot_compression(rows: list[dict], path: str | Path) -> dict[str, list[tuple]]:
    """mIoU (%) against zipped file size, one panel per base model, one colour per compression.

    ``rows`` are ``report_rows.compression_rows`` dicts; marker = stage as in ``plot_tradeoff``.
    Returns the points drawn, ``(variant, stage, zipped MB, mIoU)`` per base model.
    """
    bases = list(dict.fromkeys(r["base_model"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    colours = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}
    markers = {"TFLite float32": "^", "TFLite full int8": "X", "TFLite mixed int8": "h", "PyTorch": "o"}
    fig, axes = plt.subplots(1, len(bases), figsize=(5.2 * len(bases), 4.4), squeeze=False)
    drawn: dict[str, list[tuple]] = {base: [] for base in bases}
    for ax, base in zip(axes[0], bases):
        for r in (r for r in rows if r["base_model"] == base and r["miou_pct"] is not None):
            drawn[base].append((r["variant"], r["stage"], r["zip_mb"], r["miou_pct"]))
            ax.scatter(
                r["zip_mb"], r["miou_pct"], marker=markers.get(r["stage"], "o"), s=70,
                color=colours[r["variant"]], edgecolors="black", linewidths=0.5, zorder=3,
            )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_plain))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_plain_minor))
        ax.set_xlabel("zipped .tflite size (MB, log scale)")
        ax.set_title(base)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("test mIoU (%)")
    variant_handles = [Patch(color=colours[v], label=v) for v in variants]
    stage_handles = [
        Line2D([], [], marker=m, color="grey", markeredgecolor="black", linestyle="", markersize=8, label=s)
        for s, m in markers.items()
        if any(r["stage"] == s for r in rows)
    ]
    first = fig.legend(handles=variant_handles, title="compression", loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    fig.add_artist(first)
    fig.legend(
        handles=stage_handles,
        title="stage",
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95 - 0.06 * (len(variants) + 2)),
        frameon=False,
    )
    fig.tight_layout()
    _save(fig, Path(path))
    return drawn


def plot_calibration_study(studies: dict[str, dict], path: str | Path) -> None:
    """Full-int8 mIoU against calibration images, a line per selection strategy (dotted: the same
    files on LiteRT's builtin kernels, without XNNPACK), one panel per model; per-tensor weights as
    a lone marker, float32 as a dashed line."""
    fig, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 4), squeeze=False)
    for ax, (model, study) in zip(axes[0], studies.items()):
        rows = study["rows"]
        for i, strategy in enumerate(dict.fromkeys(r["strategy"] for r in rows)):
            per_channel = [r for r in rows if r["strategy"] == strategy and r["weights"] == "per-channel"]
            line = sorted((r["size"], r["miou"]) for r in per_channel)
            ax.plot(*zip(*line), marker="o", color=f"C{i}", label=f"{strategy}, per-channel")
            builtin = sorted(
                (r["size"], r["miou_builtin_kernels"]) for r in per_channel if r.get("miou_builtin_kernels") is not None
            )
            if builtin:
                ax.plot(*zip(*builtin), marker=".", linestyle=":", color=f"C{i}", label=f"{strategy}, builtin kernels")
        for r in (r for r in rows if r["weights"] == "per-tensor"):
            ax.scatter(r["size"], r["miou"], marker="X", s=80, color="black", zorder=3, label=f"{r['strategy']}, per-tensor")
        ax.axhline(study["float32_miou"], color="grey", linestyle="--", label="float32 TFLite")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_plain))
        ax.set_xlabel("calibration images")
        ax.set_title(model)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("full-int8 test mIoU (%)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, Path(path))
