"""Shared fixtures: a tiny synthetic dataset and a tiny run of all four notebooks (session scope).

The run is the demo preset shrunk until it takes seconds: 32 px images, a ResNet50 trained for two
batches of eight, 50 bootstrap resamples. It is not meant to learn anything; it exercises every
notebook and file of a run folder. 300 synthetic subjects (one study each) with AP and PA views
give about 190 images, so the test split holds enough patients for bootstrap intervals to exist.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
TINY = dict(image_size=32, epochs=1, batch_size=8, eval_batch_size=64, weights="none", arch="resnet50",
            head="avgpool", bootstrap=50, num_workers=0, max_train_batches=2, views=["AP", "PA"],
            topk=1, device="cpu", cache_workers=1)


def tiny_params(data_root, runs_dir, name: str, **overrides):
    from cxrlib import params

    values = params.read_yaml(PROJECT / "params" / "demo.yaml")
    values.update(TINY, data_root=str(data_root), runs_dir=str(runs_dir), name=name)
    values.update(overrides)
    return params.validate(values, "tests/conftest.py")


def run_notebooks(p, notebooks=None):
    """runs.run (which works from the project root), restoring the working directory afterwards."""
    from cxrlib import runs

    cwd = os.getcwd()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return runs.run(p, list(runs.NOTEBOOKS) if notebooks is None else notebooks, progress=False)
    finally:
        os.chdir(cwd)


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and OpenMP threads that spin on a busy
    2-core machine slow a step down many times over."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from cxrlib import synth

    root = tmp_path_factory.mktemp("tiny-data")
    synth.generate(root, subjects=300, seed=0, image_size="small", workers=1, progress=False, max_studies=1)
    return root


@pytest.fixture(scope="session")
def tiny_runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tiny_runs_dir) -> Path:
    """runs/<tiny>/ after notebooks 01-04: cohort, cache, checkpoints, predictions, metrics, reports."""
    return run_notebooks(tiny_params(tiny_data, tiny_runs_dir, "tiny"))


@pytest.fixture(scope="session")
def tiny_redacted_run(tiny_run, tiny_data, tiny_runs_dir) -> Path:
    """The tiny run's trained model and its notebooks 01-02 (images and all), then notebooks 03-05 with
    redact_images: true (and compare_with: tiny): asked for at evaluation, redaction strips 01 and 02 too."""
    target = tiny_runs_dir / "tiny-redacted"
    (target / "checkpoints").mkdir(parents=True)
    for name in ("cohort.csv", "history.csv", "checkpoints/best.pt", "checkpoints/last.pt", "01_cohort.ipynb",
                 "02_train.ipynb"):
        try:
            if name.endswith(".ipynb"):
                raise OSError("copied: redaction rewrites it")
            os.link(tiny_run / name, target / name)   # checkpoints are replaced atomically, never written in place
        except OSError:
            shutil.copy2(tiny_run / name, target / name)
    p = tiny_params(tiny_data, tiny_runs_dir, "tiny-redacted", redact_images=True, resume=True,
                    compare_with="tiny")
    return run_notebooks(p, ["03_evaluate", "04_error_analysis", "05_fairness"])
