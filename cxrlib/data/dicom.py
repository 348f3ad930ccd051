"""A DICOM radiograph -> 8-bit grey, as a viewer shows it (VinDr-CXR ships DICOM).

pydicom decodes the pixel data (uncompressed, and JPEG 2000 through pylibjpeg-openjpeg; other syntaxes
need their handler, and a file without one is listed by the cache, not a crash),
then the modality LUT (rescale slope and intercept) and the VOI LUT (the window the scanner chose) apply,
and MONOCHROME1 (white is low) is inverted, so that bone is bright in every image. The window's output
range, or the stored bits' range when there is no window, maps linearly onto 0-255.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom(path) -> bool:
    """The DICM magic at byte 128 (a suffix alone can lie)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path) -> Image.Image:
    """The image as 8-bit grey ("L"); raises ValueError naming what pydicom could not do."""
    import pydicom  # lazy: pydicom, only for DICOM sources (its import is not free)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    try:
        raw = ds.pixel_array
    except Exception as error:   # a compressed syntax without its handler, or damaged pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ValueError(f"pydicom cannot decode its pixel data (transfer syntax {syntax}: {error}); JPEG 2000 is "
                         "decoded by pylibjpeg-openjpeg (installed), JPEG lossless needs `pip install "
                         "pylibjpeg-libjpeg` (GPL) or `python-gdcm`") from None
    if raw.ndim != 2:
        raise ValueError(f"not a single grey frame (pixel array of shape {raw.shape})")
    bits = int(getattr(ds, "BitsStored", 16))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    values = apply_modality_lut(raw, ds)
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
    if windowed:
        values = apply_voi_lut(values, ds)
    if windowed or not ("RescaleSlope" in ds or "RescaleIntercept" in ds):
        # pydicom's window maps onto the stored bits' range; without a window the stored values are it.
        low = -(2 ** (bits - 1)) if signed else 0
        high = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    else:
        low, high = float(np.min(values)), float(np.max(values))
    values = np.clip(values.astype(np.float64), low, high)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        values = high - (values - low)
    scaled = np.rint((values - low) * (255.0 / max(high - low, 1)))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
