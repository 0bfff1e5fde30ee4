"""seg2tflite's .tflite files beside litert-torch's, on the same trained weights and the same LiteRT.

litert-torch (Google's direct PyTorch -> TFLite converter: torch.export, PT2E quantization, no
TensorFlow) cannot share the project's environment (numpy 2, protobuf 7 against onnx2tf's exact
pins), so this benchmark makes its own, ``.venv-litert-torch`` (``litert_torch_requirements.txt``
plus this checkout without its dependencies), and converts there (``litert_torch_export.py``). All
measuring happens here, in the project's environment, with its LiteRT (ai-edge-litert 2.3.0):

- latency: batch 1, XNNPACK, the file's ``invoke()`` alone (as LiteRT's benchmark tool times it:
  the two routes' files take different layouts and types, and the Python caller's conversions are
  not the file's); a model's files are loaded side by side in one fresh process and timed in
  ``--rounds`` turns, each file about 0.25 s a turn (``seg2tflite.eval.bench.benchmark_in_turns``),
  the two files compared one right after the other: a file's figure is the median of its turns' medians,
  a ratio the median of the turns' ratios (``paired_ratio``), so that a busy or drifting CPU weighs
  on both routes alike; ``--noise-check`` times seg2tflite's float32 file against a byte copy of
  itself in the same turns, the ratio the method gives for identical files;
- accuracy, at the demo size: mIoU on the run's test images and argmax agreement with PyTorch.

litert-torch calibrates on exactly the images seg2tflite's conversion did (the names its
``manifest.json`` lists). The demo size uses ``RUN/models/M/convert`` (``seg2tflite demo``), the
deploy size ``RUN/deploy/M`` (``seg2tflite latency --run RUN``); run those first.

    python benchmarks/vs_litert_torch.py --run runs/demo                 # every model, demo and deploy size
    python benchmarks/vs_litert_torch.py --run runs/demo --models segformer_b0 --sizes demo --noise-check

Writes ``RUN/litert_torch/compare.json`` and ``compare.md``; the converted files stay under
``RUN/litert_torch/SIZE/MODEL``. A benchmark, not a test: not part of the default test run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from seg2tflite.eval.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-litert-torch"
REQUIREMENTS = Path(__file__).with_name("litert_torch_requirements.txt")
EXPORT = Path(__file__).with_name("litert_torch_export.py")
NOISE = "seg2tflite float32, a byte copy"
OURS = {"float32": "model_float32.tflite", "full_int8": "model_full_int8.tflite", "mixed_int8": "model_mixed_int8.tflite"}


def litert_torch_python(venv: Path, requirements: Path = REQUIREMENTS) -> Path:
    """The interpreter of a benchmark's own environment (litert-torch's by default), made on first
    use: ``requirements``, then this checkout without its dependencies."""
    python = venv / "bin" / "python"
    if python.is_file() and (venv / ".complete").is_file():
        return python
    print(f"making the environment {venv} (a few minutes, once)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    (venv / ".complete").write_text("")
    return python


def calibration_images(manifest: dict, data_spec: str) -> np.ndarray:
    """The calibration images seg2tflite's conversion used, rebuilt from the names it recorded."""
    from seg2tflite.data import Preprocess, load_dataset

    calib = manifest["calibration"]
    split = calib["source"].rsplit(":", 1)[1]
    dataset = load_dataset(data_spec, split)
    index = {dataset.item_name(i): i for i in range(len(dataset))}
    pre = manifest["preprocessing"]
    preprocess = Preprocess(tuple(pre["size"]), tuple(pre["mean"]), tuple(pre["std"]))
    return np.stack([preprocess.image(np.asarray(dataset[index[n]][0])) for n in calib["images"]]).astype(np.float32)


