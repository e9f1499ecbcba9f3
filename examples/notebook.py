"""examples/tutorial.ipynb from examples/tutorial.py, so that the two cannot drift apart:

    python examples/notebook.py        # writes examples/tutorial.ipynb

The module docstring becomes a markdown cell, the imports one code cell, each function a code
cell of its own, and the ``if __name__ == "__main__"`` block the cell that runs it all,
``results = main([])`` (the script's defaults; ``main(["--quick"])`` takes a few steps on 256
images). ``tests/test_docs.py`` checks the notebook is this conversion of the script, and
``tests/test_examples.py`` executes its cells.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The last cell: the script's ``main()`` with its default settings.
RUN_CELL = "results = main([])"


def _cell(kind: str, text: str) -> dict:
    lines = text.strip("\n").splitlines(keepends=True)
    cell = {"cell_type": kind, "metadata": {}, "source": lines}
    return {**cell, "execution_count": None, "outputs": []} if kind == "code" else cell


def notebook(script: Path) -> dict:
    """The notebook (nbformat 4) of ``script``: its docstring, imports, functions and run."""
    source = script.read_text()
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    cells = [_cell("markdown", ast.get_docstring(tree) or "")]
    imports: list[int] = []  # the first and last line of the imports, as written
    for node in tree.body[1:]:
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        text = "".join(lines[start - 1:node.end_lineno])
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports = [imports[0] if imports else start, node.end_lineno]
            continue
        if imports:
            cells.append(_cell("code", "".join(lines[imports[0] - 1:imports[1]])))
            imports = []
        is_main = isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        cells.append(_cell("code", RUN_CELL if is_main else text))
    return {"cells": cells,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 4}


def render(script: Path = HERE / "tutorial.py") -> str:
    return json.dumps(notebook(script), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    (HERE / "tutorial.ipynb").write_text(render())
    print(f"wrote {HERE / 'tutorial.ipynb'}")
