"""Which MIMIC-CXR images the starting weights saw, and whether the run's test split is among them.

Evaluating on MIMIC a model whose starting weights were trained on MIMIC is the commonest silent error in the
field: the test figures then measure memory as well as skill. A weights file says what it saw through the `mimic`
field of its JSON (training.weights), or through the `source` it names in KNOWN_SOURCES:

  none            never trained on MIMIC-CXR
  random          a random part of MIMIC-CXR whose split was not kept: any test split may overlap it
  all             every MIMIC-CXR image: every test split overlaps it
  official-train  MIMIC-CXR's official train split: counted exactly, image by image, against the split table
  manifest        listed image by image (RAD-DINO's training_images.csv): counted with weights_manifest
  unknown         nothing recorded: add a JSON beside the file

`weights_manifest:` (a CSV of the weights' training images) overrides the rule: the overlap is then counted.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..data.cohort import read_table
from ..data.sources import SOURCE_NAMES
from ..errors import UserError

RULES = ("none", "random", "all", "official-train", "manifest", "unknown")
_TXRV = "torchxrayvision:densenet121-res224-"
KNOWN_SOURCES = {
    # source: (trained on, MIMIC rule, where it comes from, the external sources (SOURCE_NAMES) it saw)
    f"{_TXRV}all": ("NIH, PadChest, CheXpert, MIMIC-CXR (CheXpert labels), Google, OpenI, RSNA", "random",
                    "torchxrayvision (its issues #47, #139: MIMIC split lost)", ("chexpert", "nih", "padchest")),
    f"{_TXRV}mimic_ch": ("MIMIC-CXR, CheXpert labeler", "random", "torchxrayvision", ()),
    f"{_TXRV}mimic_nb": ("MIMIC-CXR, NegBio labeler", "random", "torchxrayvision", ()),
    f"{_TXRV}chex": ("CheXpert", "none", "torchxrayvision", ("chexpert",)),
    f"{_TXRV}nih": ("NIH ChestX-ray14", "none", "torchxrayvision", ("nih",)),
    f"{_TXRV}pc": ("PadChest", "none", "torchxrayvision", ("padchest",)),
    f"{_TXRV}rsna": ("RSNA Pneumonia (NIH ChestX-ray14 images)", "none", "torchxrayvision", ("nih",)),
    "torchxrayvision:resnet50-res512-all": ("PadChest, NIH, RSNA, SIIM, VinDr-CXR", "none", "torchxrayvision",
                                            ("nih", "padchest", "vindr")),
    "moco-cxr:mimic": ("MIMIC-CXR official train split (self-supervised)", "official-train",
                       "CovidPrognosis (facebookresearch)", ()),
    "moco-cxr:mimic-chexpert": ("MIMIC-CXR official train split and CheXpert (self-supervised)", "official-train",
                                "CovidPrognosis (facebookresearch)", ("chexpert",)),
    "chexzero": ("every MIMIC-CXR-JPG image and its report impression (inferred from its preprocessing code)", "all",
                 "CheXzero (rajpurkarlab)", ()),
    "microsoft/rad-dino": ("MIMIC-CXR, CheXpert, NIH, PadChest, BRAX (its model card; unverified here); listed in "
                           "training_images.csv", "manifest", "Hugging Face microsoft/rad-dino",
                           ("chexpert", "nih", "padchest")),
    "biomedclip": ("PubMed Central figure-caption pairs (unverified: no MIMIC-CXR)", "none",
                   "Hugging Face microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", ()),
}


def known(source: str | None) -> dict:
    entry = KNOWN_SOURCES.get(str(source or "").lower())
    return {} if entry is None else {"trained_on": entry[0], "mimic": entry[1], "where": entry[2],
                                     "external_seen": list(entry[3])}


def describe(info: dict) -> dict:
    """The starting weights' record: the file's fields, filled from KNOWN_SOURCES where the file is silent."""
    filled = {**known(info.get("source")), **{k: v for k, v in info.items() if v is not None}}
    rule = filled.get("mimic") or "unknown"
    seen = filled.get("external_seen", [])
    if not isinstance(seen, list) or not set(seen) <= set(SOURCE_NAMES):
        raise UserError(f"{info.get('file', 'weights')}: external_seen: {seen!r} in its JSON should list some of "
                        f"{list(SOURCE_NAMES)}")
    if rule not in RULES:
        raise UserError(f"{info.get('file', 'weights')}: mimic: {rule!r} in its JSON is not one of {list(RULES)}")
    keep = ("source", "file", "sha256", "layout", "recognised_by", "trained_on", "where", "original_sha256", "labels",
            "input", "resolution", "external_seen")
    return {**{k: filled[k] for k in keep if k in filled}, "mimic": rule}


def starting_weights(info: dict, params, cohort: pd.DataFrame) -> dict:
    """The run's starting-weights record (from model.starting_info) with its contamination check: what
    model_config and the card keep."""
    record = describe(info)
    return {**record, "contamination": assess(record, params, cohort)}


def assess(record: dict, params, cohort: pd.DataFrame) -> dict:
    """{status: clean | contaminated | unknown, method, counts, message} for the run's test split."""
    test = cohort[cohort["split"] == "test"]
    out = {"status": "unknown", "method": record["mimic"], "test_images": int(len(test)),
           "test_patients": int(test["subject_id"].nunique())}
    what = record.get("source") or Path(str(record.get("file", "the starting weights"))).name
    rule = record["mimic"]
    if params.weights_manifest:
        ids, subjects, rows = read_manifest(params.weights_manifest)
        if rows == 0 or overlap(ids, subjects, cohort) == (0, 0):
            # an empty list, or one naming no image or patient of the whole cohort (another id scheme, another
            # dataset), cannot vouch for a clean test split
            told = "is empty" if rows == 0 else (f"lists {rows} images, none of them an image or patient of this "
                                                  f"cohort's {len(cohort)} images (another id scheme or dataset?)")
            out.update(method="manifest", status="unknown", message=(
                f"{what}: its training list {params.weights_manifest} {told}; cxrlib cannot tell whether it saw "
                "this run's test split"))
            return out
        seen_images, seen_patients = overlap(ids, subjects, test)
        out.update(method="manifest", seen_images=seen_images, seen_patients=seen_patients,
                   status="contaminated" if seen_images or seen_patients else "clean")
        out["message"] = (f"{what}: {seen_images} of the {len(test)} test images and {seen_patients} of the "
                          f"{out['test_patients']} test patients are in its training list ({params.weights_manifest})")
    elif rule == "none":
        out.update(status="clean", message=f"{what} never saw MIMIC-CXR")
    elif rule in ("random", "all"):
        seen = "every MIMIC-CXR image" if rule == "all" else "a random part of MIMIC-CXR whose split was not kept"
        out.update(status="contaminated", message=(f"{what} was trained on {seen}: this run's test images "
                                                   f"({len(test)}) {'are' if rule == 'all' else 'may be'} among them"))
    elif rule == "official-train":
        if params.split_mode == "official":
            out.update(status="clean", seen_images=0, message=f"{what} saw MIMIC-CXR's official train split only; "
                                                              "this run tests on the official test split")
        else:
            official = read_table(params.data_root, "split")
            in_train = test["dicom_id"].isin(official.loc[official["split"] == "train", "dicom_id"])
            seen_patients = int(test.loc[in_train, "subject_id"].nunique())
            out.update(status="contaminated" if in_train.any() else "clean", seen_images=int(in_train.sum()),
                       seen_patients=seen_patients, message=(
                           f"{what} saw MIMIC-CXR's official train split: {int(in_train.sum())} of this run's "
                           f"{len(test)} test images (split_mode: {params.split_mode}) are in it"))
    elif rule == "manifest":
        out["message"] = (f"{what} lists its training images: give that list as weights_manifest to count how many of "
                          "this run's test images it saw")
    else:
        out["message"] = (f"cxrlib cannot tell what {what} was trained on: write its source, trained_on and mimic "
                          "into the JSON beside the file (docs/pretrained-weights.md)")
    return out


