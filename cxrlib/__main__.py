"""Command line: `python -m cxrlib <command> ...`; each command lives in its module's `cli`."""
from __future__ import annotations

import importlib
import os
import sys

from .errors import UserError

COMMANDS = {
    "demo-data": ("synthetic.mimic_cxr", "generate the synthetic MIMIC-CXR-JPG stand-in"),
    "cohort": ("data.cohort", "build the cohort table from metadata and labels"),
    "demo-encoders": ("synthetic.encoders", "random-weight encoders in the layouts people download, for the probe demo"),
    "fetch": ("data.physionet", "download the cohort's files from PhysioNet"),
    "fetch-external": ("data.external_fetch", "download VinDr-CXR's test set from PhysioNet (its own agreement)"),
    "fetch-demographics": ("data.demographics", "download MIMIC-IV's patients and admissions for the audit"),
    "cache": ("data.cache", "decode the cohort's images once into a resized uint8 cache"),
    "external-table": ("data.sources", "an external dataset's tables (CheXpert, NIH, PadChest, VinDr-CXR) as one image table"),
    "embed": ("training.embed", "a run's cohort images through its encoder once, into the embedding cache"),
    "convert-weights": ("training.convert", "a torchxrayvision file (or a trusted checkpoint) as safetensors + JSON, once"),
    "run": ("experiments.runs", "run the pipeline notebooks for a parameter file"),
    "audit": ("experiments.runs", "notebook 05 on a run: the audit by patient group (MIMIC-IV demographics)"),
    "report": ("experiments.runs", "re-render a run's executed notebooks to HTML"),
    "sweep": ("experiments.sweep", "run a grid of members (seeds, ablations), locally or on SLURM; skips finished ones"),
    "compare": ("experiments.compare", "several runs or a sweep: headline table, seeds pooled, each against a baseline (06)"),
    "efficiency": ("experiments.efficiency", "data-efficiency curves: a metric against labelled patients, per encoder"),
    "external": ("experiments.external_runner", "notebook 07: a run on CheXpert, NIH, PadChest or VinDr-CXR, vs its test split"),
    "predict": ("handoff.predict", "a run's model on JPEG/PNG files or folders: its labels' probabilities and the calls"),
    "export": ("handoff.export", "a run's best model as ONNX or TorchScript, checked against PyTorch"),
    "submission": ("handoff.submission", "a run's test probabilities in the CXR-LT challenge's format (dicom_id, labels)"),
    "card": ("handoff.card", "a run's model card: MODEL_CARD.md and .html from its metrics and folder"),
    "runs": ("experiments.lister", "list runs: status, date, duration, best epoch, headline figures with CIs"),
    "diff": ("experiments.lister", "compare two runs: parameters first, then figures and notebook text"),
    "clean": ("experiments.lister", "remove a run's checkpoints (after asking), keeping its reports and metrics"),
    "bench": ("bench", "benchmarks: decode, loader, train, bootstrap (JSON line last)"),
}


def usage() -> str:
    lines = ["usage: python -m cxrlib <command> [options]", "", "commands:"]
    lines += [f"  {name:<18} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`python -m cxrlib <command> --help` describes each one."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"cxrlib.{COMMANDS[command][0]}")
    try:
        return int(module.cli(command, rest) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # `| head` closed the pipe: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted; rerun the same command to continue where it stopped", file=sys.stderr,
              flush=True)
        sys.stdout.flush()
        # Leave now: the interpreter's shutdown would print tracebacks of the notebook client's abandoned
        # tasks (the kernel itself is already shut down by then).
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
