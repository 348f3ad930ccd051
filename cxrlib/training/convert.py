"""`python -m cxrlib convert-weights --from torchxrayvision|checkpoint FILE`: a weights file that holds more than
tensors, once, into a plain safetensors file and the JSON beside it.

torchxrayvision releases its DenseNets as pickled whole modules. This command reads one through training.pickled,
which runs none of the file's code and needs no torchxrayvision package, takes the module's tensors (what its
state_dict() returns, op_threshs kept in the JSON) and what it says of itself: its weights name, labels,
op_threshs. `--from checkpoint` does the same for any other checkpoint (a Lightning or timm checkpoint with its
hyper-parameters; `weights:` reads those directly too).

The JSON (`<out>.json`) records the source, the SHA-256 of the original file, the label list and op_threshs
a torchxrayvision model carried, its input range as cxrlib's mean/std (torchxrayvision scales pixels to
[-1024, 1024]: mean 0.5, std 1/2048 on pixels in [0, 1]), its resolution, and what it was trained on
(training.contamination's table, by source).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import UserError
from ..fsutil import atomic_path, atomic_write_text, sha256_file
from .contamination import KNOWN_SOURCES, known
from .pickled import attribute, is_pickled_module, module_state_dict, read_file
from .weights import sidecar_path, source_defaults, unwrap_checkpoint


def torchxrayvision_meta(module, path: Path, source: str | None) -> dict:
    """What a pickled torchxrayvision model says of itself: its weights name, labels, op_threshs and resolution."""
    name = source or attribute(module, "weights")
    if not name:
        raise UserError(f"{path} does not name its weights (no .weights attribute): give --source, e.g. "
                        "torchxrayvision:densenet121-res224-all")
    name = name if name.startswith("torchxrayvision:") else f"torchxrayvision:{name}"
    labels = attribute(module, "targets") or attribute(module, "pathologies")
    threshs = attribute(module, "op_threshs")
    return {"source": name, "labels": list(labels) if labels is not None else None,
            "op_threshs": threshs.tolist() if isinstance(threshs, torch.Tensor) else None, **source_defaults(name)}


def convert(path, kind: str, out=None, source: str | None = None) -> tuple[Path, dict]:
    """Writes <out> (safetensors, tensors only) and <out>.json; returns both's paths' first and the JSON."""
    from safetensors.torch import save_file  # lazy: only this command writes safetensors

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    out = Path(out) if out else path.with_suffix(".safetensors")
    obj = read_file(path)[0]
    meta = {"converted_from": path.name, "original_sha256": sha256_file(path)}
    if kind == "torchxrayvision":
        if not is_pickled_module(obj):
            raise UserError(f"{path} holds a {type(obj).__name__}, not a pickled torchxrayvision model; a state_dict "
                            "(torchxrayvision's ResNet50) is read directly: set weights: to the file")
        meta.update(torchxrayvision_meta(obj, path, source))
        state = {k: v for k, v in module_state_dict(obj).items() if k != "op_threshs"}   # kept in the JSON
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
