"""The report's markdown pages: ``results.md``, ``summary.md``, ``per_class_iou.md``, the
published anchors and ``compression.md`` from the run record (``report_rows``), and the pages of
the other commands' records in the run folder: ``deploy_latency.md`` (``seg2tflite latency``) and
``profile.md`` (``seg2tflite profile``). Each is a string; ``report.build_report`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

from seg2tflite.converters.stages import REFERENCE, label
from seg2tflite.errors import UserError
from seg2tflite.eval import anchors
from seg2tflite.eval.profile_run import PROFILE_FILE, SKIPPED
from seg2tflite.eval.record import DEPLOY_LATENCY_FILE, RECORD_FILE, RunRecord
from seg2tflite.eval.report_rows import compression_rows, per_class_rows, table_rows


def render_compression_md(record: RunRecord) -> str:
    rows = compression_rows(record)
    header = [
        "model",
        "compression",
        "stage",
        "mIoU (%)",
        "Δ vs float PyTorch (pts)",
        "size (MB)",
        "zipped (MB)",
        "zipped / float32",
        "median (ms)",
    ]
    body = [
        [
            f"`{t['base_model']}`", t["variant"], t["stage"], _fmt(t["miou_pct"], ".2f"), _signed(t["miou_delta_vs_base_pts"]),
            _fmt(t["file_mb"], ".2f"), _fmt(t["zip_mb"], ".2f"), _fmt(t["zip_vs_float32"], ".2f"), _fmt(t["latency_median_ms"], ".1f"),
        ]
        for t in rows
    ]  # fmt: skip
    return "\n".join([
        "# Compression",
        "",
        "Every compressed variant beside the model it came from. Δ is against the uncompressed model's PyTorch",
        "mIoU on the same images; zipped / float32 compares the deflate-compressed file with the uncompressed",
        "model's float32 .tflite (how tensorflow-model-optimization measures the gain of sparsity and clustering).",
        "A compressed model's own PyTorch row is in `results.md` under `MODEL+METHOD`. Plot: `compression.png`.",
        "",
        _md_table(header, body, ["---", "---", "---"] + ["--:"] * (len(header) - 3)),
        "",
    ])  # fmt: skip


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)) and not isinstance(v, bool) and spec:
        return format(v, spec)
    return str(v)


def _cell(text: str) -> str:
    """Text from a record (a class name) as one markdown table cell: '|' escaped, line breaks as spaces."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{round(v, 2) + 0.0:+.2f}"  # + 0.0: a -0.004 is "+0.00", not "-0.00"


def render_results_md(record: RunRecord) -> str:
    rows = table_rows(record)
    header = [
        "model", "stage", "runtime", "params (M)", "size (MB)", "zipped (MB)", "median (ms)", "p90 (ms)",
        "threads", "peak RSS (MB)", "mIoU (%)", "Δ mIoU (pts)", "builtin mIoU (%)", "XNNPACK ops", "agreement (%)", "max drift",
    ]  # fmt: skip
    body = [
        [
            f"`{t['model']}`", t["stage_label"], t["runtime"], _fmt(t["params_m"], ".3g"), _fmt(t["file_mb"], ".2f"),
            _fmt(t["zip_mb"], ".2f"), _fmt(t["latency_median_ms"], ".2f"), _fmt(t["latency_p90_ms"], ".2f"),
            _fmt(t["threads"]), _fmt(t["peak_rss_mb"], ".0f"), _fmt(t["miou_pct"], ".2f"),
            _signed(t["miou_delta_pts"]) if t["stage"] != REFERENCE else "ref",
            _fmt(t["miou_builtin_pct"], ".2f"), _fmt(t["xnnpack_ops"]),
            _fmt(t["argmax_agreement_pct"], ".3f") if t["stage"] != REFERENCE else "ref",
            _fmt(t["max_logit_drift"], ".3g") if t["stage"] != REFERENCE else "ref",
        ]
        for t in rows
    ]  # fmt: skip
    align = ["---", "---", "---"] + ["--:"] * (len(header) - 3)
    warnings = [
        f"**WARNING: `{model}` was evaluated on different data at different stages "
        "(the dataset changed during the run); its rows are not comparable. Re-run the measurements.**"
        for model in dict.fromkeys(r.model for r in record.rows)
        # rows on fewer images (a subset) have their own digest: compare rows on as many images
        if any(
            len({r.data_sha256 for r in record.rows if r.model == model and r.num_images == n and r.data_sha256}) > 1
            for n in {r.num_images for r in record.rows if r.model == model}
        )
    ]
    setups = sorted({(t["data"], t["split"], t["num_images"], t["input_size"]) for t in rows})
    drift_n = sorted({t["drift_images"] for t in rows if t["drift_images"]})
    lines = [
        "# seg2tflite results",
        "",
        f"Generated from `{RECORD_FILE}` (recorded {record.created or 'unknown'}); every figure is measured, none typed.",
        "",
        "Evaluated on: " + "; ".join(f"`{d}` split `{s}`, {n} images at {size}" for d, s, n, size in setups) + ".",
        "mIoU in percent; Δ mIoU against the same model's PyTorch row, in points (a row on its first N images:",
        "against PyTorch on those images); agreement = pixels whose argmax equals PyTorch's over the same images; max drift = largest |logit - PyTorch logit|"
        + (f" over the first {', '.join(map(str, drift_n))} images" if drift_n else "")
        + "; latency at batch 1 after warm-up, one fresh process per artifact (peak RSS is that process's).",
        "builtin mIoU: the same .tflite on LiteRT's builtin kernels, without XNNPACK; XNNPACK ops: the ops",
        "XNNPACK took of all the file's ops (read from the interpreter after delegation; the rest run on",
        "the builtin kernels).",
        "",
        *(w + "\n" for w in warnings),
        _md_table(header, body, align),
        "",
        "Per-class IoU: `per_class_iou.md`. Plots: `tradeoff.png` (mIoU against size and latency),",
        "`overlays.png` (predictions beside the ground truth).",
        "",
        render_anchors_md(record),
        "",
        "## Environment",
        "",
        ", ".join(f"{k} {v}" for k, v in record.versions.items()) or "not recorded",
        "",
    ]
    return "\n".join(lines)


