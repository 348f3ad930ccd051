from nbtools import write

write("notebooks/02_train.ipynb", [
("md", """
# 02 · Training: train, or continue where the run stopped

Trains the classifier on the run's cohort (`cohort.csv`, from notebook 01) and image cache, with the
parameters below (the run's frozen `params.yaml` fills in everything not listed here).

- **Resuming.** `checkpoints/last.pt` is written atomically at every epoch end and every
  `checkpoint_minutes` within an epoch. Running this notebook again (or `make train RUN=<name> RESUME=1`)
  continues from it, batch for batch; on CPU the result is identical to an uninterrupted run.
- **Model selection.** `checkpoints/best.pt` is the epoch with the best `select_metric` on the split named
  by `select_on`. `validate` is honest. `test` is the original project's rule (best accuracy at 0.5 on
  the **test** set, early stop after `patience` epochs without a strictly better score): it makes the test
  figures optimistic, and this notebook says so in red.
- **Several GPUs.** With `gpus` > 1 training runs under `torchrun` (DDP) and its output appears below;
  `batch_size` is the global batch.
"""),
("params", """
run_dir = "runs/demo"          # the run folder (notebook 01 must have run)
device = "cpu"                 # cpu | gpu | auto
gpus = 1                       # > 1: DDP under torchrun, one process per GPU
seed = 0
deterministic = False          # CPU runs are always deterministic; this also pins cuDNN
image_size = 64
resize = "squash"
mean = None                    # None: the training images' statistics from the cache
std = None
augment = True
num_workers = 2
arch = "resnet101"             # resnet101 | resnet50 | densenet121
head = "avgpool"               # flatten (the original) | avgpool
weights = "none"               # imagenet | IMAGENET1K_V1 | none | path to a state_dict
dropout = 0.0
epochs = 10
batch_size = 32
eval_batch_size = 128
lr = 0.001
optimizer = "adamw"            # adam (the original) | adamw
weight_decay = 0.0001
schedule = "cosine"            # constant (the original) | cosine
warmup_epochs = 0.5
grad_clip = 0.0
pos_weight = False             # weigh positives by negatives / positives, per finding
select_on = "validate"         # validate | test (the original's, optimistic)
select_metric = "auroc"        # auroc | accuracy (the original's)
patience = 5
amp = "bf16"                   # GPU only: bf16 | fp16 | off
channels_last = True           # GPU only
compile = False
checkpoint_minutes = 10.0      # mid-epoch saves of last.pt; 0: epoch ends only
max_train_batches = 0          # 0: all; smoke tests use a few
resume = False                 # an existing last.pt with the same parameters is continued either way
redact_images = False
"""),
("code", """
from IPython.display import HTML, display

from cxrlib import cohort, params, runs, train

runs.notebook_setup(redact_images)
p = params.from_namespace(globals(), run_dir)
if p.select_on == "test":
    display(HTML(train.test_selection_html()))
train.config_table(p)
"""),
("md", "## Class balance of the training split, and the pos_weight it implies"),
("code", """
balance = train.class_balance(cohort.read_cohort(f"{run_dir}/cohort.csv"))
display(balance.round(3))
train.plot_class_balance(balance);
"""),
("md", "## Train (or resume)"),
("code", """
result = train.launch(p, run_dir, progress=runs.is_interactive())
"""),
("md", "## History"),
("code", """
history = train.read_history(run_dir)
display(history.round(4))
train.plot_history(history);
"""),
("md", "## Result"),
("code", """
print(f"best epoch {result['best_epoch']} of {result['epochs_run']}: {result['select_metric']} "
      f"{result['best_score']:.4f} on the {result['select_on']} split"
      + (" (stopped early)" if result["stopped_early"] else ""))
print(f"best checkpoint: {result['best']}\\nlast checkpoint: {result['last']} (resume from here)")
if result["selected_on_test"]:
    display(HTML(train.test_selection_html()))
"""),
])
