"""The synthetic MIMIC-CXR-JPG stand-in: layout, formats, edge cases, determinism, learnability."""
import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlib.__main__ import main
from cxrlib.errors import UserError
from cxrlib.labels import FINDINGS
from cxrlib.synthetic import label_draw, mimic_cxr
from cxrlib.synthetic.draw import jpeg_bytes, render
from cxrlib.synthetic.tables import CHEXPERT, METADATA, NEGBIO, SPLIT, build_tables, image_path

SUBJECTS, SEED = 30, 3
PATHOLOGIES = [f for f in FINDINGS if f not in ("No Finding", "Support Devices")]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "mimic"
    summary = mimic_cxr.generate(out, subjects=SUBJECTS, seed=SEED, workers=1, progress=False)
    return out, summary


def read(out, name):
    return pd.read_csv(Path(out) / name)


def test_files_and_columns(tree):
    out, _ = tree
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "LICENSE.txt", "SHA256SUMS.txt", "files", "mimic-cxr-2.0.0-metadata.csv.gz",
        "mimic-cxr-2.0.0-negbio.csv.gz", "mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-split.csv.gz",
        "mimic-cxr-2.1.0-test-set-labeled.csv", "IMAGE_FILENAMES", "RECORDS", "mimic-iv", "cxr-lt"])
    assert list(read(out, METADATA).columns) == [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
        "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
        "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
    for name in (NEGBIO, CHEXPERT):
        assert list(read(out, name).columns) == ["subject_id", "study_id", *FINDINGS]
    assert list(read(out, SPLIT).columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert "SYNTHETIC" in (out / "LICENSE.txt").read_text()


def test_identifier_formats_and_values(tree):
    out, summary = tree
    meta = read(out, METADATA)
    assert meta["subject_id"].astype(str).str.fullmatch(r"1\d{7}").all()
    assert meta["study_id"].astype(str).str.fullmatch(r"5\d{7}").all()
    assert meta["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all()
    assert meta["dicom_id"].is_unique
    assert (meta.groupby("study_id")["subject_id"].nunique() == 1).all()  # a study has one patient
    assert meta["subject_id"].nunique() == SUBJECTS == summary["subjects"]
    assert meta["StudyDate"].astype(str).str.fullmatch(r"2[12]\d{2}(0[1-9]|1[0-2])\d{2}").all()
    assert ((meta["StudyTime"] >= 0) & (meta["StudyTime"] < 240000)).all()
    assert set(meta["Rows"]) <= {3056, 2544, 2705, 2906, 3050}
    # Within a subject, study_id order is not date order (study ids are random).
    multi = meta.drop_duplicates("study_id").groupby("subject_id").filter(lambda g: len(g) > 3)
    assert any(not g.sort_values("study_id")["StudyDate"].is_monotonic_increasing
               for _, g in multi.groupby("subject_id"))


def test_every_row_has_its_jpeg_at_the_mimic_path(tree):
    out, _ = tree
    meta = read(out, METADATA)
    expected = {f"files/p{str(s)[:2]}/p{s}/s{t}/{d}.jpg"
                for s, t, d in zip(meta["subject_id"], meta["study_id"], meta["dicom_id"])}
    found = {p.relative_to(out).as_posix() for p in (out / "files").rglob("*") if p.is_file()}
    assert found == expected
    for row in meta.sample(12, random_state=0).itertuples():
        with Image.open(out / image_path(row.subject_id, row.study_id, row.dicom_id)) as im:
            assert im.format == "JPEG" and im.mode == "L"
            assert im.size == (round(row.Columns / 8), round(row.Rows / 8))


def test_sha256sums_cover_every_file(tree):
    out, _ = tree
    lines = (out / "SHA256SUMS.txt").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, path = line.split("  ", 1)
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        listed[path] = digest
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"SHA256SUMS.txt"}
    on_disk = {p for p in on_disk if not p.startswith(("mimic-iv/", "cxr-lt/"))}   # other projects' files
    assert set(listed) == on_disk
    for path in ["LICENSE.txt", METADATA, next(p for p in listed if p.endswith(".jpg"))]:
        assert hashlib.sha256((out / path).read_bytes()).hexdigest() == listed[path]
    assert mimic_cxr.verify(out) == []


def test_labels_values_and_no_finding_rule(tree):
    out, _ = tree
    for name in (NEGBIO, CHEXPERT):
        labels = read(out, name)
        values = labels[FINDINGS].to_numpy()
        assert np.isin(values[~np.isnan(values)], [1.0, 0.0, -1.0]).all()
        nf = labels["No Finding"]
        assert set(nf.dropna()) == {1.0}
        mentioned = labels[PATHOLOGIES].isin([1.0, -1.0]).any(axis=1)
        assert not (nf.eq(1.0) & mentioned).any()  # never No Finding with a pathology
        assert nf.eq(1.0).eq(~mentioned).all()
    negbio, chexpert = read(out, NEGBIO), read(out, CHEXPERT)
    assert negbio[["subject_id", "study_id"]].equals(chexpert[["subject_id", "study_id"]])
    a, b = negbio[FINDINGS].fillna(9).to_numpy(), chexpert[FINDINGS].fillna(9).to_numpy()
    assert 0.003 < (a != b).mean() < 0.08  # two labelers: mostly agree


def test_cases_the_cohort_rules_must_handle(tree):
    out, summary = tree
    meta, labels = read(out, METADATA), read(out, NEGBIO)
    meta["ViewPosition"] = meta["ViewPosition"].fillna("")
    ap = meta[meta["ViewPosition"] == "AP"]
    assert (ap.groupby("study_id").size() >= 2).any()  # a study with two AP images
    lowest = meta.groupby("subject_id")["study_id"].min()
    lowest_ap = ap.groupby("subject_id")["study_id"].min()
    assert (lowest.loc[lowest_ap.index] != lowest_ap).any()  # lowest study has no AP, a later one has
    assert meta["subject_id"].nunique() > ap["subject_id"].nunique()  # subjects without any AP
    unlabeled = set(meta["study_id"]) - set(labels["study_id"])
    assert len(unlabeled) >= 3 == summary["studies_without_labels"]
    assert unlabeled & set(lowest_ap)  # the original cohort would pick one of them
    assert {"AP AXIAL", "AP LLD"} <= set(meta["ViewPosition"])
    assert {"AP", "PA", "LATERAL", "LL", ""} <= set(meta["ViewPosition"])
    assert set(meta.loc[meta["ViewPosition"] == "LL", "ViewCodeSequence_CodeMeaning"]) == {"left lateral"}


def test_split_is_per_subject_with_all_three_parts(tree):
    out, _ = tree
    split, meta = read(out, SPLIT), read(out, METADATA)
    assert split["dicom_id"].tolist() == meta["dicom_id"].tolist()
    assert set(split["split"]) == {"train", "validate", "test"}
    assert (split.groupby("subject_id")["split"].nunique() == 1).all()


def test_same_seed_same_bytes_any_worker_count(tree, tmp_path):
    out, _ = tree
    again = mimic_cxr.generate(tmp_path / "again", subjects=SUBJECTS, seed=SEED, workers=2, progress=False)
    assert again["images_written"] == again["images"]
    assert (tmp_path / "again" / "SHA256SUMS.txt").read_bytes() == (out / "SHA256SUMS.txt").read_bytes()
    other = build_tables(SUBJECTS, SEED + 1)
    assert not other["metadata"]["dicom_id"].equals(read(out, METADATA)["dicom_id"])
    job = (0, "x.jpg", 3056, 2544, "AP", np.full(14, np.nan), 10000032, 1.0)
    assert jpeg_bytes(job, SEED, "small") == jpeg_bytes(job, SEED, "small")
    assert jpeg_bytes(job, SEED, "small") != jpeg_bytes(job, SEED + 1, "small")


def test_rerun_is_a_noop_and_foreign_folders_are_refused(tree, tmp_path):
    out, _ = tree
    assert mimic_cxr.generate(out, subjects=SUBJECTS, seed=SEED, workers=1, progress=False)["images_written"] == 0
    with pytest.raises(UserError, match="--out"):
        mimic_cxr.generate(out, subjects=SUBJECTS, seed=SEED + 1, workers=1, progress=False)
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "README").write_text("someone's data")
    with pytest.raises(UserError, match="not empty"):
        mimic_cxr.generate(foreign, subjects=5, progress=False)
    assert main(["demo-data", "--out", str(foreign), "--subjects", "5", "--no-progress"]) == 2


def test_interrupted_run_resumes(tmp_path):
    out = tmp_path / "d"
    mimic_cxr.generate(out, subjects=6, seed=1, workers=1, progress=False)
    sums = (out / "SHA256SUMS.txt").read_text()
    jpgs = sorted((out / "files").rglob("*.jpg"))
    # Simulate a run killed midway: no marker, a missing image, a truncated one, a stray temp file.
    (out / "SHA256SUMS.txt").unlink()
    jpgs[0].unlink()
    jpgs[1].write_bytes(jpgs[1].read_bytes()[:100])
    (jpgs[2].parent / f".{jpgs[2].name}.123.tmp").write_bytes(b"partial")
    summary = mimic_cxr.generate(out, subjects=6, seed=1, workers=1, progress=False)
    assert summary["images_written"] == 2
    assert (out / "SHA256SUMS.txt").read_text() == sums
    assert not list(out.rglob("*.tmp"))


def test_tables_only_and_full_size(tmp_path):
    summary = mimic_cxr.generate(tmp_path / "t", subjects=50, seed=0, images=False, progress=False)
    assert summary["tables_only"] and summary["images"] > 50
    assert not (tmp_path / "t" / "files").exists()
    # LICENSE, four tables, the radiologist labels, IMAGE_FILENAMES, RECORDS
    assert len((tmp_path / "t" / "SHA256SUMS.txt").read_text().splitlines()) == 8
    job = (0, "x.jpg", 2705, 2539, "AP", np.full(14, np.nan), 10000032, 1.0)
    with Image.open(io.BytesIO(jpeg_bytes(job, 0, "full"))) as im:
        assert im.mode == "L" and im.size == (2539, 2705)


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(UserError, match="--subjects"):
        mimic_cxr.generate(tmp_path / "a", subjects=0, progress=False)
    with pytest.raises(UserError, match="--image-size"):
        mimic_cxr.generate(tmp_path / "b", subjects=5, image_size="medium", progress=False)
    with pytest.raises(UserError, match="--workers"):
        mimic_cxr.generate(tmp_path / "c", subjects=5, workers=-1, progress=False)


def test_statistics_match_the_release_and_the_original_cohort():
    tables = build_tables(6000, seed=0)
    meta, negbio = tables["metadata"], tables["negbio"]
    views = meta["ViewPosition"].value_counts(normalize=True)
    for view, real in {"AP": 0.39, "PA": 0.255, "LATERAL": 0.22, "LL": 0.093, "": 0.042}.items():
        assert abs(views[view] - real) < 0.03, view
    assert 3.1 < meta["study_id"].nunique() / 6000 < 3.9  # studies per subject, real 3.48
    assert 1.5 < len(meta) / meta["study_id"].nunique() < 1.8  # images per study, real 1.66
    assert 0.45 < meta.loc[meta["ViewPosition"] == "AP", "subject_id"].nunique() / 6000 < 0.58  # real 0.51
    # The original project's cohort statistic: 12.5% positives among the 14 NegBio labels.
    assert abs((negbio[FINDINGS] == 1.0).to_numpy().mean() - 0.1255) < 0.01
    pos = negbio[FINDINGS] == 1.0
    rates = pos.mean()
    assert rates["Support Devices"] > rates["Lung Opacity"] > rates["Pleural Other"]
    # Co-occurrence carried over: cardiomegaly goes with edema, beyond chance.
    both = (pos["Cardiomegaly"] & pos["Edema"]).mean()
    assert both > 1.5 * rates["Cardiomegaly"] * rates["Edema"]


def test_latent_correlation_reproduces_cooccurrence():
    corr = label_draw.latent_correlation()
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200_000, len(label_draw.SAMPLED))) @ np.linalg.cholesky(corr).T
    p = np.array([label_draw.RATES[f][0] for f in label_draw.SAMPLED])
    pos = z > np.quantile(z, 1 - p, axis=0).diagonal()
    i, j = label_draw.SAMPLED.index("Lung Opacity"), label_draw.SAMPLED.index("Pleural Effusion")
    target = label_draw.COOCCURRENCE[FINDINGS.index("Lung Opacity"), FINDINGS.index("Pleural Effusion")]
    assert abs((pos[:, i] & pos[:, j]).mean() - target) < 0.01


