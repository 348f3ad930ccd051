"""MIMIC-IV's patients and admissions -> sex, age, race and insurance for every cohort image.

    table, coverage = demographics_for_cohort(cohort, data_root, mimic_iv_root, race_policy="mode")

Used only to audit a trained model by patient group: never a model input. The rules:
- sex: patients.gender (F / M), else Unknown;
- age at the study: anchor_age + (year of StudyDate - anchor_year), in bands by `age_bands`:
  cxrlib (<18, 18-39, 40-59, 60-79, 80+) or seyyed-kalantari (0-20, 20-40, 40-60, 60-80, 80+, each
  band [lo, hi) in whole years, as in Seyyed-Kalantari et al., Nature Medicine 2021). MIMIC-CXR's
  StudyDate and MIMIC-IV's dates are shifted by the same per-patient offset, so the years compare
  directly; the age is the patient's age
  in that calendar year, so it can be one year above the age on the study day (before the
  birthday), and anchor_age is capped at 91;
- race: every admission's `race` (1.0: `ethnicity`) harmonised into White, Black,
  Hispanic/Latino, Asian, Other or Unknown (harmonise_race), then one group per patient by
  `race_policy` (patient_race): mode (the most frequent known group; a tie goes to the group
  recorded first), first (the first admission's known group) or unknown (a patient recorded
  as two different known groups becomes Unknown);
- insurance: the admission whose admittime..dischtime contains the study's date and time, else
  the admission nearest to it, else Unknown; spellings are kept as data (3.x adds Private).
Patients missing from MIMIC-IV, or without an admission, are kept as Unknown and counted.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..params import load
from .cohort import table_path
from .physionet import fetch
from .transfer import get_credentials

RACE_GROUPS = ("White", "Black", "Hispanic/Latino", "Asian", "Other", "Unknown")
RACE_POLICIES = ("mode", "first", "unknown")
UNKNOWN = "Unknown"
AGE_BANDS = ((0, 17, "<18"), (18, 39, "18-39"), (40, 59, "40-59"), (60, 79, "60-79"), (80, 200, "80+"))
AGE_BAND_SCHEMES = {"cxrlib": AGE_BANDS,
                    "seyyed-kalantari": ((0, 19, "0-20"), (20, 39, "20-40"), (40, 59, "40-60"), (60, 79, "60-80"),
                                         (80, 200, "80+"))}
_NOT_A_RACE = {"", "UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER", "UNKNOWN/NOT SPECIFIED",
               "NAN", "DECLINED TO ANSWER"}
# The rule, readable: MIMIC-IV's spellings (2.x-3.x `race`; 1.0 `ethnicity`), exactly, and the release's own
# families by prefix. Any other spelling is Unknown (never compared) and listed with its count by
# demographics_for_cohort: a changed spelling must not quietly move patients into "Other".
RACE_SPELLINGS = {
    "WHITE": "White", "PORTUGUESE": "White",
    "BLACK/AFRICAN AMERICAN": "Black", "BLACK/AFRICAN": "Black", "BLACK/CAPE VERDEAN": "Black",
    "BLACK/CARIBBEAN ISLAND": "Black",
    "HISPANIC OR LATINO": "Hispanic/Latino", "HISPANIC/LATINO": "Hispanic/Latino", "SOUTH AMERICAN": "Hispanic/Latino",
    "ASIAN": "Asian",
    "AMERICAN INDIAN/ALASKA NATIVE": "Other", "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER": "Other",
    "MULTIPLE RACE/ETHNICITY": "Other", "OTHER": "Other",
}
RACE_PREFIXES = (("WHITE - ", "White"), ("BLACK/", "Black"), ("HISPANIC/LATINO - ", "Hispanic/Latino"),
                 ("ASIAN - ", "Asian"))
TABLE_NAMES = ("patients", "admissions")


# --------------------------------------------------------------------------- reading
def table_file(root, name: str) -> Path:
    """hosp/<name>.csv.gz (2.0 on) or core/<name>.csv.gz (1.0), or the unzipped .csv."""
    root = Path(root)
    for module in ("hosp", "core"):
        for suffix in (".csv.gz", ".csv"):
            path = root / module / f"{name}{suffix}"
            if path.is_file():
                return path
    raise UserError(f"{name}.csv.gz not found under {root}/hosp/ (MIMIC-IV 2.0 and later) or {root}/core/ "
                    "(1.0). Download it with `make fetch-demographics` (MIMIC-IV is a separate credentialed "
                    "project: sign its data use agreement on PhysioNet), or set mimic_iv_root to its folder")


def read_patients(root) -> pd.DataFrame:
    """subject_id (str), gender, anchor_age, anchor_year; one row per patient.

    Nothing is resolved silently: a gender other than F or M and an age that is not a number from 0 to 120
    become unknown, and a patient with several rows that disagree becomes unknown on every field; the
    counts are in frame.attrs["quality"] (sex_unreadable, age_unreadable, conflicting_patients)."""
    path = table_file(root, "patients")
    frame = _read(path, ["subject_id", "gender", "anchor_age", "anchor_year"])
    gender = frame["gender"].str.strip().str.upper()
    sex_bad = gender.notna() & (gender != "") & ~gender.isin(["F", "M"])
    frame["gender"] = gender.where(gender.isin(["F", "M"]))
    age = pd.to_numeric(frame["anchor_age"], errors="coerce")
    age_bad = frame["anchor_age"].notna() & (age.isna() | (age < 0) | (age > 120))
    frame["anchor_age"] = age.where(~age_bad)
    frame["anchor_year"] = pd.to_numeric(frame["anchor_year"], errors="coerce")
    distinct = frame.drop_duplicates()
    conflicting = distinct["subject_id"][distinct["subject_id"].duplicated()].unique()
    frame = distinct.drop_duplicates("subject_id").copy()
    frame.loc[frame["subject_id"].isin(conflicting), ["gender", "anchor_age", "anchor_year"]] = np.nan
    frame.attrs["quality"] = {"sex_unreadable": int(sex_bad.sum()), "age_unreadable": int(age_bad.sum()),
                              "conflicting_patients": int(len(conflicting))}
    return frame


def read_admissions(root) -> pd.DataFrame:
    """subject_id (str), hadm_id, admittime, dischtime (datetimes), insurance, race (1.0's ethnicity)."""
    path = table_file(root, "admissions")
    found = list(pd.read_csv(path, nrows=0).columns)
    race = "race" if "race" in found else "ethnicity"
    frame = _read(path, ["subject_id", "hadm_id", "admittime", "dischtime", "insurance", race])
    frame = frame.rename(columns={race: "race"})
    for column in ("admittime", "dischtime"):
        frame[column] = pd.to_datetime(frame[column], errors="coerce")
    return frame


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        found = list(pd.read_csv(path, nrows=0).columns)
        missing = [c for c in columns if c not in found]
        if missing:
            raise UserError(f"{path}: missing column(s) {missing} (found {found}); is it MIMIC-IV's "
                            f"{path.name.split('.')[0]} table? Re-download it with `make fetch-demographics`")
        return pd.read_csv(path, usecols=columns, dtype=str)
    except UserError:
        raise
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: could not be read ({e}); re-download it with `make fetch-demographics`") from None


# --------------------------------------------------------------------------- rules
def _race_text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip().upper()


def recognised_race(value) -> bool:
    """Whether a race/ethnicity string is one the rule knows (a MIMIC-IV spelling, or missing/declined)."""
    text = _race_text(value)
    return text in _NOT_A_RACE or text in RACE_SPELLINGS or text.startswith(tuple(p for p, _ in RACE_PREFIXES))


def harmonise_race(value) -> str:
    """One of RACE_GROUPS for a MIMIC-IV race/ethnicity string (e.g. 'HISPANIC/LATINO - PUERTO RICAN'), by
    RACE_SPELLINGS and RACE_PREFIXES; Unknown for missing, declined or unrecognised spellings."""
    text = _race_text(value)
    if text in RACE_SPELLINGS:
        return RACE_SPELLINGS[text]
    return next((group for prefix, group in RACE_PREFIXES if text.startswith(prefix)), UNKNOWN)


def patient_race(admissions: pd.DataFrame, policy: str = "mode") -> pd.Series:
    """subject_id -> race group over every admission of the patient, by `policy` (RACE_POLICIES)."""
    if policy not in RACE_POLICIES:
        raise UserError(f"race_policy: {policy!r}; choose one of {list(RACE_POLICIES)}")
    known = admissions.assign(group=admissions["race"].map(harmonise_race))
    known = known[known["group"] != UNKNOWN].sort_values(["subject_id", "admittime"], kind="stable")
    if known.empty:
        return pd.Series(dtype="str")
    if policy == "first":
        return known.groupby("subject_id", sort=False)["group"].first()
    if policy == "unknown":
        groups = known.groupby("subject_id", sort=False)["group"]
        return groups.first().where(groups.nunique() == 1, UNKNOWN)
    counts = known.groupby(["subject_id", "group"], sort=False).agg(n=("group", "size"),
                                                                     first=("admittime", "min")).reset_index()
    counts = counts.sort_values(["subject_id", "n", "first"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("subject_id").set_index("subject_id")["group"]


def age_at(anchor_age, anchor_year, study_year):
    """anchor_age + (study_year - anchor_year), elementwise; NaN where a part is missing."""
    return np.asarray(anchor_age, dtype=float) + (np.asarray(study_year, dtype=float)
                                                  - np.asarray(anchor_year, dtype=float))


def age_band(age, scheme: str = "cxrlib") -> np.ndarray:
    if scheme not in AGE_BAND_SCHEMES:
        raise UserError(f"age_bands: {scheme!r}; choose one of {list(AGE_BAND_SCHEMES)}")
    age = np.floor(np.asarray(age, dtype=float))   # whole years: 19.5 is in 0-20, never between bands
    out = np.full(age.shape, UNKNOWN, dtype=object)
    for lo, hi, name in AGE_BAND_SCHEMES[scheme]:
        out[(age >= lo) & (age <= hi)] = name
    return out


def insurance_at(studies: pd.DataFrame, admissions: pd.DataFrame) -> pd.Series:
    """Per study row (subject_id, when): the insurance of the admission containing `when`, else of the
    nearest admission (distance to its interval), else Unknown (also without a study time).
    Index follows `studies`, which must be unique."""
    joined = studies.loc[studies["when"].notna(), ["subject_id", "when"]].reset_index().merge(
        admissions[["subject_id", "admittime", "dischtime", "insurance"]], on="subject_id", how="inner")
    if joined.empty:
        return pd.Series(UNKNOWN, index=studies.index, dtype="str")
    end = joined["dischtime"].fillna(joined["admittime"])
    before = (joined["admittime"] - joined["when"]).dt.total_seconds().clip(lower=0)
    after = (joined["when"] - end).dt.total_seconds().clip(lower=0)
    joined["gap"] = (before + after).fillna(np.inf)   # 0 inside the admission
    best = joined.sort_values(["index", "gap", "admittime"], kind="stable").drop_duplicates("index")
    out = pd.Series(UNKNOWN, index=studies.index, dtype="str")
    out.loc[best["index"].to_numpy()] = best["insurance"].fillna(UNKNOWN).to_numpy()
    return out


# --------------------------------------------------------------------------- the join
def study_times(data_root, study_ids) -> pd.DataFrame:
    """study_id -> `when` (StudyDate + StudyTime) from the MIMIC-CXR metadata table."""

    path = table_path(data_root, "metadata")
    meta = pd.read_csv(path, usecols=["study_id", "StudyDate", "StudyTime"], dtype=str)
    meta = meta[meta["study_id"].isin(set(study_ids))].drop_duplicates("study_id")
    clock = meta["StudyTime"].fillna("0").str.split(".").str[0].str.zfill(6)
    meta["when"] = pd.to_datetime(meta["StudyDate"] + clock, format="%Y%m%d%H%M%S", errors="coerce")
    return meta[["study_id", "when"]]


def demographics_for_cohort(cohort: pd.DataFrame, data_root, mimic_iv_root, race_policy: str = "mode",
                            age_bands: str = "cxrlib"):
    """(one row per cohort image: dicom_id, subject_id, study_id, sex, age, age_band, race, insurance,
    in_mimic_iv, has_admission; the coverage counts)."""
    patients, admissions = read_patients(mimic_iv_root), read_admissions(mimic_iv_root)
    rows = cohort[["dicom_id", "subject_id", "study_id"]].astype(str).merge(
        study_times(data_root, cohort["study_id"].astype(str)), on="study_id", how="left")
    rows = rows.merge(patients, on="subject_id", how="left")
    rows["sex"] = rows["gender"].map({"F": "F", "M": "M"}).fillna(UNKNOWN)
    rows["age"] = age_at(rows["anchor_age"], rows["anchor_year"], rows["when"].dt.year)
    rows["age_band"] = age_band(rows["age"], age_bands)
    rows["race"] = rows["subject_id"].map(patient_race(admissions, race_policy)).fillna(UNKNOWN)
    rows["insurance"] = insurance_at(rows, admissions)
    rows["in_mimic_iv"] = rows["subject_id"].isin(set(patients["subject_id"]))
    rows["has_admission"] = rows["subject_id"].isin(set(admissions["subject_id"]))
    out = rows[["dicom_id", "subject_id", "study_id", "sex", "age", "age_band", "race", "insurance",
                "in_mimic_iv", "has_admission"]]
    per_patient = out.drop_duplicates("subject_id")
    coverage = {"patients": int(len(per_patient)),
                "in_mimic_iv": int(per_patient["in_mimic_iv"].sum()),
                "not_in_mimic_iv": int((~per_patient["in_mimic_iv"]).sum()),
                "without_admission": int((per_patient["in_mimic_iv"] & ~per_patient["has_admission"]).sum()),
                "images_without_study_date": int(rows["when"].isna().sum()),
                "race_policy": race_policy, **quality(patients, admissions, set(per_patient["subject_id"]))}
    problems = data_problems(coverage)
    if problems:
        warnings.warn(f"{table_file(mimic_iv_root, 'patients').parent}: " + "; ".join(problems), stacklevel=2)
    return out, coverage


def quality(patients: pd.DataFrame, admissions: pd.DataFrame, subjects: set) -> dict:
    """What the rules could not read among the cohort's patients: the counts read_patients kept, and every race
    spelling the rule does not know (Unknown in the audit), with its number of admissions."""
    mine = admissions[admissions["subject_id"].isin(subjects)]
    unknown = mine.loc[~mine["race"].map(recognised_race), "race"].astype(str).str.strip().value_counts()
    return {**patients.attrs.get("quality", {}), "race_unrecognised": {str(k): int(v) for k, v in unknown.items()}}


def data_problems(coverage: dict) -> list[str]:
    """The coverage's data problems as sentences (empty when there are none)."""
    out = []
    if coverage.get("race_unrecognised"):
        listed = ", ".join(f"{k!r} ({v})" for k, v in coverage["race_unrecognised"].items())
        out.append(f"race spellings the rule does not know, counted as Unknown (admissions): {listed}; add them "
                   "to cxrlib.data.demographics.RACE_SPELLINGS if they are new MIMIC-IV spellings")
    for key, text in (("sex_unreadable", "gender values other than F or M"),
                      ("age_unreadable", "anchor_age values that are not an age"),
                      ("conflicting_patients", "patients with disagreeing rows (all their fields Unknown)")):
        if coverage.get(key):
            out.append(f"{coverage[key]} {text} in the patients table")
    return out


# --------------------------------------------------------------------------- fetch
MIMIC_IV_URL = "https://physionet.org/files/mimiciv/{version}/"
DEFAULT_MIMIC_IV_VERSION = "3.1"


def mimic_iv_paths(version: str) -> list[str]:
    """The two tables the audit needs; version 1.0 kept them under core/."""
    module = "core" if version.split(".")[0] == "1" else "hosp"
    return [f"{module}/{name}.csv.gz" for name in TABLE_NAMES]


def fetch_demographics(mimic_iv_root, version: str = DEFAULT_MIMIC_IV_VERSION, base_url: str | None = None,
                       credentials=None, progress: bool = True, **kwargs):
    """patients and admissions of MIMIC-IV into mimic_iv_root, resumable and checked against its SHA256SUMS."""

    return fetch(mimic_iv_root, mimic_iv_paths(version), version,
                 base_url or MIMIC_IV_URL.format(version=version), workers=2, credentials=credentials,
                 progress=progress, desc="MIMIC-IV tables", **kwargs)


def default_root(data_root) -> Path:
    """Where MIMIC-IV's tables go unless mimic_iv_root says otherwise: <data_root>/mimic-iv."""
    return Path(data_root) / "mimic-iv"


def cli(command: str, argv: list[str]) -> int:
    import argparse
    import functools
    import sys
    import urllib.parse


    parser = argparse.ArgumentParser(
        prog=f"python -m cxrlib {command}",
        description="Download MIMIC-IV's patients and admissions tables (a separate credentialed PhysioNet "
                    "project) for the audit by patient group. Credentials as for `fetch`.")
    parser.add_argument("--data-root", help="the MIMIC-CXR-JPG root; the tables go to its mimic-iv/")
    parser.add_argument("--params", help="parameter file whose data_root to use (when --data-root is not given)")
    parser.add_argument("--mimic-iv-root", help="put them here instead (default <data-root>/mimic-iv)")
    parser.add_argument("--version", default=DEFAULT_MIMIC_IV_VERSION,
                        help=f"MIMIC-IV version (default {DEFAULT_MIMIC_IV_VERSION}; 1.0 keeps them under core/)")
    parser.add_argument("--base-url", help="mirror URL (default https://physionet.org/files/mimiciv/<version>/)")
    args = parser.parse_args(argv)
    if not (args.data_root or args.params or args.mimic_iv_root):
        raise UserError("fetch-demographics: give --data-root DIR (or --params FILE, whose data_root is used)")
    data_root = args.data_root
    if not data_root and args.params:

        data_root = load(args.params).data_root
    root = Path(args.mimic_iv_root) if args.mimic_iv_root else default_root(data_root)
    host = urllib.parse.urlsplit(args.base_url or MIMIC_IV_URL).hostname or "physionet.org"
    summary = fetch_demographics(root, args.version, args.base_url,
                                 credentials=functools.cache(lambda: get_credentials(host)))
    print(summary.text("MIMIC-IV tables"))
    if not summary.ok:
        print("fix the failures above and rerun the same command", file=sys.stderr)
        return 1
    print(f"MIMIC-IV tables in {root}")
    return 0
