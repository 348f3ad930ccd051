"""External sources: each dataset's own metadata and label files -> one standard image table.

`python -m cxrlib external-table --source nih --data-root DIR --out table.csv [--subset test]` writes it:

  image_id     the source's own identifier (NIH's Image Index, PadChest's ImageID, VinDr's image_id, CheXpert's path)
  patient_id, study_id   the bootstrap's and the scoring's units (VinDr has no patient: its image)
  path         relative to the data root
  view         AP, PA, FRONTAL (AP or PA not said), LATERAL or OTHER
  sex, age     F, M or empty; years; split as the source names it; bits: PadChest's BitsStored_DICOM, else 0
  the 14 findings   1, 0 or empty (missing: the source cannot express it, or the label is uncertain)

No image is needed to build a table; tables may be .csv or .csv.gz, and data.source_checks checks each. The
source's label map (data/label_maps/<map>.yaml, data.labelmap) says which label makes which finding positive.
MIMIC-CXR-JPG is a source too (`--source mimic`: its CheXpert-labeler table, official split), never an external one.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np
import pandas as pd

from .. import labelset
from ..errors import UserError
from ..fsutil import atomic_write_csv, out_path, writing_out
from ..labels import FINDINGS  # CheXpert's and MIMIC's own label columns (their files' layout)
from . import labelmap
from .cohort import image_paths, load_raw_labels, read_table
from .source_checks import absent_map_labels, check_table, unrecognised
from .source_table import FRONTAL, SourceTable, column, find_table, kept, label_set, read_csv, standard

SOURCE_NAMES = {"chexpert": "CheXpert", "nih": "NIH ChestX-ray14", "padchest": "PadChest", "vindr": "VinDr-CXR"}
SOURCES = tuple(SOURCE_NAMES)   # the one list of the external sources (notebook 07 validates on them)
TABLE_SOURCES = (*SOURCES, "mimic")                       # MIMIC-CXR-JPG gives the same table (its own data)
SUBSETS = {"chexpert": ("external", "valid", "test", "train"), "nih": ("test", "all", "expert"),
           "padchest": ("physician", "all"), "vindr": ("test", "train"), "mimic": ("test", "all")}
CHEXPERT_TEST_LABELS = ("groundtruth.csv", "test_labels.csv")
NIH_ENTRIES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
NIH_EXPERT = ("four_findings_expert_labels_test_labels.csv", "four_findings_expert_labels_validation_labels.csv")
NIH_EXPERT_COMBINED = "google2019_nih-chest-xray-labels.csv"   # torchxrayvision's file: both, with `Set Id`
PADCHEST_TABLE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
VINDR_LABELS = "annotations/image_labels_{split}.csv"
VINBIGDATA = "train.csv"          # Kaggle's VinBigData box table: image_id, class_name, rad_id, boxes
VINDR_READERS_NEEDED = 2          # of a train image's 3 readers
EXPERT_COLUMNS = ["Image Index", "Patient ID", "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]


# --------------------------------------------------------------------------- CheXpert

def chexpert_rows(csv: Path, split: str, root: Path) -> pd.DataFrame:
    frame = read_csv(csv, ["Path", *FINDINGS], dtype={"Path": str})
    # Paths start with the release folder (CheXpert-v1.0-small/ or CheXpert-v1.0/); the data root is its parent
    # or the folder itself.
    release, inside = frame["Path"].str.split("/", n=1).str[0], frame["Path"].str.split("/", n=1).str[1]
    path = frame["Path"] if len(frame) and (root / release.iloc[0]).is_dir() else inside
    pieces = inside.str.split("/")
    lateral = column(frame, "Frontal/Lateral").eq("Lateral")
    view = np.where(lateral, "LATERAL", column(frame, "AP/PA").replace("", "OTHER"))
    return pd.DataFrame({
        "image_id": frame["Path"], "patient_id": pieces.str[1], "study_id": pieces.str[:3].str.join("/"),
        "path": path, "view": pd.Series(view).where(pd.Series(view).isin(["AP", "PA", "LATERAL"]), "OTHER"),
        "sex": column(frame, "Sex").map({"Female": "F", "Male": "M"}).fillna(""),
        "age": frame.get("Age"), "split": split, **{f: frame[f] for f in FINDINGS}})


def chexpert_test_rows(csv: Path, root: Path) -> pd.DataFrame:
    """The test labels are per study (`Study`); each frontal image found under the study's folder is a row."""
    frame = read_csv(csv, FINDINGS)
    if "Path" in frame:
        return chexpert_rows(csv, "test", root)
    rows = []
    for _, study in frame.iterrows():
        folder = str(study["Study"]).rstrip("/")
        images = sorted((root / folder).glob("*.jpg")) or sorted(root.glob(f"*/{folder}/*.jpg"))
        for image in images:
            rel = image.relative_to(root).as_posix()
            pieces = folder.split("/")
            rows.append({"image_id": rel, "patient_id": pieces[-2], "study_id": "/".join(pieces[-3:]), "path": rel,
                         "view": "LATERAL" if "lateral" in image.name else "FRONTAL" if "frontal" in image.name
                         else "OTHER", "sex": "", "age": np.nan,
                         "split": "test", **{f: study[f] for f in FINDINGS}})
    if not rows:
        raise UserError(f"{csv}: none of its {len(frame)} studies has a .jpg under {root}; the test images come "
                        "from Stanford AIMI: unpack them so that <data root>/<Study>/view1_frontal.jpg exists")
    return pd.DataFrame(rows)


