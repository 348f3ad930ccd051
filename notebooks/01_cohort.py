# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3 (cxrlib)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Cohort: one AP image per patient (or every frontal image), and the image cache
#
# From PhysioNet's `mimic-cxr-2.0.0-metadata` and the NegBio (or CheXpert) label table, this notebook
# builds the original project's cohort by default:
#
# 1. keep images whose `ViewPosition` is exactly one of `views` (the original: `AP`); images with a blank
#    `ViewPosition` are in no view, and the funnel counts them;
# 2. per subject, take the lowest `study_id` among the studies with such an image
#    (`studies_per_subject: all` keeps every such study);
# 3. in that study, take the lowest `dicom_id` among those images (`images_per_study: all` keeps them all);
# 4. map the labels with the uncertainty and blank policies (the original: -1 and blank → 0);
# 5. test = studies whose `study_id` ends in 8 or 9 (`split_mode: seed`), optionally with a
#    validation split carved out of the remaining subjects by a stable hash of `subject_id`;
#    `split_mode: official` takes every image's split from `mimic-cxr-2.0.0-split` instead.
#
# It then decodes the selected images once into a resized uint8 cache that training reads from.

# %% tags=["parameters"]
run_dir = "runs/demo"          # the run folder; params.yaml there holds everything not listed here
views = ["AP"]                 # ViewPosition values kept (the original: AP)
studies_per_subject = "first"  # first (the original: the lowest study_id with such an image) | all
images_per_study = "all"       # first (the original: the lowest dicom_id) | all
label_source = "negbio"        # negbio | chexpert
uncertain_policy = "zeros"     # for -1: zeros | ones | ignore, or per finding
blank_policy = "zeros"         # for blank: zeros | ignore
split_mode = "official"        # official | seed (the original: test is study_id ending in 8 or 9)
val_fraction = 0.0             # validation subjects carved from the non-test ones (0 with official)
split_seed = 0                 # the validation carve's hash seed (training's seed never moves the split)
image_size = 64                # the cache's S x S
resize = "squash"              # squash (the original's Resize((S, S))) | letterbox
decode = "fast"                # fast (draft-mode JPEG decode) | exact (the original's, pixel for pixel)

# %%
import pandas as pd
from IPython.display import display

from cxrlib.data import cache, cohort
from cxrlib.data.funnel import compare_with_reference
from cxrlib.evaluation import viz
from cxrlib.experiments import notebook

p = notebook.setup(run_dir, globals())

# %% [markdown]
# ## Funnel: images → in view → selected studies and images → with labels → per split

# %%
frame, report = cohort.build_cohort(p.data_root, p)
display(report.funnel_frame())
viz.funnel_plot(report.funnel_frame());

# %% [markdown]
# Selected studies without a row in the label table are **excluded**, never moved to another study
# (the real release has 8 such studies among the original cohort's).

# %%
print(f"{len(report.excluded_no_labels)} subject(s) excluded for a missing label row")
pd.DataFrame(report.excluded_no_labels)

# %% [markdown]
# ## The original project's figures
#
# On MIMIC-CXR-JPG 2.0.0 the original rules give 33,501 images (train 26,807, test 6,694) and 58,839
# positive labels out of 469,014. A difference is flagged only when the tables look like the full
# release and the settings are the original's; on the synthetic stand-in every figure differs.

# %%
compare_with_reference(report)

# %% [markdown]
# ## Prevalence per split (source labels: positive, negative, uncertain, blank)

# %%
prevalence = report.prevalence_frame()
display(prevalence.pivot(index="finding", columns="split", values="positive_rate").round(3))
viz.prevalence_plot(prevalence[prevalence["split"] != "all"]);

# %%
counts = prevalence[prevalence["split"] == "all"].set_index("finding")
counts[["positive", "negative", "uncertain", "blank"]]

# %% [markdown]
# ## Co-occurrence of positive findings (training split)

# %%
viz.cooccurrence_heatmap(frame[frame['split'] == 'train']);

# %% [markdown]
# ## The cohort table

# %%
cohort.write_cohort(frame, f"{run_dir}/cohort.csv")
cohort.write_report(report, f"{run_dir}/cohort_report.json")
frame.head()

# %% [markdown]
# ## Image cache
#
# Each selected JPEG is decoded once into a uint8 memmap: `decode: fast` lets libjpeg scale the DCT to
# the smallest size at or above the target, then resizes with antialiasing; `decode: exact` decodes in
# full and resizes as the original project did, pixel for pixel. Unreadable, truncated and missing
# images are listed with the reason and left out of training and evaluation.

# %%
images = cache.build_cache(p.data_root, frame, size=p.image_size, resize=p.resize, decode=p.decode,
                           cache_dir=p.resolved_cache_dir(), workers=p.cache_workers)
usable = cache.cohort_with_rows(frame, images)
print(f"{len(usable):,} of {len(frame):,} cohort images are in the cache; "
      f"{len(frame) - len(usable):,} left out")
print(f"training-image statistics: mean {images.stats['mean']:.4f}, std {images.stats['std']:.4f} "
      "(the original project used 0.4691 and 0.3046)")

# %%
failures = images.failures[images.failures["dicom_id"].isin(frame["dicom_id"])]
print(f"{len(failures)} image(s) could not be cached")
failures

# %% [markdown]
# ## Positive examples per finding

# %%
viz.image_grid(images.images, usable, per_finding=4, seed=p.seed, redact=p.redact_images);

# %% [markdown]
# ## Browse the cohort (interactive sessions only)

# %%
if notebook.is_interactive():
    display(viz.image_browser(images.images, usable, redact=p.redact_images))
else:
    print("Open this notebook in JupyterLab (make lab) for an interactive image browser.")
