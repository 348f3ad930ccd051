"""`python -m cxrlib fetch-external --source vindr --data-root DIR`: VinDr-CXR's test set from PhysioNet.

VinDr-CXR 1.0.0 is a PhysioNet project under its own credentialed data use agreement (sign it on the
project page first). The same code as MIMIC's fetch does the work (data.physionet.fetch: credentials from
the environment, ~/.netrc or a prompt; Range resume; SHA256SUMS.txt verification; a rerun skips verified
files): first the test labels, then only the 3,000 test DICOMs they list, into PhysioNet's own layout.
The other sources are not on PhysioNet: data/sources.py and docs/external-validation.md say where they are.
"""
from __future__ import annotations

import argparse
import functools
import sys
import urllib.parse
from pathlib import Path

import pandas as pd

from ..errors import UserError
from .physionet import fetch
from .sources import VINDR_LABELS
from .transfer import get_credentials

VINDR_URL = "https://physionet.org/files/vindr-cxr/{version}/"
VINDR_PAGE = "https://physionet.org/content/vindr-cxr/{version}/"
VINDR_VERSION = "1.0.0"


def test_image_paths(labels_csv: Path) -> list[str]:
    ids = pd.read_csv(labels_csv, usecols=["image_id"], dtype=str)["image_id"]
    bad = ids[~ids.str.fullmatch(r"[0-9a-fA-F]+")]
    if len(bad):
        raise UserError(f"{labels_csv}: image_id {bad.iloc[0]!r} is not a hexadecimal id; is this VinDr-CXR's "
                        "image_labels_test.csv?")
    return [f"test/{i}.dicom" for i in ids.drop_duplicates()]


def fetch_vindr_test(data_root, version: str = VINDR_VERSION, base_url: str | None = None, workers: int = 8,
                     credentials=None, progress: bool = True, **kwargs):
    """(labels summary, images summary): the test labels, then the test DICOMs they list."""
    root = Path(data_root)
    url = base_url or VINDR_URL.format(version=version)
    labels_rel = VINDR_LABELS.format(split="test")
    tables = fetch(root, [labels_rel], version, url, min(workers, 4), credentials, progress, desc="labels",
                   **kwargs)
    if not tables.ok:
        return tables, None
    images = fetch(root, test_image_paths(root / labels_rel), version, url, workers, credentials, progress,
                   desc="images", **kwargs)
    return tables, images


def cli(command: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m cxrlib {command}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, choices=["vindr"],
                    help="vindr (the only external source on PhysioNet)")
    ap.add_argument("--data-root", required=True, help="where VinDr-CXR's release goes (annotations/, test/)")
    ap.add_argument("--version", default=VINDR_VERSION)
    ap.add_argument("--workers", type=int, default=8, help="parallel downloads")
    ap.add_argument("--base-url", help=f"mirror URL (default {VINDR_URL.format(version='<version>')})")
    args = ap.parse_args(argv)
    host = urllib.parse.urlsplit(args.base_url or VINDR_URL).hostname or "physionet.org"
    credentials = functools.cache(lambda: get_credentials(host))
    print(f"VinDr-CXR {args.version}: sign its data use agreement at {VINDR_PAGE.format(version=args.version)} "
          "first (a 403 means it is not signed yet)")
    tables, images = fetch_vindr_test(args.data_root, args.version, args.base_url, args.workers, credentials)
    print(tables.text("labels"))
    if images is not None:
        print(images.text("test images"))
    if not tables.ok or images is None or not images.ok:
        print("some files failed (listed above); rerun the same command to retry them", file=sys.stderr)
        return 1
    print(f"next: make external RUN=<run> SOURCE=vindr DATA_ROOT={args.data_root}")
    return 0
