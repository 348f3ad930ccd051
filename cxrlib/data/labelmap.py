"""Label maps: which of a source's own labels make each label of a run's label set positive.

A map is data, one YAML file per source and label set, reviewed like code: `label_maps/<source>.yaml` for the
default set (chexpert14, MIMIC-CXR's 14 findings), `label_maps/<label set>/<source>.yaml` for another (CXR-LT's 26
and 40 can say NIH's Emphysema, Fibrosis, Hernia, Infiltration, Mass, Nodule and Pleural_Thickening, which the 14
cannot). Each label of the set (as the set spells it) holds the list of the source's label strings that make it
positive, a mapping with that list under `labels` (plus `approximate: true` and a one-line `reason` when the
source's concept is near but not equal), or null when the source cannot express it. Labels match exactly after
lower-casing and collapsing spaces, never as substrings (torchxrayvision's substring match puts PadChest's "callus
rib fracture" under Fracture). A null finding is missing for every image, never negative, and leaves every
average; so is a finding none of whose labels the table at hand can hold (the Kaggle VinBigData table has 14 of
VinDr-CXR's 27 labels). A null finding may be written `{labels: [], reason: ...}` to say why.

`uninformative: {labels: [...], reason: ...}` lists labels that say nothing about any finding (PadChest's
`exclude`, `unchanged`, `suboptimal study`): an image whose labels are all among them is unlabelled (every finding
missing), not negative for all 14.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .. import labelset
from ..errors import UserError

MAPS_DIR = Path(__file__).resolve().parent / "label_maps"


def normalize(label: str) -> str:
    """The form labels are compared in: lower case, spaces collapsed, none at the ends."""
    return " ".join(str(label).split()).lower()


@dataclass(frozen=True)
class Entry:
    finding: str
    labels: tuple[str, ...]          # as written in the map; empty: the source cannot express the finding
    approximate: bool = False
    reason: str = ""

    @property
    def status(self) -> str:
        return "missing" if not self.labels else "approximate" if self.approximate else "exact"


@dataclass
class LabelMap:
    name: str                         # the file's stem: chexpert, nih, nih_expert, padchest, vindr
    entries: dict[str, Entry]
    labels_from: str
    sha256: str
    text: str
    uninformative: tuple[str, ...] = ()   # labels that say nothing about any finding
    uninformative_reason: str = ""
    vocabulary: tuple[str, ...] = ()      # every label the source's release can hold, when the map lists them

    def status(self, vocabulary=None) -> dict[str, str]:
        """exact / approximate / missing per finding; with `vocabulary` (the labels a table can hold), a finding
        none of whose labels it holds is missing."""
        known = None if vocabulary is None else {normalize(v) for v in vocabulary}
        out = {}
        for finding, entry in self.entries.items():
            held = [x for x in entry.labels if known is None or normalize(x) in known]
            out[finding] = entry.status if held else "missing"
        return out

    def says_nothing(self, positives: pd.Series) -> np.ndarray:
        """Images whose labels are all `uninformative` ones: unlabelled, every finding missing."""
        silent = {normalize(x) for x in self.uninformative}
        return positives.map(lambda s: bool(silent) and s is not None and s <= silent).to_numpy(bool)

    def encode(self, positives: pd.Series, uncertain: pd.Series | None = None, vocabulary=None) -> pd.DataFrame:
        """The 14 finding columns (1.0, 0.0, NaN) of images whose source labels are `positives` (one set of
        normalized labels per image; None: the image is unlabelled, every finding missing). `uncertain`: sets
        of labels marked uncertain, which make a finding missing unless another of its labels is positive."""
        status = self.status(vocabulary)
        labelled = positives.map(lambda s: s is not None).to_numpy(bool) & ~self.says_nothing(positives)
        out = pd.DataFrame(index=positives.index)
        for finding in self.entries:   # the label set's labels, in its order
            if status[finding] == "missing":
                out[finding] = np.nan
                continue
            wanted = {normalize(x) for x in self.entries[finding].labels}
            hit = positives.map(lambda s, w=wanted: bool(s and w & s)).to_numpy(bool)
            column = np.where(hit, 1.0, 0.0)
            if uncertain is not None:
                unsure = uncertain.map(lambda s, w=wanted: bool(s and w & s)).to_numpy(bool)
                column[unsure & ~hit] = np.nan
            column[~labelled] = np.nan
            out[finding] = column
        return out

    def table(self, vocabulary=None) -> pd.DataFrame:
        """finding, status, the source labels, why approximate: the table the report and the card show."""
        status = self.status(vocabulary)
        rows = [{"finding": f, "status": status[f], "source labels": ", ".join(e.labels) or "(none)",
                 "reason": e.reason or ("no label of this table holds it" if status[f] != e.status else "")}
                for f, e in self.entries.items()]
        return pd.DataFrame(rows)

    def record(self, vocabulary=None) -> dict:
        """What metrics.json keeps: the map's name, hash, content and the status it had for this table."""
        return {"name": self.name, "sha256": self.sha256, "labels_from": self.labels_from,
                "status": self.status(vocabulary),
                "uninformative": {"labels": list(self.uninformative), "reason": self.uninformative_reason},
                "findings": {f: {"labels": list(e.labels), "approximate": e.approximate, "reason": e.reason}
                             for f, e in self.entries.items()}}