def render_summary_md(record: RunRecord) -> str:
    """The short table (one row per model x stage, the columns a reader compares first) for a README."""
    rows = table_rows(record)
    header = [
        "model", "input", "stage", "size (MB)", "zipped (MB)", "median (ms)", "mIoU (%)", "Δ mIoU (pts)", "builtin mIoU (%)",
        "XNNPACK ops", "agreement (%)",
    ]  # fmt: skip
    body = [
        [
            f"`{t['model']}`", t["input_size"], t["stage_label"], _fmt(t["file_mb"], ".2f"), _fmt(t["zip_mb"], ".2f"),
            _fmt(t["latency_median_ms"], ".1f"), _fmt(t["miou_pct"], ".2f"),
            _signed(t["miou_delta_pts"]) if t["stage"] != REFERENCE else "ref",
            _fmt(t["miou_builtin_pct"], ".2f"), _fmt(t["xnnpack_ops"]),
            _fmt(t["argmax_agreement_pct"], ".2f") if t["stage"] != REFERENCE else "ref",
        ]
        for t in rows
    ]  # fmt: skip
    threads = sorted({t["threads"] for t in rows if t["threads"]})
    return "\n".join([
        f"Latency: median ms at batch 1 with {', '.join(map(str, threads)) or '?'} threads; runtimes: {_runtimes(rows)}. "
        "builtin mIoU: the .tflite on LiteRT's builtin kernels; XNNPACK ops: delegated of all. Full table: `results.md`.",
        "",
        _md_table(header, body, ["---", "---", "---"] + ["--:"] * (len(header) - 3)),
        "",
    ])  # fmt: skip


GLANCE_STAGES = ("float32", "float16", "dynamic_int8", "full_int8", "int16x8")


def render_glance_md(record: RunRecord) -> str:
    """One row per model: its PyTorch mIoU, every TFLite file's Δ against it, and what full int8
    gives for it (size and median time against float32's)."""
    rows = table_rows(record)
    by_model: dict[str, dict[str, dict]] = {}
    for t in rows:
        if t.get("base_model") in (None, t["model"]):
            by_model.setdefault(t["model"], {})[t["stage"]] = t
    header = ["model", "input", "PyTorch mIoU (%)", *(f"Δ {label(s).removeprefix('TFLite ')}" for s in GLANCE_STAGES)]
    header += ["full int8 MB (float32 MB)", "full int8 / float32 ms"]
    body = []
    for model, stages in by_model.items():
        f32, int8 = stages.get("float32", {}), stages.get("full_int8", {})
        ms = (int8.get("latency_median_ms"), f32.get("latency_median_ms"))
        body.append([
            f"`{model}`", stages.get(REFERENCE, f32).get("input_size", "-"), _fmt(stages.get(REFERENCE, {}).get("miou_pct"), ".2f"),
            *(_signed(stages[s]["miou_delta_pts"]) if s in stages else "-" for s in GLANCE_STAGES),
            f"{_fmt(int8.get('file_mb'), '.2f')} ({_fmt(f32.get('file_mb'), '.2f')})",
            _fmt(ms[0] / ms[1], ".2f") if None not in ms else "-",
        ])  # fmt: skip
    return _md_table(header, body, ["---", "---"] + ["--:"] * (len(header) - 2)) + "\n"


