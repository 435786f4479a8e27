"""The notebooks run from the checkout without errors and are stored without outputs.

Each notebook is executed by a Jupyter kernel started with the Python that runs
the tests (the project's virtual environment), from the notebooks folder.
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "redunet-jax-tests"


def test_the_notebooks_are_there():
    names = [path.name for path in NOTEBOOKS]
    for name in (
        "01_gaussians.ipynb",
        "02_digits_vector.ipynb",
        "03_shift_invariance.ipynb",
        "04_rotation.ipynb",
        "05_finetune.ipynb",
        "06_spectral_speedup.ipynb",
    ):
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], f"{path.name}: a cell holds outputs"
        assert cell.execution_count is None, f"{path.name}: a cell was executed"
    assert "widgets" not in notebook.metadata


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel spec that runs this interpreter, found before any installed one."""
    share = tmp_path_factory.mktemp("jupyter")
    spec = share / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    saved = {key: os.environ.get(key) for key in ("JUPYTER_PATH", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = str(share)
    os.environ.pop("MPLBACKEND", None)  # the kernel shows figures inline
    yield KERNEL
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(path, kernel):
    notebook = nbformat.read(path, as_version=4)
    probe = nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")
    notebook.cells.insert(0, probe)
    client = NotebookClient(
        notebook,
        kernel_name=kernel,
        timeout=300,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    printed = "".join(out.get("text", "") for out in notebook.cells[0].outputs)
    assert Path(printed.strip()) == Path(sys.executable)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    errors = [
        out
        for cell in code
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert errors == []
    figures = [
        out
        for cell in code
        for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]
    assert figures, f"{path.name} drew no figure"
