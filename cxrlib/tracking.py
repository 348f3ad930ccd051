"""Experiment tracking in local stores: tracker: none | tensorboard | mlflow (default none).

- tensorboard: event files in runs/<name>/tb/ (`make tensorboard` serves runs/ on 127.0.0.1).
- mlflow: a file store in <runs_dir>/mlruns/ (a sweep's members use the one beside the sweep),
  experiment "cxrlib", one MLflow run per run folder (its id kept in runs/<name>/tracking.json, so a
  resumed run goes on logging into the same one); `make mlflow-ui` serves it on 127.0.0.1.
What is logged: the frozen parameters; per training step the loss and learning rate; per epoch the
validation figures; at the end, the test headline figures and, as MLflow artifacts, metrics.json,
params.yaml and the HTML reports. Nothing leaves the machine unless tracking_uri names a remote server:
then a warning about PhysioNet's data use agreement comes first, and the HTML reports (which embed
patient images on real data) are uploaded only when redact_images is true. MLflow 3 keeps its file
store in "maintenance mode" behind MLFLOW_ALLOW_FILE_STORE, which cxrlib sets for its own store; a
database store (tracking_uri: sqlite:///runs/mlflow.db, with sqlalchemy installed) works too.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .errors import UserError
from .fsutil import atomic_write_json
from .runfiles import METRICS, PARAMS, TRACKING, reports

EXPERIMENT = "cxrlib"
DUA_WARNING = ("WARNING: tracking_uri {uri} is not on this machine. Parameters, figures and reports logged there "
               "leave it. PhysioNet's data use agreement forbids sharing MIMIC-CXR data or sending it to third "
               "parties: log there only what the agreement allows. HTML reports (patient images on real data) "
               "are uploaded only with redact_images: true.")


def mlflow_store(p) -> Path:
    """<runs_dir>/mlruns, shared by the runs of a folder and by the members of its sweeps."""
    runs_dir = Path(p.runs_dir).resolve()
    return (runs_dir.parent if (runs_dir / "sweep.yaml").is_file() else runs_dir) / "mlruns"


def is_remote(uri: str) -> bool:
    return bool(uri) and not uri.startswith("file:") and "://" in uri


def flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def validation_figures(values: dict) -> dict:
    """history.csv's numeric val_* columns of one epoch, without the prefix."""
    return {k[4:]: v for k, v in values.items() if k.startswith("val_") and isinstance(v, (int, float))}


def test_figures(run_dir: Path) -> dict:
    """metrics.json's test headline as {auroc_macro: value, ...} (undefined figures left out)."""
    report = json.loads((run_dir / METRICS).read_text())
    return {key.lower().replace(" ", "_"): f["value"] for key, f in report["headline"].items() if f["value"] is not None}


class Tracker:
    """No tracking: every call does nothing (tracker: none, and every rank but 0)."""

    def step(self, step: int, loss: float, lr: float) -> None: ...

    def epoch(self, epoch: int, values: dict) -> None: ...

    def final(self, run_dir: Path, p) -> None: ...

    def close(self) -> None: ...


class TensorBoard(Tracker):
    def __init__(self, p, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("tracker: tensorboard needs the tensorboard package: .venv/bin/pip install tensorboard "
                            "(a dependency of cxrlib: make setup installs it), or set tracker: none") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))
        self.writer.add_text("params", "\n".join(f"    {k}: {v}" for k, v in p.to_dict().items()))

    def step(self, step, loss, lr):
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, epoch, values):
        for key, value in validation_figures(values).items():
            self.writer.add_scalar(f"validate/{key}", value, epoch)
        self.writer.flush()

    def final(self, run_dir, p):
        for key, value in test_figures(run_dir).items():
            self.writer.add_scalar(f"test/{key}", value, 0)
        shown = [path.name for path in reports(run_dir)]
        self.writer.add_text("reports", "\n".join(f"    {run_dir / name}" for name in shown))
        self.writer.flush()

    def close(self):
        self.writer.close()


