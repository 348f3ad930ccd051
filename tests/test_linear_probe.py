"""Linear probes on the embedding cache (issue 37): the same predictions as `freeze: backbone` training configured
alike, vectors computed once and reused (the log says so), a killed embedding resumes, keys never mix, and the
labelled share of the training patients is nested."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from conftest import run_notebooks, tiny_params

from cxrlib import runfiles
from cxrlib.data import embeddings
from cxrlib.data.cache import open_cache
from cxrlib.errors import UserError
from cxrlib.evaluation import evaluate
from cxrlib.training import train
from cxrlib.training.checkpoint import load_trained
from cxrlib.training.probe import labelled_share


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A random-weight ResNet18 as torchvision saves it (state_dict, fc included)."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("encoder") / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


PROBE = dict(arch="resnet18", head="avgpool", freeze="backbone", augment=False, dropout=0.0, cpu_amp=False,
             epochs=3, batch_size=64, max_train_batches=0, lr=0.01, schedule="constant", warmup_epochs=0,
             tracker="none", checkpoint_minutes=0)


@pytest.fixture(scope="module")
def cohort_run(tiny_data, tmp_path_factory, encoder_file):
    """Notebook 01 once (cohort and image cache), shared by the runs below."""
    runs_dir = tmp_path_factory.mktemp("probe-runs")
    p = tiny_params(tiny_data, runs_dir, "images", weights=str(encoder_file), **PROBE)
    run_notebooks(p, [runfiles.COHORT_NOTEBOOK])
    return p


def _fit_copy(p, name, capsys=None, **changes):
    """A copy of the cohort run's folder trained with `changes`; (run folder, what it printed)."""
    source = p.run_dir()
    target = source.parent / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    shutil.copy(source / runfiles.COHORT, target / runfiles.COHORT)
    q = dataclasses.replace(p, name=name, **changes)
    train.fit(q, target, progress=False)
    return target, q


def _test_probabilities(run_dir, p):
    predictions = evaluate.predict_run(run_dir, p, splits=("test",), write=False)
    return predictions[runfiles.prob_columns(runfiles.labels_of(predictions))].to_numpy()


def test_a_probe_from_the_cache_predicts_as_frozen_backbone_training_does(cohort_run, capsys, one_thread):
    images_run, _ = _fit_copy(cohort_run, "frozen")
    probe_run, _ = _fit_copy(cohort_run, "probe", train_from="embeddings")
    printed = capsys.readouterr().out
    assert "embeddings: computed" in printed
    a, b = _test_probabilities(images_run, cohort_run), _test_probabilities(probe_run, cohort_run)
    assert a.shape == b.shape and a.shape[0] > 20
    # float16 vectors against float32 features: the same predictions to about 1e-3
    assert np.abs(a - b).max() < 5e-3, np.abs(a - b).max()
    assert not np.allclose(a, a.mean(axis=0), atol=1e-4)   # the head learnt something image-dependent
    ha, hb = (pd.read_csv(r / runfiles.HISTORY) for r in (images_run, probe_run))
    assert np.allclose(ha["train_loss"], hb["train_loss"], atol=2e-3)
    assert list(ha["selected"]) == list(hb["selected"])
    # a second probe (another seed, another fraction) reuses every vector and says so
    again, _ = _fit_copy(cohort_run, "probe-10pct", train_from="embeddings", train_fraction=0.1, seed=1)
    printed = capsys.readouterr().out
    assert "embeddings: reused all" in printed and "nothing computed" in printed
    config = load_trained(again)[2]
    full = load_trained(probe_run)[2]
    assert config["train_patients"] == int(np.ceil(0.1 * full["train_patients"]))


def test_a_killed_embedding_resumes_and_keys_never_mix(cohort_run, capsys):
    cache = open_cache(cohort_run.resolved_cache_dir(), cohort_run.image_size, cohort_run.resize, cohort_run.decode)
    key = embeddings.embedding_key({"arch": "test", "weights": "killed"}, cache, 0.5, 0.25)
    calls = []

    def encode(pixels, fail_after=None):
        calls.append(len(pixels))
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt
        return pixels.float().mean(dim=(2, 3)).repeat(1, 4)

    rows = np.arange(len(cache.images))
    with pytest.raises(KeyboardInterrupt):
        embeddings.embed(cache, rows, key, 4, lambda x: encode(x, fail_after=3), batch_size=16, progress=False,
                         flush_every=1)
    done_before = int(np.load(embeddings.store_folder(cache, key) / "done.npy").sum())
    assert done_before == 3 * 16
    calls.clear()
    vectors = embeddings.embed(cache, rows, key, 4, encode, batch_size=16, progress=False)
    assert sum(calls) == len(rows) - done_before   # only the rows not done
    expected = np.asarray(cache.images, dtype=np.float32).mean(axis=(1, 2))
    assert np.allclose(vectors[:, 0], expected, rtol=1e-3)
    printed = capsys.readouterr().out
    assert f"computed {len(rows) - done_before} of {len(rows)}" in printed
    # a folder holding another key than its name says is refused, not mixed
    other = embeddings.embedding_key({"arch": "test", "weights": "other"}, cache, 0.5, 0.25)
    folder = embeddings.store_folder(cache, key)
    (folder / "key.json").write_text(__import__("json").dumps(other))
    with pytest.raises(UserError, match="refusing to mix"):
        embeddings.embed(cache, rows, key, 4, encode, progress=False)