def export(python: Path, checkpoint: Path, size, calib: np.ndarray, out: Path) -> dict:
    """litert-torch's float32 and full-int8 files of ``checkpoint`` in ``out`` (kept when there)."""
    record = out / "litert_torch.json"
    if record.is_file() and record.stat().st_mtime > checkpoint.stat().st_mtime:
        return json.loads(record.read_text())
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "calib.npy", calib)
    started = time.perf_counter()
    log = out / "export.log"
    with open(log, "w") as f:
        done = subprocess.run(
            [str(python), str(EXPORT), str(checkpoint), "--size", *map(str, size), "--calib", str(out / "calib.npy"), "--out", str(out)],
            stdout=f, stderr=subprocess.STDOUT,
        )  # fmt: skip
    (out / "calib.npy").unlink()
    if done.returncode != 0:  # litert-torch's own failure is a finding of the comparison, not the end of it
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        return {"error": (lines[-1] if lines else f"exit {done.returncode}")[:300], "log": str(log)}
    result = json.loads(record.read_text())
    result["seconds"] = round(time.perf_counter() - started, 1)
    record.write_text(json.dumps(result, indent=1) + "\n")
    return result


def timed_in_turns(files: dict[str, Path], size, rounds: int, threads: int) -> dict[str, dict]:
    """Every file's ``invoke()`` (``BenchResult.invoke_median_ms``'s figure), all loaded in one
    fresh process and timed in ``rounds`` turns of about a quarter second each (``benchmark_in_turns``),
    the files compared next to each other; a file's figure is the median of its turns' medians.
    The files' own latency, not the runner's: the two routes' files take different layouts and
    types (seg2tflite's NHWC with int8 ends, litert-torch's NCHW float), and the Python runner's
    transposes and (de)quantization would time the harness, not the file."""
    from seg2tflite.eval.bench import benchmark_in_turns

    names = sorted(files, key=_turn_position)
    turns = benchmark_in_turns([files[n] for n in names], size, threads=threads, turns=rounds)
    return {n: {"median_ms": float(np.median(ms)), "rounds_ms": [round(x, 3) for x in ms]} for n, ms in zip(names, turns)}


def _turn_position(name: str) -> tuple[int, int]:
    """Each variant's two files side by side, seg2tflite's float32 between its byte copy and
    litert-torch's float32."""
    variant = next((v for v in OURS if name.endswith(v)), "float32")
    route = 0 if name == NOISE else 1 if name.startswith("seg2tflite") else 2
    return list(OURS).index(variant), route


def paired_ratio(ours: dict, theirs: dict) -> float:
    """The median of the turns' ratios, ours over theirs. Each turn times both files one right
    after the other, so a machine that switches between faster and slower states (this VM does,
    by about 1.75x, in spells of seconds) weighs on both sides of every ratio; a ratio of the two
    medians would set a file timed in the slow state against one timed in the fast state."""
    return float(np.median(np.asarray(ours["rounds_ms"]) / np.asarray(theirs["rounds_ms"])))


def delegation(path: Path) -> dict:
    from seg2tflite.converters.runtimes import TFLiteRunner

    d = TFLiteRunner(path, threads=1).delegation
    return {"ops": d["ops"], "delegated": d["delegated"], "not_delegated": d["not_delegated"]}


def accuracy(files: dict[str, Path], checkpoint: Path, data_spec: str, size, mean, std, limit: int) -> dict[str, dict]:
    """mIoU % on the test split and argmax agreement % with PyTorch, for every file."""
    from seg2tflite.eval.evaluate import argmax_agreement, evaluate_artifact

    def run(path):
        return evaluate_artifact(
            path, data_spec, "test", input_size=size, mean=mean, std=std, threads=2, limit=limit, keep_predictions=True,
            progress=False,
        )  # fmt: skip

    reference = run(checkpoint)
    out = {"pytorch": {"miou": 100 * reference.miou}}
    for name, path in files.items():
        result = run(path)
        out[name] = {"miou": 100 * result.miou, "agreement": 100 * argmax_agreement(result.predictions, reference.predictions)}
    return out


class Skipped(Exception):
    """A model the run cannot compare at a size (no conversion or no checkpoint there)."""