def manifest_overlap(path, test: pd.DataFrame) -> tuple[int, int]:
    """(test images listed, test patients with any listed image) in a CSV of training images."""
    ids, subjects, _ = read_manifest(path)
    return overlap(ids, subjects, test)


def read_manifest(path) -> tuple[set, set, int]:
    """(image ids, patient ids, rows) of a CSV of training images: images by dicom_id (a dicom_id/image_id column, or
    the file names in a path column), patients by subject_id (a column, or /p<id>/ in a path)."""
    try:
        listed = pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError:
        raise UserError(f"weights_manifest: {path} is empty (not even a header); give the weights' list of "
                        "training images") from None
    except (OSError, ValueError) as e:
        raise UserError(f"weights_manifest: {path} is not a readable CSV ({e})") from None
    columns = {c.lower(): c for c in listed.columns}
    id_column = columns.get("dicom_id") or columns.get("image_id")
    path_column = next((c for c in listed.columns if listed[c].astype(str).str.contains(r"\.(?:jpg|dcm|png)$",
                                                                                       case=False).any()), None)
    if id_column is None and path_column is None and len(listed):
        raise UserError(f"weights_manifest: {path} has neither a dicom_id/image_id column nor a column of image "
                        f"paths; its columns are {list(listed.columns)}")
    ids = set(listed[id_column].dropna()) if id_column else set()
    subjects = set(listed[columns["subject_id"]].dropna().str.lstrip("p")) if "subject_id" in columns else set()
    if path_column is not None:
        paths = listed[path_column].dropna().astype(str)
        ids |= {Path(p).stem for p in paths}
        subjects |= {m.group(1) for p in paths if (m := re.search(r"/p(\d{8})/", p))}
    return ids, subjects, len(listed)


