"""The classifier: a torchvision or timm backbone with one of two heads.

head `flatten` is the original project's network, layer for layer:
    1x1 Conv2d(1 -> 3, no bias) + ReLU -> ResNet101 body (no avgpool, no fc) -> flatten 2048 x (S/32)^2 -> Linear(14)
Its Linear layer sees every spatial position separately, so it only works at the image size it was built
for (S divisible by 32).

head `avgpool` is the usual transfer-learning head: the grayscale image goes straight into the
pretrained stem (conv1's weights summed over the colour channels, which is exactly what the
pretrained conv computes on a gray image copied into R, G and B), then global average pooling,
Dropout and Linear(14). It works at any image size. `timm:<name>` archs (ConvNeXt, EfficientNet, ViTs...)
are built by timm with one input channel and pooled by their own head (a ViT's class token), then Dropout and
Linear(14); a ViT is built for the run's image_size, a multiple of its patch size.

weights: `imagenet` (torchvision's current best, e.g. ResNet101_Weights.IMAGENET1K_V2), an explicit
torchvision weight name (`IMAGENET1K_V1` is what the original's `pretrained=True` loaded), `none`
(random init), or a local file or folder in any layout training.weights reads (torchvision, safetensors,
timm, ours, the original project's, MoCo-CXR, a Hugging Face DINOv2 folder). A file's first conv is summed into
the grey-level stem when it takes three channels and loaded as is when it takes one. `freeze: backbone`
(Classifier.freeze_backbone) trains the head alone: a linear probe, BatchNorm statistics frozen too.
"""
from __future__ import annotations

import contextlib
import os
import urllib.error
from pathlib import Path

import pandas as pd
import torch
import torchvision
from torch import nn

from .. import labelset
from ..errors import UserError
from ..param_rules import CLIP_ARCH, TIMM_PREFIX, arch_problem, image_size_problem
from ..runfiles import CHECKPOINTS
from . import clip_models
from .contamination import describe, manifest_overlap
from .weights import describe_file, file_hash, key_report, load_backbone, read_weights, rename_legacy_densenet_keys

ARCHS = {
    # arch: (constructor, weights enum, channels of the last feature map)
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights, 2048),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights, 2048),
    "densenet121": (torchvision.models.densenet121, torchvision.models.DenseNet121_Weights, 1024),
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights, 512),   # quick checks
}
HEADS = ("flatten", "avgpool")   # param_rules.TORCHVISION_ARCHS names ARCHS' keys without importing torchvision


class Classifier(nn.Module):
    """stem -> body -> head; the parts are plain Sequentials so state_dict keys stay readable."""

    def __init__(self, stem: nn.Module, body: nn.Module, head: nn.Module):
        super().__init__()
        self.stem = stem
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))

    def freeze_backbone(self) -> None:
        """A linear probe: stem and body keep their weights and their BatchNorm statistics; only the head trains."""
        for part in (self.stem, self.body):
            part.requires_grad_(False)
        self.frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if getattr(self, "frozen", False):
            self.stem.eval()
            self.body.eval()
        return self