def chexpert(root: Path, subset: str, set_name: str = labelset.DEFAULT) -> SourceTable:
    lmap = labelmap.load("chexpert", set_name=set_name)
    parts = []
    if subset in ("external", "valid"):
        parts.append(chexpert_rows(find_table(root, "valid.csv"), "valid", root))
    if subset in ("external", "test"):
        test = next((p for n in CHEXPERT_TEST_LABELS if (p := find_table(root, n, required=False))), None)
        if test is not None:
            parts.append(chexpert_test_rows(test, root))
        elif subset == "test":
            raise UserError(f"{root}: no {' or '.join(CHEXPERT_TEST_LABELS)} (the test set's radiologist labels)")
    if subset == "train":
        parts.append(chexpert_rows(find_table(root, "train.csv"), "train", root))
    frame = pd.concat(parts, ignore_index=True)
    values = frame[FINDINGS].apply(pd.to_numeric, errors="coerce")
    blank = frame[FINDINGS].isna() | frame[FINDINGS].astype(str).apply(lambda c: c.str.strip().eq(""))
    foreign = ~blank & ~values.isin([1, 0, -1])   # `yes`, `2`: neither a label nor blank
    notes = ["train: the CheXpert labeler's labels (blank read as negative, -1 uncertain as missing), not "
             "radiologists'"] if subset == "train" else ["valid and test: radiologists' labels, binary"]
    unrecognised(frame[FINDINGS].to_numpy()[foreign.to_numpy()], foreign.size, "label cells (1, 0, -1 or blank)",
                 f"chexpert under {root}", notes, "missing")
    values = values.mask(foreign, -1)   # an unrecognised cell is missing, as an uncertain one
    names = np.array(FINDINGS)
    positives = pd.Series([label_set(names[row == 1]) for row in values.to_numpy()])
    uncertain = pd.Series([label_set(names[row == -1]) for row in values.to_numpy()])
    return SourceTable("chexpert", subset, standard(frame, lmap.encode(positives, uncertain)), lmap, notes=notes)


# --------------------------------------------------------------------------- NIH ChestX-ray14

def nih_paths(root: Path, names: pd.Series) -> pd.Series:
    """Where each image is: images_0NN/images/<name> as released, else images/<name>."""
    found = {p.name: p.relative_to(root).as_posix() for p in root.glob("images*/**/*.png")}
    return names.map(lambda n: found.get(n, f"images/{n}"))


