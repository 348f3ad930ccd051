"""Shared fixtures: a tiny synthetic dataset and a tiny run of notebooks 01-05 (session scope).

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

from cxrlib import runfiles

PROJECT = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one intra-op thread each (papermill kernels and subprocesses inherit
    # it), or OpenMP threads spinning against the other worker slow both many times over.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# Under pytest -n (make test), the test files that use one expensive shared fixture go to one worker,
# which builds it once. (xdist's own --dist loadgroup marks do not reach pytest 9's node ids.)
SHARED_FIXTURES = {"tiny_sweep": "tiny-sweep", "audited": "planted", "tiny_run": "tiny-run",
                   "tiny_redacted_run": "tiny-run"}


def file_groups() -> dict[str, str]:
    groups = {}
    for path in sorted((PROJECT / "tests").glob("test_*.py")):
        text = path.read_text()
        found = next((group for name, group in SHARED_FIXTURES.items() if name in text), None)
        if found:
            groups[path.relative_to(PROJECT).as_posix()] = found
    return groups


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    groups = file_groups()

    class SharedFixtureScheduling(LoadScopeScheduling):
        """A file that uses a shared fixture is one unit with the other files using it; every other test
        is a unit of its own. Units go out largest first, then in collection order (the slow tests first)."""

        def _split_scope(self, nodeid: str) -> str:
            return groups.get(nodeid.split("::", 1)[0], nodeid)

    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The slow tests first, so that the last test to finish on one worker is not a long one started
    while the other sat idle. A probe case carries its issue and kind to the report (under xdist the
    controller sees reports, not markers)."""
    items.sort(key=lambda item: not item.get_closest_marker("slow"))
    for item in items:
        if mark := item.get_closest_marker("probe"):
            issue, kind = mark.kwargs.get("issue"), mark.kwargs.get("kind")
            if issue not in PROBE_ISSUES or kind not in PROBE_KINDS:
                raise pytest.UsageError(f"{item.nodeid}: probe(issue=, kind=) takes an issue of {sorted(PROBE_ISSUES)} "
                                        f"and a kind of {sorted(PROBE_KINDS)}, not {mark.kwargs}")
            item.user_properties.append(("probe", (issue, kind)))


# The careless-user probes: the bad inputs and faults issues 15, 22 and 32 found, each a test marked
# @pytest.mark.probe(issue=N, kind=K), the kind being what the case once gave. `make probe` runs them
# all and counts, per kind, the cases that still give it.
PROBE_ISSUES = {15: "part one", 22: "part two", 32: "part three"}
PROBE_KINDS = {"silent": "silent wrong results", "traceback": "tracebacks", "loss": "data lost",
               "writers": "two writers", "late": "refused only after work"}


def pytest_terminal_summary(terminalreporter):
    outcome: dict[str, tuple] = {}   # nodeid -> (issue, kind, worst outcome of its phases)
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    for reports in terminalreporter.stats.values():
        for report in reports:
            found = dict(getattr(report, "user_properties", ()) or ()).get("probe")
            if not found or not hasattr(report, "outcome"):
                continue
            issue, kind = found
            before = outcome.get(report.nodeid, (issue, kind, "passed"))[2]
            outcome[report.nodeid] = (issue, kind, max(before, report.outcome, key=rank.get))
    if not outcome:
        return
    cases = list(outcome.values())
    per_issue = ", ".join(f"{PROBE_ISSUES[i]} (issue {i}) {sum(c[0] == i for c in cases)}" for i in sorted(PROBE_ISSUES))
    failing = "; ".join(f"{text} {sum(c[1] == k and c[2] == 'failed' for c in cases)} of {sum(c[1] == k for c in cases)}"
                        for k, text in PROBE_KINDS.items())
    skipped = sum(c[2] == "skipped" for c in cases)
    terminalreporter.write_line(f"probe: {len(cases)} cases: {per_issue}. Still giving what they once gave: {failing}"
                                + (f"; {skipped} skipped (see above why)" if skipped else ""))
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
    from cxrlib.experiments import runs

    cwd = os.getcwd()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return runs.run(p, list(runfiles.NOTEBOOKS) if notebooks is None else notebooks, progress=False)
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
    from cxrlib.synthetic import mimic_cxr

    root = tmp_path_factory.mktemp("tiny-data")
    mimic_cxr.generate(root, subjects=300, seed=0, image_size="small", workers=1, progress=False, max_studies=1)
    return root


@pytest.fixture(scope="session")
def tiny_runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tiny_runs_dir) -> Path:
    """runs/<tiny>/ after notebooks 01-05: cohort, cache, checkpoints, predictions, metrics, audit, reports."""
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
