"""Starting weights from local files, in the layouts people have; nothing is downloaded here.

`weights:` may name
  - a torchvision state_dict (`.pt`/`.pth`/`.bin`), the model zoo's pre-0.4.1 files included (no BatchNorm
    `num_batches_tracked`, DenseNet's legacy `norm.1` names, the pre-1.6 file format),
  - a safetensors file (`.safetensors`), e.g. what `python -m cxrlib convert-weights` writes,
  - a timm checkpoint (a state_dict, or what timm's CheckpointSaver writes: its EMA weights when it kept them),
  - a cxrlib checkpoint ({"model": ...}, e.g. best.pt) or the original project's ({"model": {layer1.*, resnet.*}}),
  - a PyTorch Lightning checkpoint, MoCo-CXR's ({"state_dict": {"model.encoder_q.*": ...}}) included, as
    Lightning 1.0 writes it (callbacks keyed by class), read without pytorch_lightning,
  - torchxrayvision's ResNet50 release (a plain state_dict: recognised by its one-channel conv1 and 18 outputs),
  - a Hugging Face folder: a DINOv2 ViT such as RAD-DINO, or a timm model (training.hf_folders).
Files are read by training.pickled, which runs none of the code a file names. torchxrayvision's DenseNets are
pickled whole modules: `python -m cxrlib convert-weights --from torchxrayvision FILE` turns one into a
safetensors file and the JSON that records its input range, once.

A JSON beside the file (`<file>.json`, or `cxrlib.json` in a Hugging Face folder) says what the weights are:
{"source": ..., "trained_on": ..., "mimic": <rule of training.contamination>, "input": {"mean", "std"},
 "labels": [...], "resolution": ..., "original_sha256": ...}. Its input mean/std (on pixels scaled to
[0, 1]) replace the run's mean/std: the range a family was trained with is read, not guessed.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..fsutil import sha256_file
from . import clip_models
from .hf_folders import folder_info, folder_state, read_config
from .pickled import is_pickled_module, read_file, read_safetensors

HEAD_KEY_PREFIXES = ("fc.", "classifier.", "head.")   # a classifier the run replaces by its own
OWN_FIELDS = ("file", "sha256", "layout", "recognised_by")   # a sidecar JSON cannot say these of the file
XRV_INPUT = {"mean": 0.5, "std": 1 / 2048}   # torchxrayvision: pixel/255 * 2048 - 1024
XRV_RESNET50 = "torchxrayvision:resnet50-res512-all"
XRV_RESNET50_LABELS = ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
                       "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
                       "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]


def sidecar_path(path) -> Path:
    """The JSON that describes a weights file: <file>.json, or cxrlib.json inside a Hugging Face folder."""
    path = Path(path)
    return path / "cxrlib.json" if path.is_dir() else path.with_name(path.name + ".json")


def read_sidecar(path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{side}: not readable JSON ({e}); fix or delete it") from None
    if not isinstance(meta, dict):
        raise UserError(f"{side}: should hold a JSON object (source, trained_on, mimic, input, ...)")
    given = meta.get("input")
    if given is not None and not _is_normalisation(given):
        raise UserError(f"{side}: 'input' should be {{\"mean\": m, \"std\": s}} (numbers, on pixels in [0, 1], "
                        f"s > 0), not {given!r}")
    return meta


def _is_normalisation(given) -> bool:
    try:
        return isinstance(given, dict) and {"mean", "std"} <= set(given) and float(given["std"]) > 0 \
            and float(given["mean"]) == float(given["mean"])
    except (TypeError, ValueError):
        return False


def source_defaults(source: str | None) -> dict:
    """What a source's name fixes: torchxrayvision's releases all take pixels in [-1024, 1024] at resNNN."""
    if not str(source or "").startswith("torchxrayvision:"):
        return {}
    resolution = re.search(r"res(\d+)", source)
    return {"input": XRV_INPUT, **({"resolution": int(resolution.group(1))} if resolution else {})}


@functools.lru_cache(maxsize=8)
def _hash_of(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_hash(path) -> str:
    """sha256 of a weights file, read once per process while the file stays the same (a RAD-DINO file is 350 MB,
    and training both describes and loads it)."""
    stat = Path(path).stat()
    return _hash_of(str(path), stat.st_size, stat.st_mtime_ns)


_FOUND: dict[tuple, dict] = {}   # (file, size, mtime) -> what read_weights found there, this process


def _stamp(path: Path) -> tuple:
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def describe_file(path, hashed: bool = True) -> dict:
    """What a weights file or Hugging Face folder is: file, layout, sha256 (of the file holding the tensors; left
    out when not `hashed`, for checks that need no record), what the layout or the keys say (a folder's shape and
    normalisation, torchxrayvision's ResNet50), then the sidecar's fields, which win."""
    where = Path(path)
    if clip_models.is_clip_folder(where):
        found = clip_models.describe(where)
    elif where.is_dir():
        found, weight_file = folder_info(where), read_config(where)[1]
    else:   # a file loaded already (the network is built first) is described without reading it again
        found, weight_file = _FOUND.get(_stamp(where)) or read_weights(where)[1], where
        if found.get("layout") == "openai clip":
            found = clip_models.describe(where)
    if "weight_file" in found:   # a CLIP's: the file that holds its tensors
        found = dict(found)
        weight_file = Path(found.pop("weight_file"))
    side = read_sidecar(where)
    if side.get("sha256") and side["sha256"] != file_hash(weight_file):
        raise UserError(f"{sidecar_path(where)} describes another file (sha256 {str(side['sha256'])[:12]}…, but "
                        f"{weight_file.name} is {file_hash(weight_file)[:12]}…): a conversion interrupted, or the file "
                        "replaced. Convert again (python -m cxrlib convert-weights), or delete the JSON")
    info = {"file": str(where), **found, **source_defaults(side.get("source") or found.get("source"))}
    info.update({k: v for k, v in side.items() if k not in OWN_FIELDS})   # what the file is, the file says
    if hashed:
        info["sha256"] = file_hash(weight_file)
    return info


def read_weights(path: str) -> tuple[dict, dict]:
    """(state_dict in torchvision or timm names, what the file's layout and keys say: layout, and for a
    recognised release its source, input range, resolution and labels). info's arch_kwargs (from a Hugging Face
    config) fix the architecture's shape."""
    where = Path(path)
    if where.is_dir():
        return folder_state(where), folder_info(where)
    if where.suffix == ".safetensors":
        state, info = read_safetensors(where), {"layout": "safetensors"}
    else:
        state, info = _read_torch_file(where)
    state = rename_legacy_densenet_keys(state)
    info = {**info, **recognise(state)}
    if len(_FOUND) > 8:   # a few files a process; never the tensors, only what was found
        _FOUND.clear()
    _FOUND[_stamp(where)] = info
    return state, info