def compare_model(model: str, run: Path, size_name: str, python: Path, args) -> dict:
    from seg2tflite.app.latency import deploy_data_spec

    ours_dir = RunDir(run).conversion(model).path if size_name == "demo" else RunDir(run).deploy_dir(model)
    manifest_path = ours_dir / "manifest.json"
    if not manifest_path.is_file():
        command = "seg2tflite demo" if size_name == "demo" else f"seg2tflite latency --run {run}"
        raise Skipped(f"{ours_dir}: no seg2tflite conversion there; run `{command}` first")
    manifest = json.loads(manifest_path.read_text())
    size = tuple(manifest["preprocessing"]["size"])
    checkpoint = RunDir(run).checkpoint(model)
    if not checkpoint.is_file():
        raise Skipped(f"{checkpoint}: no trained checkpoint; the comparison needs the weights both routes convert")
    demo = RunDir(run).summary()["config"]
    data_spec = demo["data"] if size_name == "demo" else deploy_data_spec(size, manifest["calibration"]["count"])
    theirs_dir = run / "litert_torch" / size_name / model
    exported = export(python, checkpoint, size, calibration_images(manifest, data_spec), theirs_dir)

    files = {f"seg2tflite {v}": ours_dir / f for v, f in OURS.items() if (ours_dir / f).is_file()}
    delegated = {name: delegation(path) for name, path in files.items()}
    exported.setdefault("errors", {})
    for v, f in exported.get("files", {}).items():
        try:
            delegated[f"litert-torch {v}"] = delegation(theirs_dir / f)
            files[f"litert-torch {v}"] = theirs_dir / f
        except (RuntimeError, ValueError) as e:  # a file LiteRT cannot load is litert-torch's finding
            exported["errors"][v] = f"written, but LiteRT cannot load it: {str(e).strip().splitlines()[-1][:200]}"
    row = {"model": model, "size": list(size), "litert_torch_export": exported}
    timed = dict(files)
    if args.noise_check and "seg2tflite float32" in files:  # the method's own noise: a file against its copy
        timed[NOISE] = theirs_dir / "seg2tflite_float32_copy.tflite"
        shutil.copyfile(files["seg2tflite float32"], timed[NOISE])
    row["latency"] = timed_in_turns(timed, size, args.rounds, args.threads)
    if NOISE in row["latency"]:
        copy = row["latency"].pop(NOISE)
        row["noise"] = {**copy, "ratio": paired_ratio(row["latency"]["seg2tflite float32"], copy)}
    for name, path in files.items():
        row["latency"][name].update(delegated[name], size_mb=round(path.stat().st_size / 2**20, 2))
    if size_name == "demo":
        pre = manifest["preprocessing"]
        row["accuracy"] = accuracy(files, checkpoint, data_spec, size, tuple(pre["mean"]), tuple(pre["std"]), args.limit)
    for v in OURS:
        ours, theirs = row["latency"].get(f"seg2tflite {v}"), row["latency"].get(theirs_name(v))
        if ours and theirs:
            row[f"{v}_ratio"] = paired_ratio(ours, theirs)
    print(format_row(row))
    return row


