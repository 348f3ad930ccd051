"""External validation: decoding what the sources ship, the drop statistic's size and power, the synthetic
stand-ins, and notebook 07 on the tiny run for all four sources."""
from __future__ import annotations

import io
import json
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_params
from PIL import Image

from cxrlib import account, runfiles
from cxrlib.data import external_selection
from cxrlib.data.cache import build_cache
from cxrlib.data.decode import UndeclaredDepth, decode_image
from cxrlib.data.sources import SOURCES
from cxrlib.errors import UserError
from cxrlib.evaluation import external_validation
from cxrlib.labels import FINDINGS
from cxrlib.synthetic import external_standins as stand_in


def smooth_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:180, 0:220]
    image = 128 + 60 * np.sin(xx / 17) + 40 * np.cos(yy / 23) + rng.normal(0, 2, (180, 220))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_12_bit_png_and_monochrome1_dicom_decode_as_the_8_bit_jpeg(tmp_path):
    pixels = smooth_image()
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=100)
    twelve = np.rint(pixels.astype(float) * 4095 / 255).astype(np.uint16)
    Image.fromarray(twelve).save(tmp_path / "a.png")
    (tmp_path / "a.dicom").write_bytes(stand_in.dicom_bytes(pixels, monochrome1=True, window=False, uid="1.2.3"))
    (tmp_path / "w.dicom").write_bytes(stand_in.dicom_bytes(pixels, monochrome1=False, window=True, uid="1.2.4"))
    jpeg = decode_image(tmp_path / "a.jpg", 64)[0].astype(int)
    png = decode_image(tmp_path / "a.png", 64, formats=("PNG",), bits=12)[0].astype(int)
    dicom = decode_image(tmp_path / "a.dicom", 64, formats=("DICOM",))[0].astype(int)
    windowed = decode_image(tmp_path / "w.dicom", 64, formats=("DICOM",))[0].astype(int)
    assert np.abs(png - dicom).max() <= 1 and np.abs(png - windowed).max() <= 1
    assert np.abs(png - jpeg).max() <= 3 and np.abs(png - jpeg).mean() < 0.6   # JPEG's rounding and draft decode
    # 65535 as the divisor would leave the 12-bit image at a sixteenth of its brightness
    assert abs(png.mean() - jpeg.mean()) < 1 and png.mean() > 100


def test_a_jpeg_2000_dicom_decodes_as_the_uncompressed_one(tmp_path):
    from pydicom import dcmread
    from pydicom.uid import JPEG2000Lossless

    plain = stand_in.dicom_bytes(smooth_image(), monochrome1=True, window=False, uid="1.2.6")
    (tmp_path / "plain.dicom").write_bytes(plain)
    compressed = dcmread(io.BytesIO(plain))
    compressed.compress(JPEG2000Lossless)
    compressed.save_as(tmp_path / "j2k.dicom")
    a = decode_image(tmp_path / "plain.dicom", 48, formats=("DICOM",))[0]
    b = decode_image(tmp_path / "j2k.dicom", 48, formats=("DICOM",))[0]
    assert np.array_equal(a, b)


@pytest.mark.probe(issue=32, kind="silent")
def test_a_16_bit_file_is_scaled_by_the_declared_bits_never_by_its_own_range(tmp_path):
    dark = np.full((40, 40), 1000, np.uint16)   # a 12-bit image whose brightest pixel is below 1024
    Image.fromarray(dark).save(tmp_path / "dark.png")
    told = decode_image(tmp_path / "dark.png", 16, formats=("PNG",), bits=12)[0]
    assert told.max() == round(1000 * 255 / 4095)
    # the file's own range says 10 bits, which would make it four times too bright: without a declared depth it
    # is a failure that names what would hold it, not a guess
    with pytest.raises(UndeclaredDepth, match=r"values up to 1000; 10 bits would hold them"):
        decode_image(tmp_path / "dark.png", 16, formats=("PNG",))


