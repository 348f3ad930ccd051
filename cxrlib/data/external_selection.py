"""Which external images a validation scores, decided before any model is loaded: each source's file formats
and bit-depth rule, the views chosen, and whether enough of the selected images are on disk. Light on purpose:
make external's parent process refuses a partial download with these, without torch (evaluation.external
scores the images in the kernel)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import labelset
from ..errors import UserError
from .sources import frontal, read_source

FORMATS = {"chexpert": ("JPEG", "PNG"), "nih": ("PNG",), "padchest": ("PNG",), "vindr": ("DICOM", "PNG")}
# How each source's pixel depth is decided, once for the source, recorded in the results: never per image from
# its own range. A 16-bit file where nothing declares its depth is a failure listed with its largest value.
BIT_DEPTH = {"chexpert": "8-bit files (a 16-bit one is listed as failed)",
             "nih": "8-bit PNGs (a 16-bit one is listed as failed)",
             "padchest": "each row's BitsStored_DICOM (rows without one: the table's most common, counted in the notes)",
             "vindr": "each DICOM's own BitsStored and window; PNG copies 8-bit (a 16-bit one is listed as failed)"}
VIEWS = ("frontal", "all")
MIN_PRESENT = 0.99          # below this share of the selected images on disk, a download is partial: refused
                            # unless allow_missing, and then the share is reported wherever the result is



def selected_images(source: str, data_root, subset: str | None = None, views: str = "frontal",
                    set_name: str = labelset.DEFAULT):
    """(the source's table in label set `set_name`'s labels, the rows its views select, which of them are on disk
    under data_root)."""
    if views not in VIEWS:
        raise UserError(f"views {views!r}: one of {list(VIEWS)}")
    data_root = Path(data_root)
    found = read_source(source, data_root, subset, set_name)
    table = frontal(found.table) if views == "frontal" else found.table
    if table.empty:
        raise UserError(f"{source} under {data_root}: no {views} image in its table ({len(found.table)} rows); "
                        "try views: all")
    present = table["path"].map(lambda rel: (data_root / rel).is_file()).to_numpy(bool)
    return found, table, present


def check_present(source: str, data_root, table: pd.DataFrame, present: np.ndarray, allow_missing: bool) -> None:
    """A partial download is not validated as if it were whole: none present is refused, fewer than MIN_PRESENT
    of the selected images too unless allow_missing (then the share is reported)."""
    data_root, n, k = Path(data_root), len(table), int(present.sum())
    if k == 0:
        raise UserError(f"{source}: none of the {n:,} images its table selects is under {data_root} (e.g. "
                        f"{data_root / table['path'].iloc[0]}); the tables are there, the images are not: unpack "
                        "them into that folder in the dataset's own layout (docs/external-validation.md)")
    if k < MIN_PRESENT * n and not allow_missing:
        example = data_root / table["path"].to_numpy()[~present][0]
        raise UserError(f"{source}: only {k:,} of the {n:,} images its table selects are under {data_root} "
                        f"({k / n:.1%}; {n - k:,} missing, e.g. {example}). A partial download would be validated as if "
                        f"it were the whole set: finish it, or pass --allow-missing (make external ... ALLOW_MISSING=1) "
                        f"to score the {k:,} present, with the share they are reported wherever the result is shown")
