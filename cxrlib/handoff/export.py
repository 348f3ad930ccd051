"""A run's best checkpoint as one self-contained file (`make export RUN=x FORMAT=onnx|torchscript`).

The file takes what the cache stores, uint8 images (N, S, S) already decoded and resized the run's
way (see `meta["input"]`; `python -m cxrlib predict` does that part), and returns logits and
probabilities (N, 14): the scaling to [0, 1] and the run's mean/std are inside, so an app builder
cannot get them wrong. Its metadata holds the findings in output order, the validation thresholds,
the recalibration (if any), the data's fingerprints and the sharing note. Every export is verified:
the file is run (onnxruntime, or torch.jit for TorchScript) on the run's cached test images against
PyTorch, and the largest probability difference is written to the record beside it (model.onnx.json);
above PARITY_LIMIT the export fails and the previous export stays.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import runfiles, runlock
from ..errors import UserError
from ..evaluation.trained import eval_cohort, load_best
from ..fsutil import atomic_write_json, sha256_file
from ..params import validate
from ..runfiles import BEST, CHECKPOINTS, COHORT, EXPORT, is_ensemble, run_folder
from .index_page import write_index

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
PARITY_LIMIT = 1e-4
PARITY_IMAGES = 64   # cached test images each export is checked on
OPSET = 18
SHARING_NOTE = ("Trained on MIMIC-CXR-JPG, credentialed data from PhysioNet: share this model only with people "
                "who hold the same credentials and signed the same data use agreement, under its terms.")


class Deployable(nn.Module):
    """uint8 (N, S, S) -> (logits, probabilities), both (N, 14) float32."""

    def __init__(self, model: nn.Module, mean: float, std: float):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, images: torch.Tensor):
        x = (images.unsqueeze(1).float() / 255.0 - self.mean) / self.std
        logits = self.model(x).float()
        return logits, torch.sigmoid(logits)


def _model_and_meta(run_dir: Path, p):
    from ..evaluation import analysis  # lazy: keeps scipy, sklearn out of this module's import

    model, trained, _, transform = load_best(run_dir, validate({**p.to_dict(), "device": "cpu"}))
    report = runfiles.read_metrics(run_dir)
    thresholds, note = analysis.thresholds_from_report(report, "f1", level="image")   # the file scores images
    config = report["model"]
    meta = {
        "format_version": 1,
        "run": run_dir.name,
        "findings": list(model.labels),   # the outputs, in order: the checkpoint's model_config
        "label_set": trained.label_set,
        "input": {"name": "images", "dtype": "uint8", "shape": ["N", config["image_size"], config["image_size"]],
                  "image_size": config["image_size"], "resize": config["resize"], "decode": config.get("decode", "fast"),
                  "grayscale": True, "how": "decode the JPEG, convert to 8-bit grey, resize as `resize` says "
                                            "(cxrlib.data.decode.decode_image); no other scaling"},
        "outputs": {"logits": ["N", len(model.labels)], "probabilities": ["N", len(model.labels)]},
        "normalisation": {"mean": transform.mean, "std": transform.std, "applied": "inside the model"},
        "thresholds": {"rule": "max-F1 on validation", "level": "image", "note": note, "values": thresholds},
        "calibration": {**(analysis.fitted_for(report, "image")[1] or {"method": "none"}), "level": "image"},
        "headline_test": {"level": (report.get("level") or {}).get("headline", "image"), **report["headline"]},
        "arch": config["arch"], "head": config["head"],
        "checkpoint_sha256": sha256_file(run_dir / CHECKPOINTS / BEST),
        "data": report.get("data", {}),
        "versions": report.get("versions", {}),
        "test_selected": report.get("test_selected", False),
        "starting_weights": config.get("starting_weights"), "contaminated": report.get("contaminated", False),
        "sharing": SHARING_NOTE,
    }
    return Deployable(model.cpu().eval(), transform.mean, transform.std).eval(), trained, meta


def parity_images(run_dir: Path, trained, n: int = PARITY_IMAGES) -> np.ndarray:
    """Up to n of the run's cached test images, uint8 (n, S, S), in cohort order."""
    cohort, cache = eval_cohort(run_dir, trained)
    rows = cohort.loc[cohort["split"] == "test", "cache_row"].to_numpy()[:n]
    if not len(rows):
        raise UserError(f"{Path(run_dir) / COHORT} has no cached test image to verify the export on; "
                        "rebuild the cache with notebook 01")
    return np.ascontiguousarray(cache.images[np.sort(rows)])


def _write_onnx(net: Deployable, example: torch.Tensor, path: Path, meta: dict) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it; checked here for a clear message)
    except ImportError:
        raise UserError("FORMAT=onnx needs the onnx and onnxruntime packages: `pip install onnx onnxruntime "
                        "onnxscript` in the venv (make setup installs them), or use FORMAT=torchscript") from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(net, (example,), dynamo=True, input_names=["images"],
                                output_names=["logits", "probabilities"], dynamic_shapes=({0: batch},),
                                opset_version=OPSET, external_data=False, verbose=False)
    # The metadata goes into the in-memory model, so the file is written once (export_run's temp name).
    program.model.metadata_props.update(cxrlib=json.dumps(meta), findings=",".join(meta["findings"]))
    program.model.doc_string = f"cxrlib run {meta['run']}: {len(meta['findings'])} chest X-ray findings. {SHARING_NOTE}"
    program.save(str(path))


