"""Sweeps, groups and ensembles: grid expansion, skip and resume, pooled seeds and ensembles against
hand computations, then a tiny sweep run for real (submitit's local executor, then the local launcher),
with TensorBoard and MLflow read back by their own readers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrlib import runfiles
from cxrlib.errors import UserError
from cxrlib.evaluation import ensemble, kinds
from cxrlib.experiments import compare, sweep
from cxrlib.experiments import grid as grids
from cxrlib.labels import FINDINGS
from cxrlib.runfiles import prob_columns

PROB_COLUMNS = prob_columns(FINDINGS)

ROOT = Path(__file__).resolve().parent.parent


def write_grid(tmp_path, **grid) -> Path:
    path = tmp_path / f"{grid.pop('file', 'g')}.yaml"
    path.write_text(yaml.safe_dump({"base": str(ROOT / "params" / "demo.yaml"), **grid}, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the grid
def test_expansion_product_then_list_then_seeds_with_readable_names(tmp_path):
    grid = grids.read_grid(write_grid(tmp_path, vary={"pos_weight": [False, True], "lr": [0.001, 0.0003]},
                                      members=[{"name": "big", "image_size": 128}, {"views": ["AP", "PA"]}],
                                      seeds=[0, 1]))
    names = [n for n, _ in grids.expand(grid)]
    assert names[:4] == ["pos_weight-false_lr-0.001_seed-0", "pos_weight-false_lr-0.001_seed-1",
                         "pos_weight-false_lr-0.0003_seed-0", "pos_weight-false_lr-0.0003_seed-1"]
    assert names[8:] == ["big_seed-0", "big_seed-1", "views-AP+PA_seed-0", "views-AP+PA_seed-1"]
    assert len(names) == (2 * 2 + 2) * 2 == len(set(names))
    overrides = dict(grids.expand(grid))
    assert overrides["big_seed-1"] == {"image_size": 128, "seed": 1}
    assert overrides["pos_weight-true_lr-0.0003_seed-0"] == {"pos_weight": True, "lr": 0.0003, "seed": 0}
    plain = grids.read_grid(write_grid(tmp_path, file="plain"))
    assert grids.expand(plain) == [("base", {})]


def test_member_parameters_and_their_folders(tmp_path):
    grid = grids.read_grid(write_grid(tmp_path, name="s", set={"epochs": 2}, vary={"pos_weight": [True]}, seeds=[3]))
    (name, overrides), = grids.expand(grid)
    p = sweep.member_params(grid, name, overrides, runs_dir=str(tmp_path / "runs"))
    assert (p.epochs, p.pos_weight, p.seed, p.name) == (2, True, 3, "pos_weight-true_seed-3")
    assert p.run_dir() == tmp_path / "runs" / "s" / "pos_weight-true_seed-3"


@pytest.mark.parametrize("grid, message", [
    ({"vary": {"epochz": [1, 2]}}, "epochz"),
    ({"vary": {"seed": [1, 2]}}, "seeds:"),
    ({"vary": {"lr": 0.1}}, "vary"),
    ({"launcher": "kubernetes"}, "local or slurm"),
    ({"sweeps": 3}, "unknown key"),
    ({"members": [{"lr": 0.1}, {"lr": 0.1}]}, "twice"),
    ({"vary": {"lr": [0.1]}, "baseline": "nope"}, "baseline 'nope'"),
    ({"slurm": {"partitions": "gpu"}}, "slurm"),
    ({"notebooks": ["09"]}, "notebooks: --notebooks"),                          # found before any member starts
    ({"set": {"split_mode": "seed", "val_fraction": 0.0}}, "needs a validation split"),
    ({"vary": {"views": [["AP"], ["APP"]]}}, "views: ['APP'] are not ViewPosition values"),
])
@pytest.mark.probe(issue=22, kind="late")
def test_bad_grids_name_the_file_and_the_key(tmp_path, grid, message):
    path = write_grid(tmp_path, **grid)
    with pytest.raises(UserError) as e:
        sweep.plan(grids.read_grid(path), runs_dir=str(tmp_path / "runs"))
    assert message in str(e.value) and str(path.name) in str(e.value)


@pytest.mark.probe(issue=22, kind="late")
def test_the_shipped_seed_ablation_grid_plans_members_that_share_one_cohort(tmp_path, monkeypatch):
    """Its ensemble averages six members image by image: seeds vary the weights and data order, never the
    validation split (split_seed), so every member builds the same cohort."""
    monkeypatch.chdir(ROOT)
    grid = grids.read_grid(ROOT / "params" / "grids" / "seed-ablation.yaml")
    members = sweep.plan(grid, runs_dir=str(tmp_path / "runs"), write=False)
    assert len(members) == 6 and grid["ensemble"]
    from cxrlib.params import STAGES

    cohorts = {tuple(str(getattr(m["params"], f)) for f in STAGES["cohort"]) for m in members}
    assert len(cohorts) == 1 and {m["params"].seed for m in members} == {0, 1, 2}


@pytest.mark.probe(issue=22, kind="late")
def test_an_ensemble_of_members_with_different_cohorts_is_refused_before_anything_runs(tmp_path):
    path = write_grid(tmp_path, vary={"views": [["AP"], ["AP", "PA"]]}, ensemble=True)
    with pytest.raises(UserError, match="different cohorts") as e:
        sweep.plan(grids.read_grid(path), runs_dir=str(tmp_path / "runs"), write=False)
    assert "views" in str(e.value) and not (tmp_path / "runs").exists()


def test_plan_skips_finished_resumes_unfinished_and_refuses_a_changed_finished_stage(tmp_path, monkeypatch):
    runs_dir = str(tmp_path / "runs")
    path = write_grid(tmp_path, name="s", vary={"pos_weight": [False, True]})
    members = sweep.plan(grids.read_grid(path), runs_dir)
    assert [m["status"] for m in members] == ["new", "new"]
    done, half = members[0]["dir"], members[1]["dir"]
    (done / sweep.DONE).write_text("{}")
    (half / "checkpoints").mkdir()
    (half / "checkpoints" / "last.pt").write_bytes(b"x")
    assert [m["status"] for m in sweep.plan(grids.read_grid(path), runs_dir)] == ["finished", "unfinished"]
    ran = []
    monkeypatch.setattr("cxrlib.experiments.runs.run", lambda p, notebooks, **kw: ran.append((p.name, p.resume, notebooks)))
    sweep.run_member(Path(runs_dir) / "s", done.name)
    sweep.run_member(Path(runs_dir) / "s", half.name)
    assert ran == [(half.name, True, ["01_cohort", "02_train", "03_evaluate", "04_error_analysis", "05_fairness"])]
    assert (half / sweep.DONE).is_file()
    (done / "cohort.csv").write_text("x")   # the cohort stage has run: its fields are fixed
    path.write_text(path.read_text().replace("name: s", "name: s\nset: {views: [PA]}"))
    with pytest.raises(UserError, match="views"):
        sweep.plan(grids.read_grid(path), runs_dir)


# --------------------------------------------------------------------------- groups and ensembles
def fake_run(folder: Path, seed: int, auroc: float, extra: dict | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump({"name": folder.name, "seed": seed, **(extra or {})}))
    headline = {compare.HEADLINE_KEY[k]: {"value": auroc + i / 10, "lo": auroc - 0.05, "hi": auroc + 0.05}
                for i, k in enumerate(compare.FIGURES)}
    (folder / "metrics.json").write_text(json.dumps({
        "headline": headline, "params": {"seed": seed}, "selection": {"best_epoch": 3},
        "splits": {"validate": {"macro": {"auroc": {"value": auroc - 0.01}}}}}))


def test_pooled_seeds_are_the_mean_and_sample_sd_of_the_members(tmp_path):
    for seed, value in enumerate([0.70, 0.74, 0.75]):
        fake_run(tmp_path / f"a{seed}", seed, value, {"pos_weight": False})
    for seed, value in enumerate([0.80, 0.78]):
        fake_run(tmp_path / f"b{seed}", seed, value, {"pos_weight": True})
    table = compare.headline_table(sorted(tmp_path.iterdir()))
    assert list(table["setting"]) == ["pos_weight=False"] * 3 + ["pos_weight=True"] * 2
    pooled = compare.pooled_seeds(table).set_index("setting")
    a = np.array([0.70, 0.74, 0.75])
    assert pooled.loc["pos_weight=False", "auroc_macro_mean"] == pytest.approx(a.mean())
    assert pooled.loc["pos_weight=False", "auroc_macro_sd"] == pytest.approx(np.sqrt(((a - a.mean()) ** 2).sum() / 2))
    assert pooled.loc["pos_weight=True", "auprc_macro_mean"] == pytest.approx(0.79 + 0.1)
    assert pooled.loc["pos_weight=True", "auroc_macro_sd"] == pytest.approx(np.std([0.80, 0.78], ddof=1))
    assert pooled.loc["pos_weight=True", "seeds"] == 2


def fake_predictions(folder: Path, rng, n: int = 40) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"dicom_id": [f"d{i}" for i in range(n)], "subject_id": [str(i // 2) for i in range(n)],
                          "study_id": [str(i) for i in range(n)], "split": ["validate", "test"] * (n // 2)})
    frame[PROB_COLUMNS] = rng.random((n, len(FINDINGS))).astype(np.float32)
    frame[FINDINGS] = (rng.random((n, len(FINDINGS))) < 0.3).astype(np.float32)
    frame.sample(frac=1, random_state=int(rng.integers(100))).to_csv(folder / "predictions.csv", index=False,
                                                                     float_format="%.9g")
    return frame


def test_the_ensemble_is_the_mean_of_its_members_row_by_row(tmp_path):
    rng = np.random.default_rng(0)
    frames = [fake_predictions(tmp_path / f"m{i}", rng) for i in range(3)]
    for i, frame in enumerate(frames[1:], start=1):   # the same labels, other scores
        frame[FINDINGS] = frames[0][FINDINGS].to_numpy()
        frame.to_csv(tmp_path / f"m{i}" / "predictions.csv", index=False, float_format="%.9g")
    out = ensemble.average_predictions([tmp_path / f"m{i}" for i in range(3)]).set_index("dicom_id")
    by_hand = sum(f.set_index("dicom_id")[PROB_COLUMNS].astype(np.float64) for f in frames) / 3
    assert np.allclose(out.loc[by_hand.index, PROB_COLUMNS].to_numpy(np.float64), by_hand.to_numpy(), atol=1e-7)
    other = tmp_path / "other"
    fake_predictions(other, rng)   # its own labels
    with pytest.raises(UserError, match="labels"):
        ensemble.average_predictions([tmp_path / "m0", other])


@pytest.mark.probe(issue=22, kind="silent")
def test_an_ensemble_of_members_of_other_sizes_describes_each_member_and_refuses_export_and_predict(tmp_path):
    import torch

    from cxrlib import params
    from cxrlib.handoff import card, export, predict

    sweep_dir = tmp_path / "s"
    for name, size in (("small", 32), ("large", 48)):
        (sweep_dir / name / "checkpoints").mkdir(parents=True)
        config = {"arch": "resnet18", "head": "avgpool", "image_size": size, "resize": "squash", "decode": "fast",
                  "mean": 0.5, "std": 0.25}
        torch.save({"params": params.validate({"image_size": size, "head": "avgpool"}).to_dict(),
                    "model_config": config}, sweep_dir / name / "checkpoints" / "best.pt")
    (sweep_dir / "ensemble").mkdir()
    (sweep_dir / "ensemble" / runfiles.ENSEMBLE).write_text(json.dumps({"members": ["small", "large"]}))
    config = kinds.open_run(sweep_dir / "ensemble").model_config()
    assert config["differs"] == ["image_size"] and config["image_size"] is None and config["arch"] == "resnet18"
    assert config["members"]["large"]["image_size"] == 48 and config["ensemble_of"] == 2
    lines = card.model_details(sweep_dir / "ensemble", params.validate({}).to_dict(),
                               {"model": config, "selection": {"ensemble_of": {"small": 3, "large": 4}}})
    text = "\n".join(lines)
    assert "input size differs by member (below) grey" in text and "large: resnet18, head `avgpool`, 48 px" in text
    assert "(below) px" not in text
    assert "Selected: epoch None" not in text and "large (epoch 4)" in text
    p = params.validate({"name": "ensemble", "runs_dir": str(sweep_dir), "device": "cpu"})
    with pytest.raises(UserError, match="ensemble .no checkpoint of its own.: export each member"):
        export.export_run(sweep_dir / "ensemble", p, "onnx")
    with pytest.raises(UserError, match="predict with each member .*members: small, large"):
        predict.predict_files(sweep_dir / "ensemble", p, [str(tmp_path)], progress=False)


# --------------------------------------------------------------------------- a tiny sweep, run for real
@pytest.fixture(scope="module")
def tiny_sweep(tiny_data, tmp_path_factory):
    """Two tiny members through submitit's local executor (one logs to TensorBoard, one to MLflow), then
    their ensemble and the comparison (notebook 06)."""
    import os
    import warnings

    from conftest import TINY

    from cxrlib.experiments import runs

    tmp = tmp_path_factory.mktemp("sweep")
    path = write_grid(tmp, file="tiny", name="tiny-sweep",
                      set={**TINY, "data_root": str(tiny_data), "arch": "resnet18", "bootstrap": 30},
                      members=[{"name": "tb", "tracker": "tensorboard", "seed": 0},
                               {"name": "mlf", "tracker": "mlflow", "seed": 1}],
                      notebooks=["01", "02", "03"], ensemble=True, baseline="tb")
    runs_dir = tmp / "runs"
    cwd = os.getcwd()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = sweep.sweep(path, str(runs_dir), executor="local", wait=True, progress=False)
            compared = compare.compare_group("tiny-sweep", runs_dir, out_dir=runs_dir / "tiny-sweep")
            base = runfiles.load_frozen(runs_dir / "tiny-sweep" / "tb")
            runs.execute("06_compare", base, runs.project_root(), runs_dir / "tiny-sweep", progress=False,
                         extra={"runs": "tiny-sweep", "runs_root": str(runs_dir)})
    finally:
        os.chdir(cwd)
    assert result["failed"] == {}, result["failed"]
    return path, runs_dir, result, compared


def test_submitit_runs_the_members_as_jobs_and_a_rerun_skips_them(tiny_sweep, capsys):
    path, runs_dir, result, _ = tiny_sweep
    assert result["failed"] == {} and len(result["jobs"]) == 2
    assert {job.job_id for job in result["jobs"]} and all(job.state in ("DONE", "FINISHED", "COMPLETED")
                                                         for job in result["jobs"])
    for name in ("tb", "mlf"):
        member = runs_dir / "tiny-sweep" / name
        assert (member / sweep.DONE).is_file() and (member / "metrics.json").is_file()
        assert (member / "03_evaluate.html").is_file() and not (member / "04_error_analysis.ipynb").exists()
    again = sweep.sweep(path, str(runs_dir), executor="local", wait=True, progress=False)
    assert [m["status"] for m in again["members"]] == ["finished", "finished"] and again["jobs"] == []


def test_the_ensemble_pseudo_run_averages_its_members_and_is_evaluated_like_a_run(tiny_sweep):
    _, runs_dir, _, _ = tiny_sweep
    folder = runs_dir / "tiny-sweep" / "ensemble"
    members = [pd.read_csv(runs_dir / "tiny-sweep" / m / "predictions.csv", dtype={"dicom_id": str}).set_index("dicom_id")
               for m in ("tb", "mlf")]
    mean = pd.read_csv(folder / "predictions.csv", dtype={"dicom_id": str}).set_index("dicom_id")
    by_hand = (members[0][PROB_COLUMNS] + members[1].loc[members[0].index, PROB_COLUMNS]) / 2
    assert np.allclose(mean.loc[by_hand.index, PROB_COLUMNS], by_hand, atol=1e-6)
    report = json.loads((folder / "metrics.json").read_text())
    assert report["selection"]["ensemble_of"].keys() == {"tb", "mlf"} and report["model"]["ensemble_of"] == 2
    best = max(("tb", "mlf"), key=lambda m: ensemble.validation_auroc(runs_dir / "tiny-sweep" / m))
    assert report["params"]["compare_with"] == best                      # chosen on validation
    assert "Paired comparison" in (folder / "03_evaluate.html").read_text()


def test_the_comparison_pools_seeds_and_pairs_each_run_with_the_baseline(tiny_sweep):
    _, runs_dir, _, compared = tiny_sweep
    table = compared["headline"].set_index("run")
    assert set(table.index) == {"tb", "mlf", "ensemble"} and table.loc["ensemble", "ensemble"]
    pooled = compared["pooled"].iloc[0]
    values = table.loc[["tb", "mlf"], "auroc_macro"].astype(float)
    assert pooled["seeds"] == 2 and pooled["auroc_macro_mean"] == pytest.approx(values.mean())
    assert pooled["auroc_macro_sd"] == pytest.approx(values.std(ddof=1))
    against = compared["against_baseline"]
    assert set(against["run"]) == {"mlf", "ensemble"} and (against["baseline"] == "tb").all()
    diff = against[(against["run"] == "mlf") & (against["metric"] == "auroc_macro")].iloc[0]
    assert diff["diff"] == pytest.approx(table.loc["mlf", "auroc_macro"] - table.loc["tb", "auroc_macro"], abs=1e-9)
    assert (against["p_holm"] >= against["p_value"]).all()
    html = (runs_dir / "tiny-sweep" / "06_compare.html").read_text()
    assert "Across seeds" in html and "Against the baseline" in html
    # the forest plot and the curves drawn, not printed as '<Figure size 700x180 with 1 Axes>'; links to each run
    assert "&lt;Figure size" not in html and html.count("data:image/png;base64") >= 2
    assert 'href="tb/index.html">Run tb</a>' in html and 'href="mlf/index.html">Run mlf</a>' in html
    assert (table["selected_on"] == "validate").all() and "chose their model on their validation split" in html
    test_selected = compared["headline"].assign(selected_on=["TEST (optimistic)", "validate", "validate"])
    assert compare.selection_statement(test_selected).startswith("WARNING: 1 of 3 runs chose their model on the TEST")
    assert (against["p_value"] >= 2 / (30 + 1) - 1e-12).all()   # never 0: at least 2 / (B + 1)
    assert json.loads((runs_dir / "tiny-sweep" / "comparison.json").read_text())["baseline"] == "tb"


def test_tensorboard_and_mlflow_hold_what_the_members_logged(tiny_sweep):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, runs_dir, _, _ = tiny_sweep
    events = EventAccumulator(str(runs_dir / "tiny-sweep" / "tb" / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 2] and len(events.Scalars("train/lr")) == 2
    history = pd.read_csv(runs_dir / "tiny-sweep" / "tb" / "history.csv")
    assert events.Scalars("validate/auroc_macro")[0].value == pytest.approx(history["val_auroc_macro"].iloc[0], rel=1e-6)
    metrics = json.loads((runs_dir / "tiny-sweep" / "tb" / "metrics.json").read_text())
    assert events.Scalars("test/auroc_macro")[0].value == pytest.approx(metrics["headline"]["AUROC macro"]["value"])

    state = json.loads((runs_dir / "tiny-sweep" / "mlf" / "tracking.json").read_text())
    assert state["tracking_uri"] == (runs_dir / "mlruns").resolve().as_uri()
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    run = client.get_run(state["mlflow_run_id"])
    assert run.data.params["seed"] == "1" and run.data.params["tracker"] == "mlflow"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    mlf = json.loads((runs_dir / "tiny-sweep" / "mlf" / "metrics.json").read_text())
    assert run.data.metrics["test_auroc_macro"] == pytest.approx(mlf["headline"]["AUROC macro"]["value"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "params.yaml", "01_cohort.html", "03_evaluate.html"} <= artifacts


def test_the_local_launcher_resumes_an_unfinished_member(tiny_sweep):
    import os

    path, runs_dir, _, _ = tiny_sweep
    member = runs_dir / "tiny-sweep" / "tb"
    (member / sweep.DONE).unlink()
    trained = (member / "checkpoints" / "last.pt").stat().st_mtime_ns
    grid = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**grid, "ensemble": False, "notebooks": ["02"]}, sort_keys=False))   # quick
    cwd = os.getcwd()
    try:
        result = sweep.sweep(path, str(runs_dir), progress=False)
    finally:
        os.chdir(cwd)
    assert [m["status"] for m in result["members"]] == ["unfinished", "finished"] and result["failed"] == {}
    assert (member / sweep.DONE).is_file() and runfiles.load_frozen(member).resume
    assert (member / "checkpoints" / "last.pt").stat().st_mtime_ns == trained   # resumed a finished training


def test_a_remote_tracking_uri_is_warned_about_and_gets_no_reports_with_images(tmp_path, monkeypatch, capsys):
    from cxrlib import params, tracking

    logged = []

    class FakeClient:   # stands in for a remote MLflow server: nothing here may reach the network
        def __init__(self, tracking_uri):
            logged.append(("uri", tracking_uri))

        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name):
            return "1"

        def create_run(self, experiment_id, run_name, tags):
            return type("R", (), {"info": type("I", (), {"run_id": "abc"})})

        def __getattr__(self, name):
            return lambda *args, **kw: logged.append((name, args[1:] if len(args) > 1 else args))

    monkeypatch.setattr("mlflow.tracking.MlflowClient", FakeClient)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"headline": {"AUROC macro": {"value": 0.8}}}))
    (run_dir / "params.yaml").write_text("name: r\n")
    (run_dir / "03_evaluate.html").write_text("<img src='data:image/png;base64,AAAA'>")
    p = params.validate({"name": "r", "runs_dir": str(tmp_path), "tracker": "mlflow",
                         "tracking_uri": "https://mlflow.example.org"})
    tracking.finish(p, run_dir)
    err = capsys.readouterr().err
    assert "not on this machine" in err and "PhysioNet" in err
    uploaded = [args[0] for name, args in logged if name == "log_artifact"]
    assert uploaded and not any(path.endswith(".html") for path in uploaded)
    assert ("uri", "https://mlflow.example.org") in logged
    redacted = params.validate({**p.to_dict(), "redact_images": True})
    logged.clear()
    tracking.finish(redacted, run_dir)
    assert any(args[0].endswith("03_evaluate.html") for name, args in logged if name == "log_artifact")
    assert not tracking.is_remote((tmp_path / "mlruns").as_uri()) and tracking.is_remote("http://127.0.0.1:5000")


def test_an_ensembles_grad_cam_is_the_mean_of_its_members_maps(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.yaml").write_text(yaml.safe_dump({"name": name, "image_size": 32 if name == "a" else 64}))
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble" / runfiles.ENSEMBLE).write_text(json.dumps({"members": ["a", "b"]}))
    errors = pd.DataFrame({"dicom_id": ["x", "y"], "finding": ["Edema", "Edema"]})

    class OneMember:   # a constant map per member, at the member's own size
        def __init__(self, run_dir):
            self.run_dir = run_dir

        def error_images(self, p, rows):
            size = p.image_size
            return (np.full((len(rows), size, size), 7, np.uint8),
                    np.full((len(rows), size, size), 0.2 if self.run_dir.name == "a" else 0.6, np.float32), "layer")

    from cxrlib.params import Params

    images, cams, note = ensemble.Ensemble(tmp_path / "ensemble", member=OneMember).error_images(Params(), errors)
    assert note == "the mean of 2 members' maps; the first member's: layer"
    assert images.shape == (2, 32, 32) and cams.shape == (2, 32, 32)
    assert np.allclose(cams, 0.4)   # b's 64 px map resampled to a's 32 px, then averaged
