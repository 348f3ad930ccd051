"""Plot helpers on the cohorts small runs produce: a finding with no positive image, one image in all."""
import numpy as np
import pandas as pd

from cxrlib import viz
from cxrlib.labels import FINDINGS


def small_cohort(n: int) -> pd.DataFrame:
    labels = np.zeros((n, len(FINDINGS)))
    labels[:, FINDINGS.index("Edema")] = 1           # every other finding has no positive image
    frame = pd.DataFrame(labels, columns=FINDINGS)
    frame["cache_row"] = np.arange(n)
    return frame


def test_examples_per_finding_skips_findings_without_positives():
    picks = viz.examples_per_finding(small_cohort(5), per_finding=3, seed=0)
    assert set(picks["finding"]) == {"Edema"}
    assert len(picks) == 3 and picks["row"].is_unique


def test_examples_per_finding_is_reproducible_and_takes_all_when_few():
    frame = small_cohort(2)
    a = viz.examples_per_finding(frame, per_finding=4, seed=1)
    b = viz.examples_per_finding(frame, per_finding=4, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert sorted(a["row"]) == [0, 1]
