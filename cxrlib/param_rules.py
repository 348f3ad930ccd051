"""The rules a parameter's value must keep, each as (field, holds, the message that names the fix); params.validate
raises the first broken one. Here, apart from the schema, so that the model builder can ask the same questions
(arch_problem, image_size_problem) without the schema.
"""
from __future__ import annotations

# MIMIC-CXR's ViewPosition values (the metadata table): a misspelt view would select no image at all.
VIEW_POSITIONS = ("AP", "PA", "LATERAL", "LL", "AP AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD", "LAO", "RAO", "LPO",
                  "XTABLE LATERAL", "SWIMMERS")


def unknown_views(views) -> list:
    return [v for v in views if v not in VIEW_POSITIONS]


TORCHVISION_ARCHS = ("resnet101", "resnet50", "densenet121", "resnet18")
TIMM_PREFIX = "timm:"
CLIP_ARCH = "clip"   # a CLIP-style model's image tower (open_clip, Hugging Face, OpenAI layouts; training/clip_models.py)


def arch_problem(arch: str, head: str, freeze: str = "none", weights: str = "imagenet") -> str | None:
    """Why arch/head/freeze/weights cannot go together, as a message naming the parameter; None when they can."""
    timm = arch.startswith(TIMM_PREFIX)
    if arch == CLIP_ARCH:
        if str(weights).lower() in ("imagenet", "imagenet1k_v1", "imagenet1k_v2"):
            return (f"arch: clip reads its image tower from the weights: give weights: an open_clip folder "
                    f"(open_clip_config.json), a Hugging Face CLIP/SigLIP folder or an OpenAI-CLIP state dict "
                    f"(CheXzero's .pt), not {weights}")
        if head == "flatten":
            return "arch: clip pools with its own image tower: set head: avgpool"
    elif not timm and arch not in TORCHVISION_ARCHS:
        return (f"arch: {arch!r} is not supported; choose one of {list(TORCHVISION_ARCHS)}, timm:<model name> or "
                f"{CLIP_ARCH}")
    if timm and not arch[len(TIMM_PREFIX):]:
        return "arch: timm: needs a model name, e.g. timm:convnext_tiny"
    if timm and str(weights).lower() in ("imagenet", "imagenet1k_v1", "imagenet1k_v2"):
        return (f"weights: {weights} names torchvision's files; {arch} starts from a local file (timm, safetensors, "
                "Hugging Face; docs/pretrained-weights.md) or weights: none")
    if timm and head == "flatten":
        return (f"head: flatten is the original project's ResNet head (a Linear over every position of a CNN's map); "
                f"{arch} pools with its own head: set head: avgpool")
    if freeze == "backbone" and head == "flatten":
        return "freeze: backbone trains only the head, but the flatten head's 1x1 stem starts random: set head: avgpool"
    if freeze == "backbone" and str(weights).lower() == "none":
        return "freeze: backbone with weights: none would train a linear probe of random features; give weights"
    return None


def image_size_problem(head: str, image_size: int) -> str | None:
    """The one image-size rule: the flatten head's Linear needs a whole (image_size/32)^2 feature map."""
    if head != "flatten" or image_size % 32 == 0:
        return None
    lower = image_size // 32 * 32
    nearest = " or ".join(str(s) for s in (lower, lower + 32) if s >= 32)
    return (f"image_size: {image_size} does not work with head: flatten, whose Linear layer needs a whole "
            f"(image_size/32)^2 feature map; use image_size {nearest}, or head: avgpool")