def build_model(params, config: dict | None = None, labels=None) -> Classifier:
    """The run's network from its params, one output per label (`labels`: the cohort's; else its label set's),
    starting from params.weights; with a checkpoint's model_config (evaluation) its shape only, the weights then
    coming from the checkpoint."""
    if config is not None:
        return build(config["arch"], config["head"], len(config["labels"]), config["image_size"], "none",
                     config["dropout"], arch_kwargs=config.get("arch_kwargs"))
    labels = list(labels or labelset.load(params.label_set).labels)
    model = build(params.arch, params.head, num_classes=len(labels), image_size=params.image_size,
                  weights=params.weights, dropout=params.dropout)
    if params.freeze == "backbone":
        model.freeze_backbone()
    model.labels = labels   # its outputs, in order (load_trained sets them from the checkpoint)
    return model


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def build(arch: str = "resnet101", head: str = "flatten", num_classes: int = 14, image_size: int = 256,
          weights: str = "imagenet", dropout: float = 0.0, arch_kwargs: dict | None = None,
          check_only: bool = False) -> Classifier:
    """The network, its backbone loaded from `weights`. check_only: built on the meta device (nothing allocated)
    and the weights' keys and shapes compared with it, nothing loaded: what make run checks before notebook 01."""
    problem = arch_problem(arch, head, "none", weights) or image_size_problem(head, image_size)
    if problem:
        raise UserError(problem)
    if arch == CLIP_ARCH:
        return clip_classifier(weights, arch_kwargs, image_size, num_classes, dropout, check_only)
    state, where = None, str(weights)
    if is_local_file(weights):
        state, info = read_weights(weights)
        _check_timm_folder(arch, weights, info)
        arch_kwargs = {**info.get("arch_kwargs", {}), **(arch_kwargs or {})}
    elif weights.lower() != "none":   # (params refuses torchvision's names for timm: archs)
        state, where = imagenet_state_dict(arch, weights), str(weights_file(arch, weights))
    in_chans = 3 if head == "flatten" else 1   # flatten: the original's 1x1 conv makes three channels
    with torch.device("meta") if check_only else contextlib.nullcontext():
        if is_timm(arch):
            backbone, channels = timm_backbone(arch[len(TIMM_PREFIX):], in_chans, image_size, arch_kwargs or {})
        else:
            constructor, _, channels = ARCHS[arch]
            backbone = constructor(weights=None)
            owner, name = (backbone, "conv1") if arch.startswith("resnet") else (backbone.features, "conv0")
            if in_chans == 1:
                _make_grayscale(owner, name)
            for head_name in ("fc", "classifier"):   # the run's own head replaces it: its keys are not loaded
                if hasattr(backbone, head_name):
                    setattr(backbone, head_name, nn.Identity())
        whole = state is not None and not is_backbone_state(state)   # ours or the original's whole network
        if state is not None and not whole:
            load_backbone(backbone, state, where, check_only)
        if head == "flatten":
            stem = nn.Sequential(nn.Conv2d(1, 3, kernel_size=1, bias=False), nn.ReLU())
            side = image_size // 32
            top = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * side * side, num_classes))
        elif is_timm(arch):   # the timm model pools with its own head (num_classes=0): features (B, C)
            stem, top = nn.Identity(), nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        else:
            stem = nn.Identity()
            top = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                nn.Linear(channels, num_classes))
        names = None
        if is_timm(arch):
            body = backbone
        elif arch.startswith("resnet"):
            body = nn.Sequential(*list(backbone.children())[:-2])   # drop avgpool and fc
            names = [n for n, _ in backbone.named_children()][:-2]
        else:
            body = nn.Sequential(backbone.features, nn.ReLU())   # torchvision applies this ReLU in forward()
            names = ["features", "relu"]
        model = Classifier(stem, body, top)
        # torchvision's names of the body's blocks (body.5 is layer2), for what a report calls them; the
        # state_dict keeps its numbered keys, which every checkpoint written so far holds
        model.body_names = names
    if whole:
        _load_full(model, state, weights, check_only)
    model.arch_kwargs = dict(arch_kwargs or {})   # what model_config keeps to rebuild this shape
    return model


def clip_classifier(weights: str, arch_kwargs: dict | None, image_size: int, num_classes: int, dropout: float,
                    check_only: bool = False) -> Classifier | None:
    """A CLIP image tower (training.clip_models) with its grey-to-RGB stem and a normalised linear head; from the
    weights, or (weights: none) of a checkpoint's recorded shape. check_only: the file read and its image size
    checked, nothing built."""
    given = None if str(weights).lower() == "none" else weights
    if check_only:
        size = clip_models.describe(weights)["resolution"]
        if size != image_size:
            raise UserError(f"image_size: {image_size}, but the CLIP image tower in {weights} takes {size} x {size} "
                            f"images (its position embeddings fix the grid): set image_size: {size}")
        return None
    stem, body, top, arch_kwargs = clip_models.build_parts(given, arch_kwargs, image_size, num_classes, dropout)
    model = Classifier(stem, body, top)
    model.body_names, model.arch_kwargs = None, arch_kwargs
    return model


