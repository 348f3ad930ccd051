"""One JPEG -> the S x S uint8 image the cache stores, in one of two modes (`decode` parameter).

fast   Image.draft asks libjpeg to scale the DCT by 1/2, 1/4 or 1/8, the smallest scale whose output
       is still at least the target in both dimensions (a 2544x3056 MIMIC image decodes as 318x382
       for S=256), then a bilinear resize finishes the last factor (< 2). PIL's bilinear is a
       convolution whose support grows with the reduction, so it is antialiased. About 2x faster
       than the original's path; within 48-53 dB PSNR of it, up to ~20 grey levels at sharp edges.
exact  the original project's path pixel for pixel: a full decode, then the bilinear resize its
       torchvision Resize((S, S)) applies to a PIL image. The seed presets use it.

`python -m cxrlib bench decode` times both against the original and reports their PSNR.
"""
from __future__ import annotations

import signal

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

RESIZE_MODES = ("squash", "letterbox")
DECODE_MODES = ("fast", "exact")
RESAMPLE = Image.Resampling.BILINEAR   # what torchvision's Resize uses on PIL images


def target_size(width: int, height: int, size: int, resize: str) -> tuple[int, int]:
    """(width, height) the image is resized to before any padding."""
    if resize == "squash":
        return size, size
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def grey(img: Image.Image) -> Image.Image:
    """8-bit grey; a 16-bit PNG is scaled by 255/65535 rather than clipped at 255 as PIL's convert would."""
    if img.mode == "L":
        return img
    if img.mode.startswith("I"):
        pixels = np.asarray(img, dtype=np.float64)
        full = 65535.0 if img.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(pixels * (255.0 / full)), 0, 255).astype(np.uint8))
    return img.convert("L")


def decode_image(path, size: int, resize: str = "squash", mode: str = "fast",
                 formats: tuple[str, ...] = ("JPEG",)) -> tuple[np.ndarray, tuple[int, int]]:
    """The S x S uint8 cache image of one file, and the source's (width, height).

    The cache takes JPEGs only (MIMIC-CXR-JPG holds nothing else: another format is a wrong or damaged
    file); `predict` passes formats=("JPEG", "PNG").
    """
    # A truncated JPEG must raise, never decode into a half-grey image that trains silently.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(path) as img:
        if img.format not in formats:
            raise NotJPEG(f"not a {' or '.join(formats)} ({img.format or 'unknown'} data)")
        source = img.size
        target = target_size(*source, size, resize)
        if mode == "fast" and img.format == "JPEG":
            img.draft("L", target)
        img.load()
        small = grey(img).resize(target, RESAMPLE)
    pixels = np.asarray(small, dtype=np.uint8)
    if resize == "letterbox":
        canvas = np.zeros((size, size), np.uint8)
        top, left = (size - target[1]) // 2, (size - target[0]) // 2
        canvas[top:top + target[1], left:left + target[0]] = pixels
        pixels = canvas
    return pixels, source


class NotJPEG(ValueError):
    pass


def failure_reason(error: BaseException) -> str:
    if isinstance(error, NotJPEG):
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
    """Worker: (row, path, size, resize, mode) -> (row, pixels or None, reason or None, (width, height))."""
    row, path, size, resize, mode = task
    try:
        pixels, source = decode_image(path, size, resize, mode)
        return row, pixels, None, source
    except Exception as error:  # any bad file is reported, none stops the build
        return row, None, failure_reason(error), (0, 0)


def ignore_sigint() -> None:
    # Ctrl-C goes to the parent, which saves its progress and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
