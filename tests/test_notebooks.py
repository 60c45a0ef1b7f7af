"""The committed paper notebooks: layout, papermill parameters, and stripped state (nbval runs them)."""

import json

import papermill
import pytest

from saelib import results

NOTEBOOKS = sorted((results.ROOT / "paper_nbs").glob("*.ipynb"))
CHECK = "nbval-check-output"


def test_every_figure_and_the_table_has_a_notebook():
    names = {p.stem for p in NOTEBOOKS}
    assert {f"fig0{i}" for i in range(1, 10)} <= {n[:5] for n in names}
    assert "table01_summary" in names
    # beyond the post: ablations, feature matching, high-density features
    assert {"fig10_ablations_l0_vs_mse", "table02_ablations", "fig11_feature_matching", "fig12_high_density"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell(path):
    names = results.notebook_parameters(path)
    assert names[:4] == ["profile", "results_dir", "fig_dir", "overrides"]
    # papermill --help-notebook documents every parameter (it skips lines with more than one `=`)
    assert list(papermill.inspect_notebook(str(path))) == names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_stripped(path):
    nb = json.loads(path.read_text())
    assert path.stat().st_size < 30_000
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = cell["metadata"].get("tags", [])
        assert (CHECK in tags) == ("keep_output" in tags), "checked cells are kept by nbstripout, and only they"
        if CHECK in tags:
            # nbval compares only cells with an execution count and a stored output
            assert cell["execution_count"] is not None and cell["outputs"], "run `make notebooks`"
        else:
            assert not cell["outputs"], "outputs of unchecked cells are stripped: run `make notebooks`"
        for out in cell["outputs"]:
            assert not {"image/png", "image/svg+xml", "application/pdf"} & set(out.get("data", {}))
