"""examples/tutorial.ipynb: the tutorial script as a notebook (examples/notebook.py converts it),
executed cell by cell as Jupyter would, in a fresh namespace, without network or a kernel."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lightning_helpers import REPO

EXAMPLES = REPO / "examples"


def _converter():
    spec = importlib.util.spec_from_file_location("notebook_converter", EXAMPLES / "notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebook_is_the_tutorial_script():
    assert (EXAMPLES / "tutorial.ipynb").read_text() == _converter().render(EXAMPLES / "tutorial.py"), \
        "examples/tutorial.ipynb is out of date: python examples/notebook.py writes it again"


@pytest.mark.slow
def test_the_notebook_runs(mnist_root, tmp_path, capsys):
    from test_examples import assert_tutorial_output

    cells = json.loads((EXAMPLES / "tutorial.ipynb").read_text())["cells"]
    code = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    assert code[-1] == _converter().RUN_CELL  # the script's defaults: 300 steps; here the quick ones
    namespace = {"__name__": "__main__"}
    for index, source in enumerate(code[:-1]):
        exec(compile(source, f"tutorial.ipynb, code cell {index + 1}", "exec"), namespace)
    results = namespace["main"](["--quick", "--data-dir", str(mnist_root), "--out", str(tmp_path / "run")])
    assert_tutorial_output(capsys.readouterr().out)
    assert results["reload_difference"] == 0.0 and 0.0 <= results["val_acc"] <= 1.0
