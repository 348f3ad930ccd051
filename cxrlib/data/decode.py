"""One JPEG -> the S x S uint8 image the cache stores, in one of two modes (`decode` parameter).

fast   Image.draft asks libjpeg to scale the DCT by 1/2, 1/4 or 1/8, the smallest scale whose output
       is still at least the target in both dimensions (a 2544x3056 MIMIC image decodes as 318x382
       for S=256), then a bilinear resize finishes the last factor (< 2). PIL's bilinear is a
       convolution whose support grows with the reduction, so it is antialiased. About 2x faster
       than the original's path; within 48-53 dB PSNR of it, up to ~20 grey levels at sharp edges.
exact  the original project's path pixel for pixel: a full decode, then the bilinear resize its
       torchvision Resize((S, S)) applies to a PIL image. The seed presets use it.

`python -m cxrlib bench decode` times both against the original and reports their PSNR.

External sources ship other files (a cache `reader`: formats, equalize): 8-bit PNG (some NIH files RGB or
RGBA: converted to grey), 16-bit PNG scaled by the bits stored as the source declares them (PadChest's BitsStored_DICOM; a
16-bit file where nothing declares its depth is a named failure, never scaled by its own range), and
DICOM through data.dicom. `equalize` applies a histogram equalisation to the full-size 8-bit image, as
MIMIC-CXR-JPG's conversion from DICOM did, so that the contrast a MIMIC model learnt is what it meets.
"""
from __future__ import annotations

import signal
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .dicom import is_dicom, read_dicom

RESIZE_MODES = ("squash", "letterbox")
DECODE_MODES = ("fast", "exact")
RESAMPLE = Image.Resampling.BILINEAR   # what torchvision's Resize uses on PIL images


def target_size(width: int, height: int, size: int, resize: str) -> tuple[int, int]:
    """(width, height) the image is resized to before any padding."""
    if resize == "squash":
        return size, size
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


BIT_DEPTHS = (8, 10, 12, 14, 16)   # what medical images use; a 12-bit scan is often stored in a 16-bit PNG


def bits_used(top: int) -> int:
    """The smallest usual bit depth that holds `top`, the image's largest value."""
    return next((b for b in BIT_DEPTHS if top < 2 ** b), 16)


