"""Label sets as data: which findings a run predicts, in which order, read from which tables.

A label set is a YAML file (the shipped ones in cxrlib/label_sets/, or a user's own path):

    name, description
    key            dicom_id (one row per image) or study_id (one row per study; an "s" prefix is stripped)
    encoding       binary (0/1) or chexpert (1, 0, -1 uncertain, blank: the run's policies decide)
    root           where its tables live: relative to the MIMIC-CXR-JPG root, or absolute (default: that root)
    tables         {name: file}: the splits' tables (train, development, test) for `splits: label_set`, or the
                   labeler tables (negbio, chexpert) for `splits: release`
    gold, gold_labels   evaluation-only tables and their labels, scored apart and never used to choose
    splits         release (mimic-cxr-2.0.0-split.csv.gz, or the seed rule) or label_set (the tables' own)
    nothing_found  the label that means "nothing found" (the underdiagnosis audit's): No Finding, Normal
    labels         the model's outputs, in order
    buckets        head / medium / tail: {rule: share, head: 0.10, tail: 0.01} on the training images'
                   prevalence, or {rule: lists, head: [...], tail: [...]} (medium: the rest)

Every table column is matched by name, never by position. Each mistake is refused with one line naming the file
and the fix, before any work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .errors import UserError

SHIPPED = Path(__file__).resolve().parent / "label_sets"
DEFAULT = "chexpert14"
KEYS = ("name", "description", "key", "encoding", "root", "tables", "gold", "gold_labels", "splits",
        "nothing_found", "labels", "buckets")
REQUIRED = ("name", "key", "encoding", "tables", "splits", "nothing_found", "labels")
ENCODED = {"binary": (0.0, 1.0), "chexpert": (1.0, 0.0, -1.0)}   # blank allowed with chexpert only
SPLIT_TABLES = ("train", "development", "test")
PATIENT = "subject_id"


class LabelSetError(UserError):
    """A label set's file or tables are not what it says; the message names the file and the fix."""


@dataclass(frozen=True)
class LabelSet:
    name: str
    path: Path
    key: str
    encoding: str
    tables: dict
    splits: str
    nothing_found: str
    labels: tuple
    buckets: dict
    root: str = ""
    gold: dict = field(default_factory=dict)
    gold_labels: tuple = ()
    description: str = ""

    def folder(self, mimic_root) -> Path:
        """Where the set's tables live: `root` under the MIMIC-CXR-JPG root (or absolute), else that root."""
        root = Path(self.root) if self.root else Path()
        return root if root.is_absolute() else Path(mimic_root) / root

    def record(self) -> dict:
        """What a run's params, checkpoint and metrics carry: the set's name, file and labels in order."""
        return {"name": self.name, "file": str(self.path), "labels": list(self.labels),
                "nothing_found": self.nothing_found, "key": self.key, "splits": self.splits}


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def path_of(name_or_path: str) -> Path:
    """A shipped set's file by name, or the user's own YAML file."""
    text = str(name_or_path or DEFAULT)
    if text in shipped():
        return SHIPPED / f"{text}.yaml"
    path = Path(text)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise LabelSetError(f"label_set {text!r}: neither a shipped label set ({', '.join(shipped())}) nor a YAML file "
                        "that exists; give one of those names or the path of your own set")


