"""The runner: parameters in, a run folder of executed notebooks out; clear errors otherwise."""
import json
import re
import subprocess
import sys

import nbformat
import pandas as pd
import pytest
import torch
from conftest import PROJECT, run_notebooks, tiny_params

from cxrlib import params, runfiles
from cxrlib.data import cohort
from cxrlib.errors import UserError
from cxrlib.experiments import runs


def cli(*args, cwd=PROJECT):
    return subprocess.run([sys.executable, "-m", "cxrlib", *args], cwd=cwd, capture_output=True, text=True)


def test_notebook_01_writes_the_cohort_and_shows_the_funnel(tiny_run, tiny_data):
    p = runfiles.load_frozen(tiny_run)
    expected, report = cohort.build_cohort(tiny_data, p)
    written = cohort.read_cohort(tiny_run / "cohort.csv")
    pd.testing.assert_frame_equal(written, expected.astype(written.dtypes.to_dict()), check_dtype=False)
    nb = nbformat.read(tiny_run / "01_cohort.ipynb", as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "images in metadata" in text and "subject(s) excluded for a missing label row" in text
    assert "image/png" in text                       # funnel, prevalence, co-occurrence, sample grid
    assert json.loads((tiny_run / "cohort_report.json").read_text())["metadata_rows"] == report.metadata_rows


def test_injected_parameters_are_the_frozen_ones(tiny_run):
    frozen = runfiles.load_frozen(tiny_run)
    nb = nbformat.read(tiny_run / "02_train.ipynb", as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f"epochs = {frozen.epochs}" in injected.source and "image_size" not in injected.source
    assert f'run_dir = "{tiny_run}"' in injected.source
    assert "password" not in injected.source.lower()


def test_committed_notebooks_are_clean_and_have_parameters():
    for path in sorted((PROJECT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.outputs or c.execution_count for c in code), f"{path.name} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name


EXTERNAL_DEMO = {"source": "nih", "data_root": "data/demo-nih", "subset": "", "external_views": "frontal",
                 "equalize": False, "allow_missing": False, "out_dir": ""}


def test_notebook_defaults_are_the_demo_preset():
    """Running a notebook by hand (JupyterLab) without the runner gives the demo."""
    import papermill

    demo = params.read_yaml(PROJECT / "params" / "demo.yaml")
    defaults = params.Params()
    for path in sorted((PROJECT / "notebooks").glob("*.ipynb")):
        cell = next(c for c in nbformat.read(path, 4).cells if "parameters" in c.metadata.get("tags", []))
        assigned = {line.split("=")[0].strip() for line in cell.source.splitlines() if re.match(r"\w+ = ", line)}
        # papermill skips a line it cannot parse (an '=' in its comment, say): the runner could not set it
        assert set(papermill.inspect_notebook(str(path))) == assigned, path.name
        for name, info in papermill.inspect_notebook(str(path)).items():
            if name == "run_dir":   # 06 compares the runs of params/grids/demo.yaml (make sweep GRID=...)
                assert info["default"].strip("\"'") == ("runs/demo-grid" if path.stem == "06_compare" else "runs/demo")
                continue
            if path.stem == "06_compare" and name in ("runs", "runs_root", "baseline"):
                continue
            # the demo's external step (Makefile); 07 sets none of the run's parameters (its data_root is the source's)
            if path.stem == "07_external" and (name not in params.FIELDS or name == "data_root"):
                assert eval(info["default"]) == EXTERNAL_DEMO[name], f"{path.name}: {name}"
                continue
            expected = demo.get(name, getattr(defaults, name))
            assert eval(info["default"]) == expected, f"{path.name}: {name} = {info['default']} but demo.yaml has {expected!r}"


def test_a_failing_cell_names_the_notebook_and_the_cell(tiny_data, tmp_path):
    p = tiny_params(tmp_path / "no-such-data", tmp_path / "runs", "broken")
    with pytest.raises(UserError, match=r"01_cohort.ipynb failed in cell \d+: UserError: .*not found"):
        run_notebooks(p, ["01_cohort"])
    assert (tmp_path / "runs" / "broken" / "01_cohort.html").is_file()   # kept for inspection
    assert (tmp_path / "runs" / "broken" / "params.yaml").is_file()


def test_cli_refuses_unknown_parameters_before_running(tmp_path):
    out = cli("run", "--params", "params/demo.yaml", "-p", "epochz=3", "-p", f"runs_dir={tmp_path}")
    assert out.returncode == 2
    assert "error: -p epochz=3: unknown parameter(s) 'epochz' (did you mean epochs?)" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())              # nothing started


def test_cli_refuses_a_missing_preset_and_lists_the_presets():
    out = cli("run", "--params", "params/nope.yaml")
    assert out.returncode == 2 and "seed-pos.yaml" in out.stderr and "Traceback" not in out.stderr


def test_a_trained_run_is_not_overwritten_with_other_parameters(tiny_run):
    p = runfiles.load_frozen(tiny_run)
    changed = params.validate({**p.to_dict(), "lr": p.lr * 10})
    with pytest.raises(UserError, match=r"already holds checkpoints/last.pt, made with other parameters: lr \(train\)"):
        runs.run(changed, ["02_train"])


def test_runs_index_lists_metrics_with_cis(tiny_run):
    from cxrlib.experiments import lister

    table = lister.runs_table(tiny_run.parent)
    row = table.set_index("run").loc["tiny"]
    assert row["status"] == "evaluated" and row["epochs"] == "1/1" and row["best"] == 1
    assert re.fullmatch(r"(\d\.\d{3}|n/a) \[(\d\.\d{3}|n/a), (\d\.\d{3}|n/a)\]", row["test AUROC macro"])
    assert not table.isna().any().any()


def test_reports_load_no_script_from_the_network(tiny_run):
    import re

    for html in tiny_run.glob("*.html"):
        text = html.read_text()
        assert not re.search(r'<script[^>]*src="https?://', text), html.name
        assert "data:image/png" in text or html.name.startswith("02")   # figures stay embedded


def snapshot(folder):
    """Every file under folder with its bytes and mtime: a refused command must change none."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("request_args, refused", [
    (["--notebooks", "01,02", "-p", "resume=true", "-p", "lr=0.5"], r"lr \(train\)"),          # RESUME=1 LR=0.5
    (["--notebooks", "03,04", "-p", "image_size=128"], r"image_size \(cache\)"),             # evaluate IMAGE_SIZE=128
    (["--notebooks", "01,02,03,04", "-p", "views=[PA]"], r"views \(cohort\)"),                # a plain rerun, changed
])
def test_a_refused_command_leaves_the_run_folder_byte_identical(tiny_run, tiny_runs_dir, request_args, refused):
    before = snapshot(tiny_run)
    done = cli("run", "--name", tiny_run.name, "-p", f"runs_dir={tiny_runs_dir}", *request_args)
    assert done.returncode == 2 and re.search(refused, done.stderr), done.stderr
    assert "Nothing was changed" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(tiny_run) == before


def test_evaluation_records_what_shaped_the_model(tiny_run):
    report = json.loads((tiny_run / "metrics.json").read_text())
    saved = torch.load(tiny_run / "checkpoints" / "best.pt", weights_only=True, mmap=True)["model_config"]
    assert report["model"] == saved and report["model"]["image_size"] == 32 and report["model"]["mean"] > 0
    assert report["data"]["cache"]["size"] == saved["image_size"]
