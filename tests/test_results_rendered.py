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
SHOWN = [  # (record, the page that shows it, the renderer's name when a record has several)
    ("demo_seed0.json", "README.md", "glance"),
    ("demo_seed0.json", "docs/results.md", "summary"),
    ("demo_seed1.json", "docs/int8.md", "glance"),
    ("demo_seed2.json", "docs/int8.md", "glance"),
    ("int8_ranges_seed0.json", "docs/int8.md", None),
    ("int8_ranges_seed1.json", "docs/int8.md", None),
    ("int8_ranges_segnet_seed2.json", "docs/int8.md", None),
    ("int8_foreign.json", "docs/int8.md", None),
    ("int8_vs_aimet_seed0.json", "docs/int8.md", None),
    ("vs_litert_torch_seed0.json", "docs/vs_litert_torch.md", None),
    ("vs_litert_torch_seed1.json", "docs/vs_litert_torch.md", None),
    ("vs_litert_torch_seed2.json", "docs/vs_litert_torch.md", None),
    ("int8_vs_aimet_seed1.json", "docs/int8.md", None),
    ("int8_vs_aimet_seed2.json", "docs/int8.md", None),
    ("int8_ranges_classes_seed0.json", "docs/int8.md", None),
    ("mixed_ranges_seed0.json", "docs/int8.md", None),
    ("segnet_unpool.json", "docs/int8.md", None),
    ("matrix_ray.json", "docs/matrix.md", None),
    ("matrix_example.json", "README.md", None),
    ("matrix_example.json", "docs/matrix.md", None),
]
PAGES = sorted({name for name, _, _ in SHOWN})
RUNTIMES = ("ai-edge-litert", "tensorflow", "onnx2tf", "torch")
NO_VERSIONS: set[str] = set()  # every record names its runtime versions


def _load_script(script: Path):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))  # a benchmark imports its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(script.parent))
    return module


def _demo_table(which: str):
    """``report/glance.md`` or the table of ``report/summary.md`` (whose first line names files of the run folder)."""
    from seg2tflite.eval.record import RunRecord
    from seg2tflite.eval.report import render_glance_md, render_summary_md

    render = {"glance": render_glance_md, "summary": render_summary_md}[which]

    def table(record: dict) -> str:
        md = render(RunRecord.from_dict(record, "results/demo.json"))
        return "\n".join(line for line in md.splitlines() if line.startswith("|"))

    return table


def _matrix_table(record: dict) -> str:
    from seg2tflite.app.matrix.report import render_table

    return "\n".join(line for line in render_table(record).splitlines() if line.startswith("|"))


def _renderer(record: dict, which: str | None):
    command = record["command"]
    if command[0] == "seg2tflite":
        return _demo_table(which) if command[1] == "demo" else {"matrix": _matrix_table}[command[1]]
    module = _load_script(ROOT / command[1])
    if hasattr(module, "render"):
        return module.render
    return lambda r: module.markdown(r["rows"])  # vs_litert_torch.py renders its compare.md so


@pytest.mark.parametrize(("name", "page", "which"), SHOWN)
def test_a_pages_table_is_its_record_rendered(name, page, which):
    record = json.loads((ROOT / "results" / name).read_text())
    table = _renderer(record, which)(record)
    assert table.strip() in (ROOT / page).read_text(), f"{page} does not hold results/{name} as rendered"


@pytest.mark.parametrize("name", PAGES)
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
    table = _renderer(record, "glance")(record)
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in table.splitlines() if "`unet_mediatek`" in line)
    loss = row.split("|")[7].strip()  # the UNet's full-int8 loss, its last digit changed
    edited = readme.replace(row, row.replace(f" {loss} ", f" {loss[:-1]}{(int(loss[-1]) + 1) % 10} "))
    assert edited != readme and table.strip() not in edited
