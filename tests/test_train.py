import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from cxrlib import params
from cxrlib.bench import train as bench_train
from cxrlib.data import cache
from cxrlib.data.cohort import read_cohort, write_cohort
from cxrlib.errors import UserError
from cxrlib.evaluation import readable, viz
from cxrlib.labels import FINDINGS
from cxrlib.training import checkpoint, optim, runtime, steps, train
from cxrlib.training.inference import evaluate
from cxrlib.training.loader import BatchTransform, make_loader
from cxrlib.training.selection import new_selection, update_selection

ROOT = Path(__file__).resolve().parents[1]
# Small and fast, yet every random part is on: dropout, augmentation, warmup + cosine, pos_weight.
TINY = {"device": "cpu", "image_size": 64, "arch": "densenet121", "head": "avgpool", "weights": "none",
        "dropout": 0.2, "augment": True, "epochs": 2, "batch_size": 4, "eval_batch_size": 8, "lr": 1e-3,
        "optimizer": "adamw", "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": 0.5,
        "pos_weight": True, "val_fraction": 0.1, "num_workers": 0, "mean": None, "std": None,
        "checkpoint_minutes": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """24 tiny JPEGs (16 train, 8 validate) whose stripes encode their labels, cached at 64 px."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        labels = (rng.random(len(FINDINGS)) < 0.3).astype(np.float32)
        labels[i % 14] = np.nan if i % 5 == 0 else labels[i % 14]   # a few masked labels
        pixels = rng.integers(0, 60, (96, 96)).astype(np.float32)
        for j in np.flatnonzero(labels == 1):
            pixels[j * 6:(j + 1) * 6] += 150
        subject, study, dicom = 10000000 + i, 50000000 + i, f"{i:08x}-00000000-00000000-00000000-00000000"
        path = f"files/p10/p{subject}/s{study}/{dicom}.jpg"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / path, quality=95)
        rows.append({"subject_id": str(subject), "study_id": str(study), "dicom_id": dicom, "view": "AP",
                     "path": path, "split": "validate" if i < 8 else "train", **dict(zip(FINDINGS, labels))})
    cohort = pd.DataFrame(rows)
    cache.build_cache(root, cohort, size=64, workers=1, progress=False)
    write_cohort(cohort, root / "cohort.csv")
    return root


def tiny(data_root, **changes) -> params.Params:
    return params.validate({**TINY, "data_root": str(data_root), **changes})


# --------------------------------------------------------------------------- errors before any work
def test_gpu_without_cuda_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = params.validate({"device": "gpu", "val_fraction": 0.1, "data_root": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match=r"device: gpu but torch.cuda.is_available\(\) is False.*DEVICE=cpu"):
        train.fit(p, tmp_path / "run")   # no cohort, no cache: the device is checked first
    assert not (tmp_path / "run").exists()
    auto = params.validate({"device": "auto", "val_fraction": 0.1})
    assert runtime.resolve_device(auto) == torch.device("cpu")


def test_batch_size_must_split_across_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    p = params.validate({"device": "cpu", "batch_size": 64, "val_fraction": 0.1})
    with pytest.raises(UserError, match="batch_size 64 is not divisible by the 3 processes"):
        train.fit(p, tmp_path / "run")


# --------------------------------------------------------------------------- loss, pos_weight, schedule
def test_masked_loss_ignores_masked_cells():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 14), (torch.rand(6, 14) < 0.3).float()
    mask = (torch.rand(6, 14) < 0.7).float()
    pos_weight = torch.linspace(0.5, 5.0, 14)
    loss = optim.masked_bce(logits, targets, mask, pos_weight)
    flipped = torch.where(mask > 0, targets, 1 - targets)   # change only what is masked
    assert torch.equal(loss, optim.masked_bce(logits, flipped, mask, pos_weight))
    valid = mask.bool()
    by_hand = nn.functional.binary_cross_entropy_with_logits(
        logits[valid], targets[valid], pos_weight=pos_weight.expand(6, 14)[valid])
    assert torch.allclose(loss, by_hand)
    everything = torch.ones_like(mask)   # no mask: exactly the original's criterion
    assert torch.allclose(optim.masked_bce(logits, targets, everything, pos_weight),
                          nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits, targets))


def test_pos_weight_is_negatives_over_positives():
    labels = np.zeros((10, 14), dtype=np.float32)
    labels[:2, 0] = 1            # 2 positives, 8 negatives -> 4
    labels[:5, 1] = 1            # 5 / 5 -> 1
    labels[:1, 2] = 1
    labels[5:, 2] = np.nan       # 1 positive, 4 negatives, 5 masked -> 4
    labels[:, 3] = 1             # no negative -> 0
    labels[:, 4] = 0             # no positive -> guarded to 1, with a warning
    with pytest.warns(UserWarning, match="Enlarged Cardiomediastinum"):
        weights = optim.pos_weight_from_labels(labels, FINDINGS)
    assert weights.dtype == torch.float32
    assert weights[:5].tolist() == [4.0, 1.0, 4.0, 0.0, 1.0]
    assert weights[5:].tolist() == [1.0] * 9   # columns 5.. hold no positive either


def test_cosine_schedule_with_linear_warmup():
    p = params.validate({"lr": 1e-3, "epochs": 3, "schedule": "cosine", "warmup_epochs": 0.5, "val_fraction": 0.1})
    model = nn.Linear(2, 1)
    optimizer = optim.make_optimizer(model, p)
    scheduler = optim.make_scheduler(optimizer, p, steps_per_epoch=10)   # 5 warmup steps of 30
    lrs = []
    for _ in range(30):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])
    assert lrs[5] == pytest.approx(1e-3)
    assert lrs[5 + 25 // 2] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 12 / 25)))
    assert lrs[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 24 / 25)))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))
    constant = params.validate({"lr": 1e-4, "schedule": "constant", "val_fraction": 0.1})
    optimizer = optim.make_optimizer(model, constant)
    assert isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW)
    scheduler = optim.make_scheduler(optimizer, constant, steps_per_epoch=7)
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 1e-4


# --------------------------------------------------------------------------- one optimizer step per batch
@pytest.mark.parametrize("amp, scaler_on, clip", [(None, False, 0.0), (None, False, 1.0),
                                                  (torch.bfloat16, False, 0.0), (torch.float16, True, 1.0)])
def test_optimizer_steps_once_per_batch(amp, scaler_on, clip):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 14))
    calls = []

    class CountingAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            calls.append(1)
            return super().step(*args, **kwargs)

    optimizer = CountingAdam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=scaler_on)   # fp16's GradScaler path, on CPU
    batches = [(torch.randint(0, 255, (2, 1, 16, 16), dtype=torch.uint8), torch.zeros(2, 14), torch.ones(2, 14),
                torch.arange(2)) for _ in range(5)]
    position = steps.new_position()
    steps.train_one_epoch(model, batches, BatchTransform(0.5, 0.25), optimizer, scheduler, scaler,
                          torch.device("cpu"), position, steps=5, amp=amp, grad_clip=clip, progress=False)
    assert len(calls) == 5 and position["step"] == 5 and position["batch"] == 5
    assert scheduler.last_epoch == 5


# --------------------------------------------------------------------------- selection rule
def original_loop(accuracies, criterion):
    """The original project's train() bookkeeping, transcribed: returns (saved epochs, stop epoch)."""
    early_stop, best_acc, saved = 0, 0, []
    for epoch, acc in enumerate(accuracies):
        early_stop += 1
        if acc > best_acc:
            early_stop, best_acc = 0, acc
            saved.append(epoch + 1)
        if early_stop == criterion:
            return saved, epoch + 1
    return saved, len(accuracies)


@pytest.mark.parametrize("patience", [1, 2, 5])
def test_selection_matches_the_original(patience):
    rng = np.random.default_rng(patience)
    for _ in range(50):
        scores = np.round(rng.uniform(0.8, 0.9, 30), 2).tolist()   # rounding makes ties
        state, saved, stop = new_selection(), [], len(scores)
        for epoch, score in enumerate(scores, start=1):
            keep, stop_now = update_selection(state, score, epoch, patience)
            if keep:
                saved.append(epoch)
            if stop_now:
                stop = epoch
                break
        assert (saved, stop) == original_loop(scores, patience)


def test_selection_is_strict_and_counts_every_epoch():
    state = new_selection()
    outcomes = [update_selection(state, s, e, 2) for e, s in enumerate([0.5, 0.6, 0.6, 0.7, 0.7, 0.7], 1)]
    assert outcomes == [(True, False), (True, False), (False, False), (True, False), (False, False), (False, True)]
    assert state == {"best_score": 0.7, "best_epoch": 4, "counter": 2}
    state = new_selection()
    assert update_selection(state, float("nan"), 1, 0) == (False, False)   # NaN never wins; 0: no stop


# --------------------------------------------------------------------------- fit, checkpoints, resume
def test_fit_original_rule_checkpoints_and_history(data_root, tmp_path):
    p = tiny(data_root, select_on="test", select_metric="accuracy", val_fraction=0.0, epochs=2, augment=False,
             dropout=0.0, pos_weight=False, optimizer="adam", schedule="constant", warmup_epochs=0.0,
             max_train_batches=2)
    cohort = read_cohort(data_root / "cohort.csv")
    cohort["split"] = np.where(cohort["split"] == "validate", "test", "train")
    with pytest.warns(UserWarning, match="TEST split"):
        result = train.fit(p, tmp_path / "run", cohort, progress=False)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(history) == 2 and history["selected_on_test"].all() and (history["eval_split"] == "test").all()
    assert result["selected_on_test"]
    assert result["best_epoch"] == int(history.loc[history["selected"], "epoch"].iloc[-1])
    assert result["best_score"] == pytest.approx(history["val_accuracy"].max())
    evaluation = {"model", "position", "selection", "history", "params", "model_config"}
    resume_only = {"optimizer", "scheduler", "scaler", "rng"}
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert set(last) >= evaluation | resume_only
    assert set(best) >= evaluation and not set(best) & resume_only   # best.pt: no optimizer state
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["position"]["step"] == 4 and last["finished"] and last["params"]["select_on"] == "test"
    assert [row["train_loss"] for row in last["history"]] == pytest.approx(history["train_loss"].tolist())
    # the trained model evaluates to the history's last figures
    model, saved, _ = checkpoint.load_trained(tmp_path / "run", "last")
    assert saved.select_on == "test"
    # a finished run resumes to its result at once; other parameters are refused
    assert train.fit(params.validate({**p.to_dict(), "resume": True}), tmp_path / "run", cohort)["best_epoch"] \
        == result["best_epoch"]
    with pytest.raises(UserError, match=r"lr \(train\): 0.001 -> 0.01"):
        train.fit(params.validate({**p.to_dict(), "lr": 0.01, "resume": True}), tmp_path / "run", cohort)


def test_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    checkpoint.save_checkpoint(tmp_path / "rng.pt", {"rng": checkpoint.rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from cxrlib import params
    from cxrlib.training import train
    run_dir, kill_at, values = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    if kill_at:  # SIGKILL this process at its kill_at-th checkpoint save: the step before it is done, not saved
        real_save, calls = train.save_checkpoint, []
        def save_or_die(path, checkpoint):
            calls.append(path)
            if len(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(path, checkpoint)
        train.save_checkpoint = save_or_die
    train.fit(params.validate(values), run_dir, progress=False)
""")


def run_child(run_dir: Path, p: params.Params, kill_at: int = 0) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "cohort.csv").write_bytes((Path(p.data_root) / "cohort.csv").read_bytes())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), str(kill_at), json.dumps(p.to_dict())],
                          env=env, capture_output=True, text=True, timeout=300)
    if kill_at == 0:
        assert done.returncode == 0, done.stderr[-3000:]
    return done.returncode


@pytest.mark.slow
def test_killed_run_resumes_exactly(data_root, tmp_path):
    run_child(tmp_path / "straight", tiny(data_root))   # checkpoints at epoch ends only
    p = tiny(data_root, checkpoint_minutes=1e-9)          # last.pt after every step too
    # 4 steps per epoch. Kill 1: at save #3, after step 3 of epoch 1 (last.pt holds step 2).
    assert run_child(tmp_path / "killed", p, kill_at=3) == -9
    position = torch.load(tmp_path / "killed/checkpoints/last.pt", weights_only=True)["position"]
    assert (position["epoch"], position["batch"], position["step"]) == (0, 2, 2)
    # Kill 2: the resumed process redoes step 3, saves after it (#1), runs step 4, saves best.pt (#2) and
    # last.pt (#3) at the epoch end, then dies at #4, after the first step of epoch 2.
    assert run_child(tmp_path / "killed", tiny(data_root, checkpoint_minutes=1e-9, resume=True), kill_at=4) == -9
    position = torch.load(tmp_path / "killed/checkpoints/last.pt", weights_only=True)["position"]
    assert (position["epoch"], position["batch"]) == (1, 0)
    run_child(tmp_path / "killed", tiny(data_root, checkpoint_minutes=1e-9, resume=True))

    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed/checkpoints/last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(),
                                                  b["optimizer"]["state"][0].values()))
    timing = {"images_per_s", "seconds"}
    strip = lambda rows: [{k: v for k, v in row.items() if k not in timing} for row in rows]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"]) and len(a["history"]) == 2
    assert a["position"] == b["position"] and a["selection"] == b["selection"]


@pytest.mark.slow
def test_ddp_on_gloo_matches_one_process(data_root, tmp_path, monkeypatch):
    p = tiny(data_root, augment=False, dropout=0.0, epochs=2, batch_size=4)
    run_child(tmp_path / "one", p)
    two = params.validate({**p.to_dict(), "gpus": 2})
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = train.launch(two, tmp_path / "two", read_cohort(data_root / "cohort.csv"), progress=False)
    one = pd.read_csv(tmp_path / "one" / "history.csv")
    ddp = pd.read_csv(tmp_path / "two" / "history.csv")
    assert len(ddp) == 2 and result["epochs_run"] == 2
    a = torch.load(tmp_path / "one/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "two/checkpoints/last.pt", weights_only=True)
    # the same global batches: as many optimizer steps, the same images per epoch
    assert a["position"]["step"] == b["position"]["step"] == 8
    # BatchNorm normalises over 2 images per rank instead of 4, so the losses agree only closely
    assert np.allclose(one["train_loss"], ddp["train_loss"], rtol=0.1)
    # every rank evaluated rank 0's (saved) model, and the gathered evaluation covers the validation
    # split exactly once; per-rank batches of 4 instead of 8 change the logits in the last bits only
    model, _, _ = checkpoint.load_trained(tmp_path / "two", "last")
    _, eval_set, train_labels, transform = train.prepare_data(two, tmp_path / "two")
    scores = evaluate(model, make_loader(eval_set, 8, False, 0, 0), transform, torch.device("cpu"),
                            optim.pos_weight_from_labels(train_labels))
    assert scores["loss"] == pytest.approx(ddp["val_loss"].iloc[-1], rel=1e-5)
    assert scores["auroc_macro"] == pytest.approx(ddp["val_auroc_macro"].iloc[-1], abs=1e-3)


# --------------------------------------------------------------------------- notebook helpers, benchmark
def test_class_balance_and_plot(data_root):
    cohort = read_cohort(data_root / "cohort.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        balance = viz.class_balance(cohort)
    train_labels = cohort.loc[cohort["split"] == "train", FINDINGS]
    assert balance.loc["Atelectasis", "positive"] == (train_labels["Atelectasis"] == 1).sum()
    assert (balance["positive"] + balance["negative"] + balance["masked"] == 16).all()
    expected = balance["negative"] / balance["positive"]
    has_pos = balance["positive"] > 0
    assert np.allclose(balance.loc[has_pos, "pos_weight"], expected[has_pos])
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.7, 0.6], "val_loss": [0.8, 0.7],
                            "val_auroc_macro": [0.6, 0.65], "val_auroc_micro": [0.7, 0.72],
                            "eval_split": ["validate"] * 2, "selected": [True, True]})
    fig = viz.plot_history(history)
    assert len(fig.axes) == 2
    assert "best epoch 2" in [t.get_text() for t in fig.axes[1].get_legend().get_texts()]


def test_bench_train_reports_both_recipes():
    result = bench_train.bench_train(["--arch", "densenet121", "--size", "64", "--batch", "2", "--steps", "1"])
    assert result["original_images_per_s"] > 0 and result["ours_images_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["ours_images_per_s"] / result["original_images_per_s"],
                                              rel=1e-2)
    json.dumps(result)


def test_steps_per_epoch_leaves_out_a_last_batch_of_one_image():
    assert train.steps_per_epoch(64, 32) == 2
    assert train.steps_per_epoch(65, 32) == 2      # the 65th image would train BatchNorm alone
    assert train.steps_per_epoch(66, 32) == 3
    assert train.steps_per_epoch(1, 32) == 1       # nothing else to train on


def test_normalisation_travels_with_the_checkpoint(data_root, tmp_path):
    """Another run rewriting the shared cache's statistics changes nothing in this run's evaluation."""
    import json
    import shutil

    from cxrlib.evaluation import evaluate

    copy = tmp_path / "data"
    shutil.copytree(data_root, copy)
    p = tiny(copy, epochs=1, select_on="validate")
    cohort = read_cohort(copy / "cohort.csv")
    train.fit(p, tmp_path / "run", cohort, progress=False)
    write_cohort(cohort, tmp_path / "run" / "cohort.csv")
    stats_file = cache.cache_path(copy / "cache", 64, "squash") / "stats.json"
    trained_with = json.loads(stats_file.read_text())
    saved = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model_config"]
    assert (saved["mean"], saved["std"]) == (trained_with["mean"], trained_with["std"])
    assert saved["image_size"] == 64 and saved["arch"] == "densenet121"
    before = evaluate.predict_run(tmp_path / "run", p, splits=("validate",), write=False)
    stats_file.write_text(json.dumps({**trained_with, "mean": trained_with["mean"] + 0.2, "std": 0.1}))
    after = evaluate.predict_run(tmp_path / "run", p, splits=("validate",), write=False)
    pd.testing.assert_frame_equal(before, after)


def test_resume_removes_its_own_stale_temp_checkpoints_only(data_root, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    stale = [folder / ".last.pt.abc123.pt", folder / ".best.pt.zz.pt"]
    keep = [folder / "notes.txt", folder / ".other.pt.x.pt", tmp_path / "run" / ".last.pt.q.pt"]
    for f in stale + keep:
        f.write_bytes(b"half a checkpoint")
    p = tiny(data_root, epochs=1, max_train_batches=1)
    train.fit(p, tmp_path / "run", read_cohort(data_root / "cohort.csv"), progress=False)
    assert not any(f.exists() for f in stale) and all(f.exists() for f in keep)


def test_cpu_amp_turns_on_bf16_and_channels_last_on_a_cpu_only_when_asked():
    from cxrlib.training.runtime import amp_dtype, inference_amp, use_channels_last

    cpu = torch.device("cpu")
    plain, fast = params.validate({"device": "cpu"}), params.validate({"device": "cpu", "cpu_amp": True})
    assert amp_dtype(plain, cpu) is None and not use_channels_last(plain, cpu)
    assert amp_dtype(fast, cpu) == torch.bfloat16 and use_channels_last(fast, cpu)
    assert inference_amp(fast, cpu) is None   # scoring stays fp32 on a CPU: predictions agree with the fp32 export
    assert amp_dtype(params.validate({"device": "cpu", "cpu_amp": True, "amp": "off"}), cpu) is None
    assert readable.shown_value(fast, "amp") == "bf16 (on this CPU run too: cpu_amp)"
    assert readable.shown_value(plain, "amp") == "bf16 (GPU only; off on this CPU run)"


# --------------------------------------------------------------------------- long-tail losses
def test_focal_loss_is_torchvisions_over_the_valid_cells_and_bce_at_gamma_0():
    from torchvision.ops import sigmoid_focal_loss

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(64, 14, generator=g) * 3, (torch.rand(64, 14, generator=g) < 0.2).float()
    mask = (torch.rand(64, 14, generator=g) > 0.1).float()
    for alpha in (-1.0, 0.25):
        reference = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=2.0, reduction="none")
        expected = (reference * mask).sum() / mask.sum()
        assert optim.masked_focal(logits, targets, mask, 2.0, alpha) == pytest.approx(float(expected), rel=1e-6)
    assert optim.masked_focal(logits, targets, mask, 0.0) == pytest.approx(float(optim.masked_bce(logits, targets, mask)),
                                                                         rel=1e-6)


def test_asymmetric_loss_follows_the_papers_formula():
    """Ridnik et al. 2021: L+ = (1 - p)^g+ log p; L- = p_m^g- log(1 - p_m), p_m = max(p - m, 0)."""
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(64, 14, generator=g) * 3, (torch.rand(64, 14, generator=g) < 0.2).float()
    mask = (torch.rand(64, 14, generator=g) > 0.1).float()
    p = 1 / (1 + np.exp(-logits.double().numpy()))
    y, m = targets.double().numpy(), mask.double().numpy()
    p_m = np.maximum(p - 0.05, 0)
    cells = -(y * (1 - p) ** 1.0 * np.log(p) + (1 - y) * p_m ** 4.0 * np.log(1 - p_m))
    expected = (cells * m).sum() / m.sum()
    assert float(optim.masked_asl(logits, targets, mask, 4.0, 1.0, 0.05)) == pytest.approx(expected, rel=1e-5)
    # no focusing and no margin: BCE; a negative below the margin costs nothing
    assert float(optim.masked_asl(logits, targets, mask, 0.0, 0.0, 0.0)) == pytest.approx(
        float(optim.masked_bce(logits, targets, mask)), rel=1e-5)
    easy = optim.masked_asl(torch.tensor([[-5.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    assert float(easy) == 0.0


def test_the_loss_is_a_training_parameter_and_pos_weight_stays_with_bce():
    assert optim.objective(params.validate({})) is None   # bce: train_step's masked_bce, unchanged
    asl = optim.objective(params.validate({"loss": "asl", "asl_gamma_neg": 2}))
    assert asl.func is optim.masked_asl and asl.keywords["gamma_neg"] == 2
    with pytest.raises(params.ParamError, match="pos_weight weighs BCE's positives; with loss: focal"):
        params.validate({"loss": "focal", "pos_weight": True})
    with pytest.raises(params.ParamError, match="asl_clip must be in"):
        params.validate({"loss": "asl", "asl_clip": 1.5})
    model = torch.nn.Linear(4, 14)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y, mask = torch.randn(8, 4), (torch.rand(8, 14) < 0.3).float(), torch.ones(8, 14)
    first = steps.train_step(model, x, y, mask, optimizer, scaler, loss_fn=asl)
    for _ in range(20):
        last = steps.train_step(model, x, y, mask, optimizer, scaler, loss_fn=asl)
    assert torch.isfinite(first) and last < first
