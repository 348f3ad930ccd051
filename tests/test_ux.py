"""What a person sees: streamed progress, Ctrl-C, the runs index, diffs, make-line errors, git hygiene."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from conftest import PROJECT, TINY

from cxrlib import params, runfiles, runstatus
from cxrlib.errors import UserError
from cxrlib.experiments import lister, runs
from cxrlib.labels import FINDINGS
from cxrlib.progress import LINE, LineBar, Streamer

pytestmark = pytest.mark.slow


def cli_args(data_root, runs_dir, name, **overrides):
    values = {**TINY, "data_root": str(data_root), "runs_dir": str(runs_dir), **overrides}
    args = [sys.executable, "-m", "cxrlib", "run", "--params", "params/demo.yaml", "--name", name]
    for key, value in values.items():
        args += ["-p", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    return args


def test_epoch_lines_stream_to_the_terminal_and_ctrl_c_prints_one_line(tiny_data, tiny_run, tmp_path):
    """Under `python -m cxrlib run` each epoch's line arrives while notebook 02 runs (between its
    'running' and the end), with progress lines; Ctrl-C then ends with one line and no traceback."""
    env = dict(os.environ, CXRLIB_PROGRESS_SECONDS="0", PYTHONUNBUFFERED="1")
    (tmp_path / "stream").mkdir()
    shutil.copy2(tiny_run / "cohort.csv", tmp_path / "stream" / "cohort.csv")   # the tiny run's cohort and cache
    command = cli_args(tiny_data, tmp_path, "stream", epochs=40) + ["--notebooks", "02"]
    proc = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True,   # a process group of its own, as a terminal's foreground job
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, deadline = [], time.monotonic() + 300
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("epoch 2/40: train loss") or time.monotonic() > deadline:
                break
        os.killpg(proc.pid, signal.SIGINT)   # what Ctrl-C does: the whole foreground group
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines += rest.splitlines()
    started = lines.index(next(x for x in lines if x.startswith("[02_train] running")))
    epoch1 = lines.index(next(x for x in lines if x.startswith("epoch 1/40: train loss")))
    progress = [x for x in lines[started:epoch1] if LINE.match(x)]
    assert started < epoch1 and progress, lines
    assert LINE.match(progress[-1])["n"] == LINE.match(progress[-1])["total"] == "2"   # max_train_batches 2
    assert "lr " in lines[epoch1] and "img/s" in lines[epoch1]
    # the ETA reaches the terminal through the side file (in its own time relative to the cell's output)
    assert any(x.startswith("ETA ") and "for the 39 epoch(s) left" in x for x in lines), lines
    assert not any(x.startswith("[02_train] done") for x in lines)   # streamed, not printed at the end
    assert proc.returncode == 130
    assert "Traceback" not in err and "Task exception" not in err, err[-3000:]
    assert [x for x in err.splitlines() if x.strip()][-1].startswith("interrupted in 02_train"), err[-2000:]
    # what ran is kept: the notebook so far, with the epochs it printed
    kept = nbformat.read(tmp_path / "stream" / "02_train.ipynb", as_version=4)
    assert "epoch 1/40: train loss" in json.dumps(kept.cells)
    assert " batches (" not in json.dumps(kept.cells)   # the batch progress reached the terminal, not the record
    assert "ETA" not in json.dumps(kept.cells)          # nor the ETA, stale the moment it is saved
    assert runstatus.status(tmp_path / "stream")["status"] == "training"


class Screen:
    """A stream that keeps what is written to it; a terminal (isatty) or a log file."""

    def __init__(self, tty: bool):
        self.text, self.tty = "", tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return self.tty


def test_streamer_gives_a_live_bar_in_a_terminal_and_plain_lines_in_a_log(capsys):
    log = Streamer(sys.stdout, live=False)
    log.write("epoch 1/3: 5/10 batches (50%) | loss 0.5 | ETA 0:05\nhello")
    log.write(" world\n")
    log.finish()
    assert capsys.readouterr().out == "epoch 1/3: 5/10 batches (50%) | loss 0.5 | ETA 0:05\nhello world\n"
    terminal = Screen(tty=True)
    live = Streamer(terminal)
    live.write("epoch 1/3: 5/10 batches (50%) | loss 0.5\n")
    assert live.bar is not None and live.bar.n == 5 and live.bar.total == 10
    live.write("a log line\nepoch 1/3: 10/10 batches (100%) | loss 0.4\n")
    assert live.bar is None and "a log line" in terminal.text and "10/10" in terminal.text


def test_line_bar_prints_at_most_a_line_per_tenth(capsys, monkeypatch):
    monkeypatch.setattr("cxrlib.progress.MIN_SECONDS", 0.0)
    bar = LineBar(total=100, desc="cache demo", unit="images")
    for _ in range(100):
        bar.update()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 10 and all(LINE.match(x) for x in printed)
    assert printed[-1].startswith("cache demo: 100/100 images (100%)")


def test_a_notebook_run_by_hand_cannot_change_a_run(tiny_run):
    """In JupyterLab, 01 with views = ["AP"] against the AP+PA run is refused before anything is written."""
    before = {name: (tiny_run / name).read_bytes() for name in ("params.yaml", "cohort.csv")}
    with pytest.raises(params.ParamError, match=r"views \(cohort\): \['AP', 'PA'\] -> \['AP'\].*set run_dir to a new"):
        runfiles.for_notebook(tiny_run, {"run_dir": str(tiny_run), "views": ["AP"], "seed": 0})
    assert before == {name: (tiny_run / name).read_bytes() for name in before}
    # the same values pass (a notebook opened on its own run works)
    p = runfiles.for_notebook(tiny_run, {"run_dir": str(tiny_run), "bootstrap": 50, "views": ["AP", "PA"]})
    assert p.views == ["AP", "PA"]


def test_a_notebook_opened_by_hand_on_a_commands_run_works_in_a_scratch_copy(tiny_run, tmp_path, monkeypatch):
    """Notebook 01 run in Lab once rewrote runs/demo/cohort.csv and moved its date in make runs. Opened by hand
    on a run a command made, a notebook works in runs/<name>-lab, whose files are links; the run never changes."""
    from cxrlib.experiments import notebook

    run = copy_run(tiny_run, tmp_path / "runs" / "made", runs_dir=str(tmp_path / "runs"))
    before = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in run.iterdir()}
    monkeypatch.setattr(notebook, "is_interactive", lambda: True)
    namespace = {"run_dir": str(run), "views": ["AP", "PA"]}
    p = notebook.setup(str(run), namespace)
    scratch = tmp_path / "runs" / "made-lab"
    assert namespace["run_dir"] == str(scratch) and p.name == "made-lab" and p.run_dir() == scratch
    assert (scratch / "cohort.csv").stat().st_ino == (run / "cohort.csv").stat().st_ino   # linked, not copied
    runfiles.freeze(params.validate({**p.to_dict(), "bootstrap": 7}), scratch)   # the scratch run changes ...
    assert before == {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in run.iterdir()}   # ... the run does not
    again = {"run_dir": str(run)}
    notebook.setup(str(run), again)                     # the next notebook opened by hand: the same scratch run
    assert again["run_dir"] == str(scratch) and runfiles.load_frozen(scratch).bootstrap == 7
    own = {"run_dir": str(tmp_path / "runs" / "mine")}   # a run of the user's own making is theirs to write
    notebook.setup(own["run_dir"], own)
    assert own["run_dir"] == str(tmp_path / "runs" / "mine")


def copy_run(src: Path, dst: Path, **changes) -> Path:
    dst.mkdir(parents=True)
    for name in ("params.yaml", "history.csv", "metrics.json", "cohort.csv", "03_evaluate.ipynb", "01_cohort.ipynb"):
        shutil.copy(src / name, dst / name)
    if changes:
        values = params.read_yaml(dst / "params.yaml")
        values.update(changes, name=dst.name)
        runfiles.freeze(params.validate(values), dst)
    return dst


def test_runs_index_marks_metrics_older_than_training_as_stale(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "r1", epochs=2)
    assert runstatus.status(run)["status"] == "evaluated"
    history = pd.read_csv(run / "history.csv")
    extra = history.iloc[[-1]].assign(epoch=2, selected=True, best_epoch=2)
    pd.concat([history, extra]).to_csv(run / "history.csv", index=False)   # trained one epoch further
    s = runstatus.status(run)
    assert s["status"] == "stale" and "make evaluate RUN=r1" in " ".join(s["notes"])
    (run / "metrics.json").unlink()
    assert runstatus.status(run)["status"] == "trained"
    table = lister.runs_table(tmp_path).set_index("run")
    assert table.loc["r1", "status"] == "trained" and table.loc["r1", "best"] == 2
    assert "NaN" not in table.to_string()


def test_diff_shows_parameters_first_without_image_or_html_noise(tiny_run, tmp_path):
    a = copy_run(tiny_run, tmp_path / "a")
    b = copy_run(tiny_run, tmp_path / "b", epochs=3, image_size=64)
    text = lister.diff_runs(a, b)
    lines = text.splitlines()
    assert lines[0].startswith("Parameters that differ")
    assert lines[1].split() == ["image_size", "32", "|", "64"] and lines[2].split() == ["epochs", "1", "|", "3"]
    assert lines[3] == ""   # nothing else differs
    assert "Headline figures" in text and "01_cohort: no difference" in text
    assert "data:image" not in text and "<table" not in text and "<div" not in text


def test_make_line_values_are_attributed_to_the_make_line_and_typos_get_a_suggestion():
    with pytest.raises(UserError, match=r"the make line: EPOCHZ is not a parameter; did you mean EPOCHS\?"):
        runs.make_overrides("EPOCHZ=1", {"EPOCHZ": "1"})
    sources = {}
    overrides = runs.make_overrides("EPOCHS=abc", {"EPOCHS": "abc"}, sources=sources)
    with pytest.raises(UserError, match=r"^the make line \(EPOCHS=abc\): parameter 'epochs' = 'abc' should be int"):
        runs.resolve("params/demo.yaml", None, overrides, sources=sources)
    with pytest.raises(UserError, match=r"params/x.yaml: unknown parameter\(s\) 'batchsize' \(did you mean batch_size"):
        params.validate({"batchsize": 3}, "params/x.yaml")


def test_make_reports_a_bad_make_line_value_as_from_the_make_line():
    result = subprocess.run(["make", "--no-print-directory", "cohort", "IMAGE_SIZE=big"], cwd=PROJECT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "error: the make line (IMAGE_SIZE=big): parameter 'image_size' = 'big' should be int" in result.stderr
    assert "params/demo.yaml" not in result.stderr.split("error:")[-1]


def test_a_summary_ends_train_and_evaluate(tiny_run, capsys):
    lister.print_summary(tiny_run, ["02_train", "03_evaluate"])
    out = capsys.readouterr().out
    assert "best epoch 1 (chosen on validate by auroc): validate AUROC macro" in out
    assert "Test set:" in out and "95% CIs from 50 patient resamples" in out
    head = json.loads((tiny_run / "metrics.json").read_text())["headline"]["AUROC macro"]
    assert f"AUROC macro  {lister.fmt(head['value'])}  [{lister.fmt(head['lo'])}, {lister.fmt(head['hi'])}]" in out


def test_best_checkpoint_holds_no_optimizer_state_and_evaluates_the_same(tiny_run):
    from cxrlib.evaluation import evaluate

    folder = tiny_run / "checkpoints"
    best = torch.load(folder / "best.pt", weights_only=True)
    last = torch.load(folder / "last.pt", weights_only=True)
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(best) and "optimizer" in last
    assert {"model", "params", "model_config", "selection", "history"} <= set(best)
    assert (folder / "best.pt").stat().st_size < 0.6 * (folder / "last.pt").stat().st_size   # Adam: 2 moments
    # one epoch: best and last hold the same weights; the slim file predicts what the run reported
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    p = runfiles.load_frozen(tiny_run)
    again = evaluate.predict_run(tiny_run, p)
    saved = runfiles.read_predictions(tiny_run)
    columns = [c for c in saved.columns if c.startswith("p_")]
    assert len(columns) == 14
    pd.testing.assert_frame_equal(again[columns].reset_index(drop=True), saved[columns].reset_index(drop=True),
                                  check_exact=False, atol=1e-6)


def test_clean_removes_checkpoints_and_keeps_reports(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "c")
    shutil.copytree(tiny_run / "checkpoints", run / "checkpoints")
    assert lister.clean(run, ask=lambda prompt: "n") == 0 and (run / "checkpoints").is_dir()
    with pytest.raises(UserError, match="without a terminal to ask; add YES=1"):   # pytest's stdin: no terminal
        lister.clean(run)
    freed = lister.clean(run, assume_yes=True)
    assert freed > 0 and not (run / "checkpoints").exists() and (run / "metrics.json").is_file()
    assert "checkpoints removed" in runstatus.status(run)["notes"]


def test_nbstripout_filter_strips_outputs_on_git_add(tmp_path):
    clean = subprocess.run(["git", "config", "--get", "filter.nbstripout.clean"], cwd=PROJECT, capture_output=True,
                           text=True).stdout.strip()
    if not clean:
        if os.environ.get("CI") == "true" or (PROJECT / ".git").exists():
            pytest.fail("the nbstripout git filter is not configured in this checkout; make setup installs it")
        pytest.skip("not a git checkout")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, check=True)  # noqa: E731
    git("init", "-q")
    git("config", "filter.nbstripout.clean", clean)
    git("config", "filter.nbstripout.required", "true")
    shutil.copy(PROJECT / ".gitattributes", repo / ".gitattributes")
    nb = nbformat.read(PROJECT / "notebooks" / "02_train.ipynb", as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})]
    nb.cells[2].execution_count = 7
    nbformat.write(nb, repo / "02_train.ipynb")
    git("add", "02_train.ipynb")
    staged = nbformat.reads(git("show", ":02_train.ipynb").stdout, as_version=4)
    assert all(not c.get("outputs") for c in staged.cells if c.cell_type == "code")
    assert [c.id for c in staged.cells] == [c.id for c in nb.cells]   # --keep-id: the jupytext pair stays in sync
    assert "image/png" in (repo / "02_train.ipynb").read_text()   # the working copy keeps what Lab saved


@pytest.mark.probe(issue=15, kind="silent")
def test_redaction_asked_for_at_evaluation_covers_every_report_of_the_run(tiny_run, tiny_data, tmp_path):
    """Trained and reported unredacted, then redaction asked for: 01-04, none holds an image any more."""
    from conftest import run_notebooks, tiny_params

    run = tmp_path / "late"
    shutil.copytree(tiny_run, run)
    (run / ".02_train.ipynb.x1y2.ipynb").write_text("{}")   # a temp file a killed run left
    assert "data:image/png" in (run / "01_cohort.html").read_text()
    # `make evaluate RUN=late REDACT_IMAGES=true`: the runner redacts the earlier reports before it runs
    # 03 and 04, which the redacted fixture shows are written without images; no notebook needs to run here.
    run_notebooks(tiny_params(tiny_data, tmp_path, "late", redact_images=True), [])
    found = [(path.name, marker) for path in sorted(run.glob("*.ipynb")) + sorted(run.glob("*.html"))
             for marker in ("image/png", "image/jpeg", "data:image", "<image") if marker in path.read_text()]
    assert not found
    assert {f"{nb}.html" for nb in runfiles.NOTEBOOKS} <= {p.name for p in run.iterdir()}
    assert not list(run.glob(".02_train.ipynb.*"))


@pytest.mark.probe(issue=15, kind="late")
def test_what_the_parameters_and_machine_tell_is_checked_before_any_notebook(tmp_path):
    assert params.validate({"views": "AP,PA"}, "the make line").views == ["AP", "PA"]   # VIEWS=AP,PA: two views
    with pytest.raises(params.ParamError, match="num_workers must be 0"):
        params.validate({"num_workers": -3})
    env = dict(os.environ, RESUME="1")
    out = subprocess.run([sys.executable, "-m", "cxrlib", "run", "--make-vars", "RESUME=1", "--params",
                          "params/demo.yaml", "--default-params", "-p", f"runs_dir={tmp_path}"], cwd=PROJECT,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "RESUME=1 continues a run: name it with RUN=<name>" in out.stderr
    if not torch.cuda.is_available():
        out = subprocess.run([sys.executable, "-m", "cxrlib", "run", "--params", "params/demo.yaml", "-p", "device=gpu",
                              "-p", f"runs_dir={tmp_path}", "--notebooks", "01,02"], cwd=PROJECT, capture_output=True,
                             text=True)
        assert out.returncode == 2 and "device: gpu but torch.cuda.is_available() is False" in out.stderr
        assert not (tmp_path / "demo" / "cohort.csv").exists() and "[01_cohort] running" not in out.stdout


@pytest.mark.probe(issue=15, kind="silent")
def test_the_summary_says_when_an_interval_misses_its_estimate(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps({
        "headline_split": "test", "ci": {"level": 0.95, "n_boot": 1000},
        "data": {"images_per_split": {"test": 102}, "patients_per_split": {"test": 100}},
        "headline": {"AUPRC macro": {"value": 0.1729, "lo": 0.1832, "hi": 0.2541},
                     "AUROC macro": {"value": 0.8, "lo": 0.7, "hi": 0.9}}}))
    lines = lister.evaluation_summary(tmp_path)
    assert lines[1].endswith("(CI conditional: ? of 1000 resamples)")
    assert lines[2].strip().startswith("AUROC macro") and "conditional" not in lines[2]
    report = json.loads((tmp_path / "metrics.json").read_text())
    report["headline"]["AUROC macro"].update(n_boot_valid=414, conditional=True)
    report["macro"] = {"findings": FINDINGS[:9], "not_estimable": ["Fracture"], "one_class": [], "min_positives": 10}
    (tmp_path / "metrics.json").write_text(json.dumps(report))
    lines = lister.evaluation_summary(tmp_path)
    assert lines[2].endswith("(CI conditional: 414 of 1000 resamples)") and "may miss the estimate" in lines[3]
    assert lines[4] == "  macro figures average 9 of 14 findings; left out (fewer than 10 patients with a positive " \
                       "or with a negative): Fracture"


@pytest.mark.probe(issue=15, kind="silent")
def test_two_runs_with_different_cohorts_started_at_once_keep_all_their_images(tiny_data, tmp_path):
    """`RUN=a` (views AP) and `RUN=b` (AP and PA) at the same image size, started together: both cohort
    notebooks build into one shared cache, and afterwards each run trains and evaluates on every one of its
    images (cache.usable_cohort is what training and evaluation read)."""
    from cxrlib.data import cache

    cache_dir = tmp_path / "shared-cache"
    procs = [subprocess.Popen(cli_args(tiny_data, tmp_path, name, views=views, cache_dir=str(cache_dir),
                                       image_size=64) + ["--notebooks", "01", "--no-progress"],
                              cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, views in (("a", ["AP"]), ("b", ["AP", "PA"]))]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    sizes = {}
    for name in ("a", "b"):
        p = runfiles.load_frozen(tmp_path / name)
        full = pd.read_csv(tmp_path / name / "cohort.csv")
        usable = cache.usable_cohort(tmp_path / name, p)
        failed = cache.open_cache(cache_dir, 64, p.resize, p.decode).failures
        assert len(usable) == len(full) - full["dicom_id"].isin(failed["dicom_id"]).sum()
        sizes[name] = len(full)
    assert sizes["b"] > sizes["a"] > 0


def test_notebook_seconds_reads_the_notebook_level_duration_from_the_tail(tmp_path):
    import json


    cells = [{"cell_type": "code", "source": "", "outputs": [{"output_type": "stream", "name": "stdout",
                                                              "text": "x" * 100_000}],
              "metadata": {"papermill": {"duration": 7.5}}, "execution_count": 1}]
    for duration, expected in ((12.25, 12.25), (None, 0.0)):
        nb = {"cells": cells, "metadata": {"papermill": {"default_parameters": {}, "duration": duration}},
              "nbformat": 4, "nbformat_minor": 5}
        path = tmp_path / "01_cohort.ipynb"
        path.write_text(json.dumps(nb, indent=1))
        assert runstatus.notebook_seconds(path) == expected
    assert runstatus.notebook_seconds(tmp_path / "missing.ipynb") == 0.0


@pytest.mark.probe(issue=22, kind="silent")
def test_make_evaluate_checks_params_and_make_train_on_a_run_does_not_take_the_demo_preset():
    """PARAMS= on make evaluate used to be ignored without a word; now it reaches the runner, which checks it
    against the run's params.yaml like any other change."""
    out = subprocess.run(["make", "-n", "evaluate", "RUN=x", "PARAMS=params/improved.yaml"], cwd=PROJECT,
                         capture_output=True, text=True)
    assert "--params params/improved.yaml --notebooks 03,04,05" in out.stdout
    out = subprocess.run(["make", "-n", "evaluate", "RUN=x"], cwd=PROJECT, capture_output=True, text=True)
    assert "--params" not in out.stdout.split("--notebooks 03,04,05")[0].split("cxrlib run")[-1]