def nih_split(root: Path, names: pd.Series) -> pd.Series:
    split = pd.Series("", index=names.index)
    for name, value in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        listed = find_table(root, name, required=False)
        if listed is not None:
            split[names.isin(set(listed.read_text().split()))] = value
    return split


def nih(root: Path, subset: str, set_name: str = labelset.DEFAULT) -> SourceTable:
    if subset == "expert":
        return nih_expert(root, set_name)
    entries = next((p for n in NIH_ENTRIES if (p := find_table(root, n, required=False))), None)
    if entries is None:
        raise UserError(f"{root}: no {' or '.join(NIH_ENTRIES)} (.gz accepted); is DATA_ROOT the NIH folder?")
    frame = read_csv(entries, ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender",
                               "View Position"])
    names = frame["Image Index"].astype(str)
    split = nih_split(root, names)
    if subset == "test":
        if not (split == "test").any():
            raise UserError(f"{root}: no test_list.txt, so no official test split; use --subset all")
        keep = (split == "test").to_numpy()
        frame, names, split = frame[keep].reset_index(drop=True), names[keep].reset_index(drop=True), split[keep]
    lmap = labelmap.load("nih", set_name=set_name)
    positives = frame["Finding Labels"].fillna("").map(lambda s: label_set(s.split("|")))
    vocabulary = {labelmap.normalize(x) for x in lmap.vocabulary}
    foreign = positives.map(lambda found: ", ".join(sorted(found - vocabulary)))   # e.g. "pleural effusion"
    notes = ["labels by NLP from the reports; each image is its own study (NIH gives follow-up numbers, not studies)"]
    unrecognised(foreign[foreign != ""], len(foreign), "rows' Finding Labels", str(entries), notes,
                 "missing (every finding of the row)")
    positives = positives.where(foreign == "", None)
    meta = pd.DataFrame({
        "image_id": names, "patient_id": frame["Patient ID"].astype(str), "study_id": names,
        "path": nih_paths(root, names), "view": kept(frame["View Position"], ["AP", "PA"], "OTHER"),
        "sex": kept(frame["Patient Gender"], ["F", "M"], ""),
        "age": frame["Patient Age"], "split": split.to_numpy()})
    return SourceTable("nih", subset, standard(meta, lmap.encode(positives)), lmap, notes=notes)


def nih_expert(root: Path, set_name: str = labelset.DEFAULT) -> SourceTable:
    parts = [(p, split) for n, split in zip(NIH_EXPERT, ("test", "validate"))
             if (p := find_table(root, n, required=False))]
    if parts:
        frame = pd.concat([read_csv(p, EXPERT_COLUMNS).assign(_split=s) for p, s in parts], ignore_index=True)
    else:
        combined = find_table(root, NIH_EXPERT_COMBINED, required=False)
        if combined is None:
            raise UserError(f"{root}: no Google expert labels ({NIH_EXPERT[0]} and {NIH_EXPERT[1]}, or "
                            f"{NIH_EXPERT_COMBINED}); they come from Google's NIH ChestX-ray14 annotations")
        frame = read_csv(combined, [*EXPERT_COLUMNS, "Set Id"])
        frame["_split"] = frame["Set Id"].map({"test": "test", "val": "validate"}).fillna("")
    lmap = labelmap.load("nih_expert", set_name=set_name)
    expert, notes = EXPERT_COLUMNS[2:], ["Google's expert labels (radiologists, adjudicated) for four findings"]
    cells = frame[expert].fillna("").astype(str).apply(lambda c: c.str.strip().str.upper())
    unrecognised(frame[expert].to_numpy()[~cells.isin(["YES", "NO", ""]).to_numpy()], cells.size,
                 "label cells (YES, NO or blank)", f"nih expert labels under {root}", notes, "NO")
    positives = pd.Series([label_set(np.array(expert)[row]) for row in cells.eq("YES").to_numpy()])
    names = frame["Image Index"].astype(str)
    meta = pd.DataFrame({
        "image_id": names, "patient_id": frame["Patient ID"].astype(str), "study_id": names,
        "path": nih_paths(root, names),
        "view": kept(column(frame, "View Position"), ["AP", "PA"], "OTHER"),
        "sex": kept(column(frame, "Patient Gender"), ["F", "M"], ""),
        "age": frame.get("Patient Age"), "split": frame["_split"]})
    return SourceTable("nih", "expert", standard(meta, lmap.encode(positives)), lmap, notes=notes)


