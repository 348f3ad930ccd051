"""SHA256SUMS.txt: parsed strictly, and fetched again when it arrived damaged or incomplete (physionet.py)."""
from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath

from ..errors import UserError
from .transfer import Failed, ServerGone, download

log = logging.getLogger("cxrlib.data.physionet")
SUMS = "SHA256SUMS.txt"

CHECKSUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *]?(.+)$")
# A listed path: a known top-level file, or a plain relative path under files/ (MIMIC-CXR-JPG), one of
# MIMIC-IV's modules or VinDr-CXR's folders (no '..', no control bytes); VinDr-CXR's top level holds tables.
LISTED_PATH = re.compile(r"^(?:files|hosp|core|icu|ed|note|annotations|test|train)/(?:[A-Za-z0-9._ -]+/)*"
                         r"[A-Za-z0-9._ -]+$")
TOP_LEVEL = re.compile(r"^(?:LICENSE\.txt|README(?:\.md)?|IMAGE_FILENAMES|RECORDS|index\.html|"
                       r"mimic-cxr-2\.[01]\.0-[a-z-]+\.csv(?:\.gz)?|[A-Za-z0-9_-]+\.(?:csv|xlsx|txt)(?:\.gz)?)$")


class ChecksumListError(UserError):
    pass


def read_checksums(path) -> dict[str, str]:
    """SHA256SUMS.txt, parsed strictly: every line a 64-hex digest and a path under files/ or a known
    top-level file (one or two spaces, maybe a '*' for binary mode). A damaged list raises ChecksumListError."""
    path, sums = Path(path), {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        match = CHECKSUM_LINE.match(line.strip())
        rel = str(PurePosixPath(match.group(2))) if match else ""
        if not match or ".." in rel.split("/") or not (LISTED_PATH.match(rel) or TOP_LEVEL.match(rel)):
            raise ChecksumListError(f"{path} line {number}: expected '<sha256> <relative path>' with the path under "
                                    f"files/ or a release table, got {line[:120]!r}")
        sums[rel] = match.group(1).lower()
    return sums


def verified_checksums(client, root: Path, rels: list[str]) -> tuple[dict, list[str]]:
    """The checksum list, fetched again once when it is malformed or lacks a wanted file (a damaged
    transfer of the list itself); (sums, the wanted files it still does not list)."""
    for attempt in (1, 2):
        try:
            sums = read_checksums(root / SUMS)
        except ChecksumListError as e:
            if attempt == 2:
                raise ChecksumListError(f"{e}. It was downloaded again and is still malformed: check --base-url "
                                        "and --version; the fetch stopped and kept no unverified file") from None
            log.warning("%s is malformed (%s): downloading it again", root / SUMS, e)
        else:
            unknown = [rel for rel in rels if rel not in sums]
            if not unknown or attempt == 2:
                return sums, unknown
            log.warning("%d wanted files are not in %s (e.g. %s): downloading the list again", len(unknown),
                        root / SUMS, unknown[0])
        (root / SUMS).unlink(missing_ok=True)
        download_list(client, root, "rerun later")
    raise AssertionError("unreachable")


def download_list(client, root: Path, hint: str) -> None:
    """SHA256SUMS.txt itself (nothing to verify it against); a failure is one line saying what to do."""
    client.login()
    try:
        download(client, root, SUMS, None)
    except ServerGone as e:
        raise server_gone(e) from None
    except Failed as e:
        raise UserError(f"could not download {client.base_url}{SUMS}: {e}. {hint}") from None


def server_gone(error, done: int = 0, total: int = 0) -> UserError:
    where = f" after {done} of {total} files" if total else ""
    return UserError(f"the server is unreachable: {error}. The fetch stopped{where}; nothing is lost (verified files "
                     "stay, partial ones resume): check the network or PhysioNet's status, then rerun the same "
                     "command to continue where it stopped")