def check_model(params) -> None:
    """Before any work (notebook 01 caches at image_size): the network built on the meta device (which allocates
    nothing) and the weights' keys and shapes compared with it, torchvision's ImageNet files included (which must
    then be in the torch hub cache, or downloadable); then the weights' JSON and the manifest's columns."""
    # built first: describing the weights then reuses what loading them found (the file is read once)
    build(params.arch, params.head, len(labelset.load(params.label_set).labels), params.image_size, params.weights,
          params.dropout, check_only=True)
    describe(starting_info(params.arch, params.weights, hashed=False))
    if params.weights_manifest:
        manifest_overlap(params.weights_manifest, pd.DataFrame({"dicom_id": [], "subject_id": []}))


def _check_timm_folder(arch: str, weights: str, info: dict) -> None:
    name = info.get("timm_architecture")
    if name and arch != f"{TIMM_PREFIX}{name}":
        raise UserError(f"weights: {weights} is timm's {name} (its config.json's architecture); set arch: "
                        f"{TIMM_PREFIX}{name} (and head: avgpool), not arch: {arch}")


def timm_backbone(name: str, in_chans: int, image_size: int, arch_kwargs: dict) -> tuple[nn.Module, int]:
    """timm.create_model(name, in_chans, num_classes=0, pretrained=False): its features pooled by its own head."""
    try:
        import timm  # lazy: only timm: archs need it
    except ImportError:
        raise UserError("arch: timm:... needs the timm package: `pip install timm` in the venv (make setup does)") from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise UserError(f"arch: timm:{name} is not a timm model; e.g. {close or ['convnext_tiny', 'efficientnet_b0']}")
    kwargs = dict(pretrained=False, num_classes=0, in_chans=in_chans, **arch_kwargs)
    try:   # ViTs are built for the run's image size (their position embeddings fix the grid)
        model = timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError:
        try:
            model = timm.create_model(name, **kwargs)
        except TypeError as e:   # a Hugging Face config's ViT shape given to another family
            raise UserError(f"arch: timm:{name} cannot take the shape {arch_kwargs} that the weights' config sets "
                            f"({e}); a DINOv2 folder needs arch: timm:vit_base_patch14_dinov2 (or its size)") from None
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and image_size % patch[0]:
        raise UserError(f"image_size: {image_size} is not a multiple of {name}'s patch size {patch[0]}; "
                        f"use e.g. {image_size // patch[0] * patch[0]} or {(image_size // patch[0] + 1) * patch[0]}")
    return model, int(model.num_features)


def _make_grayscale(owner: nn.Module, name: str) -> None:
    """Replace a 3-channel input conv by a 1-channel one computing the same thing on gray images."""
    conv: nn.Conv2d = getattr(owner, name)
    gray = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    setattr(owner, name, gray)


# --------------------------------------------------------------------------- weights
def weights_entry(arch: str, name: str):
    """The torchvision weights enum member for `imagenet` (the arch's DEFAULT) or an explicit name."""
    enum = ARCHS[arch][1]
    if name.lower() == "imagenet":
        return enum.DEFAULT
    try:
        return enum[name.upper()]
    except KeyError:
        choices = ["imagenet", "none", *enum.__members__, "a path to a state_dict file"]
        raise UserError(f"weights: {name!r} is neither a file nor a known weight set for {arch}; "
                        f"choose one of {choices}") from None


def weights_file(arch: str, name: str = "imagenet") -> Path:
    """Where torch.hub keeps (or would download) the file: $TORCH_HOME/hub/checkpoints/<file>."""
    entry = weights_entry(arch, name)
    return Path(torch.hub.get_dir()) / CHECKPOINTS / os.path.basename(entry.url)