def test_equalize_spreads_the_grey_levels(tmp_path):
    flat = (smooth_image() // 4 + 60).astype(np.uint8)   # low contrast
    Image.fromarray(flat).save(tmp_path / "flat.png")
    plain = decode_image(tmp_path / "flat.png", 64, formats=("PNG",))[0]
    equal = decode_image(tmp_path / "flat.png", 64, formats=("PNG",), equalize=True)[0]
    assert np.ptp(equal) > 2 * np.ptp(plain)


def test_a_dicom_pydicom_cannot_decode_is_listed_not_a_crash(tmp_path):
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    good = stand_in.dicom_bytes(smooth_image(), monochrome1=False, window=False, uid="1.2.5")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "good.dicom").write_bytes(good)
    broken = dcmread(io.BytesIO(good))
    broken.file_meta.TransferSyntaxUID = JPEG2000Lossless   # claims a compression the bytes are not
    broken.PixelData = encapsulate([b"\x00" * 64])
    broken.save_as(tmp_path / "test" / "bad.dicom")
    cohort = pd.DataFrame({"dicom_id": ["good", "bad"], "path": ["test/good.dicom", "test/bad.dicom"],
                           "split": "external"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache = build_cache(tmp_path, cohort, 16, cache_dir=tmp_path / "cache", workers=1, progress=False,
                            reader={"formats": ["DICOM"], "equalize": False})
    assert list(cache.index["dicom_id"]) == ["good"]
    assert list(cache.failures["dicom_id"]) == ["bad"] and cache.failures["reason"].iloc[0]


# --------------------------------------------------------------------------- the drop statistic

def units(rng, n_patients: int, shift: float, findings: list[str]) -> pd.DataFrame:
    """One unit per patient; per finding a positive share of 0.25 and scores separated by 1.2 - shift."""
    frame = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n_patients)]})
    for finding in findings:
        y = (rng.random(n_patients) < 0.25).astype(float)
        frame[finding] = y
        frame[f"p_{finding}"] = 1 / (1 + np.exp(-(rng.normal(0, 1, n_patients) + (1.2 - shift) * y)))
    return frame


@pytest.mark.parametrize("shift, reps, low, high", [(0.0, 200, 0.02, 0.09), (0.6, 100, 0.8, 1.0)])
def test_the_drop_holds_its_size_and_finds_a_real_drop(shift, reps, low, high):
    """Internal/external pairs of 200 patients, 4 findings: with no shift the two-sided interval excludes 0
    in about 5% of 200 (a drop in about half of those); with the separation cut by half (AUROC 0.80 -> 0.66)
    a drop is reported in at least 80% of 100."""
    rng = np.random.default_rng(1)
    findings = ["Atelectasis", "Edema", "Cardiomegaly", "Pneumothorax"]
    reported = []
    for rep in range(reps):
        drop = external_validation.auroc_drop(units(rng, 200, 0.0, findings), units(rng, 200, shift, findings), findings,
                                   n_boot=200, seed=rep, ci_level=0.95, min_positives=10)
        reported.append(drop["direction"] != "none" if shift == 0 else drop["reported"])
        assert drop["reported"] == (drop["direction"] == "drop")
    assert low <= np.mean(reported) <= high


# --------------------------------------------------------------------------- stand-ins and notebook 07

def test_stand_ins_write_each_sources_formats(tmp_path):
    roots = {s: tmp_path / s for s in SOURCES}
    for source, root in roots.items():
        stand_in.generate(root, source, images=40, seed=0)
        assert json.loads((root / stand_in.PLANTED_FILE).read_text())["shift"] == "planted"
    assert stand_in.generate(roots["nih"], "nih", images=40)["already_complete"]
    modes = {Image.open(p).mode for p in (roots["nih"] / "images_001" / "images").glob("*.png")}
    assert {"L", "RGB", "RGBA"} <= modes
    pad = [Image.open(p) for p in roots["padchest"].glob("*/*.png")]
    assert all(img.mode.startswith("I") and 255 < np.asarray(img).max() < 4096 for img in pad)   # 10 or 12 bits
    from pydicom import dcmread
    kinds = {dcmread(p).PhotometricInterpretation for p in (roots["vindr"] / "test").glob("*.dicom")}
    assert kinds == {"MONOCHROME1", "MONOCHROME2"}


