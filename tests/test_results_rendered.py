"""The docs' measured tables are what their benchmarks render from the records committed in ``results/``.

Each record under ``results/`` was written by the benchmark named in its ``command``; that
benchmark's ``render`` turns it into a table, and the page that shows the figures must hold that
table verbatim, so a figure edited by hand (or a record changed without its page) fails here.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = {  # record -> the page that shows it
    "int8_ranges_seed0.json": "docs/int8.md",
    "int8_foreign.json": "docs/int8.md",
    "int8_vs_aimet_seed0.json": "docs/int8.md",
}


def _renderer(record: dict):
    script = ROOT / record["command"][1]
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))  # a benchmark imports its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(script.parent))
    return module.render


@pytest.mark.parametrize("name", sorted(PAGES))
def test_a_pages_table_is_its_record_rendered(name):
    record = json.loads((ROOT / "results" / name).read_text())
    table = _renderer(record)(record)
    assert table.strip() in (ROOT / PAGES[name]).read_text(), f"{PAGES[name]} does not hold results/{name} as rendered"


def test_every_record_is_shown_somewhere():
    recorded = {p.name for p in (ROOT / "results").glob("*.json")}
    assert recorded == set(PAGES), (
        f"records no page shows: {sorted(recorded - set(PAGES))}; pages without a record: {sorted(set(PAGES) - recorded)}"
    )
