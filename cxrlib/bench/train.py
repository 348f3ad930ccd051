"""`python -m cxrlib bench train`: ResNet101 training images/s, the original recipe against ours; with --also,
other archs (timm:convnext_tiny, a ViT...) timed with our recipe in the same run, as ratios to the first arch."""
from __future__ import annotations

import argparse
import re
import time

import torch

from ..labels import FINDINGS
from ..training.runtime import set_tf32
from ..training.steps import train_step


def bench_train(argv=None) -> dict:
    """Training images/s of ResNet101 (flatten head): the original recipe vs ours, in one run.

    original: fp32, NCHW. ours: bf16 autocast + channels_last (+ torch.compile with --compile).
    Synthetic batches, the real train_step (masked loss, Adam, one optimizer step); warmup excluded.
    """
    parser = argparse.ArgumentParser(prog="python -m cxrlib bench train", description=bench_train.__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=0, help="default: 64 on a GPU, 8 on CPU")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 20 on a GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (default: 5 on a GPU, 1 on CPU)")
    parser.add_argument("--arch", default="resnet101")
    parser.add_argument("--head", default="flatten", choices=["flatten", "avgpool"])
    parser.add_argument("--compile", action="store_true", help="also time our recipe under torch.compile")
    parser.add_argument("--also", action="append", default=[], metavar="ARCH",
                        help="another arch timed with our recipe and the avgpool head (repeatable), e.g. timm:convnext_tiny; "
                             "a ViT runs at the nearest multiple of its patch size")
    args = parser.parse_args([a for a in argv or [] if a != "--"])
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    batch = args.batch or (64 if gpu else 8)
    steps = args.steps or (20 if gpu else 3)
    warmup = args.warmup or (5 if gpu else 1)
    if gpu:
        torch.backends.cudnn.benchmark = True
    recipes = {"original": dict(amp=None, channels_last=False, compile=False),
               "ours": dict(amp=torch.bfloat16, channels_last=True, compile=False)}
    if args.compile:
        recipes["ours_compiled"] = dict(amp=torch.bfloat16, channels_last=True, compile=True)
    result = {"bench": "train", "arch": args.arch, "head": args.head, "image_size": args.size, "batch": batch,
              "steps": steps, "warmup": warmup, "device": str(device)}
    for name, recipe in recipes.items():
        timed = time_recipe(args.arch, args.head, args.size, batch, steps, warmup, device, **recipe)
        result[f"{name}_images_per_s"] = timed["images_per_s"]
        if gpu:
            result[f"{name}_peak_gpu_mb"] = timed["peak_gpu_mb"]
        result[f"{name}_recipe"] = timed["recipe"]
    result["speedup"] = round(result["ours_images_per_s"] / result["original_images_per_s"], 3)
    if args.compile:
        result["compiled_speedup"] = round(result["ours_compiled_images_per_s"] / result["original_images_per_s"], 3)
    if args.also:
        result["archs"] = {}
    for arch in args.also:
        timed = time_recipe(arch, "avgpool", args.size, batch, steps, warmup, device, amp=torch.bfloat16,
                            channels_last=True, compile=False)
        timed["vs_first_arch"] = round(timed["images_per_s"] / result["ours_images_per_s"], 3)
        result["archs"][arch] = timed
    return result


def time_recipe(arch: str, head: str, size: int, batch: int, steps: int, warmup: int, device, amp, channels_last: bool,
                compile: bool) -> dict:
    """Training images/s of one arch under one recipe: synthetic batches through the real train_step."""
    from ..training.model import build  # lazy: keeps torchvision out of this module's import

    gpu = device.type == "cuda"
    patch = int(m.group(1)) if (m := re.search(r"patch(\d+)", arch)) else 1   # timm names a ViT's patch size
    size = max(patch, round(size / patch) * patch)
    torch.manual_seed(0)
    set_tf32(amp is not None)   # the original's fp32 also means no TF32 on the GPU; ours allows it, as fit does
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build(arch, head, len(FINDINGS), size, "none").to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    net.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    x = torch.randn(batch, 1, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, len(FINDINGS), device=device) < 0.15).float()
    mask = torch.ones_like(y)
    for i in range(warmup + steps):
        if i == warmup:
            if gpu:
                torch.cuda.synchronize()
            started = time.perf_counter()
        train_step(net, x, y, mask, optimizer, scaler, amp=amp)
    if gpu:
        torch.cuda.synchronize()
    timed = {"images_per_s": round(batch * steps / (time.perf_counter() - started), 2), "image_size": size,
             "parameters_m": round(sum(w.numel() for w in model.parameters()) / 1e6, 1),
             "recipe": f"{'bf16 autocast' if amp else 'fp32'}, {'channels_last' if channels_last else 'NCHW'}"
                       f"{', compiled' if compile else ''}"}
    if gpu:
        timed["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return timed