@pytest.fixture(scope="module")
def external_run(tiny_run, tiny_data, tiny_runs_dir):
    """A copy of the tiny run's trained files, so that external/ never changes the shared tiny run."""
    target = tiny_runs_dir / "tiny-external"
    (target / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in ("cohort.csv", "history.csv", "checkpoints/best.pt", "predictions.csv", "metrics.json"):
        try:
            os.link(tiny_run / name, target / name)
        except OSError:
            shutil.copy2(tiny_run / name, target / name)
    runfiles.freeze(tiny_params(tiny_data, tiny_runs_dir, "tiny-external"), target)
    return target


def test_notebook_07_validates_the_tiny_run_on_every_source(external_run, tmp_path, one_thread):
    from cxrlib.experiments.external_runner import summary_line, validate_external

    p = runfiles.load_frozen(external_run)
    for source in SOURCES:
        root = tmp_path / source
        stand_in.generate(root, source, images=60, seed=1, shift="none" if source == "vindr" else "planted")
        if source == "nih":   # through the notebook, as make external runs it
            cwd = os.getcwd()
            try:
                out = validate_external(external_run, source, root, progress=False)
            finally:
                os.chdir(cwd)
            assert (out / "07_external.html").is_file() and "DROP" in (out / "07_external.html").read_text() or \
                "no drop" in (out / "07_external.html").read_text()
            assert summary_line(out).startswith(str(out))
            scored = json.loads((out / "metrics.json").read_text())["counts"]["units"]
            assert f"{scored} images scored" in summary_line(out)   # NIH's studies are single images
            report = json.loads((out / "metrics.json").read_text())
            predictions = pd.read_csv(out / "predictions.csv")
        else:   # the same library calls, without a kernel
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame, info = external_validation.score_source(external_run, p, source, root, progress=False)
                report = external_validation.external_report(external_run, p, frame, info, n_boot=50)
            predictions = frame
        status = report["label_map"]["status"]
        assert report["label_map"]["sha256"] and report["counts"]["scored_images"] == len(predictions) > 0
        # a source of single-image studies gets the thresholds fitted on validation images, not study maxima
        single = p.eval_level == "image" or predictions["study_id"].is_unique
        assert report["thresholds"]["unit"] == ("image" if single else p.eval_level), source
        run_metrics = runfiles.read_metrics(external_run)
        fitted = run_metrics["image_level" if single else "thresholds"]
        fitted = fitted["thresholds"]["values"] if single else fitted["values"]
        for row in report["thresholds"]["external"]:
            if row["rule"] == "f1" and fitted[row["finding"]]["f1"] is not None:
                assert row["threshold"] == pytest.approx(fitted[row["finding"]]["f1"]), (source, row["finding"])
        # one headline over the exact findings the drop compares; the approximate ones apart
        assert (report["macro"]["exact"] or {}).get("findings", []) == report["compared"]
        assert report["macro"]["run_headline"]["value"] == run_metrics["headline"]["AUROC macro"]["value"]
        assert all(status[f] == "approximate" for f in (report["macro"]["approximate"] or {}).get("findings", []))
        for finding in FINDINGS:
            if status[finding] == "missing":   # missing, never negative; and out of every average
                assert predictions[finding].isna().all(), (source, finding)
                assert finding not in (report["summary"] or {}).get("macro_findings", [])
        assert set(report["compared"]) <= set(report["exact"])
        assert report["ci"]["method"].endswith("images are resampled") == (source == "vindr")
        assert len(report["intensity"]["external"]) == 256
    index = (external_run / "index.html").read_text()
    assert "external/nih/07_external.html" in index
    nav = (external_run / "external" / "nih" / "07_external.html").read_text()
    assert 'href="../../index.html"' in nav   # the report links back up to its run
    from cxrlib.experiments.lister import runs_table
    from cxrlib.handoff.card import build_card
    card = build_card(external_run)
    assert "### External validation" in card and "| nih (synthetic stand-in) |" in card
    # the checklists answer from the run's own files: external validation done, clusters examined
    assert "| 32 External validation | External validation: nih (external/<source>/07_external.html) |" in card
    assert "| 23b Heterogeneity across clusters (hospitals) | External validation: one row per hospital (nih)" in card
    # the index links notebook 07 in its bar and its Reports, lists its files, captions its thumbnails
    index_page = (external_run / "index.html").read_text()
    assert 'href="external/nih/07_external.html">07 External: nih</a>' in index_page
    assert 'href="external/nih/metrics.json">external/nih/metrics.json</a>' in index_page
    assert "<figcaption>07 External: nih</figcaption>" in index_page and "nih (synthetic stand-in)" in index_page
    row = runs_table(external_run.parent).set_index("run").loc[external_run.name]
    assert row["external drop"].startswith("nih (synthetic stand-in) ")
    best = external_run / "checkpoints" / "best.pt"
    shutil.copy(best, best.with_suffix(".new"))   # a copy (cp -r gives new times): the same checkpoint, not stale
    os.replace(best.with_suffix(".new"), best)
    assert not runfiles.external_results(external_run)["nih"]["stale"] and "STALE" not in build_card(external_run)
    state = torch.load(best, map_location="cpu", weights_only=False)   # a retrained best.pt: other weights
    weights = state["model"] if "model" in state else state
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first] = weights[first] + 1
    torch.save(state, best.with_suffix(".new"))
    os.replace(best.with_suffix(".new"), best)
    assert "STALE" in build_card(external_run) and runfiles.external_results(external_run)["nih"]["stale"]


