"""The reporting checklists the model card maps: TRIPOD+AI (Collins et al., BMJ 2024;385:e078378) and
CLAIM (Mongan et al., Radiology: Artificial Intelligence 2020;2:e200029), item numbers as published.

Each row is (item, where this card or the run folder answers it); "not addressed" says so plainly.
A model card answers the items a model's record can; the study's paper answers the rest (title,
abstract, ethics approval, funding, registration, discussion).
"""
from __future__ import annotations


def filled(items: list[tuple[str, str]], external_sources: list[str]) -> list[tuple[str, str]]:
    """The items with the answers that depend on the run: whether it was validated on other hospitals."""
    if external_sources:
        names = ", ".join(external_sources)
        facts = {"external": f"External validation: {names} (external/<source>/07_external.html)",
                 "clusters": f"External validation: one row per hospital ({names}) beside the run's own test split",
                 "external_differences": f"; External validation: each source's site, label map and files ({names})"}
    else:
        facts = {"external": "not done: one hospital (Caveats); make external scores other hospitals' data",
                 "clusters": "not examined: one hospital (Caveats)", "external_differences": ""}
    return [(item, answer.format(**facts)) for item, answer in items]


TRIPOD_AI = [
    ("5a Data sources", "Training data: name, release, label source"),
    ("5b Dates of the data", "Caveats: one hospital, 2011-2016 (the release's span; dates are shifted per patient)"),
    ("6a Setting", "Caveats (one academic hospital's emergency department and wards)"),
    ("6b Eligibility criteria", "Training data: cohort rules and funnel"),
    ("7 Data preparation", "Model details: image size, resize, decode, normalisation"),
    ("8a Outcome and how it was assessed", "Training data: label source and policies; Caveats (labels from reports)"),
    ("9a Predictors", "Model details (the image alone; no demographic input)"),
    ("10 Sample size", "Training data: images, studies, patients and positives per finding and split"),
    ("11 Missing data", "Training data: label policies (masked cells); funnel (images without labels)"),
    ("12a How the data were used (development, evaluation)", "Training data: split and selection rule"),
    ("12c Model type, building steps, hyperparameter tuning", "Model details; Training data: selection rule"),
    ("12e Performance measures and their rationale", "Metrics"),
    ("12f Model updating (recalibration)", "Quantitative analyses: calibration and recalibration"),
    ("12g How predictions were calculated for evaluation", "Model details; Export; `python -m cxrlib predict`"),
    ("13 Class imbalance", "Model details: pos_weight"),
    ("14 Fairness", "Quantitative analyses: subgroups (05_fairness.html)"),
    ("15 Model output", "Metrics: thresholds; Quantitative analyses: calibration"),
    ("16 Differences between development and evaluation data", "Training data and Evaluation data: one hospital, "
     "one release, the same cohort rules and label source for every split, which differ only by patient "
     "(patient-disjoint){external_differences}"),
    ("18e Data sharing", "Sharing (PhysioNet's terms)"),
    ("18f Code sharing", "Software and fingerprints (cxrlib commit)"),
    ("19 Patient and public involvement", "not addressed by this card"),
    ("20a Flow of participants", "Training data: cohort funnel"),
    ("20b Participants' characteristics", "Quantitative analyses: subgroups (group sizes)"),
    ("21 Participants and outcome events per analysis", "Training data: positives per finding and split"),
    ("22 Model specification", "Model details; Export (the file, its inputs and outputs)"),
    ("23a Performance with confidence intervals, including key subgroups",
     "Quantitative analyses (patient-bootstrap CIs); Subgroups (05_fairness.html)"),
    ("23b Heterogeneity across clusters (hospitals)", "{clusters}"),
    ("24 Model updating results", "Quantitative analyses: recalibration"),
    ("26 Limitations", "Caveats and recommendations"),
    ("27a Handling poor-quality or unavailable input", "Export: `predict` lists unreadable files and skips them"),
]
CLAIM = [
    ("3 Intended use and clinical role", "Intended use"),
    ("5 Study design (retrospective)", "Training data (a retrospective public release)"),
    ("6 Study goal (model creation)", "Intended use"),
    ("7 Data sources", "Training data"),
    ("8 Eligibility criteria", "Training data: cohort rules and funnel"),
    ("9 Data pre-processing", "Model details: image size, resize, decode, normalisation"),
    ("10 Selection of data subsets", "Training data: cohort rules (views, studies and images per subject)"),
    ("12 De-identification", "Training data (PhysioNet's de-identified release)"),
    ("13 Missing data", "Training data: label policies"),
    ("14 Definition of ground truth", "Training data: label source and policies"),
    ("15 Rationale for the reference standard", "Caveats (labels from reports); Evaluation data: radiologist labels"),
    ("16 Source of annotations, annotators' qualifications", "Evaluation data: radiologist labels (one annotator)"),
    ("18 Inter- and intrarater variability", "Evaluation data (NLP labellers vs the annotator: 03_evaluate.html)"),
    ("19 Sample size", "Training data: counts per split"),
    ("20 How data were assigned to partitions", "Training data: split"),
    ("21 Level at which partitions are disjoint", "Training data: split (patient)"),
    ("22 Model description", "Model details"),
    ("23 Software libraries", "Software and fingerprints"),
    ("24 Initialisation of parameters", "Model details: initial weights"),
    ("25 Training details, augmentation, hyperparameters", "Model details"),
    ("26 Method of selecting the final model", "Training data: selection rule"),
    ("27 Ensembling", "Model details (an ensemble lists its members)"),
    ("28 Performance metrics", "Metrics"),
    ("29 Statistical significance and uncertainty", "Metrics; Quantitative analyses"),
    ("30 Robustness or sensitivity analysis", "04_error_analysis.html"),
    ("31 Explainability", "04_error_analysis.html (Grad-CAM)"),
    ("32 External validation", "{external}"),
    ("33 Flow of cases", "Training data: cohort funnel"),
    ("34 Characteristics of cases in each partition", "Training data; Quantitative analyses: subgroups"),
    ("35 Performance on all partitions", "Quantitative analyses (test); 03_evaluate.html (validation)"),
    ("36 Estimates of diagnostic accuracy and their precision", "Quantitative analyses: thresholds with counts"),
    ("37 Failure analysis", "04_error_analysis.html (false positives and negatives)"),
    ("38 Limitations", "Caveats and recommendations"),
]
