"""Plot helpers on the cohorts small runs produce: a finding with no positive image, one image in all."""
import numpy as np
import pandas as pd

from cxrlib.evaluation import readable, viz
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


def test_report_tables_read_as_people_read_them():
    import pandas as pd

    from cxrlib import params
    from cxrlib.stats.multiplicity import format_p

    frame = pd.DataFrame({"auroc": pd.array([0.80157, None], dtype="Float64"),
                          "n_pos": pd.array([55, None], dtype="Int64"), "finding": ["Edema", "macro"]})
    shown = readable.table(frame)
    assert shown["auroc"].tolist() == ["0.802", ""] and shown["n_pos"].tolist() == ["55", ""]
    assert "<NA>" not in shown.to_string() and "NaN" not in shown.to_string()
    p = params.validate({"device": "cpu", "amp": "bf16", "lr": 1e-4, "compare_with": ""})
    table = readable.params_table(p, ["amp", "lr", "compare_with", "mean"])["value"].tolist()
    assert table == ["bf16 (GPU only; off on this CPU run)", "1e-04", "(none)", "0.4691"]
    assert format_p(0.0423) == "0.042" and format_p(0.0004) == "< 0.001" and format_p(float("nan")) == "n/a"
    audit = readable.table(pd.DataFrame({"p_value": [0.0004, 0.2], "p_adjusted": [0.00011, None], "lr": [9.39e-4, 1e-3]}),
                         digits=4)
    assert audit["p_value"].tolist() == ["< 0.001", "0.200"] and audit["p_adjusted"].tolist() == ["< 0.001", ""]
    assert audit["lr"].tolist() == ["0.000939", "0.001"]   # the precision it carries, not 0.0009


def test_a_roc_panel_of_too_few_patients_says_so_as_the_tables_do():
    """Issue 33: the panel of a finding below min_positives printed a bare AUROC, as if it were a full figure."""
    from cxrlib.stats.metrics import summarize

    rng = np.random.default_rng(0)
    y = np.zeros((300, 2))
    y[:4, 0] = 1                       # four positives: not estimable at min_positives 10
    y[:, 1] = rng.random(300) < 0.3
    p = np.clip(0.3 * y + rng.random((300, 2)), 0, 1)
    summary = summarize(y, p, np.arange(300).astype(str), n_boot=20, findings=["rare", "common"])
    fig = viz.plot_curves(y, p, ["rare", "common"], summary, kind="roc")
    titles = [ax.get_title() for ax in fig.axes]
    assert "(too few: no CI)" in titles[0] and "(too few" not in titles[1] and "[" in titles[1]
