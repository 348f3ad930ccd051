"""Synthetic stand-ins for the external sources, each in its own files and formats, with a planted site shift.

`python -m cxrlib demo-data --source nih --out data/demo-nih [--images 400] [--shift planted|none]` writes:

  chexpert   valid.csv (Path, Sex, Age, Frontal/Lateral, AP/PA, the 14), groundtruth.csv (Study, the 14) and
             CheXpert-v1.0-small/{valid,test}/patientN/studyM/viewK_frontal.jpg (8-bit JPEG)
  nih        Data_Entry_2017_v2020.csv, test_list.txt, train_val_list.txt, images_001/images/*.png (8-bit
             PNG; 2% RGB and 2% RGBA, as some real NIH files are)
  padchest   PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv and <ImageDir>/<ImageID> as 16-bit PNGs
             holding 12-bit values (10-bit for a tenth, as BitsStored_DICOM says)
  vindr      annotations/image_labels_test.csv (consensus, VinDr-CXR's 28 label columns) and
             test/<image_id>.dicom (12 bits stored; half MONOCHROME1, half with a window)

The images come from the MIMIC stand-in's renderer with its labels and its image geometry (real NIH images
are square; keeping MIMIC's shape keeps a "none" shift truly none). Labels are written in the source's own
vocabulary through its label map, so approximate maps differ from the drawn truth as they do for real
data. The planted shift, recorded in PLANTED.json: findings drawn at `finding_strength` of their MIMIC
strength (a drop of every AUROC for a model that learnt them), a contrast change (gamma), added noise,
and more positives (each pathology's odds up by `prevalence_factor`). `--shift none` draws the source
exactly like the MIMIC stand-in.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..data.labelmap import load as load_map
from ..data.sources import SOURCES
from ..errors import UserError
from ..fsutil import atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text
from ..labels import FINDINGS
from .draw import render
from .label_draw import sample_labels
from .tables import SIZES_AP, SMALL_FACTOR

MARKER = "SYNTHETIC.json"      # written last: the settings of a complete stand-in
PLANTED_FILE = "PLANTED.json"
SHIFTS = {
    "planted": {"finding_strength": 0.15, "gamma": 1.5, "noise_sd": 16.0, "prevalence_factor": 1.6},
    "none": {"finding_strength": 1.0, "gamma": 1.0, "noise_sd": 0.0, "prevalence_factor": 1.0},
}
VINDR_COLUMNS = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
                 "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
                 "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
                 "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
                 "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]


def draw_labels(rng, n: int, prevalence_factor: float) -> np.ndarray:
    """n label rows (FINDINGS order, 1.0 or 0.0) from the MIMIC stand-in's joint distribution; with a factor
    above 1, rows are drawn from a pool with weights factor ** (number of positive pathologies)."""
    pool = 4 * n if prevalence_factor != 1 else n
    chexpert, _ = sample_labels(rng, np.arange(pool), pool)
    labels = np.where(chexpert == 1.0, 1.0, 0.0)
    if prevalence_factor != 1:
        pathologies = [i for i, f in enumerate(FINDINGS) if f not in ("No Finding", "Support Devices")]
        weights = prevalence_factor ** labels[:, pathologies].sum(1)
        labels = labels[rng.choice(pool, n, replace=False, p=weights / weights.sum())]
    return labels


def source_labels(row: np.ndarray, lmap, rng) -> list[str]:
    """The source's own labels for one drawn label row: one of each positive finding's labels; the source's
    No Finding label when no other label was written (as NIH's and VinDr's mean "none of ours")."""
    out = []
    for finding, value in zip(FINDINGS, row):
        entry = lmap.entries[finding]
        if finding != "No Finding" and value == 1 and entry.labels:
            label = entry.labels[int(rng.integers(len(entry.labels)))] if entry.approximate else entry.labels[0]
            if label not in out:
                out.append(label)
    if not out and lmap.entries["No Finding"].labels:
        out.append(lmap.entries["No Finding"].labels[0])
    return out


def image(rng, labels: np.ndarray, shift: dict, seed: int, index: int, patient: int) -> np.ndarray:
    """One 8-bit radiograph in MIMIC's geometry, with the shift's strength, contrast and noise."""
    sizes = [s for s, _ in SIZES_AP]
    rows, cols = sizes[int(rng.choice(len(sizes), p=[w for _, w in SIZES_AP]))]
    pixels = render(max(1, round(rows / SMALL_FACTOR)), max(1, round(cols / SMALL_FACTOR)), "AP", labels,
                    np.random.default_rng([seed, 11, index]), np.random.default_rng([seed, 12, patient]),
                    signature=shift["finding_strength"]).astype(np.float64)
    if shift["gamma"] != 1:
        pixels = 255 * (pixels / 255) ** shift["gamma"]
    if shift["noise_sd"]:
        pixels = pixels + np.random.default_rng([seed, 13, index]).normal(0, shift["noise_sd"], pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    """PNG bytes of the array as it is (uint16: a 16-bit PNG), or converted to `mode` (RGB, RGBA)."""
    buffer = io.BytesIO()
    img = Image.fromarray(pixels)
    (img.convert(mode) if mode and mode != img.mode else img).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(pixels: np.ndarray, monochrome1: bool, window: bool, uid: str) -> bytes:
    """A 12-bit DICOM file of an 8-bit image (values x 4095 / 255), inverted for MONOCHROME1."""
    from pydicom.dataset import Dataset, FileMetaDataset  # lazy: pydicom only for this stand-in
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    values = np.rint(pixels.astype(np.float64) * 4095 / 255).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, uid, "DX"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    if window:   # the full range as a window: a viewer's output equals the stored values' scaling
        ds.WindowCenter, ds.WindowWidth = 2047.5, 4096
    ds.PixelData = (4095 - values if monochrome1 else values).astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def demographics(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.choice(["F", "M"], n), np.clip(rng.normal(58, 17, n), 18, 95).round()


def generate(out, source: str, images: int = 400, seed: int = 0, shift: str = "planted") -> dict:
    """Write the stand-in of `source` into `out` (a rerun with the same settings does nothing)."""
    if source not in SOURCES:
        raise UserError(f"--source {source!r}: one of {list(SOURCES)} (or mimic)")
    if shift not in SHIFTS:
        raise UserError(f"--shift {shift!r}: planted or none")
    if images < 20:
        raise UserError(f"--images {images}: at least 20")
    out = Path(out)
    settings = {"source": source, "images": images, "seed": seed, "shift": shift, "version": 1}
    if (out / MARKER).is_file() and json.loads((out / MARKER).read_text()) == settings:
        return {**settings, "already_complete": True}
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out}: not empty, and not a {source} stand-in made with these settings; choose "
                        "another --out or delete the folder")
    rng = np.random.default_rng([seed, 10, SOURCES.index(source)])
    planted = SHIFTS[shift]
    labels = draw_labels(rng, images, planted["prevalence_factor"])
    patients = np.sort(rng.integers(0, max(1, int(images / 1.6)), images))   # about 1.6 images a patient
    lmap = load_map(source)
    written = [source_labels(row, lmap, rng) for row in labels]
    pictures = [image(rng, labels[i], planted, seed, i, int(patients[i])) for i in range(images)]
    sex, age = demographics(np.random.default_rng([seed, 14]), int(patients.max()) + 1)
    WRITERS[source](out, rng, labels, written, pictures, patients, sex[patients], age[patients])
    atomic_write_json(out / PLANTED_FILE, {
        "source": source, "shift": shift, **planted,
        "expect": ("every finding drawn fainter, with other contrast and noise: a MIMIC-trained model's AUROC "
                   "drops on the exactly mapped findings; more positives change PPV and calibration"
                   if shift == "planted" else "no image shift, so no drop; the external AUROC may come out higher, since the "
                   "stand-in's labels are the drawn truth and the run's test labels an NLP labeler's (5% of cells redrawn)")})
    atomic_write_json(out / MARKER, settings)
    return {**settings, "already_complete": False}


def write_chexpert(out, rng, labels, written, pictures, patients, sex, age) -> None:
    test = rng.random(len(labels)) < 0.4
    rows, studies = [], {}
    for i, pixels in enumerate(pictures):
        split = "test" if test[i] else "valid"
        study = f"{split}/patient{70000 + int(patients[i]):05d}/study{i + 1}"
        rel = f"CheXpert-v1.0-small/{study}/view1_frontal.jpg"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        atomic_write_bytes(out / rel, buffer.getvalue())
        values = {f: float(f in written[i]) for f in FINDINGS}
        if split == "valid":
            rows.append({"Path": rel, "Sex": {"F": "Female", "M": "Male"}[sex[i]], "Age": int(age[i]),
                         "Frontal/Lateral": "Frontal", "AP/PA": "AP" if rng.random() < 0.6 else "PA", **values})
        else:
            studies[f"CheXpert-v1.0-small/{study}"] = values
    atomic_write_csv(out / "valid.csv", pd.DataFrame(rows))
    atomic_write_csv(out / "groundtruth.csv", pd.DataFrame([{"Study": s, **v} for s, v in studies.items()]))


def write_nih(out, rng, labels, written, pictures, patients, sex, age) -> None:
    rows, names = [], []
    follow = {}
    for i, pixels in enumerate(pictures):
        patient = int(patients[i]) + 1
        follow[patient] = follow.get(patient, -1) + 1
        name = f"{patient:08d}_{follow[patient]:03d}.png"
        mode = {1: "RGB", 2: "RGBA"}.get(i % 50, "L")   # 2% of each, as some real NIH files are
        atomic_write_bytes(out / "images_001" / "images" / name, png_bytes(pixels, None if mode == "L" else mode))
        rows.append({"Image Index": name, "Finding Labels": "|".join(written[i]), "Follow-up #": follow[patient],
                     "Patient ID": patient, "Patient Age": int(age[i]), "Patient Gender": sex[i],
                     "View Position": "AP" if rng.random() < 0.4 else "PA", "OriginalImage[Width": pixels.shape[1],
                     "Height]": pixels.shape[0], "OriginalImagePixelSpacing[x": 0.143, "y]": 0.143})
        names.append(name)
    atomic_write_csv(out / "Data_Entry_2017_v2020.csv", pd.DataFrame(rows))
    atomic_write_text(out / "test_list.txt", "".join(f"{n}\n" for n in names))
    atomic_write_text(out / "train_val_list.txt", "")


def write_padchest(out, rng, labels, written, pictures, patients, sex, age) -> None:
    rows = []
    for i, pixels in enumerate(pictures):
        bits = 10 if rng.random() < 0.1 else 12
        stored = np.rint(pixels.astype(np.float64) * (2 ** bits - 1) / 255).astype(np.uint16)
        image_id = f"{''.join(map(str, rng.integers(0, 10, 38)))}_{i:06d}.png"
        directory = i % 3
        atomic_write_bytes(out / str(directory) / image_id, png_bytes(stored))
        study_year = 2014 + int(rng.integers(0, 4))
        rows.append({"ImageID": image_id, "ImageDir": directory, "StudyDate_DICOM": f"{study_year}0915",
                     "StudyID": f"s{i:06d}", "PatientID": f"p{int(patients[i]):06d}",
                     "PatientBirth": float(study_year - int(age[i])), "PatientSex_DICOM": sex[i],
                     "Projection": "PA" if rng.random() < 0.75 else "AP_horizontal",
                     "MethodLabel": "Physician" if rng.random() < 0.7 else "RNN_model",
                     "BitsStored_DICOM": bits, "WindowCenter_DICOM": 2 ** (bits - 1) - 1,
                     "Labels": repr(written[i])})
    atomic_write_csv(out / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", pd.DataFrame(rows))


def write_vindr(out, rng, labels, written, pictures, patients, sex, age) -> None:
    from pydicom.uid import generate_uid  # lazy: pydicom only for this stand-in

    rows = []
    for i, pixels in enumerate(pictures):
        image_id = rng.bytes(16).hex()
        data = dicom_bytes(pixels, monochrome1=bool(i % 2), window=bool(i % 4 < 2),
                           uid=generate_uid(entropy_srcs=[str(image_id)]))
        atomic_write_bytes(out / "test" / f"{image_id}.dicom", data)
        rows.append({"image_id": image_id, **{c: int(c in written[i]) for c in VINDR_COLUMNS}})
    atomic_write_csv(out / "annotations" / "image_labels_test.csv", pd.DataFrame(rows))


WRITERS = {"chexpert": write_chexpert, "nih": write_nih, "padchest": write_padchest, "vindr": write_vindr}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=400, help="external sources: images to write")
    parser.add_argument("--shift", choices=list(SHIFTS), default="planted",
                        help="external sources: plant a site shift (PLANTED.json) or none")


def cli_external(args) -> int:
    summary = generate(args.out, args.source, images=args.images, seed=args.seed, shift=args.shift)
    state = "already complete, nothing to do" if summary["already_complete"] else "written"
    print(f"{args.source} stand-in in {args.out}: {args.images} images, shift {args.shift} ({state})")
    print(json.dumps(summary))
    return 0