def load(name_or_path: str = DEFAULT) -> LabelSet:
    """The label set, checked: every mistake in its file is one line naming it and the fix."""
    path = path_of(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LabelSetError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise LabelSetError(f"{path}: expected a mapping with {', '.join(REQUIRED)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise LabelSetError(f"{path}: unknown key(s) {unknown}; a label set has {', '.join(KEYS)}")
    missing = [k for k in REQUIRED if not data.get(k)]
    if missing:
        raise LabelSetError(f"{path}: missing {missing}; see cxrlib/labelset.py for what each means")

    def fail(key, want):
        raise LabelSetError(f"{path}: {key}: {data.get(key)!r} should be {want}")

    if data["key"] not in ("dicom_id", "study_id"):
        fail("key", "dicom_id (a row per image) or study_id (a row per study)")
    if data["encoding"] not in ENCODED:
        fail("encoding", "binary (0/1) or chexpert (1/0/-1/blank)")
    if data["splits"] not in ("release", "label_set"):
        fail("splits", "release (MIMIC-CXR-JPG's split file) or label_set (its tables' own train/development/test)")
    labels = _names(path, "labels", data["labels"])
    if data["nothing_found"] not in labels:
        fail("nothing_found", f"one of its labels ({', '.join(labels[:5])}, ...)")
    tables = data["tables"]
    if not isinstance(tables, dict) or not all(isinstance(v, str) and v for v in tables.values()):
        fail("tables", "a mapping of name: file")
    if data["splits"] == "label_set" and sorted(tables) != sorted(SPLIT_TABLES):
        fail("tables", f"exactly {', '.join(SPLIT_TABLES)} with splits: label_set (the organisers' split)")
    gold = data.get("gold") or {}
    gold_labels = _names(path, "gold_labels", data["gold_labels"]) if data.get("gold_labels") else []
    if gold and not gold_labels:
        fail("gold_labels", "the gold tables' labels, in their order")
    outside = [g for g in gold_labels if g not in labels]
    if outside:
        fail("gold_labels", f"labels of the set; {outside} are not")
    return LabelSet(name=str(data["name"]), path=path, key=data["key"], encoding=data["encoding"],
                    tables=dict(tables), splits=data["splits"], nothing_found=data["nothing_found"],
                    labels=tuple(labels), buckets=_buckets(path, data.get("buckets"), labels),
                    root=str(data.get("root") or ""), gold=dict(gold), gold_labels=tuple(gold_labels),
                    description=str(data.get("description") or ""))


def _names(path: Path, key: str, values) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise LabelSetError(f"{path}: {key} should be a list of label names")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise LabelSetError(f"{path}: {key} lists {twice} twice; each label once, in output order")
    return list(values)


def _buckets(path: Path, spec, labels: list[str]) -> dict:
    spec = spec or {"rule": "share", "head": 0.10, "tail": 0.01}
    rule = spec.get("rule") if isinstance(spec, dict) else None
    if rule == "share" and isinstance(spec.get("head"), (int, float)) and isinstance(spec.get("tail"), (int, float)) \
            and 0 < spec["tail"] < spec["head"] < 1:
        return {"rule": "share", "head": float(spec["head"]), "tail": float(spec["tail"])}
    if rule == "lists" and all(isinstance(spec.get(k), list) for k in ("head", "tail")):
        named = spec["head"] + spec["tail"]
        strange = [n for n in named if n not in labels]
        both = sorted(set(spec["head"]) & set(spec["tail"]))
        if strange or both:
            raise LabelSetError(f"{path}: buckets: {strange or both} " + ("are not labels of the set" if strange
                                                                          else "are in head and tail"))
        return {"rule": "lists", "head": list(spec["head"]), "tail": list(spec["tail"])}
    raise LabelSetError(f"{path}: buckets should be {{rule: share, head: 0.10, tail: 0.01}} (0 < tail < head < 1) "
                        "or {rule: lists, head: [...], tail: [...]}")


def bucket_of(label_set: LabelSet, train_prevalence: dict) -> dict[str, str]:
    """{label: head | medium | tail} by the set's rule; `share` reads each label's share of training images."""
    rule = label_set.buckets
    if rule["rule"] == "lists":
        return {f: "head" if f in rule["head"] else "tail" if f in rule["tail"] else "medium" for f in label_set.labels}
    return {f: "head" if train_prevalence.get(f, 0) > rule["head"] else
            "tail" if train_prevalence.get(f, 0) < rule["tail"] else "medium" for f in label_set.labels}


# --------------------------------------------------------------------------- the tables
def read_table(label_set: LabelSet, mimic_root, table: str, labels=None) -> pd.DataFrame:
    """One of the set's tables: its key (an "s" stripped from a study_id), subject_id when it has one, and the
    labels (matched by name) as floats, NaN where blank; refused when a label column is missing or a value is not
    of the set's encoding."""
    files = {**label_set.tables, **{f"gold_{k}": v for k, v in label_set.gold.items()}}
    if table not in files:
        raise LabelSetError(f"{label_set.path}: no table {table!r} (it has {', '.join(files)})")
    path = label_set.folder(mimic_root) / files[table]
    if not path.is_file():
        raise LabelSetError(f"{path}: no such file (label set {label_set.name}, table {table}); put the challenge's "
                            f"files under {label_set.folder(mimic_root)}, or set root: in {label_set.path}")
    frame = pd.read_csv(path, dtype={label_set.key: str, PATIENT: str})
    labels = list(labels or (label_set.gold_labels if table.startswith("gold_") else label_set.labels))
    missing = [c for c in [label_set.key, *labels] if c not in frame.columns]
    if missing:
        raise LabelSetError(f"{path}: no column(s) {missing[:5]} that label set {label_set.name} names "
                            f"({label_set.path}); is it the challenge's own file, or does the set list a label "
                            "this table does not have?")
    out = frame[[label_set.key, *([PATIENT] if PATIENT in frame else [])]].copy()
    if label_set.key == "study_id":
        out["study_id"] = out["study_id"].str.removeprefix("s")
    values = frame[labels].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    allowed = np.isin(values, ENCODED[label_set.encoding]) | (np.isnan(values) & (label_set.encoding == "chexpert"))
    if not allowed.all():
        row, column = np.argwhere(~allowed)[0]
        raise LabelSetError(f"{path}: {labels[column]} holds {str(frame[labels[column]].iloc[row])!r} (row {row + 2}); "
                            f"encoding {label_set.encoding} allows {ENCODED[label_set.encoding]}"
                            + (" and blanks" if label_set.encoding == "chexpert" else ""))
    out[labels] = values
    return out


def organisers_split(label_set: LabelSet, mimic_root) -> pd.DataFrame:
    """The rows of train, development and test with a `split` column (train / validate / test, cxrlib's names);
    refused when a patient is in two splits or an image in two tables."""
    names = {"train": "train", "development": "validate", "test": "test"}
    parts = [read_table(label_set, mimic_root, t).assign(split=names[t]) for t in SPLIT_TABLES]
    rows = pd.concat(parts, ignore_index=True)
    twice = rows[label_set.key][rows[label_set.key].duplicated()]
    if len(twice):
        raise LabelSetError(f"{label_set.folder(mimic_root)}: {twice.nunique()} {label_set.key}(s) are in two of "
                            f"{', '.join(label_set.tables.values())} (e.g. {twice.iloc[0]}); the tables are not "
                            "the organisers' files, or were edited")
    if PATIENT in rows:
        spans = rows.groupby(PATIENT)["split"].nunique()
        if (spans > 1).any():
            raise LabelSetError(f"{label_set.folder(mimic_root)}: {int((spans > 1).sum())} patient(s) are in two "
                                f"splits (e.g. subject_id {spans[spans > 1].index[0]}); a patient's images must share "
                                "a split, or the test figures measure patients the model trained on")
    return rows


def join(label_set: LabelSet, labels: pd.DataFrame, metadata: pd.DataFrame, where: str = "") -> tuple[pd.DataFrame, dict]:
    """The metadata's images with the set's labels (inner join on the key) and the counts either side left
    without a partner; refused when the key matches no image at all."""
    key = label_set.key
    left = metadata.assign(**{key: metadata[key].astype(str)})
    joined = left.merge(labels.drop(columns=[c for c in (PATIENT,) if c in labels and c in left]), on=key,
                        how="inner")
    if joined.empty:
        raise LabelSetError(f"{where or label_set.path}: no {key} of label set {label_set.name} matches an image "
                            f"of the metadata ({len(labels)} rows, {len(metadata)} images); are the set's tables "
                            "for this release, and is root: the challenge's folder?")
    counts = {"images_without_labels": int((~left[key].isin(labels[key])).sum()),
              "label_rows_without_image": int((~labels[key].isin(left[key])).sum())}
    return joined, counts
