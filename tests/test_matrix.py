"""The regression matrix end to end (``seg2tflite matrix``, the pytest plugin, the README's
pytest example, Ray): two small models, two variants, one planted error (``matrix_nets``)."""

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from seg2tflite.app.cli import main
from seg2tflite.app.matrix.run import run_matrix
from seg2tflite.app.matrix.spec import load_matrix

from matrix_nets import DIE_ONCE, write_levels

pytestmark = pytest.mark.chain
NETS = Path(__file__).with_name("matrix_nets.py")
ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("miou", "reference_miou", "delta_points", "passed", "gate", "conversion", "eval_images", "data_sha256")

MATRIX = f"""
[defaults]
input_size = [32, 32]
variants = ["float32", "float16"]
calib = "folder:data"
eval = "folder:data"
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
trained = true
max_miou_drop = {{ float16 = 0.5 }}
convert = {{ calib_size = 8, parity_images = 4 }}

[[entry]]
name = "levels"
module = "{NETS}:level_net"

[[entry]]
name = "fragile"  # float16 rounds one of its weights to 0: the planted error
module = "{NETS}:fragile_net"
"""


@pytest.fixture(scope="module")
def matrix_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix")
    write_levels(folder / "data")
    (folder / "matrix.toml").write_text(MATRIX)
    return folder / "matrix.toml"


@pytest.fixture(scope="module")
def sequential(matrix_file):
    """The command line, in this process: the reference figures."""
    out = matrix_file.parent / "out"
    try:
        rc = main(["matrix", str(matrix_file), "--out", str(out)])
    except SystemExit as e:  # a failing cell: exit 1, as the demo's --strict
        rc = e.code
    return rc, out, json.loads((out / "matrix.json").read_text())


def test_the_command_fails_exactly_the_planted_cell(sequential, capsys):
    rc, out, record = sequential
    assert rc == 1
    failed = [(c["entry"], c["variant"]) for c in record["cells"] if not c["passed"]]
    assert failed == [("fragile", "float16")]
    cell = next(c for c in record["cells"] if not c["passed"])
    assert re.match(r"float16: mIoU [\d.]+ is [\d.]+ points below pytorch's 100\.00 \(budget 1\)$", cell["gate"])
    assert cell["delta_points"] < -50 and cell["conversion"] == "gate broken"
    assert all(c["miou"] == 1.0 for c in record["cells"] if c["passed"])
    table = (out / "report.md").read_text()
    assert "| `fragile` | float16 | gate broken |" in table and "**FAIL**" in table and "3 of 4 cells passed" in table
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("4", "1")
    failures = [
        (case.get("classname"), case.get("name"), case.find("failure").get("message"))
        for case in suite
        if case.find("failure") is not None
    ]
    assert failures == [("seg2tflite.matrix.fragile", "float16", cell["gate"])]


def test_a_rerun_continues_where_it_stopped(sequential, matrix_file):
    _, out, record = sequential
    said = []
    again = run_matrix(load_matrix(matrix_file), out, log=said.append)
    assert any("0 stages to evaluate in 0 tasks, 6 cached" in line for line in said)
    assert [{k: c[k] for k in FIGURES} for c in again.cells] == [{k: c[k] for k in FIGURES} for c in record["cells"]]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "seg2tflite_parity" in b)


def test_the_pytest_plugin_and_the_readme_example(sequential, matrix_file, tmp_path):
    """One pytest run in a user's folder: the README's example as written, and the matrix's cells."""
    _, out, record = sequential
    (tmp_path / "test_readme_example.py").write_text(readme_example())
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "test_readme_example.py",
         "--seg2tflite-matrix", str(matrix_file), "--seg2tflite-out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert "1 failed, 4 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
    assert re.search(rf"_ fragile\[float16\] _+\n{re.escape(record['cells'][3]['gate'])}\n", run.stdout), run.stdout[-3000:]
    assert "Traceback" not in run.stdout