def test_progress_lines_go_to_the_terminal_through_the_side_file_in_order(tmp_path, monkeypatch):
    """The kernel's LineBar writes to CXRLIB_PROGRESS_FILE, not to the cell's output; the Streamer shows those
    lines before any cell output that came after them, so the terminal reads as if they were one stream."""
    side = tmp_path / ".02_train.progress"
    side.write_text("")
    monkeypatch.setenv("CXRLIB_PROGRESS_FILE", str(side))
    monkeypatch.setattr("cxrlib.progress.MIN_SECONDS", 0.0)

    log = Screen(tty=False)
    streamer = Streamer(log, side=side)
    bar = LineBar(total=2, desc="epoch 1/1", unit="batches")
    bar.update()
    bar.update()
    bar.close()
    streamer.write("epoch 1/1: train loss 0.5\n")   # the cell's output, after the two batch lines
    streamer.finish()
    lines = log.text.splitlines()
    assert [LINE.match(x)["n"] for x in lines[:2]] == ["1", "2"] and lines[2] == "epoch 1/1: train loss 0.5"
    assert side.read_text().count(" batches (") == 2   # where they went instead of the notebook


def test_the_eta_comes_from_recent_epochs_not_a_running_mean_with_the_slow_first():
    """After a 40-minute first epoch and three of 4 minutes, 7 epochs left take about 28 minutes, not the
    running mean's 77 (the demo printed ETA 58:46 with 7 minutes left)."""
    from cxrlib.progress import recent_epoch_seconds

    walls = [2400.0, 240.0, 250.0, 230.0]
    assert recent_epoch_seconds(walls) == pytest.approx(240.0)
    assert recent_epoch_seconds([300.0]) == 300.0
    assert recent_epoch_seconds([900.0, 100.0, 100.0, 100.0, 200.0]) == pytest.approx(400 / 3)


def test_every_command_prints_its_help_without_a_traceback():
    """`python -m cxrlib external --help` once died in argparse on a '%' in a help text (99% read as a format)."""
    import contextlib
    import io

    from cxrlib.__main__ import COMMANDS, main

    failed = []
    for name in COMMANDS:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = main([name, "--help"])
        except SystemExit as stop:
            code = stop.code
        if code not in (0, None) or "usage" not in out.getvalue().lower():
            failed.append((name, code, out.getvalue()[-300:]))
    assert failed == []
