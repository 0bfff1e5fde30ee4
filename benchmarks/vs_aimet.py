"""seg2tflite's full-int8 files beside AIMET's simulated W8A8 and litert-torch's PT2E, on the same weights.

For each model of a run folder (``seg2tflite demo --out RUN``): the calibration images its
conversion used (the names its manifest lists) and the run's test split go to AIMET, in its own
environment (``.venv-aimet``, made on first use from ``aimet_requirements.txt`` plus this checkout
without its dependencies), which simulates per-channel W8A8 with each of its range schemes
(``aimet_quantsim.py``) and, with ``--adaround``, AdaRound's learned weight rounding (kept in
``adaround.json`` beside the schemes' ``result.json``, and shown whenever it is there). Beside it:
PyTorch's and the run's own full-int8 mIoU (``record.json``), and, when
``benchmarks/vs_litert_torch.py`` has run on the same run, PT2E's full-int8 mIoU at the demo size
(``RUN/litert_torch/compare.json``), with the 95% paired-bootstrap interval of ours minus PT2E over
the test images (both files run again in LiteRT with XNNPACK): how far their difference is from the
test images' noise. AIMET's predictions are kept (``result.npz``), so ours is also held against its
best scheme by the same interval, and every scheme is scored again on the run's validation images,
which chose nothing: whether a simulated model's lead over PyTorch holds on other images. With
``--ranges`` (a ``benchmarks/int8_ranges.py`` record of the same run), each range rule's file is
also held against AIMET's like rule (min/max, the 99.99th percentile, least error against
``tf_enhanced``).

    python benchmarks/vs_aimet.py --run runs/demo [--models segnet_vgg16 ...] [--adaround] [--reuse] [--ranges FILE] [--record FILE]

Writes ``RUN/aimet/compare.json`` and prints the table. A benchmark, not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from int8_ranges import (  # noqa: E402
    _arrays,
    miou_points,
    paired_interval,
    per_image_confusions,
    rendered_only,
    run_parser,
    write_record,
)
from vs_litert_torch import ROOT, calibration_images, litert_torch_python  # noqa: E402

from seg2tflite.eval.run_dir import RunDir

VENV = ROOT / ".venv-aimet"
REQUIREMENTS = Path(__file__).with_name("aimet_requirements.txt")
CHILD = Path(__file__).with_name("aimet_quantsim.py")


def _data_spec(run: Path) -> str:
    data = RunDir(run).summary()["config"]["data"]
    return f"folder:{run / 'data'}" if data.startswith("synthetic") else data


def _run_miou(run: Path, model: str) -> dict[str, float]:
    from seg2tflite.eval.record import load_record

    return {r.stage: 100 * r.miou for r in load_record(run).rows if r.model == model and r.miou is not None}


def _pt2e_miou(run: Path, model: str) -> float | None:
    path = run / "litert_torch" / "compare.json"
    if not path.is_file():
        return None
    for row in json.loads(path.read_text()).get("rows", []):
        if row.get("model") == model and row.get("sizes") == "demo":
            theirs = (row.get("accuracy") or {}).get("litert-torch full_int8") or {}
            return theirs.get("miou")
    return None


def _file_confusions(path: Path, data: str, split: str, pre: dict, masks: np.ndarray, k: int) -> np.ndarray:
    """Per-image confusions of a .tflite file on a split, in LiteRT with XNNPACK."""
    from seg2tflite.eval.evaluate import evaluate_artifact

    result = evaluate_artifact(
        path, data, split, input_size=tuple(pre["size"]), mean=tuple(pre["mean"]), std=tuple(pre["std"]), threads=2,
        keep_predictions=True, progress=False,
    )  # fmt: skip
    return per_image_confusions(result.predictions, masks, k)


def _versus_aimet(aimet: dict, predictions: Path, ours: dict[str, np.ndarray], masks: dict[str, np.ndarray], k: int) -> dict:
    """Ours against AIMET's best scheme on the test images (95% paired interval of ours minus it),
    and every scheme's, PyTorch's and our mIoU on the validation images, which chose nothing:
    whether a scheme's lead over PyTorch on the test images holds on other images."""
    saved = np.load(predictions)
    scored = {s: r["miou"] for s, r in aimet["schemes"].items() if "miou" in r and f"{s}/test" in saved}
    if not scored:
        return {}
    best = max(scored, key=scored.get)
    out = {"best_aimet": best, "ours_minus_best_aimet_interval": paired_interval(
        per_image_confusions(saved[f"{best}/test"], masks["test"], k), ours["test"])}  # fmt: skip
    if "val" in ours and "pytorch/val" in saved:
        val = {name: saved[f"{name}/val"] for name in ("pytorch", *scored)}
        out["val"] = {name: float(miou_points(per_image_confusions(p, masks["val"], k).sum(0))) for name, p in val.items()}
        out["val"]["ours"] = float(miou_points(ours["val"].sum(0)))
    return out


