"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for one finding lies.

The map is ReLU(sum over channels of activation * channel weight), the weight being the
gradient of the finding's logit averaged over the feature map, upsampled to the input size
and scaled to [0, 1] per image (all zeros when no region raises the logit, common for
untrained networks). It shows a feature map's coarse grid, so it points at regions, not at
structures. Given the image size, GradCAM takes the deepest block whose map is at least MIN_CAM_SIDE
on a side (ResNet101's last block at 256 px: 8 x 8; at 64 px that map is 2 x 2, so layer2's 8 x 8),
and `note` says which. A timm CNN's blocks are those its feature_info names. On a ViT the map comes from the
tokens entering its last block (its norm1: the class token's output depends on them through attention, unlike
the last block's own patch outputs), reshaped to their patch grid.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def _has(module: nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in module.modules())


def find_target_layer(model: nn.Module) -> nn.Module:
    """The last child block holding a Conv2d, descending while the block still holds the classifier.

    cxrlib.training.model's Classifier(stem, body, head) gives `body` (ResNet layer4's output, or DenseNet's
    features after the final ReLU); a torchvision ResNet gives layer4; a plain Sequential CNN its
    last Conv2d.
    """
    module = model
    while True:
        blocks = [child for child in module.children() if _has(child, nn.Conv2d)]
        if not blocks:
            raise UserError(f"{type(module).__name__} holds no Conv2d layer for Grad-CAM; "
                            "pass target_layer= explicitly")
        module = blocks[-1]
        if isinstance(module, nn.Conv2d) or not _has(module, nn.Linear):
            return module


MIN_CAM_SIDE = 8   # a coarser map draws a few blocks over the image, not regions


def token_model(model: nn.Module) -> nn.Module | None:
    """The ViT (timm VisionTransformer) inside a Classifier, or None for a CNN."""
    body = getattr(model, "body", model)
    return body if all(hasattr(body, a) for a in ("patch_embed", "blocks", "num_prefix_tokens")) else None


def choose_target_layer(model: nn.Module, image_size: int, min_side: int = MIN_CAM_SIDE):
    """(layer, its name, its (h, w) map, whether it is the last block) at `image_size`: find_target_layer's
    block when its map is at least min_side on a side; else the deepest block inside it (in the order it
    runs) whose map is. One forward pass of a blank image finds the sizes."""
    body = getattr(model, "body", None)
    if hasattr(body, "feature_info"):   # a timm CNN names its blocks and their strides
        stages = [(f["module"], image_size // f["reduction"]) for f in body.feature_info]
        name, side = next(((n, s) for n, s in reversed(stages) if s >= min_side), stages[-1])
        return body.get_submodule(name), f"body.{name}", (side, side), name == stages[-1][0]
    last = find_target_layer(model)
    inner = [m for m in last.children() if _has(m, nn.Conv2d)]
    while len(inner) == 1 and not isinstance(inner[0], nn.Conv2d):   # a wrapper (DenseNet's features): its blocks
        inner = [m for m in inner[0].children() if _has(m, nn.Conv2d)]
    sizes, hooks = {}, []
    for module in [*inner, last]:
        hooks.append(module.register_forward_hook(
            lambda m, _i, out: sizes.__setitem__(m, tuple(out.shape[-2:]) if isinstance(out, torch.Tensor)
                                                 and out.ndim == 4 else None)))
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, first.in_channels, image_size, image_size, device=parameter.device,
                              dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}
    chosen = last
    if sizes.get(last) is not None and min(sizes[last]) < min_side:
        chosen = next((m for m in reversed(inner) if sizes.get(m) is not None and min(sizes[m]) >= min_side), last)
    return chosen, readable_name(model, names.get(chosen, type(chosen).__name__)), sizes.get(chosen), chosen is last


def readable_name(model: nn.Module, name: str) -> str:
    """'layer2 (body.5)' for a torchvision body's numbered block, whose own name the Sequential lost."""
    parts = name.split(".")
    known = getattr(model, "body_names", None)
    if known and len(parts) > 1 and parts[0] == "body" and parts[1].isdigit() and int(parts[1]) < len(known):
        return ".".join([known[int(parts[1])], *parts[2:]]) + f" ({name})"
    return name


class GradCAM:
    """cams = GradCAM(model)(images, finding) -> (B, H, W) float32 numpy array in [0, 1].

    Hooks live only during a call, parameters' .grad are never touched (gradients are taken with
    torch.autograd.grad), and the model runs in eval mode (restored afterwards) so batch norm
    uses its running statistics and each image's map depends on that image alone.
    Usable as a context manager for symmetry with other hook-based tools; it holds nothing open.
    """

    def __init__(self, model: nn.Module, target_layer: Optional[nn.Module] = None, image_size: Optional[int] = None):
        """image_size: choose the layer for maps of at least MIN_CAM_SIDE at that size (choose_target_layer);
        without it, the last convolutional block."""
        self.model = model
        self.note = "Grad-CAM on the given layer"
        self.tokens = None   # a ViT's (prefix tokens, grid side): its tokens are reshaped to a map
        vit = token_model(model) if target_layer is None else None
        if vit is not None:
            last = len(vit.blocks) - 1
            self.target_layer = vit.blocks[last].norm1
            side = vit.patch_embed.grid_size[0]
            self.tokens = (vit.num_prefix_tokens, side)
            self.note = (f"Grad-CAM on the ViT's patch tokens entering its last block (`body.blocks.{last}.norm1`), "
                         f"as their {side} x {side} grid")
        elif target_layer is not None:
            self.target_layer = target_layer
        elif image_size is None:
            self.target_layer = find_target_layer(model)
            self.note = "Grad-CAM on the last convolutional block"
        else:
            self.target_layer, name, grid, last = choose_target_layer(model, image_size)
            self.note = (f"Grad-CAM on `{name}`" + (f", its map {grid[0]} x {grid[1]} at {image_size} px" if grid else "")
                         + ("" if last else f" (the last block's map is under {MIN_CAM_SIDE} x {MIN_CAM_SIDE} at this "
                                             "size, so the deepest block with a finer map was taken)"))

    def __enter__(self) -> "GradCAM":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __call__(self, images: torch.Tensor, finding: Union[int, str, Sequence[int], torch.Tensor]) -> np.ndarray:
        """images: (B, C, H, W) normalised as for training; finding: an index or name, or one index per image."""
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
        index = self._indices(finding, len(images), images.device, getattr(self.model, "labels", None))
        captured = {}

        def keep(_module, _inputs, output):
            captured["activation"] = output

        hook = self.target_layer.register_forward_hook(keep)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                x = images.detach().clone().requires_grad_(True)  # so the graph exists even with frozen weights
                logits = self.model(x)
                activation = captured.get("activation")
                as_tokens = self.tokens is not None and isinstance(activation, torch.Tensor) and activation.ndim == 3
                if not as_tokens and (not isinstance(activation, torch.Tensor) or activation.ndim != 4):
                    raise UserError(f"Grad-CAM target layer {type(self.target_layer).__name__} gave no (B, C, h, w) "
                                    "feature map; pass target_layer= a convolutional block")
                if index.max() >= logits.shape[1]:
                    raise ValueError(f"finding index {int(index.max())} out of range for {logits.shape[1]} outputs")
                score = logits.gather(1, index[:, None]).sum()
                grads, = torch.autograd.grad(score, activation)
        finally:
            hook.remove()
            self.model.train(was_training)
        if as_tokens:
            activation, grads = self._as_map(activation), self._as_map(grads)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation).sum(dim=1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.amax(dim=(1, 2), keepdim=True)
        cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
        return cam.clamp(0, 1).float().cpu().numpy()

    def _as_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """A ViT's (B, prefix + h*w, C) tokens as a (B, C, h, w) map, the class (and register) tokens dropped."""
        prefix, side = self.tokens
        return tokens[:, prefix:].reshape(len(tokens), side, side, tokens.shape[-1]).permute(0, 3, 1, 2)

    @staticmethod
    def _indices(finding, batch: int, device, labels) -> torch.Tensor:
        """Output indices; a finding by name is looked up in the model's labels (load_trained gives them)."""
        if isinstance(finding, str):
            if finding not in (labels or ()):
                raise ValueError(f"unknown finding {finding!r}; the model predicts {labels}")
            finding = labels.index(finding)
        index = torch.as_tensor(finding, dtype=torch.long, device=device).reshape(-1)
        if index.numel() == 1:
            index = index.expand(batch)
        if index.numel() != batch or index.min() < 0:
            raise ValueError(f"finding must be one index or one per image ({batch}), all >= 0")
        return index


CAM_COLORMAP = "inferno"   # perceptually uniform: brightness grows with the value, unlike 'jet'


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.6, cmap: str = CAM_COLORMAP) -> np.ndarray:
    """An (H, W) uint8 grayscale image with the (H, W) map in [0, 1] on top: (H, W, 3) uint8.

    The colour's weight grows with the map, so where the map is 0 the radiograph shows unchanged (a blank
    map leaves the plain image, not a dark square).
    """
    from matplotlib import colormaps

    image = np.asarray(image)
    cam = np.asarray(cam, dtype=np.float64)
    if image.ndim != 2 or cam.shape != image.shape:
        raise ValueError(f"overlay needs an (H, W) image and a map of the same shape, got {image.shape} "
                         f"and {cam.shape}")
    cam = np.clip(cam, 0, 1)
    heat = colormaps[cmap](cam)[..., :3]
    gray = (image.astype(np.float64) / 255.0)[..., None]
    weight = alpha * cam[..., None]
    blend = (1 - weight) * gray + weight * heat
    return np.clip(np.rint(blend * 255), 0, 255).astype(np.uint8)