def value_checks(p) -> list[tuple[str, bool, str]]:
    """Every rule on the resolved parameters `p`, in the order they are checked."""
    return [
        ("image_size", p.image_size >= 32, "image_size must be at least 32"),
        ("val_fraction", 0.0 <= p.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
        ("val_fraction", p.split_mode == "seed" or p.val_fraction == 0, f"val_fraction must be 0 with split_mode: "
         f"{p.split_mode}, whose split has its own validate set (set val_fraction: 0, or split_mode: seed)"),
        ("epochs", p.epochs >= 1, "epochs must be at least 1"),
        ("batch_size", p.batch_size >= 1, "batch_size must be at least 1"),
        ("gpus", p.gpus >= 1, "gpus must be at least 1"),
        ("num_workers", p.num_workers >= 0, "num_workers must be 0 (load in the training process) or more DataLoader workers"),
        ("cache_workers", p.cache_workers >= 0, "cache_workers must be 0 (all cores) or a number of processes"),
        ("eval_batch_size", p.eval_batch_size >= 1, "eval_batch_size must be at least 1"),
        ("bootstrap", p.bootstrap >= 0, "bootstrap must be 0 (no intervals) or a number of resamples"),
        ("topk", p.topk >= 0, "topk must be 0 or more"),
        ("min_group_patients", p.min_group_patients >= 1, "min_group_patients must be at least 1 (30 is usual)"),
        ("min_positives", p.min_positives >= 1, "min_positives must be at least 1 (10 is the default; see metrics.py)"),
        ("lr", p.lr > 0, "lr must be positive"),
        ("checkpoint_minutes", p.checkpoint_minutes >= 0, "checkpoint_minutes must be 0 (epoch ends only) or positive"),
        ("ci_level", 0.0 < p.ci_level < 1.0, "ci_level must be in (0, 1)"),
        ("std", p.std is None or p.std > 0, "std must be positive (or null to use the cache's statistics)"),
        ("views", bool(p.views), "views must list at least one ViewPosition, e.g. [AP]"),
        ("views", not unknown_views(p.views), f"views: {unknown_views(p.views)} are not ViewPosition values of "
                                              f"MIMIC-CXR ({', '.join(VIEW_POSITIONS)})"),
        ("name", p.name and "/" not in p.name and p.name not in (".", ".."), "name must be a plain folder name"),
        ("image_size", image_size_problem(p.head, p.image_size) is None, image_size_problem(p.head, p.image_size)),
        ("arch", arch_problem(p.arch, p.head, p.freeze, p.weights) is None, arch_problem(p.arch, p.head, p.freeze,
                                                                                        p.weights)),
        ("weights", p.arch != CLIP_ARCH or str(p.weights).lower() != "none", "arch: clip reads its image tower from "
         "the weights: give weights: an open_clip folder (open_clip_config.json), a Hugging Face CLIP/SigLIP folder "
         "or an OpenAI-CLIP state dict (CheXzero's .pt)"),
        ("train_fraction", 0 < p.train_fraction <= 1, "train_fraction must be in (0, 1] (0.01: 1% of the training "
         "patients)"),
        ("train_from", p.train_from == "images" or p.freeze == "backbone", f"train_from: {p.train_from} keeps the "
         "backbone as loaded: set freeze: backbone"),
        ("train_from", p.train_from != "embeddings" or not p.augment, "train_from: embeddings sees each image once, "
         "as it is: set augment: false (or train_from: images to probe on augmented images)"),
        ("train_from", p.train_from == "images" or p.gpus == 1, f"train_from: {p.train_from} runs in one process: "
         "set gpus: 1"),
        ("train_from", p.train_from != "zero_shot" or p.arch == CLIP_ARCH, "train_from: zero_shot needs a CLIP "
         "model's text tower: set arch: clip and weights: to its file or folder"),
        ("epochs", p.train_from != "zero_shot" or p.epochs == 1, "train_from: zero_shot trains nothing: set epochs: 1 "
         "(its one pass scores the prompts on the validation split)"),
        ("backbone_lr", p.backbone_lr >= 0, "backbone_lr must be 0 or more (a multiple of lr; 1: the same lr)"),
        ("pos_weight", not (p.pos_weight and p.loss != "bce"), f"pos_weight weighs BCE's positives; with loss: {p.loss} "
         "set pos_weight: false (focal_alpha weighs focal loss's; ASL focuses on the negatives itself)"),
        ("focal_alpha", p.focal_alpha == -1 or 0 <= p.focal_alpha <= 1, "focal_alpha must be in [0, 1], or -1 (none)"),
        ("focal_gamma", min(p.focal_gamma, p.asl_gamma_neg, p.asl_gamma_pos) >= 0,
         "focal_gamma, asl_gamma_neg and asl_gamma_pos must be 0 or more (0: no focusing)"),
        ("asl_clip", 0 <= p.asl_clip < 1, "asl_clip must be in [0, 1) (0.05 in the ASL paper; 0: no margin)"),
    ]
