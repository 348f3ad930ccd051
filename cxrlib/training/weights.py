"""Starting weights from local files, in the layouts people have; nothing is downloaded here.

`weights:` may name
  - a torchvision state_dict (`.pt`/`.pth`/`.bin`: conv1.weight, layer1.0..., features.conv0...),
  - a safetensors file (`.safetensors`), e.g. what `python -m cxrlib convert-weights` writes,
  - a timm checkpoint (a state_dict, or {"state_dict": ...} / {"model": ...} as timm's train.py saves it),
  - a cxrlib checkpoint ({"model": ...}, e.g. best.pt) or the original project's ({"model": {layer1.*, resnet.*}}),
  - a MoCo-CXR (CovidPrognosis) Lightning checkpoint ({"state_dict": {"model.encoder_q.*": ...}}),
  - a Hugging Face folder (config.json + model.safetensors) of a DINOv2 ViT such as RAD-DINO, read offline.
torchxrayvision releases pickled whole modules, which cannot be read without running their code:
`python -m cxrlib convert-weights --from torchxrayvision FILE` turns one into a safetensors file once.

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

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HEAD_KEY_PREFIXES = ("fc.", "classifier.", "head.")   # a classifier the run replaces by its own


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
    bad = meta.get("input")
    if bad is not None and not (isinstance(bad, dict) and {"mean", "std"} <= set(bad) and float(bad["std"]) > 0):
        raise UserError(f"{side}: 'input' should be {{\"mean\": m, \"std\": s}} on pixels in [0, 1], s > 0")
    return meta


@functools.lru_cache(maxsize=8)
def _hash_of(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_hash(path) -> str:
    """sha256 of a weights file, read once per process while the file stays the same (a RAD-DINO file is 350 MB,
    and training both describes and loads it)."""
    stat = Path(path).stat()
    return _hash_of(str(path), stat.st_size, stat.st_mtime_ns)


def describe_file(path, hashed: bool = True) -> dict:
    """What a weights file or Hugging Face folder is, without reading its tensors: file, sha256 (of the file
    holding the tensors; left out when not `hashed`, for checks that need no record), the sidecar's fields, and
    for a Hugging Face folder its name, shape and normalisation."""
    where = Path(path)
    info = {"file": str(where)}
    if where.is_dir():
        config, weight_file = _huggingface_files(where)
        info.update(layout="huggingface dinov2", **_huggingface_info(where, config))
    else:
        weight_file = where
    if hashed:
        info["sha256"] = file_hash(weight_file)
    return {**info, **read_sidecar(where)}


def read_weights(path: str) -> tuple[dict, dict]:
    """(state_dict in torchvision or timm names, describe_file's info with the layout found).

    info's arch_kwargs (from a Hugging Face config) fix the architecture's shape.
    """
    where = Path(path)
    info = describe_file(where)
    if where.is_dir():
        _, weight_file = _huggingface_files(where)
        raw = _read_safetensors(weight_file) if weight_file.suffix == ".safetensors" else _read_torch_file(weight_file)[0]
        state = dinov2_to_timm(raw)
    elif where.suffix == ".safetensors":
        state, info["layout"] = _read_safetensors(where), "safetensors"
    else:
        state, found = _read_torch_file(where)
        info["layout"] = found["layout"]
    return rename_legacy_densenet_keys(state), info


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file  # lazy: only safetensors files need it

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise UserError(f"weights: {path} is not a readable safetensors file ({e})") from None


def _read_torch_file(path: Path) -> tuple[dict, dict]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "torchxrayvision" in text or "weights_only" in text.lower() or "unpickl" in text.lower():
            raise UserError(
                f"weights: {path} holds pickled Python objects, not only tensors, and cxrlib does not run code from "
                "weight files. If it is a torchxrayvision release, convert it once with `python -m cxrlib "
                f"convert-weights --from torchxrayvision {path}`; if it is a checkpoint you trust, with "
                f"`python -m cxrlib convert-weights --from checkpoint {path}`; then set weights: to the "
                ".safetensors file it writes") from None
        raise UserError(f"weights: {path} is not a readable weights file ({e})") from None
    return unwrap_checkpoint(obj, path)


def unwrap_checkpoint(obj, path) -> tuple[dict, dict]:
    """The state_dict inside what torch.load returned, and the layout it was found in."""
    layout = "state_dict"
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, layout = obj["state_dict"], "lightning"   # Lightning, and timm's train.py checkpoints
        if any(k.startswith("model.encoder_q.") for k in obj):   # MoCo-CXR: the query encoder is the network
            obj, layout = {k[len("model.encoder_q."):]: v for k, v in obj.items()
                           if k.startswith("model.encoder_q.")}, "moco-cxr"
        elif obj and all(k.startswith("model.") for k in obj):
            obj = {k[len("model."):]: v for k, v in obj.items()}
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


# --------------------------------------------------------------------------- Hugging Face DINOv2 (RAD-DINO)
def _huggingface_files(folder: Path) -> tuple[dict, Path]:
    config_file = folder / "config.json"
    weight_file = next((folder / n for n in HF_WEIGHT_FILES if (folder / n).is_file()), None)
    if not config_file.is_file() or weight_file is None:
        raise UserError(f"weights: {folder} is a folder but not a Hugging Face model: it needs config.json and "
                        f"one of {list(HF_WEIGHT_FILES)}")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "dinov2":
        raise UserError(f"weights: {folder} holds a {config.get('model_type')!r} model; cxrlib reads DINOv2 "
                        "ViTs (RAD-DINO) from Hugging Face folders, other models from state_dict files")
    return config, weight_file


def _huggingface_info(folder: Path, config: dict) -> dict:
    """The ViT's shape from config.json, its name, and the normalisation of preprocessor_config.json."""
    hidden = int(config["hidden_size"])
    info = {"arch_kwargs": {"embed_dim": hidden, "depth": int(config["num_hidden_layers"]),
                            "num_heads": int(config["num_attention_heads"]), "patch_size": int(config["patch_size"]),
                            "mlp_ratio": float(config.get("mlp_ratio", 4))}}
    if config.get("_name_or_path"):
        info["source"] = config["_name_or_path"]
    processor = folder / "preprocessor_config.json"
    if processor.is_file():   # per channel of an RGB copy; a grey image gets their mean
        pre = json.loads(processor.read_text())
        mean, std = pre.get("image_mean"), pre.get("image_std")
        if mean and std:
            info["input"] = {"mean": sum(mean) / len(mean), "std": sum(std) / len(std)}
    return info


_HF_BLOCK = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
             "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
             "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj"}
