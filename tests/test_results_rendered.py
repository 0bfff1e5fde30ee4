"""The measured tables of the README and docs are rendered from the records committed in ``results/``.

Each record under ``results/`` names the command that wrote it (``command``) and the runtime
versions its figures come from (``versions``). A benchmark's record is rendered by that
benchmark's ``render`` (``vs_litert_torch.py``: its ``markdown``); the default demo's record
(``seg2tflite demo``: the run's ``record.json`` with its ``demo.json``) by the report's own
``render_summary_md``, the run's ``report/summary.md``. The page that shows the figures must hold
that table verbatim, so a figure edited by hand (or a record changed without its page) fails here.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = {  # record -> the page that shows it
    "demo_seed0.json": "README.md",
    "int8_ranges_seed0.json": "docs/int8.md",
    "int8_foreign.json": "docs/int8.md",
    "int8_vs_aimet_seed0.json": "docs/int8.md",
    "vs_litert_torch_seed0.json": "docs/vs_litert_torch.md",
}
RUNTIMES = ("ai-edge-litert", "tensorflow", "onnx2tf", "torch")
NO_VERSIONS = {"int8_vs_aimet_seed0.json"}  # benchmarks/vs_aimet.py does not record its versions yet


def _load_script(script: Path):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))  # a benchmark imports its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(script.parent))
    return module


def _demo_summary(record: dict) -> str:
    """The table of ``report/summary.md`` (its first line names files of the run folder)."""
    from seg2tflite.eval.record import RunRecord
    from seg2tflite.eval.report import render_summary_md

    md = render_summary_md(RunRecord.from_dict(record, "results/demo_seed0.json"))
    return "\n".join(line for line in md.splitlines() if line.startswith("|"))


def _renderer(record: dict):
    command = record["command"]
    if command[0] == "seg2tflite":
        return {"demo": _demo_summary}[command[1]]
    module = _load_script(ROOT / command[1])
    if hasattr(module, "render"):
        return module.render
    return lambda r: module.markdown(r["rows"])  # vs_litert_torch.py renders its compare.md so


@pytest.mark.parametrize("name", sorted(PAGES))
def test_a_pages_table_is_its_record_rendered(name):
    record = json.loads((ROOT / "results" / name).read_text())
    table = _renderer(record)(record)
    assert table.strip() in (ROOT / PAGES[name]).read_text(), f"{PAGES[name]} does not hold results/{name} as rendered"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_a_record_names_its_command_and_runtimes(name):
    record = json.loads((ROOT / "results" / name).read_text())
    command = record.get("command")
    assert isinstance(command, list) and command and all(isinstance(part, str) for part in command), name
    if name in NO_VERSIONS:
        return
    versions = record.get("versions", {})
    missing = [runtime for runtime in RUNTIMES if not versions.get(runtime)]
    assert not missing, f"results/{name} does not say which {missing} its figures come from"


def test_every_record_is_shown_somewhere():
    recorded = {p.name for p in (ROOT / "results").glob("*.json")}
    assert recorded == set(PAGES), (
        f"records no page shows: {sorted(recorded - set(PAGES))}; pages without a record: {sorted(set(PAGES) - recorded)}"
    )


def test_a_hand_edited_figure_fails():
    """The check above would catch one changed digit of the README's table."""
    record = json.loads((ROOT / "results" / "demo_seed0.json").read_text())
    table = _renderer(record)(record)
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in table.splitlines() if "TFLite full int8" in line)
    edited = readme.replace(row, row[: -len(" |")] + "9 |")  # 99.70 -> 99.709 in its last column
    assert edited != readme and table.strip() not in edited