def overlap(ids: set, subjects: set, frame: pd.DataFrame) -> tuple[int, int]:
    """(images of `frame` among ids, patients of `frame` with a listed image or listed themselves)."""
    seen = frame["dicom_id"].astype(str).isin(ids)
    patients = set(frame.loc[seen, "subject_id"].astype(str)) | (set(frame["subject_id"].astype(str)) & subjects)
    return int(seen.sum()), len(patients)


def warning_text(starting: dict | None) -> str | None:
    """The red box's words when the test split may overlap what the starting weights saw; None otherwise."""
    check = (starting or {}).get("contamination") or {}
    if check.get("status") != "contaminated":
        return None
    return ("THE STARTING WEIGHTS MAY HAVE SEEN THE TEST PATIENTS: " + check["message"] + ". The test figures are "
            "optimistic: do not report them as performance on unseen patients. Start from weights that never saw "
            "this test split (docs/pretrained-weights.md), or use split_mode: official with weights trained on "
            "MIMIC-CXR's official train split.")


VERDICTS = {"none": ("clean", "clean"), "random": ("**contaminated**", "**contaminated**"),
            "all": ("**contaminated**", "**contaminated**"), "official-train": ("**contaminated** (counted)", "clean"),
            "manifest": ("counted with weights_manifest", "counted with weights_manifest"),
            "unknown": ("unknown", "unknown")}


def external_warning(starting: dict | None, source: str) -> str | None:
    """The red box's words when the starting weights were trained on the external source being validated on."""
    starting = starting or {}
    seen = starting.get("external_seen")
    if seen is None:   # recorded before cxrlib kept external_seen: the table, by source
        seen = known(starting.get("source")).get("external_seen", [])
    if source not in seen:
        return None
    name = SOURCE_NAMES.get(source, source)
    return (f"THE STARTING WEIGHTS WERE TRAINED ON {name.upper()}: {starting.get('source') or 'the starting weights'} "
            f"saw {name} images, perhaps these. This is not an independent external validation: the figures are "
            "optimistic. Start from weights that never saw this source (docs/pretrained-weights.md).")


def markdown_table() -> str:
    """KNOWN_SOURCES as docs/pretrained-weights.md shows it (a test keeps the two equal)."""
    rows = ["| source (`source` in the JSON) | trained on | from | `split_mode: seed` test | `split_mode: official` test "
            "| contaminated external sources |", "|---|---|---|---|---|---|"]
    rows += [f"| `{name}` | {trained} | {where} | {VERDICTS[rule][0]} | {VERDICTS[rule][1]} | "
             f"{', '.join(SOURCE_NAMES[x] for x in seen) or 'none'} |"
             for name, (trained, rule, where, seen) in KNOWN_SOURCES.items()]
    return "\n".join(rows)