def test_cardiomegaly_widens_the_bright_heart_shadow():
    """A cheap pixel statistic a CNN can certainly pick up: brightness where an enlarged heart
    reaches into the left lung field (image right of centre, at heart level)."""
    def heart_band(positive: bool, i: int) -> float:
        labels = np.full(14, np.nan)
        labels[FINDINGS.index("Cardiomegaly")] = 1.0 if positive else 0.0
        image = render(96, 80, "AP", labels, np.random.default_rng([int(positive), i]),
                             np.random.default_rng([9, i]), draw_scale=1)
        return image[50:70, 48:66].mean() / image[10:30, 48:66].mean()

    pos = [heart_band(True, i) for i in range(25)]
    neg = [heart_band(False, i) for i in range(25)]
    assert np.mean(pos) > np.mean(neg) + 0.1
    assert np.mean(np.array(pos)[:, None] > np.array(neg)[None, :]) > 0.85  # AUROC of the statistic


def test_the_planted_group_draws_every_finding_at_half_strength():
    """signature scales a finding's pixels: against the same image drawn with (almost) no finding,
    half the signature gives about half the difference, for every finding."""
    ratios = {}
    for finding in FINDINGS[:8] + FINDINGS[9:]:   # all but No Finding
        labels = np.full(14, np.nan)
        labels[FINDINGS.index(finding)] = 1.0

        def draw(signature, i):
            return render(96, 80, "AP", labels, np.random.default_rng([1, i]), np.random.default_rng([9, i]),
                                draw_scale=1, signature=signature).astype(float)

        energy = [(np.abs(draw(0.5, i) - draw(1e-6, i)).mean(), np.abs(draw(1.0, i) - draw(1e-6, i)).mean())
                  for i in range(3)]
        ratios[finding] = np.mean([half / full for half, full in energy])
    assert all(0.2 < r < 0.75 for r in ratios.values()), ratios
    assert 0.4 < np.mean(list(ratios.values())) < 0.6


