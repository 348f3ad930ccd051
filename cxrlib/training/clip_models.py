"""CLIP-style models, read offline through the library made for them (open_clip), in the layouts people have:

  - an open_clip folder, as open_clip's `save_for_hf` (and `push_to_hf_hub`) writes it: `open_clip_config.json`
    (`model_cfg`, `preprocess_cfg`) and `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`; the Hub's
    open_clip repositories (BiomedCLIP's) have this layout. Read with `open_clip.create_model("local-dir:...")`;
  - a transformers CLIP or SigLIP folder (training.hf_clip; MedSigLIP's layout), read through transformers;
  - an OpenAI-CLIP state dict: the `clip` package's `model.state_dict()` saved by torch.save, as CheXzero publishes
    its checkpoints (`visual.conv1.weight`, `token_embedding.weight`, `text_projection`, ...). Read with
    `open_clip.load_openai_model`, which infers the shape from the tensors and uses QuickGELU as OpenAI did.

`arch: clip` puts the image tower in the classifier's body (training.model): a fixed 1x1 conv turns the run's
grey, normalised image into the three channels normalised as the model was trained (CLIP's per-channel mean and
std), and the head is an L2 normalisation, Dropout and Linear, so that the vectors a probe reads are the
model's own normalised image embeddings and a zero-shot head is one matrix (training.zero_shot). A checkpoint
rebuilds the tower from its recorded vision config alone; the text tower is only needed for the prompts.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from . import hf_clip
from .pickled import read_file

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
OPENAI_KEYS = ("visual.conv1.weight", "token_embedding.weight", "text_projection")
OPENAI_MEAN, OPENAI_STD = hf_clip.DEFAULT_INPUT["clip"]   # OpenAI's CLIP normalisation, which CheXzero kept


def open_clip_library():
    try:
        import open_clip  # lazy: open_clip, which only arch: clip needs
    except ImportError:
        raise UserError("arch: clip reads CLIP models with the open_clip package: `pip install open_clip_torch` in "
                        "the venv (make setup installs it with the dev extras)") from None
    return open_clip


def is_open_clip_folder(path) -> bool:
    return Path(path).is_dir() and (Path(path) / OPEN_CLIP_CONFIG).is_file()


def is_clip_folder(path) -> bool:
    """An open_clip folder, or a transformers CLIP/SigLIP folder (training.hf_clip)."""
    return is_open_clip_folder(path) or hf_clip.folder_type(path) is not None


def openai_state(path) -> dict | None:
    """The file's tensors when it is an OpenAI-CLIP state dict (bare, or under state_dict with DataParallel's
    `module.`), else None. Read by training.pickled, which runs no code the file names."""
    try:
        obj = read_file(Path(path))[0]
    except Exception:   # not a torch file at all: the other readers say why
        return None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj["state_dict"].items()}
    return obj if isinstance(obj, dict) and all(k in obj for k in OPENAI_KEYS) else None


def weight_file(folder: Path) -> Path:
    found = next((folder / n for n in OPEN_CLIP_WEIGHTS if (folder / n).is_file()), None)
    if found is None:
        raise UserError(f"weights: {folder} has {OPEN_CLIP_CONFIG} but none of {list(OPEN_CLIP_WEIGHTS)}; copy the "
                        "weights file from the model's repository beside it")
    return found


def folder_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
        config["model_cfg"]["vision_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"weights: {folder / OPEN_CLIP_CONFIG} is not an open_clip config with model_cfg.vision_cfg "
                        f"({type(e).__name__}: {e})") from None
    return config


_DESCRIBED: dict[tuple, dict] = {}   # (file, size, mtime) -> describe's answer: a CheXzero file is read once a process


def describe(path) -> dict:
    """What a CLIP file or folder is, as training.weights records it: layout, the file holding the tensors, the
    tower's shape (arch_kwargs), its input range and resolution."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        stamp = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if stamp not in _DESCRIBED:
            _DESCRIBED.clear()   # one file at a time is enough: a run checks, records and builds from one
            _DESCRIBED[stamp] = _describe(path)
        return json.loads(json.dumps(_DESCRIBED[stamp]))   # a copy: callers add to it
    return _describe(path)


def _describe(path: Path) -> dict:
    if hf_clip.folder_type(path):
        return hf_clip.describe(path)
    if is_open_clip_folder(path):
        config = folder_config(path)
        model_cfg, pre = config["model_cfg"], config.get("preprocess_cfg") or {}
        vision = dict(model_cfg["vision_cfg"])
        tower = {"embed_dim": int(model_cfg["embed_dim"]), "vision_cfg": vision,
                 "quick_gelu": bool(model_cfg.get("quick_gelu", False))}
        mean, std = pre.get("mean") or OPENAI_MEAN, pre.get("std") or OPENAI_STD
        layout, tensors = "open_clip", weight_file(path)
    else:
        state = openai_state(path)
        if state is None:
            raise UserError(f"weights: {path} is neither an open_clip folder ({OPEN_CLIP_CONFIG} beside the weights), "
                            f"a Hugging Face CLIP/SigLIP folder, nor an OpenAI-CLIP state dict (with "
                            f"{', '.join(OPENAI_KEYS)}); arch: clip reads those three")
        tower, mean, std, layout, tensors = openai_tower(state, path), OPENAI_MEAN, OPENAI_STD, "openai clip", path
    size = tower_size(tower)
    return {"layout": layout, "weight_file": str(tensors), "arch_kwargs": {**tower, "mean": list(mean), "std": list(std)},
            "input": {"mean": sum(mean) / len(mean), "std": sum(std) / len(std)}, "resolution": size}