def _runtimes(rows: list[dict]) -> str:
    return ", ".join(dict.fromkeys(t["runtime"] for t in rows)) or "?"


def render_per_class_md(record: RunRecord) -> str:
    classes, rows = per_class_rows(record)
    header = ["model", "stage", *(_cell(c) for c in classes)]
    body = [[f"`{_cell(r['model'])}`", label(r["stage"]), *(_fmt(r[c], ".2f") for c in classes)] for r in rows]
    return "\n".join([
        "# Per-class IoU (%)",
        "",
        "`-`: the class is in neither the ground truth nor the predictions of the split.",
        "",
        _md_table(header, body, ["---", "---"] + ["--:"] * len(classes)),
        "",
    ])  # fmt: skip


def render_anchors_md(record: RunRecord) -> str:
    """Our figures beside published ones, under a heading that says they are different data."""
    models = list(dict.fromkeys(r.model for r in record.rows))
    body = []
    for model in models:
        rows = {r.stage: r for r in record.rows if r.model == model}
        ref = rows.get(REFERENCE)
        int8 = rows.get("full_int8")
        ours_data = f"{ref.data} {ref.split}" if ref else "-"
        a = anchors.anchors_for(model)
        if a["params"] is not None:
            p = a["params"]
            ours = f"{ref.params / 1e6:.2f}M" if ref is not None and ref.params else "-"
            body.append([f"`{model}`", "parameters", ours, f"{p.params_m:g}M ({p.note})", "-", p.source])
        ours = f"{100 * ref.miou:.2f} ({ours_data})" if ref is not None and ref.miou is not None else "-"
        for i, acc in enumerate(a["accuracy"]):
            body.append(
                [f"`{model}`", "float mIoU (%)", ours if i == 0 else "(as above)", f"{acc.miou:.2f}", acc.dataset, acc.source]
            )
        ours = "-"
        if ref is not None and int8 is not None and ref.miou is not None and int8.miou is not None:
            ours = f"{100 * (int8.miou - ref.miou):+.2f} (full int8 PTQ, {ours_data})"
        for i, q in enumerate(a["quantization"]):
            body.append([
                f"`{model}`", "int8 change in mIoU (pts)", ours if i == 0 else "(as above)",
                f"{q.drop:+.2f} ({q.float_miou:.2f} -> {q.int8_miou:.2f})", q.setting, q.source,
            ])  # fmt: skip
        if a["note"]:
            body.append([f"`{model}`", "note", "-", a["note"], "-", "-"])
    lines = [
        "## Published figures: DIFFERENT DATA, not comparable",
        "",
        "The published column comes from papers and model zoos on ADE20K, Pascal VOC, Cityscapes and",
        "CamVid, at their full input sizes and training schedules. Our column is measured on this",
        "run's data (the synthetic dataset unless stated) at this run's input size. Read them side by side",
        "for orientation only: an mIoU gap between the columns says nothing about the conversion.",
        "",
    ]
    if body:
        lines.append(_md_table(["model", "figure", "ours", "published", "published on", "source"], body))
    else:
        lines.append("No published figures for the models in this run.")
    lines += ["", f"Latency for orientation: {anchors.LATENCY_ANCHOR}."]
    return "\n".join(lines)


