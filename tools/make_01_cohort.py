from nbtools import write

write("notebooks/01_cohort.ipynb", [
("md", """
# 01 · Cohort: one AP image per patient, and the image cache

From PhysioNet's `mimic-cxr-2.0.0-metadata` and the NegBio (or CheXpert) label table, this notebook
builds the original project's cohort:

1. keep images whose `ViewPosition` is exactly one of `views` (the original: `AP`);
2. per subject, take the lowest `study_id` among the studies with such an image;
3. in that study, take the lowest `dicom_id` among those images;
4. map the labels with the uncertainty and blank policies (the original: -1 and blank → 0);
5. test = studies whose `study_id` ends in 8 or 9 (`split_mode: seed`), optionally with a
   validation split carved out of the remaining subjects by a stable hash of `subject_id`.

It then decodes the selected images once into a resized uint8 cache that training reads from.
"""),
("params", """
run_dir = "runs/demo"          # where this run's outputs go
data_root = "data/demo"        # MIMIC-CXR-JPG root (the CSVs and files/)
views = ["AP"]
label_source = "negbio"
uncertain_policy = "zeros"
blank_policy = "zeros"
split_mode = "seed"
val_fraction = 0.15
seed = 0
image_size = 64
resize = "squash"
cache_dir = ""                 # default: <data_root>/cache
cache_workers = 0              # 0: all cores
redact_images = False
"""),
("code", """
import pandas as pd
from IPython.display import display

from cxrlib import cache, cohort, params, runs, viz

runs.notebook_setup(redact_images)
p = params.from_namespace(globals(), run_dir)
"""),
("md", "## Funnel: images → in view → one study per subject → with labels → per split"),
("code", """
frame, report = cohort.build_cohort(p.data_root, p)
display(report.funnel_frame())
viz.funnel_plot(report.funnel_frame());
"""),
("md", """
Subjects whose selected study has no row in the label table are **excluded**, not moved to another
study (the real release has 8 such studies).
"""),
("code", """
print(f"{len(report.excluded_no_labels)} subject(s) excluded for a missing label row")
pd.DataFrame(report.excluded_no_labels)
"""),
("md", """
## The original project's figures

On MIMIC-CXR-JPG 2.0.0 the original rules give 33,501 images (train 26,807, test 6,694) and 58,839
positive labels out of 469,014. A difference is flagged only when the tables look like the full
release and the settings are the original's; on the synthetic stand-in every figure differs.
"""),
("code", "cohort.compare_with_reference(report)"),
("md", "## Prevalence per split (source labels: positive, negative, uncertain, blank)"),
("code", """
prevalence = report.prevalence_frame()
display(prevalence.pivot(index="finding", columns="split", values="positive_rate").round(3))
viz.prevalence_plot(prevalence[prevalence["split"] != "all"]);
"""),
("code", """
counts = prevalence[prevalence["split"] == "all"].set_index("finding")
counts[["positive", "negative", "uncertain", "blank"]]
"""),
("md", "## Co-occurrence of positive findings (training split)"),
("code", "viz.cooccurrence_heatmap(frame[frame['split'] == 'train']);"),
("md", "## The cohort table"),
("code", """
cohort.write_cohort(frame, f"{run_dir}/cohort.csv")
cohort.write_report(report, f"{run_dir}/cohort_report.json")
frame.head()
"""),
("md", """
## Image cache

Each selected JPEG is decoded once (libjpeg's DCT scaling to the smallest size at or above the
target, then an antialiased resize) into a uint8 memmap. Unreadable, truncated and missing images are
listed with the reason and left out of training and evaluation.
"""),
("code", """
images = cache.build_cache(p.data_root, frame, size=p.image_size, resize=p.resize,
                           cache_dir=p.resolved_cache_dir(), workers=p.cache_workers)
usable = cache.cohort_with_rows(frame, images)
print(f"{len(usable):,} of {len(frame):,} cohort images are in the cache; "
      f"{len(frame) - len(usable):,} left out")
print(f"training-image statistics: mean {images.stats['mean']:.4f}, std {images.stats['std']:.4f} "
      "(the original project used 0.4691 and 0.3046)")
"""),
("code", """
failures = images.failures[images.failures["dicom_id"].isin(frame["dicom_id"])]
print(f"{len(failures)} image(s) could not be cached")
failures
"""),
("md", "## Positive examples per finding"),
("code", "viz.image_grid(images.images, usable, per_finding=4, seed=p.seed, redact=p.redact_images);"),
("md", "## Browse the cohort (interactive sessions only)"),
("code", """
if runs.is_interactive():
    display(viz.image_browser(images.images, usable, redact=p.redact_images))
else:
    print("Open this notebook in JupyterLab (make lab) for an interactive image browser.")
"""),
])