@contextlib.contextmanager
def _quiet_jit():
    """torch.jit says on every call that it is deprecated upstream; FORMAT=onnx is the maintained path, and
    TorchScript stays for apps (C++ libtorch, older mobile stacks) that load nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        # A ViT checks its input size in Python: traced, the check is a constant, as the export's S x S input is.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _write_torchscript(net: Deployable, example: torch.Tensor, path: Path, meta: dict) -> None:
    with _quiet_jit():   # written to export_run's temp name, which it renames once verified
        traced = torch.jit.trace(net, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"cxrlib.json": json.dumps(meta)})


def run_exported(path: Path, images: np.ndarray, fmt: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of an exported file on uint8 images, by its own runtime (fmt: from the suffix)."""
    if (fmt or ("onnx" if Path(path).suffix == ".onnx" else "torchscript")) == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits, probs = session.run(["logits", "probabilities"], {"images": images})
        return np.asarray(logits), np.asarray(probs)
    with _quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        logits, probs = module(torch.from_numpy(images))
    return logits.numpy(), probs.numpy()


def read_metadata(path: Path) -> dict:
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {e.key: e.value for e in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props["cxrlib"])
    extra = {"cxrlib.json": ""}
    with _quiet_jit():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["cxrlib.json"])


def record_path(model_path: Path) -> Path:
    """The record beside an exported file: model.onnx -> model.onnx.json (one per file, so per format)."""
    return Path(model_path).with_name(Path(model_path).name + ".json")


def read_record(model_path: Path) -> dict | None:
    """The export record of `model_path` if it describes that very file (its sha256), else None: a record
    whose file is gone, or was replaced by an interrupted export, describes nothing."""
    model_path, record = Path(model_path), record_path(model_path)
    if not (model_path.is_file() and record.is_file()):
        return None
    content = json.loads(record.read_text())
    return content if content.get("sha256") == sha256_file(model_path) else None


def _remove_stale_temps(folder: Path, name: str) -> None:
    """Temp files of an export killed before it finished (atomic writes: .<name>.<random>.tmp)."""
    for stale in folder.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)


def export_run(run_dir, p, fmt: str = "onnx", out=None) -> dict:
    """Writes runs/<name>/export/model.<onnx|pt> and its record model.<onnx|pt>.json; returns the record.

    Verified before it replaces anything: the file is written under a temp name, run by its own runtime
    against PyTorch, and only then moved over the previous export, its record after it. A failed check
    removes the temp file and leaves the previous export and its record as they were.
    """
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UserError(f"FORMAT={fmt}: use one of {', '.join(FORMATS)}")

    if is_ensemble(run_dir):
        raise UserError(f"{run_dir} is an ensemble (no checkpoint of its own): export each member "
                        f"(make export RUN=<sweep>/<member>) and average their probabilities in your app")
    net, trained, meta = _model_and_meta(run_dir, p)
    images = parity_images(run_dir, trained)
    example = torch.from_numpy(images[:2])
    path = Path(out) if out else run_dir / EXPORT / f"model{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.export.tmp")   # same folder: the final rename is atomic
    try:
        (_write_onnx if fmt == "onnx" else _write_torchscript)(net, example, tmp, meta)
        with torch.no_grad():
            ref_logits, ref_probs = (t.numpy() for t in net(torch.from_numpy(images)))
        logits, probs = run_exported(tmp, images, fmt)
        diff = float(np.abs(probs - ref_probs).max())
        if not diff < PARITY_LIMIT:
            raise UserError(f"the {fmt} export differs from PyTorch by {diff:.2e} in probability (limit "
                            f"{PARITY_LIMIT:g}); it was not kept, and {path.name} (if any) is unchanged")
        summary = {"format": fmt, "file": path.name, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp),
                   "parity": {"images": int(len(images)), "max_abs_prob_diff": diff,
                              "max_abs_logit_diff": float(np.abs(logits - ref_logits).max()),
                              "limit": PARITY_LIMIT, "against": "PyTorch (float32, CPU) on the cached test images"},
                   "metadata": meta}
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(record_path(path), summary)   # read_record checks it names this file's sha256
    return summary


def cli(command: str, argv: list[str]) -> int:
    import argparse


    ap = argparse.ArgumentParser(prog="python -m cxrlib export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the run: runs/<name> or its name (notebook 03 must have run)")
    ap.add_argument("--format", choices=list(FORMATS), default="onnx")
    ap.add_argument("--out", help="file to write (default: runs/<name>/export/model.onnx or model.pt)")
    args = ap.parse_args(argv)
    run_dir, p = run_folder(args.run)
    with runlock.hold(run_dir, f"cxrlib export --format {args.format}"):
        summary = export_run(run_dir, p, args.format, args.out)
        parity = summary["parity"]
        print(f"{run_dir / 'export' / summary['file'] if not args.out else args.out} (record: .json beside it): "
              f"{summary['format']}, "
              f"{summary['bytes'] / 1e6:.1f} MB; parity with PyTorch on {parity['images']} cached test images: "
              f"max |prob diff| {parity['max_abs_prob_diff']:.1e} (limit {parity['limit']:g})")
        write_index(run_dir)   # its Hand-off section names the new file; the run's summary and card say where it is
    return 0
