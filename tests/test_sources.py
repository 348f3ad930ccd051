"""External sources: the adapters on the real label tables torchxrayvision's wheel ships, and the label maps.

The wheel (`pip download --no-deps torchxrayvision`, about 29 MB) holds NIH's Data_Entry_2017_v2020.csv,
Google's NIH expert labels, PadChest's whole table, CheXpert's train.csv and Kaggle's VinBigData boxes. The
counts below are those published with the datasets (NIH: Wang et al. and its v2020 table; PadChest: Bustos
et al.; CheXpert: Irvin et al.) or, where none is published, counted here independently of the adapter.
"""
from __future__ import annotations

import ast
import fcntl
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlib import labelset
from cxrlib.data import labelmap, sources
from cxrlib.errors import UserError
from cxrlib.labels import FINDINGS

PROJECT = Path(__file__).resolve().parent.parent
WHEELS = PROJECT / ".venv" / "wheels"
TABLES = {"nih": ["Data_Entry_2017_v2020.csv.gz", "google2019_nih-chest-xray-labels.csv.gz"],
          "padchest": ["PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"],
          "chexpert": [("chexpert_train.csv.gz", "train.csv.gz")], "vindr": [("vinbigdata-train.csv.gz", "train.csv.gz")]}


def wheel() -> Path:
    """torchxrayvision's wheel in .venv/wheels (make test fetches it; here too, once, under a lock)."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    with open(WHEELS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = sorted(WHEELS.glob("torchxrayvision-*.whl"))
        if not found:
            result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "torchxrayvision",
                                     "-d", str(WHEELS)], capture_output=True, text=True)
            found = sorted(WHEELS.glob("torchxrayvision-*.whl"))
            assert found, f"could not fetch torchxrayvision's wheel (pip download): {result.stderr[-500:]}"
    return found[-1]


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """One data root per source holding its real table(s) under the names the adapters expect."""
    base = tmp_path_factory.mktemp("real-tables")
    roots = {}
    with zipfile.ZipFile(wheel()) as archive:
        for source, names in TABLES.items():
            root = roots[source] = base / source
            root.mkdir()
            for name in names:
                inside, outside = name if isinstance(name, tuple) else (name, name)
                with archive.open(f"torchxrayvision/data/{inside}") as src, open(root / outside, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return roots


def positives(table: pd.DataFrame, finding: str) -> int:
    return int((table[finding] == 1).sum())


def test_nih_table_has_the_published_counts(real):
    found = sources.read_source("nih", real["nih"], "all")
    table = found.table
    assert len(table) == 112_120 and table["image_id"].is_unique
    assert table["patient_id"].nunique() == 30_805
    assert positives(table, "Pleural Effusion") == 13_317
    assert positives(table, "Pneumothorax") == 5_302
    assert positives(table, "Cardiomegaly") == 2_776
    assert positives(table, "No Finding") == 60_361
    for finding in ("Support Devices", "Fracture", "Enlarged Cardiomediastinum"):   # null: missing, never 0
        assert table[finding].isna().all(), finding
    assert table[[f for f in FINDINGS if found.label_map.entries[f].labels]].notna().all().all()
    assert set(table["view"]) == {"AP", "PA"} and (table["view"] == "PA").sum() == 67_310
    assert (table["path"].str.startswith("images/")).all()   # no image folders here: the documented fallback


def test_nih_without_test_list_asks_for_subset_all(real):
    with pytest.raises(UserError, match="subset all"):
        sources.read_source("nih", real["nih"])


def test_nih_expert_labels_have_their_counts(real):
    table = sources.read_source("nih", real["nih"], "expert").table
    assert len(table) == 4_376
    assert (table["split"] == "test").sum() == 1_962 and (table["split"] == "validate").sum() == 2_414
    assert positives(table, "Lung Opacity") == 2_166     # Airspace opacity
    assert positives(table, "Lung Lesion") == 605        # Nodule or mass
    assert positives(table, "Pneumothorax") == 238
    assert positives(table, "Fracture") == 186
    assert table["Cardiomegaly"].isna().all() and table["No Finding"].isna().all()


def test_padchest_table_has_the_published_counts(real):
    everything = sources.read_source("padchest", real["padchest"], "all")
    table = everything.table
    assert len(table) == 160_861 and table["patient_id"].nunique() == 67_625
    assert (table["bits"] == 12).sum() == 144_051 and (table["bits"] == 10).sum() == 16_810
    assert len(sources.read_source("padchest", real["padchest"]).table) == 39_053   # the physician subset
    assert set(table["view"]) == {"PA", "AP", "LATERAL", "OTHER"}
    assert (table["view"] == "LATERAL").sum() == 49_579
    raw = pd.read_csv(real["padchest"] / f"{sources.PADCHEST_TABLE}.gz", usecols=["ImageID", "Labels"])
    labels = raw["Labels"].map(sources.padchest_labels)
    # exact matching: a healed (callus) rib fracture alone is no Fracture, and "rib fracture" is one
    callus_only = labels.map(lambda s: s == frozenset({"callus rib fracture"})).to_numpy()
    rib = labels.map(lambda s: bool(s) and "rib fracture" in s).to_numpy()
    assert callus_only.sum() > 100 and (table.loc[callus_only, "Fracture"] == 0).all()
    assert (table.loc[rib, "Fracture"] == 1).all()
    unlabelled = labels.isna().to_numpy()
    assert unlabelled.sum() == 880 and table.loc[unlabelled, FINDINGS].isna().all().all()


def test_padchest_rows_with_no_diagnostic_label_are_missing_and_lung_opacity_holds_atelectasis(real):
    """The map's decisions on the real table: `exclude`, `unchanged`, `suboptimal study` alone say nothing about any
    finding (1,284 physician rows: missing, not 14 negatives); every Atelectasis, Consolidation, Pneumonia and Edema
    positive is a Lung Opacity positive (CheXpert's hierarchy); dai, loculated fissural effusion, cavitation land."""
    found = sources.read_source("padchest", real["padchest"])   # physicians
    table = found.table
    raw = pd.read_csv(real["padchest"] / f"{sources.PADCHEST_TABLE}.gz", usecols=["MethodLabel", "Labels"])
    labels = raw.loc[raw["MethodLabel"].eq("Physician"), "Labels"].map(sources.padchest_labels).reset_index(drop=True)
    silent = labels.map(lambda s: s is not None and s <= {"exclude", "unchanged", "suboptimal study"}).to_numpy()
    assert silent.sum() == 1_284 and table.loc[silent, FINDINGS].isna().all().all()
    assert "1284 rows labelled only exclude, unchanged, suboptimal study: every finding missing" in " ".join(found.notes)
    lmap = labelmap.load("padchest")
    opacity = set(lmap.entries["Lung Opacity"].labels)
    for child in ("Atelectasis", "Consolidation", "Pneumonia", "Edema"):
        assert set(lmap.entries[child].labels) <= opacity, child
        assert (table.loc[table[child] == 1, "Lung Opacity"] == 1).all(), child
    assert (table["Atelectasis"] == 1).sum() > 1_000
    for label, finding in (("dai", "Support Devices"), ("loculated fissural effusion", "Pleural Effusion"),
                           ("cavitation", "Lung Lesion")):
        rows = labels.map(lambda s, x=label: bool(s) and x in s).to_numpy()
        assert rows.sum() > 10 and (table.loc[rows, finding] == 1).all(), label


def test_implausible_ages_are_missing_with_a_count(real):
    found = sources.read_source("nih", real["nih"], "expert")
    assert found.table["age"].max() <= 110 and found.table["age"].notna().sum() == 4_376 - 1
    assert "1 images with an age outside 0-110 years (e.g. 155): age missing" in found.notes
    assert not any("outside 0-110" in n for n in sources.read_source("nih", real["nih"], "all").notes)


def test_vindr_enlarged_cardiomediastinum_is_missing_with_its_reason():
    entry = labelmap.load("vindr").entries["Enlarged Cardiomediastinum"]
    assert entry.status == "missing" and "Aortic enlargement" in entry.reason
    row = labelmap.load("vindr").table().set_index("finding").loc["Enlarged Cardiomediastinum"]
    assert row["status"] == "missing" and row["reason"] == entry.reason


def test_chexpert_train_table_has_the_published_counts(real):
    table = sources.read_source("chexpert", real["chexpert"], "train").table
    assert len(table) == 223_414 and table["patient_id"].nunique() == 64_540
    frontal = sources.frontal(table)
    assert len(frontal) == 191_027 - 17    # 16 LL and 1 RL views are frontal-tagged rows that are not AP or PA
    assert (table["view"] == "AP").sum() == 161_590 and (table["view"] == "PA").sum() == 29_420
    assert positives(table, "No Finding") == 22_381
    assert positives(table, "Pleural Effusion") == 86_187
    assert table["Pleural Effusion"].isna().sum() == 11_628   # the labeler's uncertain: missing
    assert table["path"].str.startswith("train/patient").all()   # CheXpert-v1.0-small/ is the data root


def test_vinbigdata_table_keeps_missing_what_it_cannot_hold(real):
    found = sources.read_source("vindr", real["vindr"], "train")
    table = found.table
    assert len(table) == 15_000 and table["image_id"].is_unique
    boxes = pd.read_csv(real["vindr"] / "train.csv.gz")
    readers = boxes.drop_duplicates(["image_id", "rad_id", "class_name"])
    votes = readers[readers["class_name"] == "No finding"].groupby("image_id").size()
    assert positives(table, "No Finding") == int((votes >= 2).sum())
    for finding in ("Edema", "Pneumonia", "Fracture", "Support Devices"):   # not among the 15 Kaggle classes
        assert table[finding].isna().all(), finding
    assert found.label_map.status(found.vocabulary)["Fracture"] == "missing"
    with pytest.raises(UserError, match="PhysioNet"):
        sources.read_source("vindr", real["vindr"], "test")


def test_every_mapped_label_exists_in_the_real_vocabulary(real):
    """A misspelt label in a map would match nothing and make a finding silently all-negative."""
    nih = pd.read_csv(real["nih"] / "Data_Entry_2017_v2020.csv.gz", usecols=["Finding Labels"])
    vocabulary = {"nih": {x for s in nih["Finding Labels"] for x in s.split("|")},
                  "nih_expert": {"Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"},
                  "chexpert": set(FINDINGS)}
    pad = pd.read_csv(real["padchest"] / f"{sources.PADCHEST_TABLE}.gz", usecols=["Labels"])
    vocabulary["padchest"] = {x.strip() for s in pad["Labels"].dropna()
                              for x in (ast.literal_eval(s) if s.startswith("[") else [])}
    for name, words in vocabulary.items():
        known = {labelmap.normalize(w) for w in words}
        for entry in labelmap.load(name).entries.values():
            unknown = [x for x in entry.labels if labelmap.normalize(x) not in known]
            assert not unknown, (name, entry.finding, unknown)
    kaggle = set(pd.read_csv(real["vindr"] / "train.csv.gz", usecols=["class_name"])["class_name"])
    from cxrlib.synthetic.external_standins import VINDR_COLUMNS
    assert kaggle - {"No finding"} <= set(VINDR_COLUMNS)   # the PhysioNet columns hold Kaggle's classes
    for entry in labelmap.load("vindr").entries.values():
        assert set(entry.labels) <= set(VINDR_COLUMNS), entry.finding


# --------------------------------------------------------------------------- label maps

def write_map(path: Path, findings: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"source": "x", "findings": findings}))
    return path


