"""The run folder's contract: every file name of runs/<name>/, the prediction columns, and the readers.

    runs/<name>/
      params.yaml, cohort.csv, cohort_report.json     the frozen parameters; the cohort and its funnel
      checkpoints/last.pt, best.pt, history.csv       training (resume; evaluation; one row per epoch)
      predictions.csv, metrics.json                   notebook 03
      demographics.csv, fairness.csv, fairness.json   notebook 05
      export/model.<onnx|pt> (+ .json), MODEL_CARD.md/.html, ensemble.json (an ensemble), tracking.json
      index.html                                      the way in: headline, verdicts, links to everything above

Torch-free and light: the run lister (`make runs`) reads run folders through it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from .errors import UserError
from .fsutil import atomic_write_text, sha256_file
from .params import DEMO_PRESET, NOTEBOOK_KNOBS, STAGE_OF, STAGES, ParamError, Params, read_yaml, validate

PARAMS = "params.yaml"
COHORT = "cohort.csv"
COHORT_REPORT = "cohort_report.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
HISTORY = "history.csv"
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
DEMOGRAPHICS = "demographics.csv"
FAIRNESS_CSV = "fairness.csv"
FAIRNESS_JSON = "fairness.json"
EXPORT = "export"
CARD_MD = "MODEL_CARD.md"
CARD_HTML = "MODEL_CARD.html"
ENSEMBLE = "ensemble.json"
TRACKING = "tracking.json"
INDEX = "index.html"
SUBMISSION = "submission.csv"  # make submission: the CXR-LT challenge's format
EXTERNAL = "external"          # external/<source>/: one external validation each (notebook 07)
COMPARISON = "comparison.json"  # make compare's group-level figures, in the sweep's or compare-a+b's folder
EXTERNAL_NOTEBOOK = "07_external"
EXTERNAL_PREDICTIONS = "predictions.csv"
EXTERNAL_METRICS = "metrics.json"
EXTERNAL_SETTINGS = "settings.json"
EXTERNAL_STAGING = ".external-staging"   # <source>/: notebook 07 runs here; its folder replaces external/<source>/
                                         # only when complete, and a failed attempt stays here to be read

COHORT_NOTEBOOK, TRAIN_NOTEBOOK, EVALUATE_NOTEBOOK = "01_cohort", "02_train", "03_evaluate"
ERRORS_NOTEBOOK, AUDIT_NOTEBOOK = "04_error_analysis", "05_fairness"
NOTEBOOKS = [COHORT_NOTEBOOK, TRAIN_NOTEBOOK, EVALUATE_NOTEBOOK, ERRORS_NOTEBOOK, AUDIT_NOTEBOOK]   # a run's, in order
SCORING_NOTEBOOKS = NOTEBOOKS[2:]   # those that work from predictions alone: an ensemble pseudo-run runs these
COMPARE_NOTEBOOK = "06_compare"     # make compare's, in the sweep's folder (or compare-a+b/)
RUNNING = ".running.ipynb"       # papermill's notebook while it runs: <name>.running.ipynb, renamed when done


def notebook_path(run_dir, notebook: str) -> Path:
    """<run>/<NN_name>.ipynb: the executed notebook."""
    return Path(run_dir) / f"{notebook}.ipynb"


def running_path(run_dir, notebook: str) -> Path:
    """<run>/<NN_name>.running.ipynb: the notebook as far as it ran, saved while it runs."""
    return Path(run_dir) / f"{notebook}{RUNNING}"


def executed_notebooks(run_dir) -> list[Path]:
    """Every executed NN_name.ipynb of a run folder (or of one external source's folder), in order; not those
    still running."""
    return [p for p in sorted(Path(run_dir).glob("[0-9][0-9]_*.ipynb")) if not p.name.endswith(RUNNING)]


def unfinished_notebooks(run_dir) -> list[Path]:
    """The NN_name.running.ipynb a run folder holds: notebooks running now, or killed."""
    return sorted(Path(run_dir).glob(f"*{RUNNING}"))


def reports(run_dir) -> list[Path]:
    """Every rendered NN_name.html of a run folder, in order."""
    return sorted(Path(run_dir).glob("[0-9][0-9]_*.html"))


def external_reports(run_dir) -> list[Path]:
    """Notebook 07's report of each external source: external/<source>/07_external.html."""
    return sorted(Path(run_dir).glob(f"{EXTERNAL}/*/[0-9][0-9]_*.html"))


def temp_files(run_dir) -> list[Path]:
    """What a killed command leaves of its atomic writes of notebooks and reports (.<name>.<random><suffix>)
    and of its progress side files."""
    run_dir = Path(run_dir)
    return sorted([*run_dir.glob(".[0-9][0-9]_*.ipynb.*"), *run_dir.glob(".[0-9][0-9]_*.html.*"),
                   *run_dir.glob(".[0-9][0-9]_*.progress")])


def index_pages(runs_dir) -> list[Path]:
    """Every run's (and sweep's) index.html under a runs directory, sorted."""
    return sorted(Path(runs_dir).glob(f"**/{INDEX}"))


def run_folders(runs_dir, members: bool = True) -> list[Path]:
    """The run folders under runs_dir (those holding params.yaml), then, with `members`, the sweeps' members
    (runs/<sweep>/<member>/)."""
    top = sorted(f.parent for f in Path(runs_dir).glob(f"*/{PARAMS}"))
    return top + (sorted(f.parent for f in Path(runs_dir).glob(f"*/*/{PARAMS}")) if members else [])
ID_COLUMNS = ["dicom_id", "subject_id", "study_id", "split"]
PROB_PREFIX = "p_"


def prob_column(finding: str) -> str:
    return f"{PROB_PREFIX}{finding}"


def prob_columns(labels) -> list[str]:
    return [prob_column(f) for f in labels]


def labels_of(predictions: pd.DataFrame) -> list[str]:
    """A predictions table's labels, in the model's output order: its probability columns' names."""
    return [c[len(PROB_PREFIX):] for c in predictions.columns if c.startswith(PROB_PREFIX)]


def check_same_labels(ours: pd.DataFrame, theirs: pd.DataFrame, this: str, other: str, what: str) -> list[str]:
    """The labels two runs' predictions share, in order; refused, naming the difference, when they are not the same
    labels in the same order (another label set): `what` says what needs them equal (a comparison, an ensemble)."""
    a, b = labels_of(ours), labels_of(theirs)
    if a != b:
        only_a, only_b = [f for f in a if f not in b], [f for f in b if f not in a]
        difference = (f"{this} alone predicts {only_a[:4]}" if only_a else "") + ("; " if only_a and only_b else "") \
            + (f"{other} alone predicts {only_b[:4]}" if only_b else "") or "the same labels in another order"
        raise UserError(f"{this} predicts {len(a)} labels and {other} {len(b)}: {difference}. {what} needs runs of one "
                        "label set (label_set in their params.yaml)")
    return a


def checkpoint_path(run_dir, which: str = "best") -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{which}.pt"


def is_ensemble(run_dir) -> bool:
    """An ensemble's folder: its predictions are its members' mean, and it has no checkpoint of its own."""
    return (Path(run_dir) / ENSEMBLE).is_file()


def member_dirs(run_dir) -> list[Path]:
    """An ensemble's member folders, siblings of its own (names in ensemble.json)."""
    run_dir = Path(run_dir)
    return [run_dir.parent / name for name in json.loads((run_dir / ENSEMBLE).read_text())["members"]]


def external_dir(run_dir, source: str) -> Path:
    return Path(run_dir) / EXTERNAL / source


def run_arg(run_dir) -> str:
    """What `make ... RUN=` names this run: its folder below runs/ (a sweep's member or ensemble: <sweep>/<name>),
    else the folder's own name."""
    parts = Path(run_dir).resolve().parts
    if "runs" not in parts:
        return Path(run_dir).name
    return "/".join(parts[len(parts) - parts[::-1].index("runs"):])


def external_staging_dir(run_dir, source: str) -> Path:
    return Path(run_dir) / EXTERNAL_STAGING / source


def checkpoint_stamp(run_dir) -> dict | None:
    """best.pt's size, modification time and SHA-256: which checkpoint a record was made from."""
    path = checkpoint_path(run_dir)
    try:
        st = path.stat()
    except OSError:
        return None
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _checkpoint_hash(path, st)}