def test_labelled_shares_are_nested_patient_subsets():
    train = pd.DataFrame({"subject_id": np.repeat(np.arange(500), 2), "dicom_id": np.arange(1000).astype(str)})
    for seed in (0, 1):
        one, ten, all_ = (labelled_share(train, f, seed) for f in (0.01, 0.1, 1.0))
        assert one["subject_id"].nunique() == 5 and ten["subject_id"].nunique() == 50 and len(all_) == 1000
        assert set(one["subject_id"]) <= set(ten["subject_id"])
        assert (one.groupby("subject_id").size() == 2).all()   # whole patients
    assert set(labelled_share(train, 0.1, 0)["subject_id"]) != set(labelled_share(train, 0.1, 1)["subject_id"])


def test_a_data_efficiency_curve_reads_each_runs_figures(cohort_run, tmp_path):
    from cxrlib.experiments import efficiency

    names = []
    for fraction in (0.1, 1.0):
        name = f"curve-{fraction:g}"
        target = cohort_run.run_dir().parent / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        shutil.copy(cohort_run.run_dir() / runfiles.COHORT, target / runfiles.COHORT)
        q = dataclasses.replace(cohort_run, name=name, train_from="embeddings", train_fraction=fraction, bootstrap=50)
        if fraction == 1.0:   # a probe's figures come out of notebook 03, as a trained run's do
            run_notebooks(q, [runfiles.TRAIN_NOTEBOOK, runfiles.EVALUATE_NOTEBOOK])
        else:   # the calls those notebooks make, without a kernel's start (make test's time)
            runfiles.freeze(q, target)
            train.fit(q, target, progress=False)
            evaluate.evaluate_run(target, q, evaluate.predict_run(target, q))
        names.append(name)
    runs_dir = cohort_run.run_dir().parent
    result = efficiency.efficiency(",".join(names), runs_dir)
    table = result["table"].set_index("run")
    for name in names:
        headline = __import__("json").loads((runs_dir / name / runfiles.METRICS).read_text())["headline"]["AUROC macro"]
        assert table.loc[name, "value"] == headline["value"] and table.loc[name, "lo"] == headline["lo"]
    assert table.loc["curve-0.1", "labelled_patients"] < table.loc["curve-1", "labelled_patients"]
    assert (result["folder"] / "efficiency.png").stat().st_size > 10_000
    assert result["folder"].name == "efficiency-" + "+".join(names)


def test_the_embed_command_fills_the_cache_that_a_probe_then_reads(cohort_run, capsys, tmp_path):
    from cxrlib.__main__ import main

    p = dataclasses.replace(cohort_run, seed=7)   # a key of its own: nothing embedded by the other tests
    weights = tmp_path / "resnet18-seed7.pth"
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    p = dataclasses.replace(p, name="embedded", weights=str(weights))
    target = p.run_dir()
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    shutil.copy(cohort_run.run_dir() / runfiles.COHORT, target / runfiles.COHORT)
    runfiles.freeze(dataclasses.replace(p, train_from="embeddings"), target)
    capsys.readouterr()
    assert main(["embed", "--run", str(target)]) == 0
    printed = capsys.readouterr().out
    result = __import__("json").loads(printed.strip().splitlines()[-1])
    cohort = pd.read_csv(target / runfiles.COHORT)
    assert result["images"] == len(cohort) and "computed" in printed
    train.fit(dataclasses.replace(p, train_from="embeddings"), target, progress=False)
    assert "embeddings: reused all" in capsys.readouterr().out
    assert load_trained(target)[2]["embeddings_key"] == result["key"]


def test_the_data_efficiency_grid_expands_to_valid_probes_and_zero_shot_runs(tmp_path):
    from cxrlib.experiments import grid, sweep

    project = Path(__file__).resolve().parents[1]
    spec = grid.read_grid(project / "params" / "grids" / "data-efficiency.yaml")
    spec["base"] = str(project / spec["base"])   # (paths in a grid are the project root's)
    members = sweep.plan(spec, runs_dir=str(tmp_path), write=False)
    kinds = [(m["params"].train_from, m["params"].train_fraction) for m in members]
    assert len(members) == 22 and kinds.count(("zero_shot", 1.0)) == 4
    assert sorted({f for how, f in kinds if how == "embeddings"}) == [0.01, 0.1, 1.0]
    assert all(m["params"].freeze == "backbone" and not m["params"].augment for m in members)
