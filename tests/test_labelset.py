"""Label sets as data (cxrlib/labelset.py): the shipped sets, their checks, and their tables read by name."""
from __future__ import annotations

import collections
import dataclasses

import pandas as pd
import pytest
import yaml

from cxrlib import labelset
from cxrlib.labels import FINDINGS

# CXR-LT 2023's training positives, in its label order, and its 264,849 training images (cxr-lt-facts.md:
# verified from the 2023 winner's configuration)
TRAIN_2023 = [67597, 4361, 76900, 16038, 38574, 4255, 30119, 1158, 11883, 4049, 10218, 2533, 79931, 5529, 41869,
              7663, 69240, 675, 3369, 788, 48093, 543, 14983, 2453, 89140, 3499]


def test_the_shipped_sets_hold_the_published_labels_in_order():
    assert labelset.shipped() == ["chexpert14", "cxr-lt-2023", "cxr-lt-2024"]
    assert list(labelset.load().labels) == FINDINGS and labelset.load().nothing_found == "No Finding"
    lt23, lt24 = labelset.load("cxr-lt-2023"), labelset.load("cxr-lt-2024")
    assert len(lt23.labels) == 26 and len(lt24.labels) == 40 and lt24.nothing_found == "Normal"
    assert lt24.labels == tuple(sorted(lt24.labels))   # the 2024 CSV's columns are alphabetical
    # task 2's gold standard: 2023's 26 labels with Normal for No Finding, between Mass and Nodule
    assert len(lt24.gold_labels) == 26 and lt24.gold_labels[13:16] == ("Mass", "Normal", "Nodule")
    assert [g if g != "Normal" else "No Finding" for g in lt24.gold_labels] == list(lt23.labels)


def test_buckets_follow_the_rule_each_set_records():
    lt23 = labelset.load("cxr-lt-2023")
    share = dict(zip(lt23.labels, [c / 264_849 for c in TRAIN_2023]))
    listed = labelset.bucket_of(lt23, share)   # the 2023 winner's lists: 8 head, 10 medium, 8 tail
    assert collections.Counter(listed.values()) == {"head": 8, "medium": 10, "tail": 8}
    by_share = labelset.bucket_of(dataclasses.replace(lt23, buckets={"rule": "share", "head": 0.1, "tail": 0.01}), share)
    # the facts sheet's check of the >10% / <1% rule on the same counts: 9 / 11 / 6
    assert collections.Counter(by_share.values()) == {"head": 9, "medium": 11, "tail": 6}
    assert by_share["Enlarged Cardiomediastinum"] == "head" and by_share["Tortuous Aorta"] == "medium"


