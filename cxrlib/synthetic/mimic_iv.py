"""Synthetic MIMIC-IV `patients` and `admissions` (hosp/ layout, 3.1 columns) for the synthetic subjects.

Written by demo-data into <out>/mimic-iv/hosp/, so that the demographics join and the audit run on
the stand-in. Shapes follow mimic-facts.md: gender F/M; anchor_age capped at 91 with an anchor_year
near the subject's shifted study years; detailed race strings (WHITE - RUSSIAN, HISPANIC/LATINO -
PUERTO RICAN, UNABLE TO OBTAIN, ...); insurance Medicare / Medicaid / Private / Other / No charge.
Missingness as in the release: MISSING_FROM_MIMIC_IV of the subjects have no patients row,
NO_ADMISSION of the others have no admission (seen in the emergency department only), and
INCONSISTENT_RACE of the patients with two or more admissions carry another race on a later one.
Most admissions contain one of the subject's studies (inpatients are imaged during their stay).
Its own RNG stream: the MIMIC-CXR tables do not change with it.

The planted disparity (PLANTED): for the female patients of this table, every finding is drawn at
SIGNATURE_STRENGTH of its usual strength (as though overlying soft tissue took away most of its
contrast), so a model trained on the stand-in under-detects findings in women: lower TPR and
AUROC, more underdiagnosis. Nothing else depends on a demographic: age, race and insurance are
drawn independently of the images (insurance follows age), so an audit should find the gap for
sex (and the race x sex groups of women) and none for age, race or insurance. Subjects missing
from the patients table are drawn at full strength. demo-data writes this description to
mimic-iv/PLANTED.json, which the audit reads to say whether it found what was planted.
"""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd

FOLDER = "mimic-iv"
PLANTED_FILE = "PLANTED.json"   # what the stand-in planted; fairness_report reads it
MISSING_FROM_MIMIC_IV = 0.02
NO_ADMISSION = 0.12
INCONSISTENT_RACE = 0.08
RACES = [("WHITE", .50), ("WHITE - OTHER EUROPEAN", .03), ("WHITE - RUSSIAN", .01), ("PORTUGUESE", .01),
         ("BLACK/AFRICAN AMERICAN", .14), ("BLACK/CAPE VERDEAN", .02), ("HISPANIC/LATINO - PUERTO RICAN", .03),
         ("HISPANIC OR LATINO", .03), ("SOUTH AMERICAN", .005), ("ASIAN", .02), ("ASIAN - CHINESE", .02),
         ("AMERICAN INDIAN/ALASKA NATIVE", .005), ("NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER", .005),
         ("MULTIPLE RACE/ETHNICITY", .005), ("OTHER", .04), ("UNKNOWN", .09), ("UNABLE TO OBTAIN", .02),
         ("PATIENT DECLINED TO ANSWER", .02)]
INSURANCE_UNDER_65 = [("Medicaid", .30), ("Private", .45), ("Other", .18), ("Medicare", .05), ("No charge", .02)]
INSURANCE_65_ON = [("Medicare", .80), ("Private", .10), ("Other", .07), ("Medicaid", .02), ("No charge", .01)]
# 0.3, not 0.5: at 0.5 the demo's audit found the gap at the margin of its family-wise interval (lower
# bound +0.005), so a bf16 or another machine's run could miss it; a demo should show the procedure work.
SIGNATURE_STRENGTH = 0.3
PLANTED = {"attribute": "sex", "group": "F", "signature_strength": SIGNATURE_STRENGTH,
           "effect": "findings drawn fainter, so under-detected: TPR and AUROC lower, underdiagnosis higher",
           "unplanted": ["age_band", "race", "insurance"]}
ADMISSION_TYPES = ["EW EMER.", "URGENT", "ELECTIVE", "OBSERVATION ADMIT", "DIRECT EMER."]
ADMISSION_LOCATIONS = ["EMERGENCY ROOM", "PHYSICIAN REFERRAL", "TRANSFER FROM HOSPITAL", "WALK-IN/SELF REFERRAL"]
DISCHARGE_LOCATIONS = ["HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB", ""]
MARITAL = ["MARRIED", "SINGLE", "WIDOWED", "DIVORCED", ""]
YEAR_GROUPS = ["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"]
PATIENT_COLUMNS = ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"]
ADMISSION_COLUMNS = ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                     "admit_provider_id", "admission_location", "discharge_location", "insurance", "language",
                     "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag"]


def _pick(rng, table, n):
    names, weights = zip(*table)
    weights = np.asarray(weights) / np.sum(weights)
    return np.asarray(names, dtype=object)[rng.choice(len(names), size=n, p=weights)]


def _stamp(times: np.ndarray) -> np.ndarray:
    """'2180-07-23 12:35:00', as MIMIC-IV writes its times."""
    return np.char.replace(np.datetime_as_string(times.astype("datetime64[s]"), unit="s"), "T", " ").astype(object)


