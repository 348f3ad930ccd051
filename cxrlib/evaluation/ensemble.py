"""An ensemble as a pseudo-run: the members' mean probability, evaluated by notebooks 03-05 like any run.

    runs/<sweep>/ensemble/   ensemble.json (the members), params.yaml, cohort.csv, predictions.csv, ...

The folder holds no checkpoint. Where a run would load best.pt, an ensemble averages instead (class
Ensemble, opened by evaluation.kinds): predictions are the mean of the members' predictions.csv, row by
row, and Grad-CAM maps (notebook 04) the mean of the members' maps. Thresholds are chosen on the validation
split as for any run. Notebook 03 compares it, paired, with its best member, and "best" means the
highest validation AUROC (macro): the test split picks nothing. Members must share the cohort and the
labels (a sweep over label policies or views cannot be averaged); the message says which differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import runfiles
from ..errors import UserError
from ..params import validate
from ..runfiles import (
    METRICS,
    check_same_labels,
    labels_of,
    member_dirs,
    prob_columns,
    read_metrics,
    read_predictions,
)


def average_predictions(members: list[Path]) -> pd.DataFrame:
    """The members' mean probability per row; refuses members whose rows or labels differ."""

    frames = [read_predictions(m).sort_values(["split", "dicom_id"], kind="stable").reset_index(drop=True)
              for m in members]
    first = frames[0]
    for member, frame in zip(members[1:], frames[1:]):
        names = check_same_labels(first, frame, members[0].name, member.name, "An ensemble")
        if len(frame) != len(first) or not (frame[["dicom_id", "split"]] == first[["dicom_id", "split"]]).all().all():
            raise UserError(f"{member.name} predicted other images than {members[0].name}: an ensemble needs members "
                            "built on the same cohort and split (vary training settings, not cohort ones)")
        a, b = first[names].to_numpy(np.float64), frame[names].to_numpy(np.float64)
        if not ((a == b) | (np.isnan(a) & np.isnan(b))).all():
            raise UserError(f"{member.name} labels the images differently from {members[0].name} (another label "
                            "source or policy): an ensemble's members must share the labels")
    out = first.copy()
    columns = prob_columns(labels_of(first))
    mean = np.mean([f[columns].to_numpy(np.float64) for f in frames], axis=0)
    out[columns] = mean.astype(np.float32)
    return out


def validation_auroc(run_dir) -> float:
    report = json.loads((Path(run_dir) / METRICS).read_text())
    value = report["splits"].get("validate", {}).get("macro", {}).get("auroc", {}).get("value")
    return float("nan") if value is None else float(value)


def best_member(members: list[Path]) -> Path:
    """The member with the highest validation AUROC macro (never the test split's)."""
    scores = [validation_auroc(m) for m in members]
    if all(np.isnan(scores)):
        raise UserError(f"no member of {members[0].parent} has validation figures in metrics.json: the ensemble is "
                        "compared with its best member on the validation split (run notebook 03 on the members)")
    return members[int(np.nanargmax(scores))]


# --------------------------------------------------------------------------- what evaluation asks of a run
class Ensemble:
    """An ensemble's folder: answers evaluation.kinds' four questions from its members, each opened with
    `member` (kinds passes trained.TrainedRun; taking it as a parameter keeps torch out of this module)."""

    def __init__(self, run_dir, member):
        self.run_dir = Path(run_dir)
        self.members = [member(d) for d in member_dirs(self.run_dir)]

    def predictions(self, p, splits=("validate", "test"), tta: bool = False) -> pd.DataFrame:
        """The members' mean probability on `splits`, from their predictions.csv (made with their own `tta`)."""
        frame = average_predictions([m.run_dir for m in self.members])
        return frame[frame["split"].isin(list(splits))].reset_index(drop=True)

    def selection(self, p) -> dict:
        """Each member's own selection, and no test selection unless a member had one."""

        members = {m.run_dir.name: read_metrics(m.run_dir)["selection"] for m in self.members}
        test_selected = any(s["test_selected"] for s in members.values())
        first = next(iter(members.values()))
        return {"select_on": first["select_on"], "select_metric": first["select_metric"], "best_epoch": None,
                "best_score": None, "epochs_run": None, "test_selected": test_selected,
                "warning": next((s["warning"] for s in members.values() if s["warning"]), None),
                "ensemble_of": {name: s["best_epoch"] for name, s in members.items()}}

    def model_config(self) -> dict:
        """What shaped the members' models: a value where every member agrees, None where they differ (listed in
        `differs`), and each member's own config under `members`, so no record describes the ensemble as one of
        them."""

        configs = {m.run_dir.name: m.model_config() for m in self.members}
        keys = sorted({k for c in configs.values() for k in c})
        values = {k: [json.dumps(c.get(k), sort_keys=True, default=str) for c in configs.values()] for k in keys}
        differs = [k for k in keys if len(set(values[k])) > 1]
        first = next(iter(configs.values()))
        return {**{k: (None if k in differs else first.get(k)) for k in keys}, "ensemble_of": len(configs),
                "differs": differs, "members": configs}

    def error_images(self, p, errors: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
        """(the first member's images, the mean of every member's Grad-CAM maps, each on the first member's grid,
        which layers) for the rows of `errors`; each member runs with its own frozen parameters, on `p`'s
        device and data."""

        import torch  # lazy: keeps torch out of this module's import (the sweep's ensemble builder reads it)

        images, total = None, None
        for member in self.members:
            member_p = validate({**runfiles.load_frozen(member.run_dir).to_dict(), "device": p.device,
                                 "data_root": p.data_root, "cache_dir": p.cache_dir}, str(member.run_dir))
            pixels, cams, note = member.error_images(member_p, errors)
            if images is None:
                images, total, first_note = pixels, np.zeros(pixels.shape, np.float64), note
            if cams.shape != total.shape and len(cams):   # a member trained at another image size
                cams = torch.nn.functional.interpolate(torch.from_numpy(cams)[:, None], size=total.shape[1:],
                                                       mode="bilinear", align_corners=False)[:, 0].numpy()
            total += cams
        return (images, (total / len(self.members)).astype(np.float32),
                f"the mean of {len(self.members)} members' maps; the first member's: {first_note}")