def _block_mean(img: Image.Image, factor: int, rows_per_band: int = 256) -> np.ndarray:
    """Mean of factor x factor blocks, read a band of rows at a time from the decoded image: the memory of a
    band (as integers, then floats), never a copy of the whole image."""
    w, h = (img.size[0] // factor) * factor, (img.size[1] // factor) * factor
    out = np.empty((h // factor, w // factor), np.float32)
    step = max(1, rows_per_band // factor) * factor
    for top in range(0, h, step):
        band = np.asarray(img.crop((0, top, w, min(top + step, h))), dtype=np.float32)
        out[top // factor:(top + len(band)) // factor] = band.reshape(-1, factor, w // factor, factor).mean((1, 3))
    return out


def grey(img: Image.Image, target: tuple[int, int] | None = None, bits: int = 0) -> Image.Image:
    """8-bit grey. A 16-bit image is scaled by `bits`, the bits stored as its source declares them (PadChest's
    table, predict's --bits): a 12-bit scan in a 16-bit PNG by 255/4095, not near-black at 255/65535. Without a
    declared depth a 16-bit image is a failure that says what would hold it, never a guess from its own range
    (which made a dark image of a set four times brighter than its neighbours). An image much larger than
    `target` is block-averaged first, so a 12000 x 12000 PNG needs its 16-bit pixels and a band of floats,
    not gigabytes."""
    if img.mode == "L":
        return img
    if img.mode.startswith("I"):
        factor = max(1, min(img.size[0] // (2 * target[0]), img.size[1] // (2 * target[1]))) if target else 1
        pixels = _block_mean(img, factor) if factor > 1 else np.asarray(img)
        top = int(pixels.max()) if pixels.size else 0
        if not bits:
            raise UndeclaredDepth(f"a 16-bit image (values up to {top}; {bits_used(top)} bits would hold them) where "
                                  "no stored bit depth is declared", top)
        if top > 2 ** bits - 1:   # clipping would turn a full-range image nearly white
            raise BeyondDepth(f"values up to {top} in an image its table declares {bits}-bit (at most "
                              f"{2 ** bits - 1}): the table's bits do not describe this file")
        scaled = np.clip(np.rint(pixels.astype(np.float32) * np.float32(255.0 / (2 ** bits - 1))), 0, 255)
        return Image.fromarray(scaled.astype(np.uint8))
    return img.convert("L")


def decode_image(path, size: int, resize: str = "squash", mode: str = "fast",
                 formats: tuple[str, ...] = ("JPEG",), bits: int = 0,
                 equalize: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """The S x S uint8 cache image of one file, and the source's (width, height).

    The cache takes JPEGs only for MIMIC (MIMIC-CXR-JPG holds nothing else: another format is a wrong or
    damaged file); `predict` passes formats=("JPEG", "PNG"), an external source's reader what it ships
    ("DICOM" among them). bits: stored bits per pixel of a 16-bit image, when known.
    """
    # A truncated JPEG must raise, never decode into a half-grey image that trains silently.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if "DICOM" in formats and is_dicom(path):
        full = read_dicom(path)
        source = full.size
        target = target_size(*source, size, resize)
    else:
        with Image.open(path) as img:
            if img.format not in formats:
                raise NotJPEG(f"not a {' or '.join(formats)} ({img.format or 'unknown'} data)")
            source = img.size
            target = target_size(*source, size, resize)
            if mode == "fast" and img.format == "JPEG" and not equalize:
                img.draft("L", target)
            img.load()
            full = grey(img, None if equalize else target, bits)
    if equalize:
        full = ImageOps.equalize(full)
    pixels = np.asarray(full.resize(target, RESAMPLE), dtype=np.uint8)
    if resize == "letterbox":
        canvas = np.zeros((size, size), np.uint8)
        top, left = (size - target[1]) // 2, (size - target[0]) // 2
        canvas[top:top + target[1], left:left + target[0]] = pixels
        pixels = canvas
    return pixels, source


class NotJPEG(ValueError):
    pass


class BeyondDepth(ValueError):
    """A 16-bit image holding values its declared bit depth cannot: listed as a failure with this reason."""


class UndeclaredDepth(ValueError):
    """A 16-bit image where nothing declares the bits stored: listed as a failure; `top`, its largest value."""

    def __init__(self, message: str, top: int):
        super().__init__(message)
        self.top = top


def failure_reason(error: BaseException) -> str:
    if isinstance(error, (NotJPEG, BeyondDepth, UndeclaredDepth)):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return "missing file"
    if isinstance(error, UnidentifiedImageError):
        return "cannot identify image (not a JPEG, or garbage bytes)"
    if isinstance(error, Image.DecompressionBombError):
        return f"refused as a decompression bomb: {error}"
    if "truncated" in str(error):
        return "truncated JPEG"
    return f"cannot decode ({type(error).__name__}: {error})"


def decode_one(task: tuple) -> tuple:
    """Worker: (row, path, size, resize, mode, reader, bits) -> (row, pixels or None, reason or None,
    (width, height)); reader None: MIMIC's JPEGs, else an external source's formats and equalize."""
    row, path, size, resize, mode, reader, bits = task
    formats = tuple(reader["formats"]) if reader else ("JPEG",)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # pydicom's notes on odd headers: the file decodes or is listed
            pixels, source = decode_image(path, size, resize, mode, formats, bits,
                                          bool(reader and reader.get("equalize")))
        return row, pixels, None, source
    except Exception as error:  # any bad file is reported, none stops the build
        return row, None, failure_reason(error), (0, 0)


def ignore_sigint() -> None:
    # Ctrl-C goes to the parent, which saves its progress and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