_HASHES: dict = {}   # (path, size, mtime): sha256, so that listing many runs hashes each best.pt once


def _checkpoint_hash(path: Path, st) -> str:
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def made_from_todays_checkpoint(recorded: dict | None, run_dir) -> bool:
    """Whether a record's checkpoint stamp is today's best.pt: by size and time when they match (no reading),
    else by content, so that a copied run folder (cp -r gives new times) is not called stale."""
    path = checkpoint_path(run_dir)
    try:
        st = path.stat()
    except OSError:
        return False
    if not recorded:
        return False
    if recorded.get("bytes") == st.st_size and recorded.get("mtime_ns") == st.st_mtime_ns:
        return True
    return recorded.get("bytes") == st.st_size and recorded.get("sha256") == _checkpoint_hash(path, st)


def external_results(run_dir) -> dict[str, dict]:
    """{source: its external metrics.json, with `stale`: made from another best.pt than today's} of every
    finished external validation of the run."""
    folder = Path(run_dir) / EXTERNAL
    found = sorted(folder.glob(f"*/{EXTERNAL_METRICS}")) if folder.is_dir() else []
    return {path.parent.name: {**(r := read_json(path)), "stale": not made_from_todays_checkpoint(r.get("checkpoint"),
                                                                                                 run_dir)}
            for path in found}