class _NoDuplicates(yaml.SafeLoader):
    """yaml.safe_load, except that a key written twice is an error (safe_load keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is written twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def available() -> list[str]:
    return sorted(p.stem for p in MAPS_DIR.glob("*.yaml"))


def map_path(name: str, set_name: str = labelset.DEFAULT) -> Path:
    """Where source `name`'s map for label set `set_name` lives (the default set's at the top of label_maps/)."""
    return MAPS_DIR / f"{name}.yaml" if set_name == labelset.DEFAULT else MAPS_DIR / set_name / f"{name}.yaml"


def load(name: str, path: Path | None = None, set_name: str = labelset.DEFAULT) -> LabelMap:
    """The map of source `name` for label set `set_name` (or the file `path`), checked: the set's labels exactly,
    each a list, a mapping with `labels`, or null; an approximate one with its reason."""
    if path is None and set_name != labelset.DEFAULT and not map_path(name, set_name).is_file():
        raise UserError(f"no label map of {name} for label set {set_name}: write {map_path(name, set_name)} (each of "
                        f"the set's labels: the {name} labels that make it positive, or null; docs/label-sets.md), or "
                        f"validate a run of label set {labelset.DEFAULT}")
    path = Path(path) if path else map_path(name, set_name)
    if not path.is_file():
        raise UserError(f"no label map {path}; the maps are {available()}")
    labels = list(labelset.load(set_name).labels)
    text = path.read_text()
    try:
        data = yaml.load(text, Loader=_NoDuplicates)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    findings = (data or {}).get("findings")
    if not isinstance(findings, dict):
        raise UserError(f"{path}: needs a `findings:` mapping of label set {set_name}'s {len(labels)} labels")
    extra = sorted(set(data) - {"source", "labels_from", "findings", "uninformative", "vocabulary"})
    if extra:
        raise UserError(f"{path}: unknown top-level key(s) {extra}; use source, labels_from, findings, uninformative, "
                        "vocabulary")
    unknown = sorted(set(findings) - set(labels))
    absent = [f for f in labels if f not in findings]
    if unknown or absent:
        raise UserError(f"{path}: the findings must be label set {set_name}'s {len(labels)}, spelled as the set spells "
                        f"them; unknown {unknown}, absent {absent} (write `null` for one the source cannot express)")
    entries = {}
    for finding in labels:
        value = findings[finding]
        if isinstance(value, dict):
            extra = sorted(set(value) - {"labels", "approximate", "reason"})
            if extra:
                raise UserError(f"{path}: {finding} has unknown key(s) {extra}; use labels, approximate, reason")
            labels, approximate, reason = value.get("labels"), bool(value.get("approximate")), value.get("reason", "")
            if approximate and not reason:
                raise UserError(f"{path}: {finding} is approximate; give a one-line `reason`")
        else:
            labels, approximate, reason = value, False, ""
        if labels is None:
            labels = []
        if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
            raise UserError(f"{path}: {finding} must be a list of label strings, a mapping with `labels`, or null")
        entries[finding] = Entry(finding, tuple(labels), approximate, str(reason))
    silent = data.get("uninformative") or {}
    if silent and not (isinstance(silent, dict) and isinstance(silent.get("labels"), list) and silent.get("reason")):
        raise UserError(f"{path}: uninformative must be a mapping with a list of `labels` and a one-line `reason`")
    vocabulary = tuple(data.get("vocabulary") or ())
    known = {normalize(x) for x in vocabulary}
    typos = [x for e in entries.values() for x in e.labels if known and normalize(x) not in known]
    if typos:   # a misspelt label would match nothing and make its finding all negative
        raise UserError(f"{path}: label(s) {typos} are not in its vocabulary (the labels the release can hold)")
    return LabelMap(path.stem, entries, str(data.get("labels_from", "")), hashlib.sha256(text.encode()).hexdigest(),
                    text, tuple(silent.get("labels", ())), str(silent.get("reason", "")), vocabulary)


def markdown_table(names=None, set_name: str = labelset.DEFAULT) -> str:
    """Every map side by side (≈ approximate), as docs/external-validation.md shows them; a test keeps the two equal."""
    names = list(names or available())
    maps = {name: load(name, set_name=set_name) for name in names}
    lines = ["| finding | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for finding in labelset.load(set_name).labels:
        cells = []
        for name in names:
            entry = maps[name].entries[finding]
            cells.append("missing" if not entry.labels else ("≈ " if entry.approximate else "") + ", ".join(entry.labels))
        lines.append(f"| {finding} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