def tower_size(arch_kwargs: dict) -> int:
    """The side of the images the tower takes: open_clip's vision_cfg or transformers' vision_config."""
    vision = arch_kwargs.get("vision_cfg") or arch_kwargs.get("vision_config") or {}
    size = vision.get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def openai_tower(state: dict, path) -> dict:
    """The image tower's shape in open_clip's terms, from an OpenAI state dict's tensors (as open_clip infers it)."""
    if "visual.proj" not in state:
        raise UserError(f"weights: {path} is an OpenAI CLIP with a ResNet image tower (RN50 and kin); cxrlib reads "
                        "the ViT ones (ViT-B/32, ViT-B/16, ViT-L/14: CheXzero's is ViT-B/32)")
    conv1 = state["visual.conv1.weight"]
    layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision = {"layers": layers, "width": int(conv1.shape[0]), "patch_size": int(conv1.shape[-1]),
              "image_size": int(conv1.shape[-1]) * grid}
    return {"embed_dim": int(state["visual.proj"].shape[1]), "vision_cfg": vision, "quick_gelu": True}


def load(path):
    """(the whole CLIP model in eval mode, float32 on the CPU, its tokenizer) through open_clip: for the text tower."""
    open_clip = open_clip_library()
    path = Path(path)
    if is_open_clip_folder(path):
        try:
            model = open_clip.create_model(f"local-dir:{path}", device="cpu", precision="fp32")
            tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        except (OSError, ValueError, RuntimeError) as e:   # e.g. a Hugging Face text model not in the local cache
            raise UserError(f"prompts: open_clip could not build {path}'s text tower offline ({type(e).__name__}: "
                            f"{str(e)[:300]}). A text tower that names a Hugging Face model (BiomedCLIP's PubMedBERT: "
                            "text_cfg.hf_model_name) needs that model in the Hugging Face cache "
                            "(HF_HOME); probes need only the image tower") from None
    else:
        model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
        tokenizer = open_clip.tokenize   # OpenAI's BPE, 77 tokens: what CheXzero used
    return model.eval(), tokenizer


def text_encoder(path):
    """texts -> the model's text embeddings (not normalised), through the library that reads its layout."""
    if hf_clip.folder_type(path):
        return hf_clip.text_encoder(path)
    model, tokenizer = load(path)
    return lambda texts: model.encode_text(tokenizer(texts))


def vision_tower(arch_kwargs: dict) -> nn.Module:
    """The image tower of the recorded shape, random: a checkpoint's state fills it."""
    open_clip = open_clip_library()
    # open_clip builds towers with this function for every CLIP it makes; it is the one place the vision config's
    # meaning (timm towers included) is spelt, so it is used rather than copied
    return open_clip.model._build_vision_tower(arch_kwargs["embed_dim"], arch_kwargs["vision_cfg"],
                                               arch_kwargs.get("quick_gelu", False))


def image_tower(info: dict) -> nn.Module:
    """The image tower alone, open_clip's own module for the recorded shape, filled with the file's `visual.*`
    tensors: no text tower is built (BiomedCLIP's names a Hugging Face text model that an offline machine lacks),
    and OpenAI's tensors go in as they are stored (open_clip's whole-model loader rounds them through float16)."""
    weight = Path(info["weight_file"])
    if weight.suffix == ".safetensors":
        from safetensors.torch import load_file  # lazy: safetensors, for this layout's file only

        state = load_file(str(weight))
    else:
        state = openai_state(weight) if info["layout"] == "openai clip" else read_file(weight)[0]
    tower = vision_tower(info["arch_kwargs"])
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    problems = tower.load_state_dict(visual, strict=False)
    if problems.missing_keys or problems.unexpected_keys:
        raise UserError(f"weights: {weight}'s image tower does not fit its own config: missing "
                        f"{problems.missing_keys[:8]}, unexpected {problems.unexpected_keys[:8]}")
    return tower.eval()


def grey_to_clip_input(mean: list, std: list) -> nn.Conv2d:
    """1x1 conv: the run's grey image normalised by the channels' average mean and std -> three channels each
    normalised by its own, exactly: (x s + m - m_c) / s_c."""
    m, s = sum(mean) / len(mean), sum(std) / len(std)
    conv = nn.Conv2d(1, len(mean), kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([s / c for c in std]).view(-1, 1, 1, 1))
        conv.bias.copy_(torch.tensor([(m - mu) / c for mu, c in zip(mean, std)]))
    conv.requires_grad_(False)
    return conv


class L2Normalise(nn.Module):
    """CLIP compares unit vectors: the image embedding divided by its length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x.float(), dim=-1)


def build_parts(weights, arch_kwargs: dict | None, image_size: int, num_classes: int, dropout: float):
    """(stem, body, head, arch_kwargs) of a CLIP classifier: from the weights (their image tower loaded), or from
    a checkpoint's arch_kwargs (random; the checkpoint fills it)."""
    if weights is not None and str(weights).lower() != "none":
        if hf_clip.folder_type(weights):
            body, info = hf_clip.tower(weights)
        else:
            info = describe(weights)
            body = image_tower(info)
        arch_kwargs = info["arch_kwargs"]
    else:
        body = hf_clip.ImageTower(arch_kwargs) if "hf_model_type" in arch_kwargs else vision_tower(arch_kwargs)
    size = tower_size(arch_kwargs)
    if size != image_size:
        raise UserError(f"image_size: {image_size}, but the CLIP image tower in {weights or 'the checkpoint'} takes "
                        f"{size} x {size} images (its position embeddings fix the grid): set image_size: {size}")
    stem = grey_to_clip_input(arch_kwargs["mean"], arch_kwargs["std"])
    head = nn.Sequential(L2Normalise(), nn.Dropout(dropout), nn.Linear(int(arch_kwargs["embed_dim"]), num_classes))
    return stem, body, head, arch_kwargs