class MLflow(Tracker):
    def __init__(self, p, run_dir: Path):
        try:
            import mlflow
        except ImportError:
            raise UserError("tracker: mlflow needs mlflow: .venv/bin/pip install mlflow-skinny (it is in cxrlib's "
                            "dev extras), or set tracker: none") from None
        self.mlflow, self.run_dir = mlflow, run_dir
        self.uri = p.tracking_uri or mlflow_store(p).as_uri()
        if is_remote(self.uri):
            print(DUA_WARNING.format(uri=self.uri), file=sys.stderr, flush=True)
        if self.uri.startswith("file:"):   # MLflow 3 keeps its file store in "maintenance mode", behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.tracking.MlflowClient(tracking_uri=self.uri)
        state_path = run_dir / TRACKING
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if state.get("mlflow_run_id") and state.get("tracking_uri") == self.uri:
            self.run_id = state["mlflow_run_id"]
        else:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
            self.run_id = self.client.create_run(experiment_id, run_name=p.name,
                                                 tags={"run_dir": str(run_dir)}).info.run_id
            atomic_write_json(state_path, {"tracking_uri": self.uri, "mlflow_run_id": self.run_id})
            for key, value in flat(p.to_dict()).items():
                self.client.log_param(self.run_id, key, str(value)[:500])
        self.remote = is_remote(self.uri)
        self.redact = p.redact_images

    def step(self, step, loss, lr):
        self.client.log_metric(self.run_id, "train_loss", loss, step=step)
        self.client.log_metric(self.run_id, "lr", lr, step=step)

    def epoch(self, epoch, values):
        for key, value in validation_figures(values).items():
            self.client.log_metric(self.run_id, f"val_{key}", value, step=epoch)

    def final(self, run_dir, p):
        for key, value in test_figures(run_dir).items():
            self.client.log_metric(self.run_id, f"test_{key}", value)
        files = [run_dir / METRICS, run_dir / PARAMS]
        if not self.remote or self.redact:
            files += reports(run_dir)
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id)   # a later evaluation logs into the same run again


class Guarded(Tracker):
    """A tracker whose failures never stop the work: a store that is read-only, full or gone is reported once,
    in one line naming it, and tracking stops for the rest of the command while training goes on."""

    def __init__(self, make, where: str):
        self.where, self.inner = where, Tracker()
        try:
            self.inner = make()
        except UserError:   # a missing package: the user's setting, said before any work
            raise
        except Exception as error:   # any store failure: tracking is a side effect, never the work
            self._off(error)

    def _off(self, error: Exception) -> None:
        # one line, as cxrlib's other warnings (a Python warning would print this file's path before it)
        print(f"warning: tracking stopped: {self.where} could not be written ({type(error).__name__}: {error}); "
              "the run goes on without it. Check the folder's space and permissions, or set tracker: none",
              file=sys.stderr, flush=True)
        self.inner = Tracker()

    def _call(self, name: str, *args) -> None:
        try:
            getattr(self.inner, name)(*args)
        except Exception as error:   # the same, during the work
            self._off(error)

    def step(self, step, loss, lr):
        self._call("step", step, loss, lr)

    def epoch(self, epoch, values):
        self._call("epoch", epoch, values)

    def final(self, run_dir, p):
        self._call("final", run_dir, p)

    def close(self):
        self._call("close")


def _writable(folder: Path) -> Path:
    """The folder, created, after one probe write (SummaryWriter would fail later, in a background thread)."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".cxrlib-write-test"
    probe.write_bytes(b"")
    probe.unlink()
    return folder


def open_tracker(p, run_dir) -> Tracker:
    kind, run_dir = getattr(p, "tracker", "none"), Path(run_dir)
    if kind == "tensorboard":
        return Guarded(lambda: (_writable(run_dir / "tb"), TensorBoard(p, run_dir))[1], f"TensorBoard's {run_dir / 'tb'}")
    if kind == "mlflow":
        return Guarded(lambda: MLflow(p, run_dir), f"MLflow's store {p.tracking_uri or mlflow_store(p)}")
    return Tracker()


def finish(p, run_dir) -> None:
    """After the notebooks: the test figures and reports, when metrics.json exists."""
    run_dir = Path(run_dir)
    if getattr(p, "tracker", "none") == "none" or not (run_dir / METRICS).is_file():
        return
    tracker = open_tracker(p, run_dir)
    try:
        tracker.final(run_dir, p)
    finally:
        tracker.close()
