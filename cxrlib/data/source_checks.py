"""What every external source table must pass before it is used: rows, paths that stay inside the data root, one
row per image, and label cells the reader recognises.

A table is read from a user's disk, and what it holds is never assumed: a header without rows, a path that leaves
the data root (`/etc/passwd`, `../../outside.png`), the same image twice with different labels, or a label cell
written another way (`yes`, `2`, `Pleural Effusion` for NIH's `Effusion`) would otherwise give a result that looks
right and is not. What can be repaired is counted and named in the notes; what cannot is refused in one line that
names the file and the row.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from .labelmap import normalize
from .source_table import label_columns

UNRECOGNISED_LIMIT = 0.001   # above this share of a table's rows with an unrecognised label cell, it is refused
AGE_RANGE = (0, 110)         # years; outside it an age is a data-entry error


def inside_root(root: Path, table: pd.DataFrame, where: str) -> None:
    """Every path joins the data root and stays below it (no absolute path, no `..` out)."""
    base = os.path.normpath(os.path.abspath(root))
    joined = [os.path.normpath(os.path.join(base, str(p))) for p in table["path"]]
    outside = [i for i, p in enumerate(joined) if not p.startswith(base + os.sep)]
    if outside:
        row = table.iloc[outside[0]]
        raise UserError(f"{where}: {len(outside)} image path(s) leave the data root {root}, e.g. image "
                        f"{row['image_id']!r} at {row['path']!r}; a table's paths must be relative to its folder")


def one_row_per_image(table: pd.DataFrame, where: str, notes: list[str]) -> pd.DataFrame:
    """Identical repeated rows are dropped (counted in the notes); the same image with other labels is refused."""
    repeated = table["image_id"].duplicated(keep=False)
    if not repeated.any():
        return table
    names = label_columns(table)
    labels = table.loc[repeated, ["image_id", *names]].fillna(-9)
    conflicting = labels.groupby("image_id")[names].nunique().gt(1).any(axis=1)
    if conflicting.any():
        first = conflicting[conflicting].index[0]
        raise UserError(f"{where}: image {first!r} has rows with different labels ({int(conflicting.sum())} such "
                        "images); which is right cannot be guessed: fix the table")
    kept = table.drop_duplicates("image_id").reset_index(drop=True)
    notes.append(f"{len(table) - len(kept)} repeated rows of the same image (identical labels) dropped")
    return kept


def unrecognised(bad: pd.Series, total: int, what: str, where: str, notes: list[str], read_as: str) -> None:
    """`bad`: the cells (of `total`) holding a value the reader does not know. They are counted and named in the
    notes; more than UNRECOGNISED_LIMIT of them refuses the table (a column written another way would otherwise
    read as negative)."""
    if not len(bad):
        return
    shown = ", ".join(f"{v!r} ({n})" for v, n in Counter(map(str, bad)).most_common(5))
    if len(bad) > UNRECOGNISED_LIMIT * total:
        raise UserError(f"{where}: {len(bad)} of {total} {what} hold values this reader does not know ({shown}); "
                        "is it the release's own file, unchanged? (docs/external-validation.md)")
    notes.append(f"{len(bad)} {what} not recognised ({shown}): read as {read_as}")


def absent_map_labels(label_map, vocabulary, notes: list[str]) -> None:
    """A label of the map that the table never holds (a misspelling, or another release's spelling) is named in the
    notes: a finding whose labels are all absent is missing, never negative (LabelMap.status)."""
    held = {normalize(x) for x in vocabulary}
    absent = sorted({x for e in label_map.entries.values() for x in e.labels if normalize(x) not in held})
    if absent:
        notes.append(f"labels of the map this table never holds: {absent} (a finding with none of its labels is "
                     "missing, never negative)")


def plausible_ages(table: pd.DataFrame, notes: list[str]) -> None:
    """Ages outside AGE_RANGE are data-entry errors (NIH's expert-label table has an image aged 155; the older
    Data_Entry_2017.csv more), not patients of the audit's oldest band: missing, with a count in the notes."""
    age = table["age"]
    implausible = age.notna() & ~age.between(*AGE_RANGE)
    if implausible.any():
        notes.append(f"{int(implausible.sum())} images with an age outside {AGE_RANGE[0]}-{AGE_RANGE[1]} years "
                     f"(e.g. {age[implausible].iloc[0]:g}): age missing")
        table.loc[implausible, "age"] = np.nan


def check_table(source: str, root: Path, table: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The checks every source's standard table passes before use (data.sources.read_source applies them)."""
    where = f"{source} under {root}"
    if table.empty:
        raise UserError(f"{where}: its table has no rows (a header alone?); download it again")
    inside_root(root, table, where)
    table = one_row_per_image(table, where, notes)
    plausible_ages(table, notes)
    return table