def write_set(tmp_path, **changes):
    data = yaml.safe_load(labelset.path_of("cxr-lt-2024").read_text())
    data.update(changes)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"labels": ["Edema", "Normal", "Edema"]}, r"labels lists \['Edema'\] twice"),
    ({"nothing_found": "No Finding"}, r"nothing_found: 'No Finding' should be one of its labels"),
    ({"key": "path"}, r"key: 'path' should be dicom_id"),
    ({"buckets": {"rule": "lists", "head": ["Edema"], "tail": ["Edema"]}}, r"are in head and tail"),
    ({"tables": {"train": "a.csv"}}, r"exactly train, development, test"),
])
def test_a_mistaken_label_set_is_refused_in_one_line_naming_the_file(tmp_path, changes, message):
    path = write_set(tmp_path, **changes)
    with pytest.raises(labelset.LabelSetError, match=message) as caught:
        labelset.load(str(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(labelset.LabelSetError, match="neither a shipped label set"):
        labelset.load("cxr-lt-2025")


def tables(tmp_path, rows: dict[str, list[tuple[str, str]]], labels, extra=None):
    """cxr-lt-2024-style tables: dicom_id, subject_id, study_id with its "s", then the labels (0/1)."""
    folder = tmp_path / "cxr-lt" / "cxr-lt-2024"
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": "train_labeled.csv", "development": "development_labeled_task1.csv",
             "test": "test_labeled_task1.csv"}
    for split, items in rows.items():
        frame = pd.DataFrame({"dicom_id": [d for d, _ in items], "subject_id": [s for _, s in items],
                              "study_id": [f"s5{i:07d}" for i in range(len(items))]})
        for j, label in enumerate(labels):
            frame[label] = [(i + j) % 2 for i in range(len(items))]
        for column, value in (extra or {}).items():
            frame[column] = value
        frame.to_csv(folder / names[split], index=False)


def test_tables_are_read_by_name_and_a_missing_column_or_value_is_refused(tmp_path):
    lt24 = labelset.load("cxr-lt-2024")
    labels = list(lt24.labels)
    tables(tmp_path, {"train": [("a", "1"), ("b", "1")], "development": [("c", "2")], "test": [("d", "3")]},
           labels[::-1])   # the columns in another order: matched by name
    train = labelset.read_table(lt24, tmp_path, "train")
    assert list(train.columns) == ["dicom_id", "subject_id", *labels]
    # written in reverse order, Adenopathy was the last column: (i + 39) % 2 for rows 0, 1
    assert train["Adenopathy"].tolist() == [1.0, 0.0] and train["Tuberculosis"].tolist() == [0.0, 1.0]
    split = labelset.organisers_split(lt24, tmp_path)
    assert split.set_index("dicom_id")["split"].to_dict() == {"a": "train", "b": "train", "c": "validate", "d": "test"}
    tables(tmp_path, {"train": [("a", "1")]}, labels[:-1])   # Tuberculosis missing
    with pytest.raises(labelset.LabelSetError, match=r"train_labeled.csv: no column\(s\) \['Tuberculosis'\]"):
        labelset.read_table(lt24, tmp_path, "train")
    tables(tmp_path, {"train": [("a", "1")]}, labels, extra={"Edema": 2})
    with pytest.raises(labelset.LabelSetError, match=r"Edema holds '2' \(row 2\); encoding binary allows"):
        labelset.read_table(lt24, tmp_path, "train")


def test_a_patient_in_two_splits_and_a_key_that_matches_nothing_are_refused(tmp_path):
    lt24 = labelset.load("cxr-lt-2024")
    tables(tmp_path, {"train": [("a", "1"), ("b", "7")], "development": [("c", "7")], "test": [("d", "3")]},
           list(lt24.labels))
    with pytest.raises(labelset.LabelSetError, match=r"1 patient\(s\) are in two splits \(e.g. subject_id 7\)"):
        labelset.organisers_split(lt24, tmp_path)
    labels = labelset.read_table(lt24, tmp_path, "train")
    metadata = pd.DataFrame({"dicom_id": ["a", "x"], "subject_id": ["1", "9"]})
    joined, counts = labelset.join(lt24, labels, metadata)
    assert joined["dicom_id"].tolist() == ["a"]
    assert counts == {"images_without_labels": 1, "label_rows_without_image": 1}   # counted, never dropped silently
    with pytest.raises(labelset.LabelSetError, match=r"no dicom_id of label set cxr-lt-2024 matches an image"):
        labelset.join(lt24, labels, metadata.assign(dicom_id=["y", "z"]))


def test_a_study_keyed_set_strips_the_s_prefix(tmp_path):
    own = write_set(tmp_path, key="study_id", labels=["Edema", "Normal"], nothing_found="Normal", gold=None,
                    gold_labels=None, buckets=None)
    tables(tmp_path, {"train": [("a", "1")], "development": [("b", "2")], "test": [("c", "3")]}, ["Edema", "Normal"])
    mine = labelset.load(str(own))
    assert labelset.read_table(mine, tmp_path, "test")["study_id"].tolist() == ["50000000"]


def test_the_synthetic_cxr_lt_tables_read_back_through_their_label_sets(tmp_path):
    from cxrlib.synthetic import cxr_lt
    from cxrlib.synthetic.tables import build_tables

    release = build_tables(300, seed=0)
    counts = cxr_lt.write(tmp_path, release["metadata"], release["chexpert"], seed=0)
    labelled = release["metadata"]["study_id"].isin(release["chexpert"]["study_id"]).sum()
    for edition in ("cxr-lt-2023", "cxr-lt-2024"):
        label_set = labelset.load(edition)
        rows = labelset.organisers_split(label_set, tmp_path)   # by name, patient-disjoint, each image once
        assert len(rows) == labelled == sum(v for k, v in counts.items() if k.startswith(edition) and "gold" not in k)
        assert rows["split"].value_counts(normalize=True)["train"] > 0.55
        values = rows[list(label_set.labels)]
        assert (values.sum(axis=1) >= 1).all()   # every image has a positive (nothing_found otherwise)
        joined, missing = labelset.join(label_set, rows, release["metadata"])
        assert len(joined) == labelled and missing["label_rows_without_image"] == 0
        # the 14 CheXpert findings follow the synthetic CheXpert table; the new labels are rare
        assert values["Cardiomegaly"].mean() > 0.05 and values["Pneumoperitoneum"].mean() < 0.01
    gold = labelset.read_table(labelset.load("cxr-lt-2024"), tmp_path, "gold_test")
    assert 0 < len(gold) <= 203 and list(gold.columns[2:]) == list(labelset.load("cxr-lt-2024").gold_labels)