def render_deploy_latency_md(run_dir: Path) -> str | None:
    """``seg2tflite latency``'s figures (deploy_latency.json), or None when it has not run."""
    path = Path(run_dir) / DEPLOY_LATENCY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        rows = data["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: unreadable latency record ({e}); run `seg2tflite latency` again") from None
    body = []
    for r in rows:
        ms = r["median_ms"]
        ops = {s: d for s, d in (r.get("delegation") or {}).items()}
        stages = ("float32", "full_int8", "mixed_int8")
        taken = " / ".join(f"{ops[s]['delegated']}/{ops[s]['ops']}" if s in ops else "-" for s in stages)
        mixed = f"{ms['mixed_int8']:.1f}" if "mixed_int8" in ms else "-"
        body.append([
            f"`{r['model']}`", f"{r['input_size'][0]}x{r['input_size'][1]}", f"{ms['pytorch']:.1f}", f"{ms['float32']:.1f}",
            f"{ms['full_int8']:.1f}", mixed, f"{r['int8_over_float32']:.2f}", f"{r['float32_over_pytorch']:.2f}", taken,
        ])  # fmt: skip
    versions = data.get("versions") or {}
    return "\n".join([
        "# Latency at the deploy size",
        "",
        (
            f"Median ms at batch 1, {data.get('threads')} threads, over {data.get('runs')} turns: a model's artifacts loaded "
            f"side by side in one fresh process, each about {data.get('block_ms', 250) / 1000:g} s a turn"
            if data.get("timing") == "turns"
            else f"Median ms at batch 1, {data.get('threads')} threads, {data.get('runs')} timed runs, every artifact in a fresh process"
        ),
        f"(`seg2tflite latency`); LiteRT {versions.get('ai-edge-litert')} with XNNPACK, PyTorch",
        f"{versions.get('torch')} eager, on {versions.get('cpus')} CPUs ({versions.get('platform')};",
        f"SIMD: {versions.get('cpu_simd') or 'not recorded'}). XNNPACK's int8 arithmetic can run up to about 4x",
        "float32's with a dot-product extension (avx512_vnni, avx_vnni, Arm's asimddp), about 2x without one;",
        "int16x8 is never delegated (XNNPACK takes no int16). Mixed int8: the op types and nodes `seg2tflite",
        "compress --methods mixed` kept in float at the demo size, applied at this size (- where it has not run).",
        "XNNPACK ops: delegated of all, float32 / full int8 / mixed int8.",
        "",
        _md_table(
            ["model", "input", "PyTorch", "TFLite float32", "TFLite full int8", "TFLite mixed int8", "int8 / float32",
             "float32 / PyTorch", "XNNPACK ops"],
            body,
            ["---", "---"] + ["--:"] * 7,
        ),
        "",
    ])  # fmt: skip


def _joined(values: list) -> str:
    return " / ".join(map(str, dict.fromkeys(values))) or "?"


def _op_type(row: dict) -> str:
    where = "" if row["xnnpack"] else " (builtin)"
    return f"{row['op']} {row['dtype']}{where} x{row['count']}: {row['ms']:.2f}"


def render_profile_md(run_dir: Path) -> str | None:
    """``seg2tflite profile``'s figures (profile.json), or None when it has not run."""
    path = Path(run_dir) / PROFILE_FILE
    if not path.is_file():
        return None
    sections, threads, litert = [], [], []
    try:
        for model, m in json.loads(path.read_text())["models"].items():
            threads.append(m["threads"])
            litert.append((m.get("versions") or {}).get("ai-edge-litert"))
            body = []
            for stage, v in m["variants"].items():
                if "skipped" in v or "failed" in v:
                    why = "not profiled (see above)" if "skipped" in v else "profile failed: " + v["failed"].replace("|", "\\|")
                    body.append([label(stage), "-", "-", "-", why])
                    continue
                top = "; ".join(_op_type(r) for r in v["by_type"][:4])
                top += f"; {len(v['untimed'])} ops not timed alone" if v["untimed"] else ""
                cells = [f"{v['whole_ms']:.2f}", f"{v['sum_ms']:.2f}", f"{v['delegated']}/{v['ops']}", top]
                body.append([label(stage), *cells])
            table = _md_table(["variant", "whole (ms)", "sum of ops (ms)", "XNNPACK ops", "most time (ms)"], body,
                              ["---", "--:", "--:", "--:", "---"])  # fmt: skip
            sections += [f"## `{model}`", "", table if body else f"No .tflite file in `models/{model}/convert/`.", ""]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: unreadable profile record ({e}); run `seg2tflite profile` again") from None
    return "\n".join([
        "# Where the time goes, op by op",
        "",
        "`seg2tflite profile` cut every op of each `.tflite` out into a graph of its own and timed it",
        f"alone (median at batch 1 on random inputs; LiteRT {_joined(litert)}, threads: {_joined(threads)}), loaded",
        "as the file is: XNNPACK takes the op or leaves it to LiteRT's builtin kernels (`(builtin)`).",
        "Whole: the file's own median. Where the sum of ops is above it, the gap is what running the ops",
        "together saves (XNNPACK fuses a delegated partition, keeps its layouts, skips the hand-overs",
        "between ops); where below, what running them together costs. XNNPACK ops: ops XNNPACK took",
        "alone, of the file's ops. Most time: the 4 op types with the most summed time, `OP dtype x",
        "count: ms`. Every op type and the 5 slowest ops: `profile.json`.",
        "",
        f"int16x8 is not profiled: {SKIPPED['int16x8']}.",
        "float16: its weights are float16 constants that DEQUANTIZE ops expand at load; an op cut out",
        "alone reads them as an input, which XNNPACK does not take, so its convolutions show as builtin",
        "here while the whole file runs them in XNNPACK (the DEQUANTIZEs are not timed alone).",
        "",
        *sections,
    ])  # fmt: skip