def test_a_map_must_name_the_14_findings_and_explain_approximations(tmp_path):
    good = {f: [f] for f in FINDINGS}
    labelmap.load("x", write_map(tmp_path / "a.yaml", good))
    with pytest.raises(UserError, match="absent"):
        labelmap.load("x", write_map(tmp_path / "b.yaml", {f: [f] for f in FINDINGS[1:]}))
    with pytest.raises(UserError, match="reason"):
        labelmap.load("x", write_map(tmp_path / "c.yaml", {**good, "Edema": {"labels": ["e"], "approximate": True}}))
    with pytest.raises(UserError, match="list of label strings"):
        labelmap.load("x", write_map(tmp_path / "d.yaml", {**good, "Edema": "edema"}))


def test_encoding_is_exact_and_keeps_missing_apart_from_negative(tmp_path):
    lmap = labelmap.load("x", write_map(tmp_path / "m.yaml", {
        **{f: None for f in FINDINGS}, "Fracture": ["rib fracture"], "Edema": ["Pulmonary  Edema"]}))
    images = pd.Series([frozenset({"callus rib fracture"}), frozenset({"rib fracture"}), None,
                        frozenset({"pulmonary edema"})])
    unsure = pd.Series([frozenset(), frozenset(), frozenset(), frozenset({"rib fracture"})])
    out = lmap.encode(images, unsure)
    assert out["Fracture"].tolist()[:2] == [0.0, 1.0]           # no substring match
    assert np.isnan(out["Fracture"].iloc[2]) and np.isnan(out["Edema"].iloc[2])   # unlabelled image
    assert np.isnan(out["Fracture"].iloc[3])                     # uncertain, not positive: missing
    assert out["Edema"].iloc[3] == 1.0                           # case and spaces do not matter
    assert out["Cardiomegaly"].isna().all()                      # null: missing for every image
    assert lmap.record()["sha256"] == labelmap.load("x", tmp_path / "m.yaml").sha256