def test_the_planted_disparity_touches_only_womens_images(tree, tmp_path):
    import json

    from cxrlib.synthetic import mimic_iv

    out, _ = tree
    planted = json.loads((out / "mimic-iv" / "PLANTED.json").read_text())
    assert planted == mimic_iv.PLANTED and planted["attribute"] == "sex" and planted["group"] == "F"
    alike = tmp_path / "alike"
    mimic_cxr.generate(alike, subjects=SUBJECTS, seed=SEED, workers=1, progress=False, planted_gap=False)
    assert not (alike / "mimic-iv" / "PLANTED.json").exists()
    assert "--no-planted-gap" in (alike / "LICENSE.txt").read_text()
    gender = pd.read_csv(out / "mimic-iv" / "hosp" / "patients.csv.gz").set_index("subject_id")["gender"]
    meta = read(out, METADATA)
    labels = read(out, CHEXPERT).set_index("study_id")[PATHOLOGIES + ["Support Devices"]]
    changed, drawn = {"F": [], "M": []}, {"F": 0, "M": 0}
    for subject, study, dicom in meta[["subject_id", "study_id", "dicom_id"]].itertuples(index=False):
        if subject not in gender.index:
            continue
        path = image_path(subject, study, dicom)
        has_finding = study in labels.index and labels.loc[study].isin([1.0, -1.0]).any()
        drawn[gender[subject]] += has_finding
        changed[gender[subject]].append((out / path).read_bytes() != (alike / path).read_bytes())
    assert not any(changed["M"])                       # men's images are byte for byte the same
    assert drawn["F"] > 0 and sum(changed["F"]) >= 0.5 * drawn["F"]   # women's with a finding differ


def test_the_docstrings_state_the_planted_strength_the_code_uses():
    """A docstring said 'half strength' after the strength became 0.3."""
    import cxrlib.synthetic.mimic_cxr as mimic_cxr
    from cxrlib.synthetic.mimic_iv import SIGNATURE_STRENGTH

    assert f"SIGNATURE_STRENGTH ({SIGNATURE_STRENGTH})" in mimic_cxr.__doc__ and "half\n  strength" not in mimic_cxr.__doc__
