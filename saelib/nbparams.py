"""Papermill parameters of the paper notebooks, as the workflow passes them: the names a notebook declares in its
cell tagged `parameters`, checked before anything runs (papermill itself only warns about an unknown name)."""

from __future__ import annotations

import ast
import json
from pathlib import Path


def notebook_parameters(nb_path: str | Path) -> list[str]:
    """Names assigned in the notebook's cell tagged `parameters` (what papermill can override)."""
    nb = json.loads(Path(nb_path).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{nb_path}: expected one cell tagged `parameters`, found {len(cells)}")
    src = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    names = []
    for node in ast.parse(src).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def check_parameters(nb_path: str | Path, params: dict) -> None:
    """Raise ValueError naming any parameter the notebook does not declare (papermill only warns)."""
    known = notebook_parameters(nb_path)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ValueError(f"{nb_path} has no parameter(s) {', '.join(map(repr, unknown))}; "
                         f"its parameters are: {', '.join(known)}")