_HF_QKV = {"q": ("attention.attention.query", "attention.q_proj"), "k": ("attention.attention.key", "attention.k_proj"),
           "v": ("attention.attention.value", "attention.v_proj")}


def dinov2_to_timm(raw: dict) -> dict:
    """transformers' Dinov2Model names (4.x and 5.x) to timm's VisionTransformer names; q, k, v joined."""
    raw = {k[len("dinov2."):] if k.startswith("dinov2.") else k: v for k, v in raw.items()}
    out = {"cls_token": raw["embeddings.cls_token"], "pos_embed": raw["embeddings.position_embeddings"],
           "patch_embed.proj.weight": raw["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": raw["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": raw["layernorm.weight"], "norm.bias": raw["layernorm.bias"]}
    depth = 1 + max(int(m.group(1)) for k in raw if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    for i in range(depth):
        src = f"encoder.layer.{i}."
        for theirs, ours in _HF_BLOCK.items():
            for end in ("weight", "bias") if not theirs.endswith("lambda1") else ("",):
                key = src + theirs + (f".{end}" if end else "")
                if key in raw:
                    out[f"blocks.{i}.{ours}" + (f".{end}" if end else "")] = raw[key]
        for end in ("weight", "bias"):
            parts = [next(raw[src + name + "." + end] for name in _HF_QKV[part] if src + name + "." + end in raw)
                     for part in "qkv"]
            out[f"blocks.{i}.attn.qkv.{end}"] = torch.cat(parts, dim=0)
    return out


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
            from timm.layers import resample_abs_pos_embed  # lazy: only ViTs have position embeddings

            prefix = getattr(module, "num_prefix_tokens", 1)
            side = round((target.shape[1] - prefix) ** 0.5)
            value = resample_abs_pos_embed(value, new_size=(side, side), num_prefix_tokens=prefix)
        adapted[key] = value
    return adapted


def load_backbone(module: nn.Module, state: dict, path: str) -> None:
    """Loads every backbone tensor of `state` into `module`, the classifier's own head left out; a file that does
    not fit lists its missing and unexpected keys by name, in one message."""
    own = module.state_dict()
    state = {k: v for k, v in adapt_to(module, state).items()
             if not (k.startswith(HEAD_KEY_PREFIXES) and k not in own)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        def listed(keys):
            return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "") if keys else "none"
        raise UserError(f"weights: {path} does not fit this arch. Missing ({len(missing)}): {listed(missing)}. "
                        f"Unexpected ({len(unexpected)}): {listed(unexpected)}. Other shape ({len(wrong)}): "
                        f"{listed(wrong)}. Check arch: (and that the file is a backbone of it)")
    module.load_state_dict(state)