# --------------------------------------------------------------------------- PadChest

def padchest_labels(text) -> frozenset | None:
    """`Labels` is a Python-list string; an unparseable or empty one leaves the image unlabelled."""
    try:
        values = ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError):
        return None
    found = label_set(values) if isinstance(values, (list, tuple)) else None
    return found if found else None


def padchest(root: Path, subset: str, set_name: str = labelset.DEFAULT) -> SourceTable:
    frame = read_csv(find_table(root, PADCHEST_TABLE), ["ImageID", "ImageDir", "StudyID", "PatientID", "PatientBirth",
                     "PatientSex_DICOM", "StudyDate_DICOM", "Projection", "MethodLabel", "BitsStored_DICOM", "Labels"],
                     low_memory=False, dtype={"ImageID": str, "PatientID": str, "StudyID": str})
    if subset == "physician":
        frame = frame[frame["MethodLabel"].eq("Physician")].reset_index(drop=True)
    lmap = labelmap.load("padchest", set_name=set_name)
    positives = frame["Labels"].map(padchest_labels)
    vocabulary = set().union(*positives.dropna())   # of the rows read: a map label none holds is named
    projection = frame["Projection"].map({"PA": "PA", "AP": "AP", "AP_horizontal": "AP", "L": "LATERAL"})
    study_year = pd.to_numeric(frame["StudyDate_DICOM"].astype(str).str[:4], errors="coerce")
    bits, checks = pd.to_numeric(frame["BitsStored_DICOM"], errors="coerce"), []   # a depth that is not a number:
    common = int(bits.mode().iloc[0]) if bits.notna().any() else 0   # counted, named, the table's usual one, no guess
    unrecognised(frame["BitsStored_DICOM"][bits.isna()], len(frame), "BitsStored_DICOM cells", f"padchest under {root}",
                 checks, f"the table's most common depth, {common} bits")
    directory = pd.to_numeric(frame["ImageDir"], errors="coerce").astype("Int64").astype(str)
    meta = pd.DataFrame({
        "image_id": frame["ImageID"], "patient_id": frame["PatientID"], "study_id": frame["StudyID"],
        "path": directory + "/" + frame["ImageID"], "view": projection.fillna("OTHER"),
        "sex": frame["PatientSex_DICOM"].where(frame["PatientSex_DICOM"].isin(["F", "M"]), ""),
        "age": study_year - pd.to_numeric(frame["PatientBirth"], errors="coerce"), "split": "",
        "bits": bits.fillna(common)})
    unlabelled = int(positives.isna().sum())
    silent = int(lmap.says_nothing(positives).sum())
    notes = [f"MethodLabel: {'physicians only' if subset == 'physician' else 'physicians and the RNN model'}",
             "age: the study's year minus the birth year (±1 year)", *checks]
    absent_map_labels(lmap, vocabulary, notes)
    if unlabelled:
        notes.append(f"{unlabelled} rows have no readable Labels: every finding missing")
    if silent:
        notes.append(f"{silent} rows labelled only {', '.join(lmap.uninformative)}: every finding missing (they say "
                     "nothing about findings)")
    return SourceTable("padchest", subset, standard(meta, lmap.encode(positives, vocabulary=vocabulary)), lmap,
                       sorted(vocabulary), notes)


