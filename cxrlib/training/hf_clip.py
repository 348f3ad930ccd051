"""Hugging Face CLIP and SigLIP folders, as transformers' `save_pretrained` writes them (MedSigLIP's layout on the
Hub): `config.json` (`model_type: clip | siglip`), `model.safetensors` (or `pytorch_model.bin`),
`preprocessor_config.json` (the input's mean and std) and the tokenizer's files. Read offline through transformers.

The image tower is transformers' own vision-only model of the folder's vision config (CLIPVisionModelWithProjection,
SiglipVisionModel), filled by transformers' own from_pretrained from the whole model's file, so that a checkpoint
rebuilds it from the recorded config alone (on a transformers version that names the tower's tensors alike). Its
embedding is the pooled output (projected, for CLIP): what `get_image_features` gives. The text tower is read
only for zero-shot prompts (training.zero_shot).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

HF_TYPES = ("clip", "siglip")
# (mean, std) per channel when preprocessor_config.json is silent: OpenAI CLIP's, and SigLIP's [-1, 1]
DEFAULT_INPUT = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                 "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def folder_type(path) -> str | None:
    """'clip' or 'siglip' for a transformers CLIP/SigLIP folder, else None."""
    config = Path(path) / "config.json"
    if not (Path(path).is_dir() and config.is_file()):
        return None
    try:
        kind = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in HF_TYPES else None


def transformers_library():
    try:
        import transformers  # lazy: transformers, which only Hugging Face CLIP/SigLIP folders need
    except ImportError:
        raise UserError("weights: a Hugging Face CLIP/SigLIP folder is read with the transformers package: "
                        "`pip install transformers` in the venv (make setup installs it with the dev extras)") from None
    return transformers


def describe(path) -> dict:
    path = Path(path)
    kind = folder_type(path)
    config = json.loads((path / "config.json").read_text())
    vision = dict(config.get("vision_config") or {})
    if not vision:
        raise UserError(f"weights: {path / 'config.json'} has no vision_config; is it the model's own config.json?")
    processor = path / "preprocessor_config.json"
    pre = json.loads(processor.read_text()) if processor.is_file() else {}
    mean = pre.get("image_mean") or DEFAULT_INPUT[kind][0]
    std = pre.get("image_std") or DEFAULT_INPUT[kind][1]
    weight = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if weight is None:
        raise UserError(f"weights: {path} has config.json but none of {list(WEIGHT_FILES)}")
    # CLIP projects its pooled output to projection_dim; SigLIP's embedding is the pooled output itself
    width = int(vision.get("hidden_size", 768))
    tower = {"hf_model_type": kind, "vision_config": vision, "mean": list(mean), "std": list(std),
             "embed_dim": int(config.get("projection_dim") or width) if kind == "clip" else width}
    return {"layout": f"huggingface {kind}", "weight_file": str(weight), "arch_kwargs": tower,
            "input": {"mean": sum(mean) / len(mean), "std": sum(std) / len(std)},
            "resolution": int(vision.get("image_size", 224)), **({"source": config["_name_or_path"]}
                                                                 if config.get("_name_or_path") else {})}


class ImageTower(nn.Module):
    """transformers' vision-only model; forward: pixel values -> the image embedding."""

    def __init__(self, arch_kwargs: dict, folder=None):
        super().__init__()
        transformers = transformers_library()
        kind, vision = arch_kwargs["hf_model_type"], dict(arch_kwargs["vision_config"])
        if kind == "clip":
            cls, config = transformers.CLIPVisionModelWithProjection, transformers.CLIPVisionConfig(
                **{**vision, "projection_dim": arch_kwargs["embed_dim"]})
        else:
            cls, config = transformers.SiglipVisionModel, transformers.SiglipVisionConfig(**vision)
        if folder is None:
            self.model = cls(config)
        else:   # transformers maps a whole model's tensor names onto its vision-only class, in each of its versions
            before = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()   # its report lists the text tower's tensors, left out here
            try:
                self.model, loading = cls.from_pretrained(str(folder), config=config, local_files_only=True,
                                                          output_loading_info=True)
            finally:
                transformers.logging.set_verbosity(before)
            wrong = [k for k in ("missing_keys", "mismatched_keys") if loading.get(k)]
            if wrong:
                raise UserError(f"weights: {folder} does not fill its own image tower: "
                                + "; ".join(f"{k.replace('_', ' ')} {list(loading[k])[:8]}" for k in wrong))
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        return out.image_embeds if self.kind == "clip" else out.pooler_output


def tower(path) -> tuple[ImageTower, dict]:
    """The folder's image tower, its tensors loaded (all of them: a missing or extra one is refused)."""
    info = describe(path)
    return ImageTower(info["arch_kwargs"], folder=path).eval(), info


def text_encoder(path):
    """texts -> the text tower's embeddings (not normalised), with the folder's own tokenizer."""
    transformers = transformers_library()
    model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"prompts: {path} holds no tokenizer ({e}); zero-shot needs the model's tokenizer files "
                        "beside its weights (copy them from its repository)") from None
    siglip = folder_type(path) == "siglip"

    def encode(texts: list[str]) -> torch.Tensor:
        # SigLIP was trained on text padded to its full length; CLIP on text up to its end token
        tokens = tokenizer(texts, padding="max_length" if siglip else True, truncation=True, return_tensors="pt")
        out = model.get_text_features(**{k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")
                                         and not (siglip and k == "attention_mask")})
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    return encode