def recognise(state: dict) -> dict:
    """A release known by its keys alone: torchxrayvision's ResNet50 is a plain state_dict of a torchvision
    ResNet50 with a one-channel conv1 and 18 outputs; without this its [-1024, 1024] input would go unnoticed."""
    if all(k in state for k in clip_models.OPENAI_KEYS):   # CheXzero's checkpoints: arch: clip reads them
        return {"layout": "openai clip"}
    conv1, fc = state.get("conv1.weight"), state.get("fc.weight")
    if conv1 is not None and fc is not None and tuple(conv1.shape) == (64, 1, 7, 7) \
            and tuple(fc.shape) == (18, 2048) and "layer4.2.conv3.weight" in state and "layer3.6.conv1.weight" not in state:
        return {"source": XRV_RESNET50, "labels": XRV_RESNET50_LABELS, "recognised_by": "keys",
                **source_defaults(XRV_RESNET50)}
    return {}


def _read_torch_file(path: Path) -> tuple[dict, dict]:
    obj, stood_in = read_file(path)
    if is_pickled_module(obj):
        raise UserError(
            f"weights: {path} is a whole pickled module ({obj.qualified_name}), not a state_dict: cxrlib cannot tell "
            f"its input range from its tensors. If it is a torchxrayvision release, convert it once with `python -m "
            f"cxrlib convert-weights --from torchxrayvision {path}` (it records the range; torchxrayvision need not "
            "be installed), then set weights: to the .safetensors file it writes")
    return unwrap_checkpoint(obj, path)


def unwrap_checkpoint(obj, path) -> tuple[dict, dict]:
    """The state_dict inside what torch.load returned, and the layout it was found in."""
    layout = "state_dict"
    if isinstance(obj, dict) and "pytorch-lightning_version" in obj and isinstance(obj.get("state_dict"), dict):
        obj, layout = obj["state_dict"], f"lightning {obj['pytorch-lightning_version']}"
        if any(k.startswith("model.encoder_q.") for k in obj):   # MoCo-CXR: the query encoder is the network
            obj, layout = {k[len("model.encoder_q."):]: v for k, v in obj.items()
                           if k.startswith("model.encoder_q.")}, f"moco-cxr ({layout})"
        elif obj and all(k.startswith("model.") for k in obj):
            obj = {k[len("model."):]: v for k, v in obj.items()}
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        # timm's CheckpointSaver ({"epoch", "arch", "state_dict", "optimizer", "args", ...}); like timm's
        # load_checkpoint, its EMA weights when it kept them
        ema = next((k for k in ("state_dict_ema", "model_ema") if isinstance(obj.get(k), dict)), None)
        timm_like = bool({"arch", "args", "optimizer", "version"} & set(obj))
        layout = ("timm checkpoint" if timm_like else "checkpoint state_dict") + (" (EMA weights)" if ema else "")
        obj = obj[ema or "state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj, layout = obj["model"], "checkpoint"   # ours, the original project's, or timm's
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights: {path} holds no state_dict (a mapping of names to tensors)")
    obj = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}   # DataParallel
    state = from_original_project(obj)
    return state, {"layout": "original project" if state is not obj else layout}


