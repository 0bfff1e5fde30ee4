"""The report's full-int8 page: which activation ranges each model's file got and why, and where it still loses.

Read from each conversion folder of a run (``models/M/convert``): ``int8_ranges.json`` (the range
method asked for, the one chosen, the held-out scores it was chosen by, the bias-corrected ops)
and ``parity.json``'s ``int8_sensitivity`` (every int8 op's SQNR against the float32 file on the
parity images, worst first).
"""

from __future__ import annotations

from pathlib import Path

from seg2tflite.records import read_json

WORST = 3  # ops listed per model


def _read(path: Path) -> dict | None:
    return read_json(path, "convert the model again") if path.is_file() else None


def int8_rows(run_dir: Path) -> list[dict]:
    rows = []
    for convert in sorted(Path(run_dir).glob("models/*/convert")):
        ranges = _read(convert / "int8_ranges.json")
        parity = _read(convert / "parity.json") or {}
        if ranges is None:
            continue
        worst = [r for r in parity.get("int8_sensitivity") or [] if isinstance(r, dict)][:WORST]
        rows.append({"model": convert.parent.name, **ranges, "worst": worst})
    return rows


def render_int8_md(run_dir: Path) -> str | None:
    """The page, or None when no conversion of the run recorded its ranges."""
    rows = int8_rows(run_dir)
    if not rows:
        return None
    lines = [
        "# Full int8: activation ranges and where the file still loses",
        "",
        "*ranges*: the method asked for (`--int8-ranges`) and the one the file got; *held-out*: with `auto`, each "
        "method's share of pixels whose argmax leaves the float model's, on the calibration images held out from the "
        "range statistics; *lowest SQNR*: the int8 ops whose output is furthest from the float32 file's on the parity "
        "images (dB, lower is worse; `full_int8_sensitivity.json` beside each file colours the graph in Model Explorer).",
        "",
        "| model | ranges | held-out disagreement | tensors narrowed | bias-corrected ops | lowest SQNR (dB) |",
        "| --- | --- | --- | --: | --: | --- |",
    ]
    for r in rows:
        scores = r.get("held_out_scores") or {}
        held = ", ".join(f"{m} {s.get('disagreement', 0):.2%}" for m, s in scores.items()) or "-"
        worst = "; ".join(f"{w.get('op')} `{w.get('tensor')}` {w.get('sqnr_db', 0):.1f}" for w in r["worst"]) or "-"
        asked = r.get("requested", "?")
        ranges = r.get("method", "?") if asked == r.get("method") else f"{asked} -> {r.get('method', '?')}"
        narrowed = f"{r.get('narrower_than_minmax', 0)}/{r.get('tensors', 0)}"
        lines.append(
            f"| `{r['model']}` | {ranges} | {held} | {narrowed} | {r.get('bias_corrected_ops', 0)} | {worst.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"