def test_the_docs_show_the_label_maps_as_they_are():
    page = (PROJECT / "docs" / "external-validation.md").read_text()
    assert labelmap.markdown_table() in page, "regenerate the table: python -c 'from cxrlib.data.labelmap import " \
                                              "markdown_table; print(markdown_table())'"


def test_mimic_is_one_source_among_them(tmp_path):
    from cxrlib.data.cohort import load_raw_labels, read_table
    from cxrlib.synthetic import mimic_cxr

    mimic_cxr.generate(tmp_path, subjects=200, seed=0, images=False, progress=False)
    everything = sources.read_source("mimic", tmp_path, "all").table
    metadata, split = read_table(tmp_path, "metadata"), read_table(tmp_path, "split")
    assert len(everything) == len(metadata) and everything["image_id"].is_unique
    assert (everything["split"] == "test").sum() == (split["split"] == "test").sum()
    assert len(sources.read_source("mimic", tmp_path).table) == (split["split"] == "test").sum()
    raw = load_raw_labels(tmp_path, "chexpert").set_index("study_id")
    cells = raw.reindex(everything["study_id"])[FINDINGS].to_numpy()
    ours = everything[FINDINGS].to_numpy()
    assert (np.isnan(ours) == ((cells == -1) | np.all(np.isnan(cells), 1, keepdims=True))).all()
    blank = np.isnan(cells) & ~np.all(np.isnan(cells), 1, keepdims=True)   # not mentioned: negative
    assert (ours[cells == 1] == 1).all() and (ours[blank] == 0).all()


