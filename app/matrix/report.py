"""A matrix run's record rendered: the Markdown table (one row per cell, in MMDeploy's regression
spirit) and JUnit XML for CI (one test case per cell, its failure message the gate's one line)."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _points(value) -> str:
    return "-" if value is None else f"{value:+.2f}"


def render_table(record: dict) -> str:
    """Per entry a reference row (``model.onnx`` on the evaluation data), then one row per variant."""
    lines = [
        "| entry | variant | conversion | mIoU (%) | Δ mIoU (pts) | budget (pts) | result | gate that broke |",
        "| --- | --- | --- | --: | --: | --: | --- | --- |",
    ]
    shown = set()
    for cell in record["cells"]:
        if cell["entry"] not in shown:
            shown.add(cell["entry"])
            lines.append(f"| `{cell['entry']}` | reference (ONNX) | - | {_pct(cell['reference_miou'])} | ref | - | - | - |")
        budget = f"{cell['budget_points']:g}" if cell["gated"] and cell["budget_points"] is not None else "not gated"
        if cell["max_latency_ratio"] is not None:
            budget += f"; ≤{cell['max_latency_ratio']:g}x time"
        gate = (cell["gate"] or "").replace("|", "\\|")
        result = "pass" if cell["passed"] else "**FAIL**"
        lines.append(
            f"| `{cell['entry']}` | {cell['variant']} | {cell['conversion']} | {_pct(cell['miou'])} | "
            f"{_points(cell['delta_points'])} | {budget} | {result} | {gate} |"
        )
    failed = sum(not c["passed"] for c in record["cells"])
    lines.append("")
    lines.append(f"{len(record['cells']) - failed} of {len(record['cells'])} cells passed ({record['runner']}).")
    return "\n".join(lines)


def render_junit(record: dict) -> str:
    """JUnit XML: a test suite of the cells, classname ``seg2tflite.matrix.ENTRY``, name the variant."""
    cells = record["cells"]
    failed = sum(not c["passed"] for c in cells)
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites, "testsuite", name="seg2tflite matrix", tests=str(len(cells)), failures=str(failed), errors="0",
        time=f"{record['seconds']:.3f}",
    )  # fmt: skip
    for cell in cells:
        case = ET.SubElement(suite, "testcase", classname=f"seg2tflite.matrix.{cell['entry']}", name=cell["variant"])
        properties = ET.SubElement(case, "properties")
        for key in ("miou", "reference_miou", "delta_points", "budget_points", "latency_ratio", "conversion"):
            if cell[key] is not None:
                ET.SubElement(properties, "property", name=key, value=str(cell[key]))
        ET.SubElement(properties, "property", name="node", value=cell["nodes"]["convert"])
        if not cell["passed"]:
            failure = ET.SubElement(case, "failure", message=cell["gate"])
            failure.text = "\n".join(cell["failures"])
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
