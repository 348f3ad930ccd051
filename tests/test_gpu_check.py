"""tools/gpu-check --dry-run: the steps of the GPU check, on this CPU at a tiny size.

The GPU figures themselves come only from a machine with an accelerator; here the check must run
each step to the end, and the CPU-only facts must hold: torchrun with one process uses gloo. Two
steps are left out here to keep make test near 10 minutes, because other tests cover what they
check on a CPU: kill-and-resume through the user path (tests/test_train.py and test_ux.py) and fp32
against bf16 (the CPU never autocasts). `make gpu-check` runs every step: do so before a GPU session;
with CXRLIB_FULL_GPU_CHECK=1 this test does too.
"""
import json
import os
import subprocess
import sys

import pytest
from conftest import PROJECT


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    full = os.environ.get("CXRLIB_FULL_GPU_CHECK") == "1"
    done = subprocess.run([sys.executable, str(PROJECT / "tools" / "gpu-check"), "--dry-run", "--budget", "560",
                           "--out", str(out), "--work", str(work)] + ([] if full else ["--skip", "resume,fp32"]),
                          cwd=PROJECT, capture_output=True, text=True, timeout=660)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = json.loads((out / "gpu-check.json").read_text())
    steps = summary["steps"]
    assert summary["mode"] == "dry-run"
    assert {name: s["status"] for name, s in steps.items()} == {
        **dict.fromkeys(["env", "data", "cache", "train", "pipeline", "user-path", "resume", "fp32", "torchrun"], "ok"),
        **({} if full else {"resume": "skipped", "fp32": "skipped"})}
    assert steps["cache"]["cached"] == steps["cache"]["images"] == steps["data"]["full_images"]
    assert steps["pipeline"]["end_to_end_img_per_s"] > 0 and steps["pipeline"]["model_only_img_per_s"] > 0
    assert steps["user-path"]["epochs"] == 2 and "AUROC macro" in steps["user-path"]["headline"]
    assert steps["torchrun"] == {**steps["torchrun"], "backend": "gloo", "epochs": 1}
    table = (out / "gpu-check.md").read_text()
    if full:
        resume = steps["resume"]
        assert resume["killed_at"]["epoch"] == 2 and resume["killed_at"]["batch"] > 0     # mid-epoch, after epoch 1
        assert resume["bit_identical"] and resume["max_abs_weight_diff"] == 0.0
        assert steps["fp32"]["diff"] == 0.0
        assert "| kill and resume: bit-identical weights and history | True |" in table
    else:
        assert steps["resume"]["error"] == "--skip"
    assert "torch 2." in table and (out / "gpu-check.log").stat().st_size > 0