def compare_model(run: Path, model: str, python: Path, reuse: bool = False, adaround: bool = False) -> dict:
    from seg2tflite.data import Preprocess, load_dataset

    convert = RunDir(run).conversion(model)
    manifest = json.loads(convert.manifest_path.read_text())
    data = _data_spec(run)
    pre = manifest["preprocessing"]
    preprocess = Preprocess(tuple(pre["size"]), tuple(pre["mean"]), tuple(pre["std"]))
    test = load_dataset(data, "test")
    (images, masks), (val_images, val_masks) = _arrays(test, preprocess), _arrays(load_dataset(data, "val"), preprocess)
    k = test.info.num_classes
    out = run / "aimet" / model
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "data.npz", calib=calibration_images(manifest, data), images=images, masks=masks, num_classes=k,
             val_images=val_images)  # fmt: skip
    checkpoint = RunDir(run).checkpoint(model)
    runs = {"result.json": [], **({"adaround.json": ["--schemes", "adaround"]} if adaround else {})}
    for name, schemes in runs.items():
        if not (reuse and (out / name).is_file()):
            subprocess.run([str(python), str(CHILD), str(checkpoint), "--data", str(out / "data.npz"), *schemes, "--out",
                            str(out / name)], check=True)  # fmt: skip
    aimet = json.loads((out / "result.json").read_text())
    if (out / "adaround.json").is_file():  # AIMET's AdaRound, from this run or an earlier one (same data)
        aimet["schemes"].update(json.loads((out / "adaround.json").read_text())["schemes"])
    figures = _run_miou(run, model)
    ours_file, theirs_file = convert.artifact("full_int8"), run / "litert_torch" / "demo" / model / "full_int8.tflite"
    ours = {"test": _file_confusions(ours_file, data, "test", pre, masks, k)} if ours_file.is_file() else {}
    versus = {}
    if ours and (out / "result.npz").is_file():  # AIMET's predictions (results from before they were kept have none)
        ours["val"] = _file_confusions(ours_file, data, "val", pre, val_masks, k)
        versus = _versus_aimet(aimet, out / "result.npz", ours, {"test": masks, "val": val_masks}, k)
    pt2e = None  # 95% paired interval of ours minus PT2E's file at the demo size, both in LiteRT
    if ours and theirs_file.is_file():
        pt2e = paired_interval(_file_confusions(theirs_file, data, "test", pre, masks, k), ours["test"])
    return {
        "pytorch_miou": figures.get("pytorch"), "ours_full_int8_miou": figures.get("full_int8"),
        "pt2e_miou": _pt2e_miou(run, model), "ours_minus_pt2e_interval": pt2e,
        "aimet_pytorch_miou": aimet["pytorch_miou"], "aimet": aimet["schemes"], "aimet_versions": aimet["versions"],
        "ranges": (manifest.get("int8_ranges") or {}).get("method"), "aimet_prepared": aimet.get("prepared"), **versus,
    }  # fmt: skip


SAME_RULE = {"minmax": "min_max", "percentile": "percentile", "mse": "tf_enhanced"}  # ours -> AIMET's like rule


def same_rule(row: dict, ranges: dict, model: str) -> dict[str, float]:
    """mIoU of this project's file with each range rule (an int8_ranges record of the same weights
    and calibration images) minus AIMET's simulation with the like rule: the quantizers compared
    rule by rule, not one file against the best of three."""
    methods = (ranges["models"].get(model) or {}).get("methods", {})
    return {
        ours: methods[ours]["miou"] - row["aimet"][theirs]["miou"]
        for ours, theirs in SAME_RULE.items()
        if ours in methods and "miou" in (row["aimet"].get(theirs) or {})
    }


