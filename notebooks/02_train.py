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
# # 02 · Training: train, or continue where the run stopped
#
# Trains the classifier on the run's cohort (`cohort.csv`, from notebook 01) and image cache, with the
# recipe in the run's frozen `params.yaml` (the configuration table below shows it).
#
# - **Resuming.** `checkpoints/last.pt` is written atomically at every epoch end and every
#   `checkpoint_minutes` within an epoch. Running this notebook again (or `make train RUN=<name> RESUME=1`)
#   continues from it, batch for batch; on CPU the result is identical to an uninterrupted run.
# - **Model selection.** `checkpoints/best.pt` is the epoch with the best `select_metric` on the split named
#   by `select_on`. `validate` is honest. `test` is the original project's rule (best accuracy at 0.5 on
#   the **test** set, early stop after `patience` epochs without a strictly better score): it makes the test
#   figures optimistic, and this notebook says so in red.
# - **Starting weights.** `weights` names torchvision's ImageNet weights, `none`, or a local file in any layout of
#   `docs/pretrained-weights.md`; its hash and what it was trained on are recorded in the checkpoint. When what it
#   saw may include this run's test split, a red box below says so.
# - **Several GPUs.** With `gpus` > 1 training runs under `torchrun` (DDP) and its output appears below;
#   `batch_size` is the global batch.
# - **Probes and zero-shot** (`docs/probes.md`). With `train_from: embeddings` the frozen encoder runs once per
#   image into the embedding cache (the first line below says what it computed and what it reused) and the head
#   trains on the vectors, by the same loop; `train_from: zero_shot` makes the head from a CLIP model's prompts and
#   only scores it on validation. `train_fraction` labels a nested share of the training patients.

# %% tags=["parameters"]
run_dir = "runs/demo"          # the run folder (notebook 01 must have run); params.yaml holds the recipe
epochs = 10                    # more than the run had: training goes on from last.pt
resume = False                 # an existing last.pt with the same parameters is continued either way

# %%
from IPython.display import HTML, display

from cxrlib import account, runfiles
from cxrlib.data import cache
from cxrlib.evaluation import readable, tables, viz
from cxrlib.experiments import notebook
from cxrlib.training import probe, train

p = notebook.setup(run_dir, globals(), show=readable.TRAINING_RECIPE)   # the recipe, as a table
if p.select_on == "test":
    display(HTML(tables.red_box(account.SELECTED_ON_TEST)))
starting = train.starting_weights_of(p, run_dir)   # its hash, what it saw, and whether our test split is in it
print(tables.starting_weights_line(starting, p.weights))
if tables.contamination_html(starting):
    display(HTML(tables.contamination_html(starting)))

# %% [markdown]
# ## Class balance of the training split (images that decoded, of the labelled patients), and its pos_weight

# %%
usable = cache.usable_cohort(run_dir, p)   # images that decoded; then the train_fraction share of the patients
labelled = probe.labelled_share(usable[usable["split"] == "train"], p.train_fraction, p.seed)
balance = viz.class_balance(labelled)   # what training sees
display(balance.round(3))
viz.plot_class_balance(balance);

# %% [markdown]
# ## Train (or resume)

# %%
result = train.launch(p, run_dir, progress=True)   # a bar in Lab; progress lines under `make train`

# %% [markdown]
# ## History

# %% tags=["key-figure"]
history = runfiles.read_history(run_dir)
display(readable.table(history, digits=4))   # lr to 3 significant digits
viz.plot_history(history);

# %% [markdown]
# ## Result

# %%
print(f"best epoch {result['best_epoch']} of {result['epochs_run']}: {result['select_metric']} "
      f"{result['best_score']:.4f} on the {result['select_on']} split"
      + (" (stopped early)" if result["stopped_early"] else ""))
print(f"best checkpoint: {result['best']}\nlast checkpoint: {result['last']} (resume from here)")
if result["selected_on_test"]:
    display(HTML(tables.red_box(account.SELECTED_ON_TEST)))