def build(metadata: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    """{'patients': ..., 'admissions': ...} for the subjects of the synthetic metadata table."""
    rng = np.random.default_rng([seed, 41])
    studies = metadata.drop_duplicates("study_id")[["subject_id", "study_id", "StudyDate", "StudyTime"]]
    when = (pd.to_datetime(studies["StudyDate"].astype(str), format="%Y%m%d")
            + pd.to_timedelta(studies["StudyTime"].astype(float).astype(int).astype(str).str.zfill(6)
                              .pipe(lambda s: s.str[:2] + ":" + s.str[2:4] + ":" + s.str[4:6])))
    studies = studies.assign(when=when.to_numpy())
    subjects = np.unique(studies["subject_id"].to_numpy())
    kept = subjects[rng.random(len(subjects)) >= MISSING_FROM_MIMIC_IV]
    first_year = studies.groupby("subject_id")["when"].min().dt.year.loc[kept].to_numpy()
    n = len(kept)
    anchor_age = np.clip(np.round(rng.normal(62, 17, n)), 18, 91).astype(int)
    patients = pd.DataFrame({"subject_id": kept, "gender": np.where(rng.random(n) < 0.52, "F", "M"),
                             "anchor_age": anchor_age, "anchor_year": first_year + rng.integers(-2, 3, n),
                             "anchor_year_group": np.asarray(YEAR_GROUPS, dtype=object)[rng.integers(0, 5, n)],
                             "dod": ""})
    race_of = dict(zip(kept, _pick(rng, RACES, n)))
    over_65 = dict(zip(kept, anchor_age >= 65))
    with_admissions = kept[rng.random(n) >= NO_ADMISSION]
    by_subject = {s: g["when"].to_numpy() for s, g in studies[studies["subject_id"].isin(set(with_admissions))]
                  .groupby("subject_id")}
    rows = []
    for subject in with_admissions:
        times = by_subject[subject]
        count = 1 + rng.poisson(1.2)
        other_race = _pick(rng, RACES, 1)[0] if count > 1 and rng.random() < INCONSISTENT_RACE else None
        for k in range(count):
            if rng.random() < 0.75:   # a stay around one of the subject's studies
                start = times[rng.integers(len(times))] - np.timedelta64(int(rng.integers(0, 3 * 86400)), "s")
            else:
                start = times.min() + np.timedelta64(int(rng.integers(-700, 700) * 86400), "s")
            stay = np.timedelta64(int(rng.integers(1, 12) * 86400 + rng.integers(0, 86400)), "s")
            rows.append((subject, start, start + stay,
                         other_race if (other_race is not None and k == count - 1) else race_of[subject]))
    admissions = pd.DataFrame(rows, columns=["subject_id", "admittime", "dischtime", "race"])
    m = len(admissions)
    admit, discharge = admissions["admittime"].to_numpy(), admissions["dischtime"].to_numpy()
    senior = admissions["subject_id"].map(over_65).to_numpy()
    insurance = np.where(senior, _pick(rng, INSURANCE_65_ON, m), _pick(rng, INSURANCE_UNDER_65, m))
    ed = rng.random(m) < 0.6
    admissions = pd.DataFrame({
        "subject_id": admissions["subject_id"], "hadm_id": 20000000 + rng.permutation(m),
        "admittime": _stamp(admit), "dischtime": _stamp(discharge), "deathtime": "",
        "admission_type": np.asarray(ADMISSION_TYPES, dtype=object)[rng.integers(0, 5, m)],
        "admit_provider_id": [f"P{v:05X}" for v in rng.integers(0, 16**5, m)],
        "admission_location": np.asarray(ADMISSION_LOCATIONS, dtype=object)[rng.integers(0, 4, m)],
        "discharge_location": np.asarray(DISCHARGE_LOCATIONS, dtype=object)[rng.integers(0, 5, m)],
        "insurance": insurance, "language": np.where(rng.random(m) < 0.9, "ENGLISH", "?"),
        "marital_status": np.asarray(MARITAL, dtype=object)[rng.integers(0, 5, m)], "race": admissions["race"],
        "edregtime": np.where(ed, _stamp(admit - np.timedelta64(5 * 3600, "s")), ""),
        "edouttime": np.where(ed, _stamp(admit), ""), "hospital_expire_flag": 0,
    })
    return {"patients": patients[PATIENT_COLUMNS],
            "admissions": admissions.sort_values(["subject_id", "admittime"]).reset_index(drop=True)}


def signature_strength(patients: pd.DataFrame, planted: bool = True) -> dict[int, float]:
    """{subject_id: strength at which its findings are drawn}, for the subjects planted fainter."""
    if not planted:
        return {}
    women = patients.loc[patients["gender"] == PLANTED["group"], "subject_id"]
    return dict.fromkeys(women.astype(int).tolist(), SIGNATURE_STRENGTH)


def csv_gz(frame: pd.DataFrame) -> bytes:
    return gzip.compress(frame.to_csv(index=False, lineterminator="\n").encode(), compresslevel=6, mtime=0)
