"""The standard image table every external source is read into (data.sources' adapters), and the small readers
the adapters share: a table found with or without .gz, read with the columns it must have, optional columns as
text, labels as normalised sets. The columns are listed in data/sources.py's docstring.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import UserError
from . import labelmap

IDENTITY = ["image_id", "patient_id", "study_id", "path", "view", "sex", "age", "split", "bits"]   # then the labels


def label_columns(table: pd.DataFrame) -> list[str]:
    """A standard table's labels: the run's label set's, in its order (the map wrote them)."""
    return [c for c in table.columns if c not in IDENTITY]
FRONTAL = ("AP", "PA", "FRONTAL")   # FRONTAL: a frontal view whose AP or PA the source does not say


@dataclass
class SourceTable:
    """A source's standard table, the map that made its labels, and what the reader should know."""
    source: str
    subset: str
    table: pd.DataFrame
    label_map: labelmap.LabelMap
    vocabulary: list[str] | None = None      # the labels this table can hold, when it cannot hold all the map's
    notes: list[str] = field(default_factory=list)

    @property
    def unit_note(self) -> str:
        return ("no patient identifier: every image is its own patient and study" if self.source == "vindr"
                else "patients as the source identifies them")


def find_table(root: Path, name: str, required: bool = True) -> Path | None:
    """root/name or root/name.gz, the first that exists."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise UserError(f"{root}: no {name} (or {name}.gz); is --data-root (DATA_ROOT) the dataset's folder?")
    return None


def read_csv(path: Path, required, **kwargs) -> pd.DataFrame:
    """A source table with the columns an adapter needs, else one line naming the file and what it lacks."""
    try:
        frame = pd.read_csv(path, **kwargs)
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: could not be read as a table ({e}); download it again") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: no column(s) {missing} (it has {list(frame.columns)[:12]}...); is it the "
                        "release's own file? See docs/external-validation.md for the expected layout")
    return frame


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """An optional column as strings, blank where the table lacks it or a cell is empty."""
    return frame[name].fillna("").astype(str) if name in frame else pd.Series("", index=frame.index)


def kept(values: pd.Series, allowed, other: str) -> pd.Series:
    return values.where(values.isin(allowed), other)


def label_set(values) -> frozenset:
    return frozenset(labelmap.normalize(v) for v in values if str(v).strip())


def standard(frame: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column in IDENTITY:
        if column not in out:
            out[column] = 0 if column == "bits" else ""
    out = pd.concat([out[IDENTITY].reset_index(drop=True), labels.reset_index(drop=True)], axis=1)
    out["age"] = pd.to_numeric(out["age"], errors="coerce")
    out["bits"] = pd.to_numeric(out["bits"], errors="coerce").fillna(0).astype(int)
    for column in ("image_id", "patient_id", "study_id", "path", "view", "sex", "split"):
        out[column] = out[column].fillna("").astype(str)
    return out
