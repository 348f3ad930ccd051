"""`python -m cxrlib convert-weights --from torchxrayvision|checkpoint FILE`: a weights file that cannot be read
safely, once, into a plain safetensors file and the JSON beside it.

torchxrayvision releases pickled whole modules: reading one runs its code, so it needs the torchxrayvision package
(`pip install torchxrayvision`, or the venv's extra `pip install -e '.[xrv]'`) and trust in the file. This command is
the only place cxrlib does that; runs then read the safetensors file, which holds tensors only. `--from checkpoint`
does the same for any checkpoint you trust that holds Python objects besides tensors (a Lightning checkpoint
with its hyper-parameters, e.g. MoCo-CXR's).

The JSON (`<out>.json`) records the source, the SHA-256 of the original file, the label list and op_threshs
a torchxrayvision model carried, its input range as cxrlib's mean/std (torchxrayvision scales pixels to
[-1024, 1024]: mean 0.5, std 1/2048 on pixels in [0, 1]), its resolution, and what it was trained on
(training.contamination's table, by source).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from ..errors import UserError
from ..fsutil import atomic_path, atomic_write_text, sha256_file
from .contamination import KNOWN_SOURCES, known
from .weights import sidecar_path, unwrap_checkpoint

XRV_INPUT = {"mean": 0.5, "std": 1 / 2048}   # torchxrayvision: pixel/255 * 2048 - 1024


def load_trusted(path: Path, kind: str):
    """torch.load with weights_only=False: runs the pickle's code, which is why it is a separate command."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        if kind == "torchxrayvision" or "torchxrayvision" in str(e):
            raise UserError(f"{path} is a pickled torchxrayvision module: reading it needs the torchxrayvision "
                            "package (`pip install torchxrayvision`, only for this command)") from None
        raise UserError(f"{path} needs the Python package {e.name!r} to be read; install it for this command") from None
    except Exception as e:
        raise UserError(f"{path} could not be read as a PyTorch file ({type(e).__name__}: {e})") from None


def torchxrayvision_meta(module, path: Path, source: str | None) -> dict:
    """What a torchxrayvision model says of itself: its weights name, labels, op_threshs and resolution."""
    name = getattr(module, "weights", None) or source
    if not name:
        raise UserError(f"{path} does not name its weights (no .weights attribute): give --source, e.g. "
                        "torchxrayvision:densenet121-res224-all")
    name = name if name.startswith("torchxrayvision:") else f"torchxrayvision:{name}"
    labels = getattr(module, "targets", None) or getattr(module, "pathologies", None)
    threshs = getattr(module, "op_threshs", None)
    resolution = re.search(r"res(\d+)", name)
    return {"source": name, "labels": list(labels) if labels is not None else None,
            "op_threshs": threshs.tolist() if isinstance(threshs, torch.Tensor) else None,
            "input": XRV_INPUT, "resolution": int(resolution.group(1)) if resolution else None}


def convert(path, kind: str, out=None, source: str | None = None) -> tuple[Path, dict]:
    """Writes <out> (safetensors, tensors only) and <out>.json; returns both's paths' first and the JSON."""
    from safetensors.torch import save_file  # lazy: only this command writes safetensors

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    out = Path(out) if out else path.with_suffix(".safetensors")
    obj = load_trusted(path, kind)
    meta = {"converted_from": path.name, "original_sha256": sha256_file(path)}
    if kind == "torchxrayvision":
        if not isinstance(obj, torch.nn.Module):
            raise UserError(f"{path} holds a {type(obj).__name__}, not a torchxrayvision model")
        meta.update(torchxrayvision_meta(obj, path, source))
        state = {k: v for k, v in obj.state_dict().items() if k != "op_threshs"}   # kept in the JSON
    else:
        state, found = unwrap_checkpoint(obj, path)
        meta.update(layout_converted=found["layout"], source=source)
    meta = {k: v for k, v in {**meta, **known(meta.get("source"))}.items() if v is not None}
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}   # safetensors refuses shared storage
    with atomic_path(out) as tmp:
        save_file(state, str(tmp))
    meta["sha256"] = sha256_file(out)
    atomic_write_text(sidecar_path(out), json.dumps(meta, indent=2) + "\n")
    return out, meta


def cli(command: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrlib convert-weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="the weights file to convert")
    ap.add_argument("--from", dest="kind", required=True, choices=["torchxrayvision", "checkpoint"])
    ap.add_argument("--out", help="the safetensors file to write (default: FILE with suffix .safetensors)")
    ap.add_argument("--source", help=f"the weights' name, when the file does not say it (known: {', '.join(KNOWN_SOURCES)})")
    args = ap.parse_args(argv)
    out, meta = convert(args.file, args.kind, args.out, args.source)
    print(f"wrote {out} and {sidecar_path(out).name}: {meta.get('source') or 'source unknown (give --source)'}, "
          f"trained on {meta.get('trained_on', 'unknown')}; set weights: {out}")
    return 0
