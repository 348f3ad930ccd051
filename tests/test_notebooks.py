"""The notebooks are jupytext pairs: notebooks/NN_name.py (percent format) is the reviewed source and the
.ipynb beside it (no outputs) what papermill and JupyterLab open. Each declares run_dir and only its own
stage's knobs; everything else comes from the run's params.yaml."""
import json
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

from cxrlib import params, runfiles

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = runfiles.NOTEBOOKS + ["06_compare", "07_external"]   # 06: a group of runs (make compare); 07: one source (make external)
GROUP_KNOBS = {"runs", "runs_root", "baseline", "bootstrap", "ci_level", "seed", "compare_on"}


def cells(nb) -> list[tuple]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("name", ALL)
def test_pairs_are_in_sync(name):
    script, notebook = NOTEBOOKS / f"{name}.py", NOTEBOOKS / f"{name}.ipynb"
    assert script.is_file() and notebook.is_file(), f"{name}: both the .py and the .ipynb must be committed"
    ipynb = nbformat.read(notebook, as_version=4)
    assert cells(jupytext.read(script)) == cells(ipynb), (
        f"{name}.py and {name}.ipynb differ: run `.venv/bin/jupytext --sync notebooks/{name}.py` "
        "(the newer file wins) and commit both")
    assert ipynb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"


def test_every_notebook_is_a_pair_and_a_pipeline_step():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(p.stem for p in NOTEBOOKS.glob("*.py")) \
        == sorted(ALL)


@pytest.mark.parametrize("name", runfiles.NOTEBOOKS)
def test_notebooks_declare_run_dir_and_their_own_knobs_only(name):
    declared = set(papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb")))
    assert "run_dir" in declared
    assert declared - {"run_dir"} <= set(params.NOTEBOOK_KNOBS[name]), declared - set(params.NOTEBOOK_KNOBS[name])


def test_the_comparison_notebook_declares_its_own_parameters_with_the_demo_defaults():
    declared = papermill.inspect_notebook(str(NOTEBOOKS / "06_compare.ipynb"))
    assert set(declared) - {"run_dir"} == GROUP_KNOBS
    demo = params.load(Path(__file__).resolve().parent.parent / "params" / "demo.yaml")
    for knob in ("bootstrap", "ci_level", "seed"):
        assert eval(declared[knob]["default"]) == getattr(demo, knob)


def test_a_stale_pair_is_detected(tmp_path):
    script = tmp_path / "nb.py"
    script.write_text((NOTEBOOKS / "03_evaluate.py").read_text().replace("bootstrap = 1000", "bootstrap = 10"))
    assert cells(jupytext.read(script)) != cells(nbformat.read(NOTEBOOKS / "03_evaluate.ipynb", as_version=4))


def test_make_labs_settings_hide_the_twins_and_save_notebooks_sources_without_outputs(tmp_path):
    """tools/jupyter_lab_config.py through jupytext's contents manager, as `make lab` runs it."""
    import copy
    import runpy

    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class
    from traitlets.config import Config

    config = Config()
    runpy.run_path(str(Path(__file__).resolve().parent.parent / "tools" / "jupyter_lab_config.py"),
                   init_globals={"get_config": lambda: config})
    manager = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(tmp_path), config=config)
    (tmp_path / "notebooks").mkdir()
    cell = {"cell_type": "code", "execution_count": 3, "id": "a1", "metadata": {}, "source": "1 + 1",
            "outputs": [{"output_type": "execute_result", "execution_count": 3, "data": {"text/plain": "2"},
                         "metadata": {}}]}
    notebook = {"cells": [cell], "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"jupytext": {"formats": "ipynb,py:percent"}}}
    for path in ("notebooks/01_x.ipynb", "scratch.ipynb"):
        manager.save({"type": "notebook", "format": "json", "content": copy.deepcopy(notebook)}, path)
    source = json.loads((tmp_path / "notebooks" / "01_x.ipynb").read_text())["cells"][0]
    assert source["outputs"] == [] and source["execution_count"] is None and "".join(source["source"]) == "1 + 1"
    assert (tmp_path / "notebooks" / "01_x.py").is_file()                    # the pair is still written
    assert json.loads((tmp_path / "scratch.ipynb").read_text())["cells"][0]["outputs"]   # elsewhere: kept
    assert [m["name"] for m in manager.get("notebooks")["content"]] == ["01_x.ipynb"]   # one entry per notebook


def test_the_twins_carry_no_tool_version():
    """A jupytext release rewrites a `jupytext_version` (or `format_version`) header on every save, so the twins
    filter text_representation out (the notebooks' notebook_metadata_filter) and `git status` stays clean."""
    for name in ALL:
        header = (NOTEBOOKS / f"{name}.py").read_text().split("# ---", 2)[1]
        assert "version" not in header, f"{name}.py's header carries a version stamp:{header}"
        metadata = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).metadata["jupytext"]
        assert metadata.get("notebook_metadata_filter") == "-jupytext.text_representation", name


@pytest.mark.parametrize("name", ALL)
def test_a_notebook_saved_by_lab_after_its_kernel_started_leaves_git_status_clean(tmp_path, name):
    """What Lab writes when a person opens a notebook, runs a cell and saves (or autosave does): the kernel's
    full language_info and an output, and the twin rewritten by the jupytext installed now. Through make lab's
    settings and the repository's nbstripout filter, `git status` shows nothing."""
    import runpy
    import shutil
    import subprocess
    import sys

    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class
    from traitlets.config import Config

    project = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    (tmp_path / "notebooks").mkdir()
    for path in (f"notebooks/{name}.ipynb", f"notebooks/{name}.py", ".gitattributes", ".gitignore"):
        shutil.copy2(project / path, tmp_path / path)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git[:3] + ["config", "filter.nbstripout.clean", f"'{sys.executable}' -m nbstripout --keep-id"],
                   check=True)
    subprocess.run(git[:3] + ["config", "filter.nbstripout.smudge", "cat"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    config = Config()
    runpy.run_path(str(project / "tools" / "jupyter_lab_config.py"), init_globals={"get_config": lambda: config})
    manager = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(tmp_path), config=config)
    notebook = manager.get(f"notebooks/{name}.ipynb")["content"]
    notebook["metadata"]["language_info"] = {"codemirror_mode": {"name": "ipython", "version": 3}, "name": "python",
                                             "file_extension": ".py", "version": "3.11.7"}
    code = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    code["outputs"], code["execution_count"] = [{"output_type": "stream", "name": "stdout", "text": "hi\n"}], 4
    manager.save({"type": "notebook", "format": "json", "content": notebook}, f"notebooks/{name}.ipynb")
    status = subprocess.run(git[:3] + ["status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    assert status == "", status