def render(results: dict) -> str:
    schemes = ("tf_enhanced", "percentile", "min_max")
    if any("adaround" in r["aimet"] for r in results["models"].values()):
        schemes += ("adaround",)
    lines = [
        "| model | PyTorch | ours full int8 (Δ) | PT2E (Δ) | ours - PT2E [95% interval] | "
        + " | ".join(f"AIMET {s} (Δ)" for s in schemes)
        + " | ours - best AIMET | AIMET quantizes |",
        "| --- | --: | --: | --: | --: | " + " | ".join("--:" for _ in schemes) + " | --: | --- |",
    ]
    graph = {True: "every op", None: "-"}  # else: prepare_model failed, the modules' outputs only

    def cell(v, ref):
        return "-" if v is None else f"{v:.2f} ({v - ref:+.2f})"

    def versus_pt2e(r: dict) -> str:
        interval = r.get("ours_minus_pt2e_interval")
        if interval is None or r["pt2e_miou"] is None or r["ours_full_int8_miou"] is None:
            return "-"
        return f"{r['ours_full_int8_miou'] - r['pt2e_miou']:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"

    for model, r in results["models"].items():
        ref = r["pytorch_miou"]
        aimet = {s: (r["aimet"].get(s) or {}).get("miou") for s in schemes}
        best = max((v for v in aimet.values() if v is not None), default=None)
        gap = "-" if best is None or r["ours_full_int8_miou"] is None else f"{r['ours_full_int8_miou'] - best:+.2f}"
        if "ours_minus_best_aimet_interval" in r and gap != "-":
            low, high = r["ours_minus_best_aimet_interval"]
            gap += f" [{low:+.2f}, {high:+.2f}]"
        lines.append(
            f"| `{model}` | {ref:.2f} | {cell(r['ours_full_int8_miou'], ref)} | {cell(r['pt2e_miou'], ref)} | {versus_pt2e(r)} | "
            + " | ".join(cell(aimet[s], ref) for s in schemes) + f" | {gap} | {graph.get(r.get('aimet_prepared'), 'modules only')} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n" + _render_val(results, schemes) + _render_same_rule(results)


def _render_same_rule(results: dict) -> str:
    """The rule-by-rule table, for the rows measured with ``--ranges``."""
    rows = {model: r["same_rule"] for model, r in results["models"].items() if r.get("same_rule")}
    if not rows:
        return ""
    lines = [
        "",
        "| model | " + " | ".join(f"ours {o} - AIMET {t}" for o, t in SAME_RULE.items()) + " | mean |",
        "| --- | " + " | ".join("--:" for _ in SAME_RULE) + " | --: |",
    ]
    for model, pairs in rows.items():
        cells = [f"{pairs[o]:+.2f}" if o in pairs else "-" for o in SAME_RULE]
        lines.append(f"| `{model}` | " + " | ".join(cells) + f" | {sum(pairs.values()) / len(pairs):+.2f} |")
    return "\n".join(lines) + "\n"


def _render_val(results: dict, schemes: tuple[str, ...]) -> str:
    """The validation images' table, for the models whose AIMET predictions were kept."""
    rows = {model: r["val"] for model, r in results["models"].items() if "val" in r}
    if not rows:
        return ""
    schemes = tuple(s for s in schemes if any(s in v for v in rows.values()))
    lines = [
        "",
        "| model | PyTorch (val) | ours full int8 (Δ) | "
        + " | ".join(f"AIMET {s} (Δ)" for s in schemes)
        + " | ours - best AIMET |",
        "| --- | --: | --: | " + " | ".join("--:" for _ in schemes) + " | --: |",
    ]
    for model, v in rows.items():
        ref, best = v["pytorch"], max(v[s] for s in schemes if s in v)
        cells = [f"{v[s]:.2f} ({v[s] - ref:+.2f})" if s in v else "-" for s in ("ours", *schemes)]
        lines.append(f"| `{model}` | {ref:.2f} | " + " | ".join(cells) + f" | {v['ours'] - best:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__)
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--reuse", action="store_true", help="take a model's AIMET result already in RUN/aimet/M (same data)")
    parser.add_argument("--adaround", action="store_true", help="also AIMET's AdaRound (minutes to an hour a model)")
    parser.add_argument(
        "--ranges", type=Path, default=None,
        help="a benchmarks/int8_ranges.py record of the same run: each range rule's file against AIMET's same rule",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if rendered_only(parser, args, render):
        return 0
    python = litert_torch_python(args.venv, REQUIREMENTS)
    models = args.models or RunDir(args.run).summary()["config"]["models"]
    from seg2tflite.converters.manifest import package_versions

    command = ["python", "benchmarks/vs_aimet.py", *(argv or sys.argv[1:])]
    results = {"command": command, "versions": package_versions(), "models": {}}  # each model also has AIMET's
    ranges = json.loads(args.ranges.read_text()) if args.ranges else None
    for model in models:
        results["models"][model] = compare_model(args.run, model, python, args.reuse, args.adaround)
        if ranges:
            results["models"][model]["same_rule"] = same_rule(results["models"][model], ranges, model)
        print(f"{model}: done", flush=True)
    write_record(results, [args.run / "aimet" / "compare.json", *([args.record] if args.record else [])])
    print(render(results))
    return 0


if __name__ == "__main__":
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()  # no start-up lines from TensorFlow, absl or LiteRT
    sys.exit(main())