def data_name(params: dict) -> tuple[str, bool]:
    """(what the data are called, whether they are cxrlib's synthetic stand-in), from the data root's LICENSE:
    the card's and the index page's banner both come from here."""
    license = Path(params["data_root"]) / "LICENSE.txt"
    if license.is_file() and license.read_text().startswith("SYNTHETIC DATA"):
        return "cxrlib's synthetic stand-in for MIMIC-CXR-JPG (`python -m cxrlib demo-data`; no patient data)", True
    return f"MIMIC-CXR-JPG (data folder `{Path(params['data_root']).name}`)", False










def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def export_states(run_dir: Path) -> list[dict]:
    """Each export record under export/ and what it describes now: `current` (its file, made from today's
    best.pt), `stale` (made from another best.pt) or `gone` (its file is missing or was replaced)."""
    records = [(r, read_json(r)) for r in sorted((Path(run_dir) / EXPORT).glob("*.json"))]
    records = [(r, export) for r, export in records if export and "parity" in export]
    if not records:   # no export: best.pt (hundreds of MB) is not hashed; the index is written after every notebook
        return []
    best = checkpoint_path(run_dir)
    current = sha256_file(best) if best.is_file() else None
    states = []
    for record, export in records:
        model = record.with_name(export["file"])
        state = ("gone" if not model.is_file() or sha256_file(model) != export.get("sha256") else
                 "stale" if export.get("metadata", {}).get("checkpoint_sha256") != current else "current")
        states.append({"record": record.name, "file": export["file"], "format": export["format"], "state": state,
                       "sha256": export.get("sha256", ""), "parity": export["parity"],
                       "image_size": export.get("metadata", {}).get("input", {}).get("image_size")})
    return states


def read_history(run_dir) -> pd.DataFrame:
    path = Path(run_dir) / HISTORY
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def read_predictions(run_dir) -> pd.DataFrame:
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise UserError(f"{path}: no predictions; run notebook 03 for this run first "
                        f"(make evaluate RUN={Path(run_dir).name})")
    # float32 as written: %.9g round-trips, so tied scores stay tied and rereading changes nothing.
    labels = labels_of(pd.read_csv(path, nrows=0))
    columns = ID_COLUMNS + prob_columns(labels) + labels
    frame = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS} | {c: "float32" for c in columns[len(ID_COLUMNS):]})
    missing = [c for c in columns if c not in frame] or ([] if labels else ["p_<label>"])
    if missing:
        raise UserError(f"{path}: missing column(s) {missing[:5]}; rerun notebook 03 to rewrite it")
    return frame


def read_metrics(run_dir) -> dict:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise UserError(f"{path}: no metrics; run notebook 03 for this run first (make evaluate RUN={Path(run_dir).name})")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- params.yaml: frozen once, checked before every write
# What shows that a stage has run in a run folder; the model consumed the cache's pixels, so the cache
# fields are fixed once there is a checkpoint.
STAGE_OUTPUTS = {"cohort": COHORT, "cache": f"{CHECKPOINTS}/{LAST}", "train": f"{CHECKPOINTS}/{LAST}"}


def freeze(p: Params, run_dir) -> Path:
    """Write the resolved parameters to <run_dir>/params.yaml (atomically)."""
    path = Path(run_dir) / PARAMS
    atomic_write_text(path, "# Frozen, resolved parameters of this run (written by cxrlib).\n"
                      + yaml.safe_dump(p.to_dict(), sort_keys=False))
    return path


def load_frozen(run_dir) -> Params:
    path = Path(run_dir) / PARAMS
    if not path.is_file():
        raise ParamError(f"{path}: no frozen parameters; is {run_dir} a run folder? "
                         "Start a run with `make demo` or `python -m cxrlib run --params params/NAME.yaml`.")
    return validate(with_split_seed(read_yaml(path)), str(path))


def run_folder(value, runs_dir: str = "runs") -> tuple[Path, Params]:
    """A run named on the command line (--run): a folder holding params.yaml, or a name under runs_dir."""
    path = Path(value)
    if not (path / "params.yaml").is_file():
        path = Path(runs_dir) / str(value)
    if not (path / "params.yaml").is_file():
        existing = sorted(f.parent.name for f in Path(runs_dir).glob("*/params.yaml"))
        raise ParamError(f"--run {value}: not a run folder (no params.yaml there or in {runs_dir}/{value}); "
                         f"runs: {', '.join(existing) or 'none yet (make demo makes runs/demo)'}")
    return path, load_frozen(path)


