"""Hugging Face model folders, read offline: a DINOv2 ViT as transformers' `save_pretrained` writes it (RAD-DINO),
and a timm model as timm's `save_for_hf` writes it (the `timm/...` repositories on the Hub).

Both hold `config.json` and `model.safetensors` (or `pytorch_model.bin`). transformers' config names
`model_type: dinov2` and the ViT's shape; timm's names its `architecture`, the arguments it was built with
(`model_args`) and its `pretrained_cfg` (input size, mean, std). The tensors come out in timm's names, so one
`timm:<name>` backbone loads both.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import UserError
from .pickled import read_file, read_safetensors

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# timm's model_args that the run sets itself: its own head, one grey channel, its image size.
RUN_SETS = ("num_classes", "in_chans", "img_size", "pretrained_cfg", "pretrained_cfg_overlay")


def read_config(folder: Path) -> tuple[dict, Path, str]:
    """(config.json, the file holding the tensors, "huggingface dinov2" | "huggingface timm")."""
    config_file = folder / "config.json"
    weight_file = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if not config_file.is_file() or weight_file is None:
        raise UserError(f"weights: {folder} is a folder but not a Hugging Face model: it needs config.json and "
                        f"one of {list(WEIGHT_FILES)}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"weights: {config_file} is not readable JSON ({e})") from None
    if config.get("model_type") == "dinov2":
        return config, weight_file, "huggingface dinov2"
    if isinstance(config.get("architecture"), str):
        return config, weight_file, "huggingface timm"
    raise UserError(f"weights: {folder} holds a {config.get('model_type') or 'model of unknown type'!r}; cxrlib reads "
                    "DINOv2 ViTs (RAD-DINO, transformers' layout) and timm models (timm's save_for_hf layout) from "
                    "Hugging Face folders, other models from state_dict files")


def folder_info(folder: Path) -> dict:
    """layout, the backbone's shape (arch_kwargs), its name, and the input normalisation the folder records."""
    config, _, layout = read_config(folder)
    info = {"layout": layout}
    if layout == "huggingface dinov2":
        try:
            info["arch_kwargs"] = {"embed_dim": int(config["hidden_size"]), "depth": int(config["num_hidden_layers"]),
                                   "num_heads": int(config["num_attention_heads"]),
                                   "patch_size": int(config["patch_size"]), "mlp_ratio": float(config.get("mlp_ratio", 4))}
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"weights: {folder / 'config.json'} lacks a DINOv2 config's {e} (hidden_size, "
                            "num_hidden_layers, num_attention_heads, patch_size as numbers); is it the model's own "
                            "config.json?") from None
        if config.get("_name_or_path"):
            info["source"] = config["_name_or_path"]
        processor = folder / "preprocessor_config.json"
        pre = json.loads(processor.read_text()) if processor.is_file() else {}
        mean, std = pre.get("image_mean"), pre.get("image_std")
    else:
        info["timm_architecture"] = config["architecture"]
        info["arch_kwargs"] = {k: v for k, v in (config.get("model_args") or {}).items() if k not in RUN_SETS}
        pretrained = config.get("pretrained_cfg") or {}
        mean, std = pretrained.get("mean"), pretrained.get("std")
        if pretrained.get("input_size"):
            info["resolution"] = int(pretrained["input_size"][-1])
    if mean and std:   # per channel of an RGB copy; a grey image gets their mean
        info["input"] = {"mean": sum(mean) / len(mean), "std": sum(std) / len(std)}
    return info


def folder_state(folder: Path) -> dict:
    """The folder's tensors in timm's names."""
    _, weight_file, layout = read_config(folder)
    raw = read_safetensors(weight_file) if weight_file.suffix == ".safetensors" else read_file(weight_file)[0]
    if layout != "huggingface dinov2":
        return dict(raw)
    try:
        return dinov2_to_timm(raw)
    except (KeyError, ValueError, StopIteration) as e:   # (ValueError: no encoder.layer at all)
        raise UserError(f"weights: {weight_file} does not hold a DINOv2's tensors in transformers' names (no {e}); "
                        "is it the folder's own model file?") from None


_BLOCK = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
          "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
          "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj"}
_QKV = {"q": ("attention.attention.query", "attention.q_proj"), "k": ("attention.attention.key", "attention.k_proj"),
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
        for theirs, ours in _BLOCK.items():
            for end in ("weight", "bias") if not theirs.endswith("lambda1") else ("",):
                key = src + theirs + (f".{end}" if end else "")
                if key in raw:
                    out[f"blocks.{i}.{ours}" + (f".{end}" if end else "")] = raw[key]
        for end in ("weight", "bias"):
            parts = [next(raw[src + name + "." + end] for name in _QKV[part] if src + name + "." + end in raw)
                     for part in "qkv"]
            out[f"blocks.{i}.attn.qkv.{end}"] = torch.cat(parts, dim=0)
    return out