def test_a_table_without_its_columns_is_named_with_what_it_lacks(tmp_path):
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text("Image Index,Labels\na.png,x\n")
    with pytest.raises(UserError, match=r"Data_Entry_2017_v2020.csv: no column\(s\) \['Finding Labels'"):
        sources.read_source("nih", tmp_path, "all")
    with pytest.raises(UserError, match="no valid.csv"):
        sources.read_source("chexpert", tmp_path)


def test_a_vindr_label_the_release_lacks_leaves_its_finding_missing_not_negative(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "image_labels_test.csv").write_text(
        "image_id,Cardiomegaly,Pleural effusion,No finding\nab12,1,0,0\ncd34,0,0,1\n")
    found = sources.read_source("vindr", tmp_path)
    table = found.table
    assert table["Cardiomegaly"].tolist() == [1.0, 0.0] and table["No Finding"].tolist() == [0.0, 1.0]
    assert table["Pneumothorax"].isna().all() and table["Edema"].isna().all()   # columns it does not have
    assert any("labels of the map this table never holds" in note for note in found.notes)
    assert table["path"].tolist() == ["test/ab12.dicom", "test/cd34.dicom"]


def test_nih_onto_cxr_lt_2024_names_the_labels_the_14_cannot(real):
    """Through the map for CXR-LT 2024 (label_maps/cxr-lt-2024/nih.yaml): NIH's Mass, Nodule, Emphysema, Fibrosis,
    Hernia, Infiltration and Pleural_Thickening are labels of their own, counted as the raw table counts them; a label
    NIH cannot say (Fracture, Kyphosis) is missing for every image, never negative."""
    found = sources.read_source("nih", real["nih"], "all", "cxr-lt-2024")
    table = found.table
    raw = pd.read_csv(real["nih"] / "Data_Entry_2017_v2020.csv.gz", usecols=["Finding Labels"])["Finding Labels"]
    has = raw.str.split("|").map(set)
    for ours, theirs in (("Mass", "Mass"), ("Nodule", "Nodule"), ("Emphysema", "Emphysema"), ("Fibrosis", "Fibrosis"),
                         ("Hernia", "Hernia"), ("Infiltration", "Infiltration"), ("Pleural Thickening", "Pleural_Thickening"),
                         ("Pleural Effusion", "Effusion")):
        assert positives(table, ours) == int(has.map(lambda s, t=theirs: t in s).sum()) > 0, ours
    assert positives(table, "Normal") == 60_361   # NIH's No Finding, approximate, as the map says
    for label in ("Fracture", "Kyphosis", "Support Devices", "Tuberculosis"):
        assert table[label].isna().all(), label
    assert list(found.label_map.entries) == list(labelset.load("cxr-lt-2024").labels)
