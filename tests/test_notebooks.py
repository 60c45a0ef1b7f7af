"""The committed paper notebooks: layout, papermill parameters, and stripped state (nbval runs them)."""

import json

import papermill
import pytest

from saelib.config import ROOT
from saelib.nbparams import check_parameters, notebook_parameters
from saelib.workflow import FIGURES, TABLES, papermill_args

NOTEBOOKS = sorted((ROOT / "paper_nbs").glob("*.ipynb"))
CHECK = "nbval-check-output"


def test_every_figure_and_table_has_a_notebook_and_the_workflow_runs_each():
    names = {p.stem for p in NOTEBOOKS}
    assert {f"fig0{i}" for i in range(1, 10)} <= {n[:5] for n in names}
    assert "table01_summary" in names
    # beyond the post: ablations, feature matching, high-density features
    assert {"fig10_ablations_l0_vs_mse", "table02_ablations", "fig11_feature_matching", "fig12_high_density"} <= names
    assert names == set(FIGURES) | set(TABLES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell(path):
    names = notebook_parameters(path)
    assert names[:3] == ["profile", "fig_dir", "overrides"]
    # papermill --help-notebook documents every parameter (it skips lines with more than one `=`)
    assert list(papermill.inspect_notebook(str(path))) == names
    src = json.loads(path.read_text())["cells"][2]["source"]
    assert 'profile: str = ""' in "".join(src)  # by default: $SAELIB_PROFILE or tiny


def test_misspelt_papermill_parameter_is_an_error():
    fig01 = ROOT / "paper_nbs" / "fig01_sparsity_measures.ipynb"
    good = {"profile": "smoke", "fig_dir": "figures/smoke", "overrides": ""}
    check_parameters(fig01, good)
    assert papermill_args(good | {"overrides": "a=b c"}) == "-p profile smoke -p fig_dir figures/smoke -p overrides 'a=b c'"
    with pytest.raises(ValueError, match="'profle'.*its parameters are: profile, fig_dir"):
        check_parameters(fig01, {**good, "profle": "tiny"})


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