def fixed_stages(run_dir) -> list[str]:
    """The stages whose output the run folder already holds: their fields may no longer change."""
    return [stage for stage, output in STAGE_OUTPUTS.items() if (Path(run_dir) / output).is_file()]


def check_change(old: dict, new: Params, run_dir, stages=None,
                 instead: str = "Start a new run for them (RUN=<new name>, or --name)") -> None:
    """The one rule for changing a run: refuse any change to a field of a stage that has produced its output.

    old: the parameters the run folder (or a checkpoint) holds; stages: the fixed ones (default: from
    the folder). The message lists every refused difference and how to start a new run instead.
    """
    stages = fixed_stages(run_dir) if stages is None else stages
    current = new.to_dict()
    refused = [k for k in current if STAGE_OF[k] in stages and k in old and old[k] != current[k]]
    if not refused:
        return
    name = Path(run_dir).name
    detail = "; ".join(f"{k} ({STAGE_OF[k]}): {old[k]!r} -> {current[k]!r}" for k in refused)
    outputs = sorted({STAGE_OUTPUTS[STAGE_OF[k]] for k in refused})
    raise ParamError(
        f"run {name!r} already holds {', '.join(outputs)}, made with other parameters: {detail}. Nothing was "
        f"changed. {instead}, or delete {run_dir} to redo this one; "
        "fields that may change on an existing run: " + ", ".join(STAGES["runtime"] + STAGES["evaluate"]))


def with_split_seed(values: dict) -> dict:
    """A params.yaml from before split_seed carved its validation split with `seed`: say so explicitly
    (only where a carve happened: split_mode seed with val_fraction > 0; elsewhere split_seed plays no part)."""
    if values and "split_seed" not in values:
        carved = values.get("split_mode", "seed") == "seed" and float(values.get("val_fraction") or 0) > 0
        return {**values, "split_seed": values.get("seed", 0) if carved else 0}
    return values


def frozen_if_any(run_dir) -> dict:
    path = Path(run_dir) / PARAMS
    return with_split_seed(read_yaml(path)) if path.is_file() else {}


def for_notebook(run_dir, namespace: dict, knobs=None) -> Params:
    """A notebook's Params: the run's frozen params.yaml, with the notebook's own knobs from its namespace.

    A notebook's parameters cell declares run_dir and a few knobs of its own stage (NOTEBOOK_KNOBS).
    Under the runner they equal params.yaml (it injects them from the same values). Run by hand, a
    changed knob is checked by check_change like a command-line override, and params.yaml is written
    only when something changed and the change is allowed. Without params.yaml (a first interactive
    run) the demo preset is the base, as the notebooks' defaults are. knobs: the run parameters this notebook
    may set (default: every notebook's); notebook 07 sets none, so that its data_root (the external source's
    folder, named as make external's flag) is never read as the run's own.
    """
    run_dir = Path(run_dir)
    frozen = frozen_if_any(run_dir)
    base = dict(frozen) if frozen else read_yaml(DEMO_PRESET)   # notebook.setup works from the project root
    if not frozen:
        base.update(name=run_dir.name, runs_dir=str(run_dir.parent))
    if knobs is None:   # never a stray global that shares a name
        knobs = {k for names in NOTEBOOK_KNOBS.values() for k in names}
    values = {**base, **{k: namespace[k] for k in knobs if k in namespace}}
    p = validate(values, f"{run_dir}/params.yaml and the notebook's parameters")
    if p.run_dir().resolve() != run_dir.resolve():
        raise ParamError(f"run_dir {run_dir} does not match the frozen name/runs_dir ({p.run_dir()}); "
                         "set run_dir to the run folder itself")
    if frozen:
        check_change(frozen, p, run_dir, instead="To try them, set run_dir to a new folder (e.g. runs/<new name>) "
                     "in the parameters cell, or start a new run from the command line (RUN=<new name>)")
    freeze_if_changed(p, run_dir, frozen)
    return p


def freeze_if_changed(p: Params, run_dir, frozen: dict | None = None) -> None:
    """Write params.yaml only when the resolved parameters differ from what it holds (or it is missing)."""
    frozen = frozen_if_any(run_dir) if frozen is None else frozen
    if not frozen or validate(frozen, "params.yaml").to_dict() != p.to_dict():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        freeze(p, run_dir)