def test_ray_on_two_local_nodes_spreads_cells_retries_a_killed_worker_and_gives_the_sequential_figures(
    sequential, matrix_file, tmp_path, monkeypatch
):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    _, _, record = sequential
    killed = tmp_path / "killed"
    monkeypatch.setenv(DIE_ONCE, str(killed))  # the nodes' workers inherit it: the model kills its worker, once
    dying = tmp_path / "matrix.toml"
    dying.write_text(matrix_file.read_text().replace(':level_net"', ':level_net_dies_once"'))
    shutil.copytree(matrix_file.parent / "data", tmp_path / "data")
    settings = {"num_cpus": 1, "object_store_memory": 100 * 2**20, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**settings, "resources": {"node_a": 1}})
    try:
        cluster.add_node(**settings, resources={"node_b": 1})
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        out = tmp_path / "out"
        result = run_matrix(load_matrix(dying), out, ray=cluster.address, shard_images=4, log=None)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(nodes) == 2
    assert [{k: c[k] for k in FIGURES} for c in result.cells] == [{k: c[k] for k in FIGURES} for c in record["cells"]]
    conversions = result.record["entries"]
    convert_nodes = {conversions[e]["conversion"]["node"]["node_id"] for e in conversions}
    eval_nodes = {label for c in result.cells for label in c["nodes"]["evaluate"]}
    assert convert_nodes <= nodes and len(convert_nodes | {label.split("/")[-1] for label in eval_nodes}) >= 2
    assert len({label for label in eval_nodes}) == 2, eval_nodes  # shards ran on both nodes
    # the killed worker: its conversion ran again in another, and no half-written file or temporary is left
    dead_pid = int(killed.read_text())
    assert dead_pid not in {conversions[e]["conversion"]["node"]["pid"] for e in conversions}
    for entry in conversions:
        assert json.loads((out / "entries" / entry / "convert.json").read_text())["entry"] == entry
    assert not [p for p in out.rglob("*") if p.name.startswith(".seg2tflite-")], "a temporary was left behind"
    assert conversions["levels"]["conversion"]["node"]["pid"] != dead_pid


def test_a_process_pool_gives_the_sequential_figures_and_a_latency_ceiling_fails_its_cell(sequential, matrix_file, tmp_path):
    """``--workers 2``: the evaluations in a pool of two processes give the figures of the run in
    this process; a latency ceiling no file can meet (1e-6 of float32's time) fails exactly its cell,
    with the measured times in its line."""
    _, out, record = sequential
    for entry in ("levels", "fragile"):  # the conversions resume; the evaluations run again, in the pool
        shutil.copytree(out / "entries" / entry / "convert", tmp_path / "out" / "entries" / entry / "convert")
    (tmp_path / "data").symlink_to(matrix_file.parent / "data")
    text = matrix_file.read_text().replace('name = "levels"', 'name = "levels"\nmax_latency_ratio = { float16 = 1e-6 }')
    (tmp_path / "matrix.toml").write_text(text)
    result = run_matrix(load_matrix(tmp_path / "matrix.toml"), tmp_path / "out", workers=2, log=None)
    assert result.record["runner"] == "a pool of 2 processes"
    pool = {(c["entry"], c["variant"]): c for c in result.cells}
    for cell in record["cells"]:
        assert {k: pool[(cell["entry"], cell["variant"])][k] for k in ("miou", "reference_miou", "eval_images")} == {
            k: cell[k] for k in ("miou", "reference_miou", "eval_images")
        }
    slow = pool[("levels", "float16")]
    assert not slow["passed"] and slow["max_latency_ratio"] == 1e-6 and slow["latency_ratio"] > 1e-6
    assert re.match(r"float16: median [\d.]+ ms is [\d.]+x float32's [\d.]+ ms \(ceiling 1e-06x\)$", slow["gate"]), slow["gate"]
    assert pool[("levels", "float32")]["passed"]
    assert [(c["entry"], c["variant"]) for c in result.cells if not c["passed"]] == [
        ("levels", "float16"),
        ("fragile", "float16"),
    ]
