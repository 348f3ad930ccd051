"""The original project's published figures (github.com/ljm565/chest-xray-multi-label-classification-ResNet).

One place for them: the cohort notebook compares its counts with COHORT, notebook 03 puts our test
figures beside original_project_results(), and the seed presets reproduce the recipe.
"""
from __future__ import annotations

# Its normalisation: transforms.Normalize([0.4691], [0.3046]) on Resize((256, 256)) grayscale images.
MEAN, STD = 0.4690693035517775, 0.3045583482083454

# Its cohort on MIMIC-CXR-JPG 2.0.0 (its README and code).
# The original project's cohort on MIMIC-CXR-JPG 2.0.0 (its README and code).
COHORT = {
    "images": 33_501,
    "train + validate": 26_807,
    "test": 6_694,
    "positives": 58_839,
    "negatives": 410_175,
    "label cells": 469_014,
}


ORIGINAL_SELECTION = ("test split; each model was selected ON THE TEST SET by accuracy at 0.5, "
                      "so these figures are optimistic and have no confidence intervals")


def original_project_results() -> dict:
    """The original project's published test figures, keyed by the preset that reproduces each."""
    return {
        "seed-nopos": {"pos_weight": False, "macro": {"auroc": 0.7191, "auprc": 0.2804},
                       "micro": {"auroc": 0.8360, "auprc": 0.4764}, "selection": ORIGINAL_SELECTION},
        "seed-pos": {"pos_weight": True, "macro": {"auroc": 0.7594, "auprc": 0.3091},
                     "micro": {"auroc": 0.8649, "auprc": 0.5313}, "selection": ORIGINAL_SELECTION},
    }
