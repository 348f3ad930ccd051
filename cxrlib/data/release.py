"""What MIMIC-CXR-JPG's release holds and where PhysioNet serves it: the table names, the checksum file, the
radiologist labels of 2.1.0, and the script that copies the same files from PhysioNet's Google Cloud bucket
instead (`python -m cxrlib fetch --print-gsutil`). data/physionet.py downloads them over HTTPS.
"""
from __future__ import annotations

import shlex

DEFAULT_BASE_URL = "https://physionet.org/files/mimic-cxr-jpg/{version}/"
PROJECT_PAGE = "https://physionet.org/content/mimic-cxr-jpg/{version}/"
SUMS = "SHA256SUMS.txt"
# 2.1.0 kept the 2.0.0 table names; only its new test-set labels carry the new number.
TABLES = tuple(f"mimic-cxr-2.0.0-{kind}.csv.gz" for kind in ("metadata", "negbio", "chexpert", "split"))
GOLD_TABLE = "mimic-cxr-2.1.0-test-set-labeled.csv"   # radiologist labels, 2.1.0 on; scoring only
DEFAULT_VERSION = "2.1.0"


def has_gold_labels(version: str) -> bool:
    """Whether the release ships mimic-cxr-2.1.0-test-set-labeled.csv (2.1.0 and later)."""
    try:
        return tuple(int(x) for x in version.split(".")) >= (2, 1, 0)
    except ValueError:
        return False


def gsutil_script(data_root, paths, version: str = DEFAULT_VERSION) -> str:
    """A bash script that copies the tables and `paths` from PhysioNet's Google Cloud bucket."""
    dest = shlex.quote(str(data_root).rstrip("/") or ".")
    lines = [
        "#!/usr/bin/env bash",
        f"# MIMIC-CXR-JPG {version} from PhysioNet's Google Cloud bucket, keeping the release's layout.",
        f"# 1. Request cloud access on {PROJECT_PAGE.format(version=version)} and copy the bucket name shown",
        "#    there. The bucket is 'requester pays': your Google Cloud project is billed for the transfer.",
        "# 2. Replace the two placeholders below, then run this script (needs gsutil from the Google Cloud SDK).",
        "set -euo pipefail",
        "PROJECT='<your-gcp-project>'",
        "BUCKET='gs://<bucket-from-physionet-page>'",
        "case \"$PROJECT$BUCKET\" in *'<'*) echo 'edit PROJECT and BUCKET at the top of this script' >&2; exit 1;; esac",
        f"mkdir -p {dest}",
        f"gsutil -u \"$PROJECT\" -m cp \"$BUCKET/{SUMS}\" "
        + " ".join(f"\"$BUCKET/{t}\"" for t in TABLES + ((GOLD_TABLE,) if has_gold_labels(version) else ()))
        + f" {dest}/",
    ]
    if paths:
        lines += [
            f"# The cohort's {len(paths)} images, 8 at a time; gsutil cp would flatten folders, so one copy per file.",
            "xargs -P 8 -n 1 sh -c 'mkdir -p \"$(dirname \"$3/$4\")\" && "
            f"gsutil -q -u \"$1\" cp \"$2/$4\" \"$3/$4\"' sh \"$PROJECT\" \"$BUCKET\" {dest} <<'EOF'",
            *paths,
            "EOF",
        ]
    else:
        lines.append("# The tables are enough to build the cohort: run the same fetch --print-gsutil again for "
                     "the image list.")
    lines.append(f"# 3. Verify everything against {SUMS} (and fetch what is missing): "
                 f"python -m cxrlib fetch --data-root {dest} ...")
    return "\n".join(lines)