# --------------------------------------------------------------------------- VinDr-CXR

def vindr(root: Path, subset: str, set_name: str = labelset.DEFAULT) -> SourceTable:
    lmap = labelmap.load("vindr", set_name=set_name)
    physionet = find_table(root, VINDR_LABELS.format(split=subset), required=False)
    vocabulary, checks = None, []
    if physionet is not None:
        frame = read_csv(physionet, ["image_id"], dtype={"image_id": str})
        label_columns = [c for c in frame.columns if c not in ("image_id", "rad_id")]
        cells = frame[label_columns].apply(pd.to_numeric, errors="coerce")
        foreign = frame[label_columns].notna() & ~cells.isin([0, 1])   # `yes`/`no`: neither 0, 1 nor blank
        unrecognised(frame[label_columns].to_numpy()[foreign.to_numpy()], foreign.size, "label cells (0, 1 or blank)",
                     str(physionet), checks, "absent")
        present = cells.fillna(0).gt(0)
        if "rad_id" in frame:   # train: one row per reader; a label counts when enough readers drew it
            present = present.groupby(frame["image_id"]).sum().ge(VINDR_READERS_NEEDED)
            ids = present.index.to_series().reset_index(drop=True)
            present = present.reset_index(drop=True)
        else:
            ids = frame["image_id"]
        columns = np.array(label_columns)
        positives = pd.Series([label_set(columns[row]) for row in present.to_numpy()])
        vocabulary = label_columns   # a map label the release spells otherwise must not read as "never present"
    else:
        kaggle = find_table(root, VINBIGDATA, required=False)
        if kaggle is None or subset != "train":
            raise UserError(f"{root}: no {VINDR_LABELS.format(split=subset)} (.gz accepted): VinDr-CXR 1.0.0 from "
                            "PhysioNet (`make fetch SOURCE=vindr` fetches its test set); Kaggle's VinBigData "
                            f"{VINBIGDATA} serves --subset train only")
        boxes = read_csv(kaggle, ["image_id", "class_name", "rad_id"], dtype={"image_id": str})
        readers = boxes.drop_duplicates(["image_id", "rad_id", "class_name"])
        counts = readers.groupby(["image_id", "class_name"]).size().ge(VINDR_READERS_NEEDED)
        by_image = counts[counts].reset_index().groupby("image_id")["class_name"].apply(label_set)
        ids = pd.Series(sorted(boxes["image_id"].unique()))
        positives = ids.map(by_image).map(lambda s: s if isinstance(s, frozenset) else frozenset())
        vocabulary = sorted(boxes["class_name"].unique())
    split = "test" if subset == "test" else "train"
    meta = pd.DataFrame({"image_id": ids, "patient_id": ids, "study_id": ids,
                         "path": f"{split}/" + ids + ".dicom", "view": "PA", "split": split})
    notes = ["no patient identifier: the bootstrap resamples images",
             "view: PA for every image (the dataset's description; DICOM headers not read)",
             "test: consensus of 5 radiologists" if subset == "test"
             else f"train: a label counts when {VINDR_READERS_NEEDED} of the 3 readers drew it"]
    notes += checks
    if physionet is None:
        notes.append(f"Kaggle's VinBigData table holds {len(vocabulary)} labels; findings it cannot hold are missing")
    absent_map_labels(lmap, vocabulary, notes)
    return SourceTable("vindr", subset, standard(meta, lmap.encode(positives, vocabulary=vocabulary)), lmap,
                       vocabulary, notes)


# --------------------------------------------------------------------------- MIMIC-CXR-JPG

