"""cohort.py: one case per selection rule, the label policies, splits, errors, and a brute-force check."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from cxrlib.__main__ import main
from cxrlib.data import cohort
from cxrlib.data.funnel import CohortReport, compare_with_reference
from cxrlib.errors import UserError
from cxrlib.labels import FINDINGS
from cxrlib.params import Params

META_EXTRA = {"PerformedProcedureStepDescription": "CHEST (PORTABLE AP)", "Rows": 3056, "Columns": 2544,
              "StudyDate": 21800506, "StudyTime": 213014.531}


def dicom(n: int) -> str:
    h = f"{n:040x}"
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def write(path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, compression="gzip" if path.name.endswith(".gz") else None)


def write_tables(root, images, labels=None, split=None, ext=".csv.gz", source="negbio"):
    """images: (subject, study, dicom, view) tuples; labels: {study: {finding: value}} (default all 0)."""
    meta = pd.DataFrame(images, columns=["subject_id", "study_id", "dicom_id", "ViewPosition"])
    meta = meta.assign(**META_EXTRA)[["dicom_id", "subject_id", "study_id", *META_EXTRA, "ViewPosition"]]
    write(root / f"mimic-cxr-2.0.0-metadata{ext}", meta)
    if labels is None:
        labels = {study: {} for study in meta["study_id"].unique()}
    subject_of = dict(zip(meta["study_id"], meta["subject_id"]))
    rows = [{"subject_id": subject_of.get(study, "19999999"), "study_id": study,
             **{f: values.get(f, 0.0) for f in FINDINGS}} for study, values in labels.items()]
    write(root / f"mimic-cxr-2.0.0-{source}{ext}", pd.DataFrame(rows, columns=["subject_id", "study_id", *FINDINGS]))
    if split is not None:
        frame = meta[["dicom_id", "study_id", "subject_id"]].assign(split=meta["dicom_id"].map(split))
        write(root / f"mimic-cxr-2.0.0-split{ext}", frame)
    return root


def build(root, **params):
    return cohort.build_cohort(root, Params(data_root=str(root), **params))


# --------------------------------------------------------------------------- selection rules

def test_lowest_dicom_among_several_ap_images(tmp_path):
    write_tables(tmp_path, [("10000001", "50000010", dicom(3), "AP"), ("10000001", "50000010", dicom(1), "AP"),
                            ("10000001", "50000010", dicom(0), "PA"), ("10000001", "50000010", dicom(2), "AP")])
    frame, _ = build(tmp_path)
    assert frame["dicom_id"].tolist() == [dicom(1)]
    assert frame["view"].tolist() == ["AP"]


def test_lowest_study_without_ap_is_skipped(tmp_path):
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "PA"), ("10000001", "50000010", dicom(2), "LATERAL"),
                            ("10000001", "50000020", dicom(4), "AP"), ("10000001", "50000030", dicom(3), "AP")])
    frame, report = build(tmp_path)
    assert frame[["study_id", "dicom_id"]].values.tolist() == [["50000020", dicom(4)]]
    assert report.studies_in_view == 2 and report.images_in_view == 2


def test_ap_variants_are_not_ap(tmp_path):
    variants = ["AP AXIAL", "AP LLD", "", "ap", " AP", "AP "]
    images = [("10000001", f"5000000{i}", dicom(i), v) for i, v in enumerate(variants)]
    images.append(("10000001", "50000009", dicom(9), "AP"))
    images += [("10000002", "50000100", dicom(10 + i), v) for i, v in enumerate(variants)]
    write_tables(tmp_path, images)
    frame, report = build(tmp_path)
    assert frame[["subject_id", "study_id"]].values.tolist() == [["10000001", "50000009"]]
    assert report.images_in_view == 1 and report.subjects_in_view == 1


def test_study_id_is_compared_as_a_string(tmp_path):
    # Numerically 5000001 < 50000009; as strings "50000009" < "5000001". The literal order wins.
    write_tables(tmp_path, [("10000001", "5000001", dicom(1), "AP"), ("10000001", "50000009", dicom(2), "AP"),
                            ("10000002", "0500", dicom(3), "AP"), ("10000002", "500", dicom(4), "AP")])
    frame, _ = build(tmp_path)
    assert frame["study_id"].tolist() == ["50000009", "0500"]  # leading zero kept as written


def test_output_columns_paths_and_order(tmp_path):
    write_tables(tmp_path, [("19000002", "59000000", dicom(1), "AP"), ("10000032", "50414267", dicom(2), "AP")])
    frame, _ = build(tmp_path)
    assert list(frame.columns) == cohort.OUTPUT_COLUMNS
    assert frame["subject_id"].tolist() == ["10000032", "19000002"]
    assert frame["path"].tolist() == [f"files/p10/p10000032/s50414267/{dicom(2)}.jpg",
                                      f"files/p19/p19000002/s59000000/{dicom(1)}.jpg"]
    assert all(frame[f].dtype == np.float32 for f in FINDINGS)


# --------------------------------------------------------------------------- labels

RAW = {"Atelectasis": 1.0, "Cardiomegaly": 0.0, "Consolidation": -1.0, "Edema": "", "Fracture": -1.0,
       "Lung Lesion": ""}


def labels_for(tmp_path, **params):
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "AP")], labels={"50000010": RAW})
    frame, report = build(tmp_path, **params)
    return frame.iloc[0][["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Fracture",
                          "Lung Lesion"]].tolist(), report


def same(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("uncertain, blank, expected", [
    ("zeros", "zeros", [1, 0, 0, 0, 0, 0]),
    ("ones", "zeros", [1, 0, 1, 0, 1, 0]),
    ("ignore", "zeros", [1, 0, np.nan, 0, np.nan, 0]),
    ("zeros", "ignore", [1, 0, 0, np.nan, 0, np.nan]),
    ("ignore", "ignore", [1, 0, np.nan, np.nan, np.nan, np.nan]),
    ({"Consolidation": "ones", "default": "ignore"}, {"Edema": "ignore"}, [1, 0, 1, np.nan, np.nan, 0]),
])
def test_label_policies(tmp_path, uncertain, blank, expected):
    values, report = labels_for(tmp_path, uncertain_policy=uncertain, blank_policy=blank)
    assert same(values, expected)
    assert report.positives == sum(v == 1 for v in expected)
    assert report.ignored == sum(math.isnan(v) for v in expected)
    assert report.label_cells == 14 - report.ignored


def test_missing_label_row_excludes_the_subject(tmp_path):
    # Subject 2's lowest AP study has no label row: dropped, not moved to its next study.
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "AP"), ("10000002", "50000020", dicom(2), "AP"),
                            ("10000002", "50000030", dicom(3), "AP")],
                 labels={"50000010": {}, "50000030": {"Edema": 1.0}})
    with pytest.warns(UserWarning, match="1 subject"):
        frame, report = build(tmp_path)
    assert frame["subject_id"].tolist() == ["10000001"]
    assert report.excluded_no_labels == [{"subject_id": "10000002", "study_id": "50000020"}]
    assert report.subjects_in_view == 2 and report.subjects_with_labels == 1
    funnel = report.funnel_frame().set_index("step")["count"]
    assert funnel.tolist() == [3, 0, 3, 3, 2, 2, 1, 1, 0, 0]


def test_chexpert_source(tmp_path):
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "AP")], labels={"50000010": {"Edema": 1.0}},
                 source="chexpert")
    write(tmp_path / "mimic-cxr-2.0.0-negbio.csv.gz",
          pd.DataFrame([["10000001", "50000010", *[1.0] * 14]], columns=["subject_id", "study_id", *FINDINGS]))
    frame, report = build(tmp_path, label_source="chexpert")
    assert frame[FINDINGS].iloc[0].tolist() == [1.0 if f == "Edema" else 0.0 for f in FINDINGS]
    assert report.sources["chexpert"].endswith("chexpert.csv.gz")


def test_load_raw_labels_keeps_uncertain_values(tmp_path):
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "AP")], labels={"50000010": RAW})
    raw = cohort.load_raw_labels(tmp_path, "negbio", ["50000099", "50000010"])
    assert raw["study_id"].tolist() == ["50000099", "50000010"]
    assert raw[FINDINGS].iloc[0].isna().all()
    assert raw.iloc[1]["subject_id"] == "10000001"
    assert raw.iloc[1]["Consolidation"] == -1.0 and math.isnan(raw.iloc[1]["Edema"])


def test_prevalence_counts_raw_values_per_split(tmp_path):
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "AP"), ("10000002", "50000019", dicom(2), "AP")],
                 labels={"50000010": RAW, "50000019": {"Atelectasis": -1.0}})
    _, report = build(tmp_path)
    prev = report.prevalence_frame().set_index(["split", "finding"])
    assert prev.loc[("all", "Atelectasis"), ["positive", "uncertain"]].tolist() == [1, 1]
    assert prev.loc[("test", "Atelectasis"), ["images", "positive", "uncertain"]].tolist() == [1, 0, 1]
    assert prev.loc[("train", "Edema"), "blank"] == 1
    assert prev.loc[("train", "Atelectasis"), "positive_rate"] == 1.0
    json.dumps(report.to_dict())  # JSON-able for saving


# --------------------------------------------------------------------------- splits

def test_test_split_is_study_id_ending_in_8_or_9(tmp_path):
    images = [(f"1000000{d}", f"5000001{d}", dicom(d), "AP") for d in range(10)]
    write_tables(tmp_path, images)
    frame, report = build(tmp_path)
    assert dict(zip(frame["study_id"].str[-1], frame["split"])) == {
        **{str(d): "train" for d in range(8)}, "8": "test", "9": "test"}
    assert report.split_counts == {"train": 8, "validate": 0, "test": 2}


def random_subjects(n, seed=0):
    rng = np.random.default_rng(seed)
    subjects = rng.choice(np.arange(10_000_000, 20_000_000), n, replace=False)
    studies = rng.choice(np.arange(50_000_000, 60_000_000), n, replace=False)
    return [(str(s), str(t), dicom(i), "AP") for i, (s, t) in enumerate(zip(subjects, studies))]


def test_validation_is_stable_per_subject_and_only_from_train(tmp_path):
    images = random_subjects(400)
    write_tables(tmp_path / "all", images)
    full, report = build(tmp_path / "all", val_fraction=0.3, split_seed=7)
    plain, _ = build(tmp_path / "all")
    assert (full["split"] == "test").tolist() == (plain["split"] == "test").tolist()  # test untouched
    n_val, n_nontest = report.split_counts["validate"], (plain["split"] == "train").sum()
    assert 0.2 < n_val / n_nontest < 0.4
    write_tables(tmp_path / "half", images[::2])
    half, _ = build(tmp_path / "half", val_fraction=0.3, split_seed=7)
    before = full.set_index("subject_id")["split"]
    assert half.set_index("subject_id")["split"].equals(before.loc[half["subject_id"]])
    other_seed, _ = build(tmp_path / "all", val_fraction=0.3, split_seed=8)
    assert not other_seed["split"].equals(full["split"])
    # the training seed (weights, data order) does not move the validation split: a seed sweep shares one cohort
    other_training_seed, _ = build(tmp_path / "all", val_fraction=0.3, split_seed=7, seed=8)
    assert other_training_seed["split"].equals(full["split"])


def test_official_split(tmp_path):
    images = [("10000001", "50000018", dicom(1), "AP"), ("10000001", "50000018", dicom(2), "AP"),
              ("10000002", "50000020", dicom(3), "AP"), ("10000003", "50000030", dicom(4), "AP")]
    split = {dicom(1): "validate", dicom(2): "test", dicom(3): "test", dicom(4): "train"}
    write_tables(tmp_path, images, split=split)
    with pytest.raises(UserError, match="val_fraction must be 0 with split_mode: official"):
        build(tmp_path, split_mode="official", val_fraction=0.5)
    frame, report = build(tmp_path, split_mode="official")
    # study ...18 would be "test" by the seed rule; the official split says validate
    assert frame["split"].tolist() == ["validate", "test", "train"]
    assert report.split_counts == {"train": 1, "validate": 1, "test": 1}


def test_views_ap_and_pa(tmp_path):
    write_tables(tmp_path, [("10000001", "50000020", dicom(5), "AP"), ("10000001", "50000010", dicom(7), "PA"),
                            ("10000001", "50000010", dicom(6), "LATERAL"), ("10000002", "50000030", dicom(9), "PA"),
                            ("10000002", "50000030", dicom(8), "AP")])
    frame, report = build(tmp_path, views=["AP", "PA"])
    assert frame[["study_id", "dicom_id", "view"]].values.tolist() == [
        ["50000010", dicom(7), "PA"], ["50000030", dicom(8), "AP"]]
    assert report.images_in_view == 4
    assert report.funnel_frame()["step"][2] == "images in views [AP, PA]"


# --------------------------------------------------------------------------- files and errors

def test_csv_and_csv_gz_give_identical_results(tmp_path):
    images = random_subjects(50)
    write_tables(tmp_path / "gz", images, ext=".csv.gz")
    write_tables(tmp_path / "plain", images, ext=".csv")
    a, _ = build(tmp_path / "gz")
    b, _ = build(tmp_path / "plain")
    pd.testing.assert_frame_equal(a, b)
    # both present: the .csv.gz wins
    write_tables(tmp_path / "gz", images[:10], ext=".csv")
    assert cohort.table_path(tmp_path / "gz", "metadata").name.endswith(".csv.gz")
    assert len(build(tmp_path / "gz")[0]) == 50


def test_missing_file_names_both_names_and_physionet(tmp_path):
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "AP")])
    with pytest.raises(UserError) as e:
        build(tmp_path, split_mode="official")
    message = str(e.value)
    for part in ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv", str(tmp_path),
                 "physionet.org/content/mimic-cxr-jpg", "make fetch"):
        assert part in message


def test_missing_column_names_file_and_column(tmp_path):
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "AP")])
    path = tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz"
    write(path, pd.read_csv(path).drop(columns="ViewPosition"))
    with pytest.raises(UserError, match=r"metadata\.csv\.gz: missing column\(s\) \['ViewPosition'\]") as e:
        build(tmp_path)
    assert "StudyDate" in str(e.value)  # lists the columns found


def test_bad_label_value_and_truncated_file(tmp_path):
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "AP")], labels={"50000010": {"Edema": 2.0}})
    with pytest.raises(UserError, match="'Edema' holds \\[2.0\\]"):
        build(tmp_path)
    path = tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match="could not be read"):
        build(tmp_path)


def test_write_and_read_back(tmp_path):
    write_tables(tmp_path, [("10000001", "50000010", dicom(1), "AP")], labels={"50000010": RAW})
    frame, _ = build(tmp_path, uncertain_policy="ignore")
    out = cohort.write_cohort(frame, tmp_path / "run" / "cohort.csv")
    text = out.read_text().splitlines()
    assert text[0].split(",")[:6] == ["subject_id", "study_id", "dicom_id", "view", "path", "split"]
    assert ",," in text[1]  # ignored labels are empty cells
    pd.testing.assert_frame_equal(cohort.read_cohort(out), frame)
    assert not list((tmp_path / "run").glob(".*"))  # no temp files left


# --------------------------------------------------------------------------- reference figures

def report_with(**overrides):
    base = dict(data_root="x", settings=dict(views=["AP"], label_source="negbio", uncertain_policy="zeros",
                                             blank_policy="zeros", split_mode="seed", val_fraction=0.0, seed=0),
                sources={}, metadata_rows=377_110, images_in_view=147_169, studies_in_view=1,
                subjects_in_view=33_509, subjects_with_labels=33_501,
                split_counts={"train": 26_807, "validate": 0, "test": 6_694},
                positives=58_839, negatives=410_175, label_cells=469_014)
    base.update(overrides)
    return CohortReport(**base)


def test_reference_comparison_flags_only_on_the_full_release():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not compare_with_reference(report_with())["flag"].any()
        small = report_with(metadata_rows=2_000, positives=5)
        table = compare_with_reference(small)
        assert not table["flag"].any() and table.set_index("figure").loc["positives", "difference"] == 5 - 58_839
        other_rules = report_with(positives=5, settings={**report_with().settings, "uncertain_policy": "ones"})
        assert not compare_with_reference(other_rules)["flag"].any()
    with pytest.warns(UserWarning, match="positives 58,838 vs 58,839"):
        table = compare_with_reference(report_with(positives=58_838))
    assert table[table["flag"]]["figure"].tolist() == ["positives"]


# --------------------------------------------------------------------------- brute force

def mimic_like(n_subjects: int, seed: int = 0):
    """Random MIMIC-shaped tables: several studies and images per subject, real view mix and rare variants."""
    rng = np.random.default_rng(seed)
    views = ["AP", "PA", "LATERAL", "LL", "", "AP AXIAL", "AP LLD", "ap"]
    probs = np.array([0.39, 0.255, 0.22, 0.093, 0.042, 0.0, 0.0, 0.0]) + 0.01
    images, labels, split = [], {}, {}
    study_pool = iter(rng.choice(np.arange(50_000_000, 60_000_000), 10 * n_subjects, replace=False))
    for s in rng.choice(np.arange(10_000_000, 20_000_000), n_subjects, replace=False):
        official = rng.choice(["train", "validate", "test"], p=[0.9, 0.05, 0.05])
        for t in [next(study_pool) for _ in range(1 + rng.poisson(1.5))]:
            if rng.random() > 0.05:  # a few studies have no label row
                values = rng.choice([1.0, 0.0, -1.0, np.nan], 14, p=[0.15, 0.1, 0.1, 0.65])
                labels[str(t)] = dict(zip(FINDINGS, values))
            for _ in range(1 + rng.poisson(0.7)):
                d = "-".join(f"{x:08x}" for x in rng.integers(0, 2**32, 5))
                images.append((str(s), str(t), d, rng.choice(views, p=probs / probs.sum())))
                split[d] = official
    return images, labels, split


def read_rows(path):
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def brute_force(root, views, uncertain, blank, val_fraction, seed):
    best = {}
    for r in read_rows(root / "mimic-cxr-2.0.0-metadata.csv.gz"):
        if r["ViewPosition"] in views:
            key = (r["study_id"], r["dicom_id"])
            if r["subject_id"] not in best or key < best[r["subject_id"]]:
                best[r["subject_id"]] = key
    labels = {r["study_id"]: r for r in read_rows(root / "mimic-cxr-2.0.0-negbio.csv.gz")}
    policy = {"zeros": 0.0, "ones": 1.0, "ignore": math.nan}
    rows = []
    for subject in sorted(best):
        study, dicom_id = best[subject]
        if study not in labels:
            continue
        split = "test" if study[-1] in "89" else "train"
        if split == "train" and val_fraction > 0:
            h = int.from_bytes(hashlib.sha256(f"{seed}:{subject}".encode()).digest()[:8], "big") / 2**64
            split = "validate" if h < val_fraction else "train"
        targets = []
        for f in FINDINGS:
            v = labels[study][f]
            if v == "":
                targets.append(policy[blank])
            elif float(v) == -1.0:
                targets.append(policy[uncertain])
            else:
                targets.append(1.0 if float(v) == 1.0 else 0.0)
        rows.append((subject, study, dicom_id, split, *targets))
    return rows


@pytest.mark.parametrize("views, uncertain, blank, val_fraction", [
    (["AP"], "zeros", "zeros", 0.0), (["AP", "PA"], "ignore", "ignore", 0.2), (["PA"], "ones", "zeros", 0.5)])
def test_matches_brute_force(tmp_path, views, uncertain, blank, val_fraction):
    images, labels, _ = mimic_like(600, seed=3)
    write_tables(tmp_path, images, labels=labels)
    assert len(images) > 1500
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame, report = build(tmp_path, views=views, uncertain_policy=uncertain, blank_policy=blank,
                              val_fraction=val_fraction, split_seed=5)
    expected = brute_force(tmp_path, views, uncertain, blank, val_fraction, seed=5)
    ours = [tuple(r) for r in frame[["subject_id", "study_id", "dicom_id", "split", *FINDINGS]]
            .astype(object).itertuples(index=False)]
    assert len(ours) == len(expected) > 300
    for a, b in zip(ours, expected):
        assert a[:4] == b[:4] and same(a[4:], b[4:])
    assert report.excluded_no_labels  # the generator drops some label rows


# --------------------------------------------------------------------------- command line

def test_cli_writes_cohort_and_report(tmp_path, capsys):
    images, labels, split = mimic_like(60, seed=1)
    write_tables(tmp_path / "data", images, labels=labels, split=split)
    out, rep = tmp_path / "out" / "cohort.csv", tmp_path / "out" / "report.json"
    code = main(["cohort", "--data-root", str(tmp_path / "data"), "--out", str(out), "--report", str(rep),
                 "-p", "split_mode=official", "-p", "views=[AP, PA]"])
    assert code == 0
    printed = capsys.readouterr().out
    frame = cohort.read_cohort(out)
    assert f"cohort: {len(frame):,} images" in printed and "wrote" in printed
    assert set(frame["view"]) <= {"AP", "PA"}
    assert json.loads(rep.read_text())["settings"]["split_mode"] == "official"


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    code = main(["cohort", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "mimic-cxr-2.0.0-metadata.csv.gz" in err
    assert "Traceback" not in err
    code = main(["cohort", "--out", str(tmp_path / "c.csv"), "-p", "views=AP", "-p", "label_source=other"])
    assert code == 2 and "label_source" in capsys.readouterr().err


# --------------------------------------------------------------------------- scale (for timing, not a test)

def write_mimic_scale(root, n_subjects: int = 65_379, seed: int = 0):
    """MIMIC-scale tables (~228k studies, ~377k images, the real view mix) as .csv.gz, vectorised.

    Timing: .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); import test_cohort as t;
            t.write_mimic_scale('/tmp/mimic-scale')"  then  python -m cxrlib cohort --data-root /tmp/mimic-scale ...
    """
    rng = np.random.default_rng(seed)
    subjects = rng.choice(np.arange(10_000_000, 20_000_000), n_subjects, replace=False).astype(str)
    per_subject = 1 + rng.poisson(2.485, n_subjects)
    study_subject = np.repeat(subjects, per_subject)
    studies = rng.choice(np.arange(50_000_000, 60_000_000), len(study_subject), replace=False).astype(str)
    per_study = 1 + rng.poisson(0.655, len(studies))
    image_study, image_subject = np.repeat(studies, per_study), np.repeat(study_subject, per_study)
    words = rng.integers(0, 2**32, (len(image_study), 5))
    dicoms = ["-".join(f"{x:08x}" for x in row) for row in words.tolist()]
    views = rng.choice(["AP", "PA", "LATERAL", "LL", ""], len(dicoms), p=[0.39, 0.255, 0.22, 0.093, 0.042])
    meta = pd.DataFrame({"dicom_id": dicoms, "subject_id": image_subject, "study_id": image_study, **META_EXTRA,
                         "ViewPosition": views})
    write(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta)
    values = rng.choice([1.0, 0.0, -1.0, np.nan], (len(studies), 14), p=[0.15, 0.1, 0.1, 0.65])
    labels = pd.DataFrame(values, columns=FINDINGS).assign(subject_id=study_subject, study_id=studies)
    write(root / "mimic-cxr-2.0.0-negbio.csv.gz", labels[["subject_id", "study_id", *FINDINGS]].iloc[8:])
    split = rng.choice(["train", "validate", "test"], len(dicoms), p=[0.978, 0.008, 0.014])
    write(root / "mimic-cxr-2.0.0-split.csv.gz", meta[["dicom_id", "study_id", "subject_id"]].assign(split=split))
    return root


# --------------------------------------------------------------------------- full-data cohorts

FULL_TABLE = [
    # subject 1: two studies, the first with two frontal images (AP and PA) and a lateral
    ("10000001", "50000010", dicom(2), "PA"), ("10000001", "50000010", dicom(1), "AP"),
    ("10000001", "50000010", dicom(3), "LATERAL"), ("10000001", "50000020", dicom(4), "AP"),
    # subject 2: a study with a blank view only, then one whose label row is missing, then a PA study
    ("10000002", "50000030", dicom(5), ""), ("10000002", "50000040", dicom(6), "AP"),
    ("10000002", "50000050", dicom(7), "PA"), ("10000002", "50000050", dicom(8), "PA"),
]
FULL_LABELS = {"50000010": {"Edema": 1.0}, "50000020": {}, "50000030": {}, "50000050": {"Atelectasis": -1.0}}


@pytest.mark.parametrize("studies, images, expected", [
    ("first", "first", [dicom(1)]),                                          # subject 2: first study unlabelled
    ("first", "all", [dicom(1), dicom(2)]),
    ("all", "first", [dicom(1), dicom(4), dicom(7)]),
    ("all", "all", [dicom(1), dicom(2), dicom(4), dicom(7), dicom(8)]),
])
def test_studies_and_images_per_subject(tmp_path, studies, images, expected):
    write_tables(tmp_path, FULL_TABLE, labels=FULL_LABELS)
    with pytest.warns(UserWarning, match="dropped"):
        frame, report = build(tmp_path, views=["AP", "PA"], studies_per_subject=studies, images_per_study=images)
    assert frame["dicom_id"].tolist() == expected
    assert report.excluded_no_labels == [{"subject_id": "10000002", "study_id": "50000040"}]
    funnel = report.funnel_frame().set_index("step")["count"]
    assert funnel.iloc[1] == 1                                   # the blank ViewPosition is counted, not lost
    assert report.images_in_view == 6 and report.selected_images == len(expected) + 1
    assert report.images_with_labels == len(expected) == report.images
    # labels are per study: every image of a study carries its row
    assert frame.loc[frame["study_id"] == "50000010", "Edema"].eq(1.0).all()


def test_official_split_for_every_image_of_a_full_cohort(tmp_path):
    split = {dicom(1): "train", dicom(2): "train", dicom(4): "validate", dicom(7): "test", dicom(8): "test"}
    unused = {dicom(3): "train", dicom(5): "test", dicom(6): "train"}   # a lateral, a blank view, no label row
    write_tables(tmp_path, FULL_TABLE, labels=FULL_LABELS, split={**split, **unused})
    with pytest.warns(UserWarning, match="dropped"):
        frame, report = build(tmp_path, views=["AP", "PA"], studies_per_subject="all", images_per_study="all",
                              split_mode="official")
    assert dict(zip(frame["dicom_id"], frame["split"])) == split
    assert report.split_counts == {"train": 2, "validate": 1, "test": 2}
    assert not report.uses_original_rules()