def imagenet_state_dict(arch: str, name: str = "imagenet") -> dict:
    """The pretrained backbone's state_dict from the torch.hub cache, downloading it when missing."""
    entry = weights_entry(arch, name)
    path = weights_file(arch, name)
    was_cached = path.is_file()
    try:
        # torch.hub looks in its cache first and only downloads when the file is absent.
        state = entry.get_state_dict(progress=False, check_hash=True)
    except Exception as e:
        if was_cached:
            raise UserError(f"weights: {path} cannot be read ({type(e).__name__}: {e}); it may be a partial "
                            "download: delete it and try again") from None
        if not isinstance(e, (urllib.error.URLError, OSError, ConnectionError)):
            raise
        raise UserError(
            f"weights: {name} for {arch}{'' if name == entry.name else f' ({entry.name})'} are not in {path.parent} "
            f"and could not be downloaded ({e}). "
            f"Put the file there with `curl -L --create-dirs -o {path} {entry.url}` (on a machine that reaches "
            f"download.pytorch.org; elsewhere run it there and copy the file to {path}: the folder is "
            "$TORCH_HOME/hub/checkpoints/, ~/.cache/torch/hub/checkpoints/ by default); "
            "or set weights: none to train from scratch") from None
    return rename_legacy_densenet_keys(state)


def is_local_file(weights: str) -> bool:
    """Whether `weights` names a file or folder (rather than imagenet, none or a torchvision weight name)."""
    if weights.lower() in ("none", "imagenet") or weights.upper() in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
        return False
    if "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(weights).exists():
        if not Path(weights).exists():
            raise UserError(f"weights: {weights} does not exist; give the path of a weights file (or a Hugging Face "
                            "folder), or imagenet, or none")
        return True
    return False


def is_backbone_state(state: dict) -> bool:
    return not any(k.startswith("body.") for k in state)   # a whole Classifier (ours, the original's) has body.*


def starting_info(arch: str, weights: str, hashed: bool = True) -> dict:
    """What a run starts from: a file's description (training.weights), torchvision's ImageNet weights, or nothing.
    hashed=False leaves out the file's sha256 (checks before a run need no record)."""
    if weights.lower() == "none":
        return {"source": "random initialisation (weights: none)", "trained_on": "nothing", "mimic": "none"}
    if is_local_file(weights):
        info = describe_file(weights, hashed)
        source_names_this_arch(arch, weights, info.get("source"))
        return info
    entry = weights_entry(arch, weights)
    path = weights_file(arch, weights)
    return {"source": f"torchvision:{arch}.{entry.name}", "file": str(path), "layout": "torchvision model zoo",
            "trained_on": "ImageNet-1k",
            "mimic": "none", "sha256": file_hash(path) if hashed and path.is_file() else None}


# a name's token -> its family (a DINOv2 is a ViT); names without one (microsoft/rad-dino) say nothing
ARCH_FAMILIES = {"densenet": "densenet", "resnet": "resnet", "efficientnet": "efficientnet", "convnext": "convnext",
                 "vit": "vit", "dinov2": "vit", "deit": "vit", "swin": "swin", "regnet": "regnet", "mobilenet": "mobilenet"}


def source_names_this_arch(arch: str, weights: str, source: str | None) -> None:
    """A weights JSON whose `source` names another architecture family than arch (a DenseNet source on a ResNet
    file) describes another file, or the run asks for another network: refused, naming both."""
    named = [family for token, family in ARCH_FAMILIES.items() if token in str(source or "").lower()]
    family = next((family for token, family in ARCH_FAMILIES.items() if token in arch.lower()), None)
    if named and family and family not in named:
        raise UserError(f"weights: the JSON beside {weights} says its source is {source!r}, a {named[0]}, but arch is "
                        f"{arch}: fix the JSON's source, or set arch to the network the weights are for")


def _load_full(model: nn.Module, state: dict, path: str, check_only: bool = False) -> None:
    problems = key_report(model.state_dict(), state)
    if problems:
        raise UserError(f"weights: {path} was saved for another arch, head or image_size. {problems}")
    if not check_only:
        model.load_state_dict(state)
