"""tools/gpu-check --dry-run: every step of the GPU check, on this CPU at a tiny size.

The GPU figures themselves come only from a machine with an accelerator; here the check must run
each step to the end, and the CPU-only facts must hold: kill-and-resume through the user path is
bit-identical, bf16 and fp32 agree (the CPU never autocasts), torchrun with one process uses gloo.
"""
import json

import pytest
from conftest import GPU_CHECK


@pytest.mark.slow
def test_gpu_check_dry_run():
    proc = GPU_CHECK["proc"]   # started by conftest.py when this test was collected
    proc.wait(timeout=660)
    stdout, stderr = ((GPU_CHECK["tmp"] / name).read_text() for name in ("stdout", "stderr"))
    assert proc.returncode == 0, stdout[-3000:] + stderr[-2000:]
    out = GPU_CHECK["out"]
    summary = json.loads((out / "gpu-check.json").read_text())
    steps = summary["steps"]
    assert summary["mode"] == "dry-run"
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(
        ["env", "data", "cache", "train", "pipeline", "user-path", "resume", "fp32", "torchrun"], "ok")
    assert steps["cache"]["cached"] == steps["cache"]["images"] == steps["data"]["full_images"]
    assert steps["pipeline"]["end_to_end_img_per_s"] > 0 and steps["pipeline"]["model_only_img_per_s"] > 0
    assert steps["user-path"]["epochs"] == 2 and "AUROC macro" in steps["user-path"]["headline"]
    resume = steps["resume"]
    assert resume["killed_at"]["epoch"] == 2 and resume["killed_at"]["batch"] > 0     # mid-epoch, after epoch 1
    assert resume["bit_identical"] and resume["max_abs_weight_diff"] == 0.0
    assert steps["fp32"]["diff"] == 0.0
    assert steps["torchrun"] == {**steps["torchrun"], "backend": "gloo", "epochs": 1}
    table = (out / "gpu-check.md").read_text()
    assert "| kill and resume: bit-identical weights and history | True |" in table
    assert "torch 2." in table and (out / "gpu-check.log").stat().st_size > 0