def from_original_project(state: dict) -> dict:
    """The original project's names (layer1 = stem, resnet = body, fc.0 = Linear) to ours."""
    if not any(k.startswith("resnet.") for k in state):
        return state
    renamed = {}
    for k, v in state.items():
        if k.startswith("layer1."):
            renamed["stem." + k[len("layer1."):]] = v
        elif k.startswith("resnet."):
            renamed["body." + k[len("resnet."):]] = v
        elif k.startswith("fc.0."):
            renamed["head.2." + k[len("fc.0."):]] = v
        else:
            renamed[k] = v
    return renamed


def rename_legacy_densenet_keys(state: dict) -> dict:
    # torchvision's DenseNet files use 'norm.1'-style names that modules can no longer have.
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                         r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    return {(m.group(1) + m.group(2) if (m := pattern.match(k)) else k): v for k, v in state.items()}


# --------------------------------------------------------------------------- loading into a backbone
def adapt_to(module: nn.Module, state: dict) -> dict:
    """The state made to fit `module` where only the image's channels or grid differ:
    a 3-channel first conv summed into a grey-level one (what it computes on a grey image copied into R, G, B),
    a grey-level one spread over three, and a ViT's position embedding resampled to the module's grid."""
    own = module.state_dict()
    adapted = {}
    for key, value in state.items():
        target = own.get(key)
        if target is not None and value.ndim == 4 and value.shape[0] == target.shape[0] \
                and value.shape[2:] == target.shape[2:] and value.shape[1] != target.shape[1]:
            if target.shape[1] == 1:
                value = value.sum(dim=1, keepdim=True)
            elif value.shape[1] == 1:
                value = value.repeat(1, target.shape[1], 1, 1) / target.shape[1]
        elif target is not None and key.endswith("pos_embed") and value.shape != target.shape:
            from timm.layers import resample_abs_pos_embed  # lazy: timm, for ViTs' position embeddings only

            prefix = getattr(module, "num_prefix_tokens", 1)
            side = round((target.shape[1] - prefix) ** 0.5)
            value = resample_abs_pos_embed(value, new_size=(side, side), num_prefix_tokens=prefix)
        adapted[key] = value
    return adapted


def load_backbone(module: nn.Module, state: dict, path: str, check_only: bool = False) -> None:
    """Loads every backbone tensor of `state` into `module`, the classifier's own head left out; a file that does
    not fit lists its missing, unexpected and mis-shaped keys by name, in one message. A BatchNorm counter
    (`num_batches_tracked`) the file lacks is 0, as BatchNorm itself fills it for files saved before PyTorch
    0.4.1 (torchvision's ImageNet files). check_only: the comparison alone, e.g. against a module on the meta
    device, before any work."""
    own = module.state_dict()
    state = {k: v for k, v in adapt_to(module, state).items()
             if not (k.startswith(HEAD_KEY_PREFIXES) and k not in own)}
    for key in own:
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    problems = key_report(own, state)
    if problems:
        raise UserError(f"weights: {path} does not fit this arch. {problems}. Check arch: (and that the file is a "
                        "backbone of it)")
    if not check_only:
        module.load_state_dict(state)


def key_report(own: dict, state: dict) -> str | None:
    """The keys of `state` that do not fit the module whose state_dict is `own`: missing, unexpected and
    mis-shaped, each listed by name (the first 8); None when it fits."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    # an integer or bool tensor where the module has floats would be cast silently by load_state_dict
    kind = [f"{k} {state[k].dtype} vs {own[k].dtype}" for k in own
            if k in state and state[k].is_floating_point() != own[k].is_floating_point()]
    if not (missing or unexpected or wrong or kind):
        return None

    def listed(keys):
        return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "") if keys else "none"
    return (f"Missing ({len(missing)}): {listed(missing)}. Unexpected ({len(unexpected)}): {listed(unexpected)}. "
            f"Other shape ({len(wrong)}): {listed(wrong)}" + (f". Other type ({len(kind)}): {listed(kind)}" if kind else ""))