def mimic(root: Path, subset: str, set_name: str = labelset.DEFAULT) -> SourceTable:
    """MIMIC-CXR-JPG in the same table: its CheXpert-labeler labels (as chexpert's train), the official split."""
    metadata = read_table(root, "metadata")
    split = read_table(root, "split").drop_duplicates("dicom_id").set_index("dicom_id")["split"]
    labels = load_raw_labels(root, "chexpert").set_index("study_id")
    frame = metadata.assign(split=metadata["dicom_id"].map(split).fillna(""))
    if subset == "test":
        frame = frame[frame["split"] == "test"].reset_index(drop=True)
    values = labels.reindex(frame["study_id"])[FINDINGS].to_numpy(np.float64)
    names = np.array(FINDINGS)
    positives = pd.Series([label_set(names[row == 1]) if np.isfinite(row).any() else None for row in values])
    uncertain = pd.Series([label_set(names[row == -1]) for row in values])
    view = frame["ViewPosition"].fillna("")
    meta = pd.DataFrame({
        "image_id": frame["dicom_id"], "patient_id": frame["subject_id"], "study_id": frame["study_id"],
        "path": image_paths(frame), "view": view.where(view.isin(["AP", "PA"]), np.where(
            view.isin(["LATERAL", "LL"]), "LATERAL", "OTHER")), "split": frame["split"]})
    notes = ["the CheXpert labeler's labels (blank read as negative, -1 uncertain as missing); sex and age are "
             "MIMIC-IV's (notebook 05), not in this table"]
    lmap = labelmap.load("mimic", set_name=set_name)
    return SourceTable("mimic", subset, standard(meta, lmap.encode(positives, uncertain)), lmap, notes=notes)


ADAPTERS = {"chexpert": chexpert, "nih": nih, "padchest": padchest, "vindr": vindr, "mimic": mimic}
DEFAULT_SUBSET = {"chexpert": "external", "nih": "test", "padchest": "physician", "vindr": "test", "mimic": "test"}


def read_source(source: str, data_root, subset: str | None = None, set_name: str = labelset.DEFAULT) -> SourceTable:
    """The standard table of `source` under `data_root` (subset: the source's default when None), its labels those
    of label set `set_name` (a run's), through the source's map for that set."""
    if source not in ADAPTERS:
        raise UserError(f"source {source!r} is not one of {list(TABLE_SOURCES)}")
    subset = subset or DEFAULT_SUBSET[source]
    if subset not in SUBSETS[source]:
        raise UserError(f"--subset {subset!r} is not one of {list(SUBSETS[source])} for {source}")
    root = Path(data_root)
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder; set --data-root (DATA_ROOT) to the {source} dataset")
    found = ADAPTERS[source](root, subset, set_name)
    found.table = check_table(source, root, found.table, found.notes)
    return found


def frontal(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["view"].isin(FRONTAL)].reset_index(drop=True)


def cli(command: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrlib external-table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, choices=TABLE_SOURCES)
    ap.add_argument("--data-root", required=True, help="the dataset's folder (its tables, images below it)")
    ap.add_argument("--subset", help="; ".join(f"{s}: {', '.join(v)} (default {DEFAULT_SUBSET[s]})"
                                              for s, v in SUBSETS.items()))
    ap.add_argument("--out", required=True, help="the table to write (.csv)")
    ap.add_argument("--label-set", default=labelset.DEFAULT, help="whose labels to map the source's onto "
                                                                    f"(default {labelset.DEFAULT})")
    args = ap.parse_args(argv)
    out = out_path(args.out, "--out")
    found = read_source(args.source, args.data_root, args.subset, args.label_set)
    with writing_out(out, "--out"):
        atomic_write_csv(out, found.table)
    table = found.table
    status = found.label_map.status(found.vocabulary)
    print(f"{args.out}: {len(table)} images of {table['patient_id'].nunique()} patients, {args.source} "
          f"({found.subset}); map {found.label_map.name} ({found.label_map.sha256[:12]})")
    for finding in status:
        column = table[finding]
        print(f"  {finding:<27} {status[finding]:<12} positive {int((column == 1).sum()):>7}  "
              f"negative {int((column == 0).sum()):>7}  missing {int(column.isna().sum()):>7}")
    for note in found.notes:
        print(f"  note: {note}")
    return 0
