"""The pytest plugin (entry point ``pytest11``), for a user's own repository.

``pytest --seg2tflite-matrix FILE`` adds one test item per (entry, variant) cell of the matrix
file; the matrix runs once, at the first item (``seg2tflite matrix``'s own run, resumed in
``--seg2tflite-out``), and a failing item's message is its gate's one line. The fixture
``seg2tflite_parity`` converts a PyTorch module in a test, asserts the gates and the mIoU budgets
and returns the figures. Importing this module imports neither PyTorch nor TensorFlow: pytest loads
it for every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest


def pytest_addoption(parser) -> None:
    group = parser.getgroup("seg2tflite", "seg2tflite regression matrix")
    group.addoption("--seg2tflite-matrix", metavar="FILE", default=None, help="add one test per (entry, variant) cell of FILE")
    group.addoption(
        "--seg2tflite-out", metavar="DIR", default=None, help="where the matrix runs (default: .seg2tflite/MATRIX_NAME; resumed)"
    )
    group.addoption("--seg2tflite-ray", metavar="local|ADDRESS", default=None, help="run the matrix's tasks on Ray")
    group.addoption("--seg2tflite-workers", type=int, default=1, help="processes running the matrix's tasks without Ray")


class CellFailed(Exception):
    """A cell broke a gate; the message is the gate's one line."""


class MatrixFile(pytest.File):
    def collect(self):
        from seg2tflite.app.matrix.spec import load_matrix
        from seg2tflite.errors import UserError, one_line

        try:
            matrix = load_matrix(self.path)
        except UserError as e:
            raise pytest.UsageError(f"--seg2tflite-matrix: {one_line(e)}") from None
        self.matrix = matrix
        for entry, variant in matrix.cells:
            yield MatrixCell.from_parent(self, name=f"{entry}[{variant}]", entry=entry, variant=variant)

    def run(self):
        """The matrix's run, once for all its items (or the one line that stopped it)."""
        if not hasattr(self, "_run"):
            from seg2tflite.app.matrix.run import run_matrix
            from seg2tflite.errors import UserError, one_line

            config = self.config
            out = config.getoption("seg2tflite_out") or Path(config.rootpath) / ".seg2tflite" / self.path.stem
            try:
                self._run = run_matrix(
                    self.matrix, out, ray=config.getoption("seg2tflite_ray"), workers=config.getoption("seg2tflite_workers"),
                    log=None,
                )  # fmt: skip
            except UserError as e:
                self._run = one_line(e)
        return self._run


class MatrixCell(pytest.Item):
    def __init__(self, *, entry: str, variant: str, **kwargs):
        super().__init__(**kwargs)
        self.entry, self.variant = entry, variant

    def runtest(self) -> None:
        run = self.parent.run()
        if isinstance(run, str):
            raise CellFailed(f"the matrix did not run: {run}")
        cell = run.cell(self.entry, self.variant)
        for key in ("miou", "reference_miou", "delta_points", "budget_points", "conversion"):
            self.user_properties.append((key, cell[key]))
        self.user_properties.append(("node", cell["nodes"]["convert"]))
        if not cell["passed"]:
            raise CellFailed(cell["gate"])

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CellFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.entry}[{self.variant}]"


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselect: they see the cells too
def pytest_collection_modifyitems(session, config, items) -> None:
    path = config.getoption("seg2tflite_matrix")
    if path:
        items.extend(MatrixFile.from_parent(session, path=Path(path).resolve()).collect())


# -- the fixture -----------------------------------------------------------------------------


@dataclass
class ParityFigures:
    """What ``seg2tflite_parity`` measured: mIoU (%) per variant and of the float reference
    (model.onnx), the points each variant lost, the files, and the table."""

    miou: dict[str, float]
    reference_miou: float
    drop: dict[str, float]
    artifacts: dict[str, str]
    table: str
    cells: list = field(default_factory=list)


@pytest.fixture
def seg2tflite_parity(tmp_path):
    """``seg2tflite_parity(model, input_size=(H, W), data=SPEC, variants=[...], max_miou_drop=...)``:
    convert ``model`` (a PyTorch module) into a temporary folder with every gate, evaluate each
    variant on ``eval`` (default: ``data``'s test split), fail the test with the first broken gate's
    one line, and return ``ParityFigures``. Other keywords are matrix entry settings (``calib``,
    ``eval``, ``eval_split``, ``mean``, ``std``, ``trained``, ``gates``, ``convert``)."""
    count = iter(range(1_000_000))

    def parity(model, *, input_size, data="synthetic", variants=("float32", "float16"), max_miou_drop=1.0, **settings):
        from seg2tflite.app.matrix.report import render_table
        from seg2tflite.app.matrix.run import run_matrix
        from seg2tflite.app.matrix.spec import matrix_from_dict
        from seg2tflite.errors import UserError, one_line

        name = f"model{next(count)}"
        raw = {"name": name, "python": True, "input_size": list(input_size), "variants": list(variants)}
        raw.update(
            calib=data, eval=data, max_miou_drop=max_miou_drop, trained=True, convert={"calib_size": 8, "parity_images": 4}
        )
        raw.update({k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})
        try:
            matrix = matrix_from_dict({"entry": [raw]}, Path.cwd() / "seg2tflite_parity", python=True)
            run = run_matrix(matrix, tmp_path / "seg2tflite" / name, models={name: model}, log=None)
        except UserError as e:
            pytest.fail(f"seg2tflite_parity: {one_line(e)}", pytrace=False)
        if run.failed:
            pytest.fail(run.failed[0]["gate"], pytrace=False)
        conversion = run.record["entries"][name]["conversion"]
        return ParityFigures(
            miou={c["variant"]: 100 * c["miou"] for c in run.cells},
            reference_miou=100 * run.cells[0]["reference_miou"],
            drop={c["variant"]: -c["delta_points"] for c in run.cells},
            artifacts=dict(conversion["artifacts"]),
            table=render_table(run.record),
            cells=run.cells,
        )

    return parity
