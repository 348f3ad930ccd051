"""tools/gpu-check --dry-run: the steps of the GPU check, on this CPU at a tiny size.

The GPU figures themselves come only from a machine with an accelerator; here the check must run
each step to the end. The steps that train runs through the user path are left out here to keep make
test near 10 minutes, because other tests cover what they do on a CPU: notebooks 01-03 through
`cxrlib run` (the tiny run, tests/test_runs.py), kill-and-resume (tests/test_train.py and test_ux.py),
fp32 against bf16 (the CPU never autocasts) and torchrun (test_ddp_on_gloo_matches_one_process launches
it); the parameter files those steps write are checked below. `make gpu-check` runs every step, and
checks that torchrun with one process uses gloo: do so before a GPU session. In CI (CI=true, where make test
has 90 minutes) and with CXRLIB_FULL_GPU_CHECK=1 this test runs every step, so that a step that fails (the
user-path step once crashed on an undefined headline, which would have skipped resume, fp32 and torchrun on a
lent GPU) fails the suite.
"""
import json
import os
import subprocess
import sys

import pytest
from conftest import PROJECT

SKIPPED = ("user-path", "resume", "fp32", "torchrun")


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    full = os.environ.get("CXRLIB_FULL_GPU_CHECK") == "1" or os.environ.get("CI", "").lower() == "true"
    done = subprocess.run([sys.executable, str(PROJECT / "tools" / "gpu-check"), "--dry-run", "--budget", "560",
                           "--out", str(out), "--work", str(work)] + ([] if full else ["--skip", ",".join(SKIPPED)]),
                          cwd=PROJECT, capture_output=True, text=True, timeout=660)
    summary = json.loads((out / "gpu-check.json").read_text())
    steps = summary["steps"]
    failed = {name: s.get("error") for name, s in steps.items() if s["status"] != "ok" and s.get("error") != "--skip"}
    assert done.returncode == 0 and not failed, (failed, done.stdout[-3000:] + done.stderr[-2000:])
    assert summary["mode"] == "dry-run"
    assert {name: s["status"] for name, s in steps.items()} == {
        **dict.fromkeys(["env", "data", "cache", "train", "pipeline", "user-path", "resume", "fp32", "torchrun"], "ok"),
        **({} if full else dict.fromkeys(SKIPPED, "skipped"))}
    assert steps["cache"]["cached"] == steps["cache"]["images"] == steps["data"]["full_images"]
    assert steps["pipeline"]["end_to_end_img_per_s"] > 0 and steps["pipeline"]["model_only_img_per_s"] > 0
    table = (out / "gpu-check.md").read_text()
    if full:
        assert steps["user-path"]["epochs"] == 2 and "AUROC macro" in steps["user-path"]["headline"]
        resume = steps["resume"]
        assert resume["killed_at"]["epoch"] == 2 and resume["killed_at"]["batch"] > 0     # mid-epoch, after epoch 1
        assert resume["bit_identical"] and resume["max_abs_weight_diff"] == 0.0
        assert steps["fp32"]["diff"] == 0.0
        assert "| kill and resume: bit-identical weights and history | True |" in table
        assert steps["torchrun"] == {**steps["torchrun"], "backend": "gloo", "epochs": 1}
    else:
        assert steps["resume"]["error"] == "--skip"
    assert "torch 2." in table and (out / "gpu-check.log").stat().st_size > 0


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_parameter_files_the_check_writes_are_valid(tmp_path, dry_run):
    import argparse
    import importlib.machinery
    import importlib.util

    import yaml

    from cxrlib import params

    loader = importlib.machinery.SourceFileLoader("gpu_check", str(PROJECT / "tools" / "gpu-check"))
    tool = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_check", loader))
    loader.exec_module(tool)
    check = tool.Check(argparse.Namespace(dry_run=dry_run, out=str(tmp_path / "out"), work=str(tmp_path / "work"),
                                          budget=300, skip=set()))
    base = yaml.safe_load(check.preset(name="gpu-a").read_text())
    p = params.validate(base, "gpu-check preset")
    assert (p.device, p.epochs >= 2, p.val_fraction) == ("cpu" if dry_run else "gpu", True, 0.2)
    for changes in ({"amp": "off"}, {"epochs": 1, "gpus": 1}, {"deterministic": True}):   # fp32, torchrun, det.
        params.validate({**base, **changes}, "gpu-check prepared run")
