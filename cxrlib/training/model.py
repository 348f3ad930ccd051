"""The classifier: a torchvision backbone with one of two heads.

head `flatten` is the original project's network, layer for layer:
    1x1 Conv2d(1 -> 3, no bias) + ReLU -> ResNet101 body (no avgpool, no fc) -> flatten 2048 x (S/32)^2 -> Linear(14)
Its Linear layer sees every spatial position separately, so it only works at the image size it was built
for (S divisible by 32).

head `avgpool` is the usual transfer-learning head: the grayscale image goes straight into the
pretrained stem (conv1's weights summed over the colour channels, which is exactly what the
pretrained conv computes on a gray image copied into R, G and B), then global average pooling,
Dropout and Linear(14). It works at any image size.

weights: `imagenet` (torchvision's current best, e.g. ResNet101_Weights.IMAGENET1K_V2), an explicit
torchvision weight name (`IMAGENET1K_V1` is what the original's `pretrained=True` loaded), `none`
(random init), or a path to a local file holding either
  - a torchvision backbone state_dict (keys conv1.weight, layer1.0..., any fc/classifier is ignored),
  - a full state_dict of this module's networks, or a checkpoint of ours ({"model": ...}, e.g. best.pt),
  - the original project's checkpoint ({"model": {layer1.*, resnet.*, fc.0.*}}).
"""
from __future__ import annotations

import os
import re
import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import UserError
from ..labels import FINDINGS
from ..params import image_size_problem
from ..runfiles import CHECKPOINTS

ARCHS = {
    # arch: (constructor, weights enum, channels of the last feature map)
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights, 2048),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights, 2048),
    "densenet121": (torchvision.models.densenet121, torchvision.models.DenseNet121_Weights, 1024),
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights, 512),   # quick checks
}
HEADS = ("flatten", "avgpool")


class Classifier(nn.Module):
    """stem -> body -> head; the parts are plain Sequentials so state_dict keys stay readable."""

    def __init__(self, stem: nn.Module, body: nn.Module, head: nn.Module):
        super().__init__()
        self.stem = stem
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


def build_model(params) -> Classifier:
    return build(params.arch, params.head, num_classes=len(FINDINGS), image_size=params.image_size,
                 weights=params.weights, dropout=params.dropout)


def build(arch: str = "resnet101", head: str = "flatten", num_classes: int = 14, image_size: int = 256,
          weights: str = "imagenet", dropout: float = 0.0) -> Classifier:
    if arch not in ARCHS:
        raise UserError(f"arch: {arch!r} is not supported; choose one of {list(ARCHS)}")
    if head not in HEADS:
        raise UserError(f"head: {head!r} is not supported; choose one of {list(HEADS)}")
    problem = image_size_problem(head, image_size)
    if problem:
        raise UserError(problem)
    constructor, _, channels = ARCHS[arch]
    backbone = constructor(weights=None)
    full_state = None
    if _is_local_file(weights):
        state = _read_state_dict(weights)
        if _is_backbone_state(state):
            _load_backbone(backbone, state, weights)
        else:
            full_state = state   # ours or the original's whole network: loaded once it is assembled
    elif weights.lower() != "none":
        backbone.load_state_dict(imagenet_state_dict(arch, weights))

    if head == "flatten":
        stem = nn.Sequential(nn.Conv2d(1, 3, kernel_size=1, bias=False), nn.ReLU())
        side = image_size // 32
        top = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * side * side, num_classes))
    else:
        stem = nn.Identity()
        if arch.startswith("resnet"):
            _make_grayscale(backbone, "conv1")
        else:
            _make_grayscale(backbone.features, "conv0")
        top = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                            nn.Linear(channels, num_classes))
    if arch.startswith("resnet"):
        body_layers = list(backbone.children())[:-2]   # drop avgpool and fc
    else:
        body_layers = [backbone.features, nn.ReLU()]   # torchvision applies this ReLU in forward()
    model = Classifier(stem, nn.Sequential(*body_layers), top)
    if full_state is not None:
        _load_full(model, full_state, weights)
    return model


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
            f"weights: {name} for {arch} are not in {path.parent} and could not be downloaded ({e}). "
            f"On a machine with internet run `python -c \"import torchvision; "
            f"torchvision.models.{arch}(weights='{entry.name}')\"`, then copy "
            f"~/.cache/torch/hub/checkpoints/{path.name} to {path} (the folder is $TORCH_HOME/hub/checkpoints/); "
            "or set weights: none to train from scratch") from None
    return _rename_legacy_densenet_keys(state)


def _rename_legacy_densenet_keys(state: dict) -> dict:
    # torchvision's DenseNet files use 'norm.1'-style names that modules can no longer have.
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                         r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    return {(m.group(1) + m.group(2) if (m := pattern.match(k)) else k): v for k, v in state.items()}


def _is_local_file(weights: str) -> bool:
    if weights.lower() in ("none", "imagenet") or weights.upper() in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
        return False
    if os.sep in weights or weights.endswith((".pt", ".pth", ".bin")) or Path(weights).exists():
        if not Path(weights).is_file():
            raise UserError(f"weights: {weights} does not exist; give the path of a state_dict file, "
                            "or imagenet, or none")
        return True
    return False


def _read_state_dict(path: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"weights: {path} is not a readable state_dict file ({e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]   # a checkpoint: ours or the original project's
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights: {path} holds no state_dict (a mapping of names to tensors)")
    return _rename_legacy_densenet_keys(_from_original_project(obj))


def _from_original_project(state: dict) -> dict:
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


def _is_backbone_state(state: dict) -> bool:
    return not any(k.startswith(("stem.", "body.", "head.")) for k in state)


def _load_backbone(backbone: nn.Module, state: dict, path: str) -> None:
    head_keys = ("fc.", "classifier.")
    state = {k: v for k, v in state.items() if not k.startswith(head_keys)}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"weights: {path} does not fit this arch ({str(e).splitlines()[0]}...)") from None
    missing = [k for k in missing if not k.startswith(head_keys)]
    if missing or unexpected:
        raise UserError(f"weights: {path} is not a backbone state_dict for this arch: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]} (of {len(missing)} and {len(unexpected)})")


def _load_full(model: nn.Module, state: dict, path: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise UserError(f"weights: {path} was saved for another arch, head or image_size: "
                        f"{' '.join(first[:3])[:400]}") from None