def test_a_partial_download_is_refused_before_the_kernel_or_scored_and_reported_as_partial(external_run, tmp_path,
                                                                                          one_thread):
    from cxrlib.experiments.external_runner import summary_line, validate_external
    from cxrlib.experiments.lister import runs_table
    from cxrlib.handoff.card import build_card
    from cxrlib.handoff.index_page import write_index

    root = tmp_path / "chexpert"
    stand_in.generate(root, "chexpert", images=80, seed=2, shift="none")
    found, selected, present = external_selection.selected_images("chexpert", root)
    assert present.all()
    images = sorted(root.rglob("*.jpg"))
    for path in images[::3]:   # a third of the download never arrived
        path.unlink()
    found, selected, present = external_selection.selected_images("chexpert", root)
    n, k = len(selected), int(present.sum())
    assert 0 < k < external_selection.MIN_PRESENT * n
    with pytest.raises(UserError, match=rf"only {k} of the {n} images its table selects .*--allow-missing"):
        validate_external(external_run, "chexpert", root, progress=False)
    assert not (external_run / "external" / "chexpert").exists()   # refused before any kernel or folder
    p = runfiles.load_frozen(external_run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame, info = external_validation.score_source(external_run, p, "chexpert", root, progress=False, allow_missing=True)
        report = external_validation.external_report(external_run, p, frame, info, n_boot=50)
    external_validation.write_results(external_run, "chexpert", frame, report)
    counts = report["counts"]
    assert (counts["chosen_images"], counts["present_images"], counts["missing_images"]) == (n, k, n - k)
    assert counts["scored_images"] == len(frame) <= k and report["allow_missing"]
    share = account.decoded_share(report)
    assert share.startswith(f"decoded {len(frame)} of the {n} selected images") and f"PARTIAL: {n - k} missing" in share
    out = external_run / "external" / "chexpert"
    assert summary_line(out).splitlines()[-1] == f"chexpert: {share}"   # the command's last line
    write_index(external_run)
    assert share in (external_run / "index.html").read_text()
    assert share in build_card(external_run)
    row = runs_table(external_run.parent).set_index("run").loc[external_run.name]
    drop_cell = row["external drop"]
    assert f"chexpert (synthetic stand-in) {report['drop']['value']:+.3f}" in drop_cell and "partial: " in drop_cell
    for path in root.rglob("*.jpg"):   # none present: refused before the kernel, allow_missing or not
        path.unlink()
    with pytest.raises(UserError, match="none of (the .* images its table selects is|its .* studies has a .jpg) under"):
        validate_external(external_run, "chexpert", root, progress=False, allow_missing=True)


@pytest.mark.probe(issue=32, kind="loss")
def test_a_failed_external_run_leaves_the_last_good_result_byte_identical(external_run, tmp_path, one_thread):
    from cxrlib.experiments.external_runner import validate_external

    def snapshot(folder):
        return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    root = tmp_path / "nih"
    stand_in.generate(root, "nih", images=60, seed=3, shift="planted")
    good = runfiles.external_dir(external_run, "nih")
    cwd = os.getcwd()
    try:
        if not (good / "metrics.json").is_file():   # run alone: make the good result first
            validate_external(external_run, "nih", root, progress=False)
        before = snapshot(good)
        for png in root.glob("images_*/images/*.png"):   # every image there, none decodable: 07 fails in its kernel
            png.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is lost")
        with pytest.raises(UserError, match="07_external.ipynb failed"):
            validate_external(external_run, "nih", root, progress=False)
    finally:
        os.chdir(cwd)
    assert snapshot(good) == before   # byte for byte
    staging = runfiles.external_staging_dir(external_run, "nih")
    assert (staging / "07_external.ipynb").is_file() and not (staging / "metrics.json").exists()   # to be read
    assert not any(p.name.startswith(".") for p in good.parent.iterdir())   # nothing half-moved in external/