def format_row(row: dict) -> str:
    lines = [f"{row['model']} {row['size'][0]}x{row['size'][1]}"]
    export = row["litert_torch_export"]
    for variant, error in {**({"all": export["error"]} if "error" in export else {}), **export.get("errors", {})}.items():
        lines.append(f"  litert-torch failed ({variant}): {error}")
    for name, t in row["latency"].items():
        acc = row.get("accuracy", {}).get(name)
        extra = f"  mIoU {acc['miou']:.2f}  agreement {acc['agreement']:.2f}%" if acc else ""
        lines.append(f"  {name:24s} {t['median_ms']:8.2f} ms  XNNPACK {t['delegated']}/{t['ops']}{extra}")
    if "noise" in row:
        lines.append(f"  float32 against its own byte copy: ratio {row['noise']['ratio']:.2f}")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | size | variant | seg2tflite ms | litert-torch ms | ratio | seg2tflite mIoU (Δ) | litert-torch mIoU (Δ) "
        "| XNNPACK ops (ours / theirs) |\n|---|---|---|--:|--:|--:|--:|--:|--:|"
    )
    lines = [head]
    for row in rows:
        size = f"{row['size'][0]}x{row['size'][1]}"
        acc = row.get("accuracy", {})
        ref = acc.get("pytorch", {}).get("miou")

        def miou(name):
            if name not in acc:
                return ""
            return f"{acc[name]['miou']:.2f} ({acc[name]['miou'] - ref:+.2f})"

        for v in ("float32", "full_int8", "mixed_int8"):
            ours, theirs = row["latency"].get(f"seg2tflite {v}"), row["latency"].get(theirs_name(v))
            if ours is None:
                continue
            if theirs is None:
                export = row.get("litert_torch_export", {})
                failed = export.get("errors", {}).get(theirs_name(v).split()[1]) or export.get("error", "no file")
                lines.append(
                    f"| {row['model']} | {size} | {v.replace('_', ' ')} | {ours['median_ms']:.2f} | fails: {failed[:120]} | "
                    f"| {miou(f'seg2tflite {v}')} | | {ours['delegated']}/{ours['ops']} / - |"
                )
                continue
            lines.append(
                f"| {row['model']} | {size} | {v.replace('_', ' ')} | {ours['median_ms']:.2f} | {theirs['median_ms']:.2f} | "
                f"{paired_ratio(ours, theirs):.2f} | {miou(f'seg2tflite {v}')} | {miou(theirs_name(v))} | "
                f"{ours['delegated']}/{ours['ops']} / {theirs['delegated']}/{theirs['ops']} |"
            )
    noise = [row for row in rows if "noise" in row]
    if noise:
        lines += ["", "| model | size | seg2tflite float32 ms | the same file, a byte copy, ms | ratio (the method's noise) |",
                  "|---|---|--:|--:|--:|"]  # fmt: skip
        for row in noise:
            ms = row["latency"]["seg2tflite float32"]["median_ms"]
            lines.append(
                f"| {row['model']} | {row['size'][0]}x{row['size'][1]} | {ms:.2f} | {row['noise']['median_ms']:.2f} | {row['noise']['ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def theirs_name(variant: str) -> str:
    return "litert-torch " + ("full_int8" if variant == "mixed_int8" else variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `seg2tflite demo` run folder")
    parser.add_argument("--models", nargs="+", help="default: the run's models")
    parser.add_argument("--sizes", nargs="+", choices=("demo", "deploy"), default=["demo", "deploy"])
    parser.add_argument("--rounds", type=int, default=30, help="timing turns, each file about 0.25 s a turn (default: 30)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--noise-check", action="store_true",
        help="also time seg2tflite's float32 file against a byte copy of itself, in the same turns: the ratio the method gives for identical files",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, default=50, help="test images for mIoU at the demo size")
    parser.add_argument("--venv", type=Path, default=VENV)
    args = parser.parse_args()
    run = Path(args.run)
    if not RunDir(run).summary_path.is_file():
        raise SystemExit(f"{run}: not a `seg2tflite demo` run folder (no demo.json)")
    from seg2tflite.eval.record import run_versions

    models = args.models or RunDir(run).summary()["config"]["models"]
    python = litert_torch_python(args.venv)
    out = run / "litert_torch"
    path = out / "compare.json"
    record = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    for size_name in args.sizes:
        for model in models:
            try:
                command = ["python", "benchmarks/vs_litert_torch.py", *sys.argv[1:]]
                row = {"sizes": size_name, "command": command, **compare_model(model, run, size_name, python, args)}
            except Skipped as e:
                print(f"{model} skipped at the {size_name} size: {e}")
                continue
            record["rows"] = [r for r in record["rows"] if (r["model"], r["sizes"]) != (model, size_name)] + [row]
            record.update(command=command, versions=run_versions(), threads=args.threads, rounds=args.rounds)  # the latest run's
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1) + "\n")
            (out / "compare.md").write_text(markdown(record["rows"]))
    if path.is_file():
        print(f"written: {path} and {out / 'compare.md'}")


if __name__ == "__main__":
    from seg2tflite.quiet import quiet_libraries

    quiet_libraries()  # no start-up lines from TensorFlow, absl or LiteRT
    main()
