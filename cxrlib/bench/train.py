"""`python -m cxrlib bench train`: ResNet101 training images/s, the original recipe against ours."""
from __future__ import annotations

import argparse
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
    args = parser.parse_args([a for a in argv or [] if a != "--"])
    from ..training.model import build  # lazy: keeps torchvision out of this module's import

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
        torch.manual_seed(0)
        # The original's fp32 also means no TF32 on the GPU; ours allows it, as fit does.
        set_tf32(recipe["amp"] is not None)
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = build(args.arch, args.head, len(FINDINGS), args.size, "none").to(device)
        if recipe["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        net = torch.compile(model) if recipe["compile"] else model
        net.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        x = torch.randn(batch, 1, args.size, args.size, device=device)
        if recipe["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        y = (torch.rand(batch, len(FINDINGS), device=device) < 0.15).float()
        mask = torch.ones_like(y)
        for i in range(warmup + steps):
            if i == warmup:
                if gpu:
                    torch.cuda.synchronize()
                started = time.perf_counter()
            train_step(net, x, y, mask, optimizer, scaler, amp=recipe["amp"])
        if gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        result[f"{name}_images_per_s"] = round(batch * steps / seconds, 2)
        if gpu:
            result[f"{name}_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        result[f"{name}_recipe"] = (f"{'bf16 autocast' if recipe['amp'] else 'fp32'}, "
                                    f"{'channels_last' if recipe['channels_last'] else 'NCHW'}"
                                    f"{', compiled' if recipe['compile'] else ''}")
        del model, net, optimizer
    result["speedup"] = round(result["ours_images_per_s"] / result["original_images_per_s"], 3)
    if args.compile:
        result["compiled_speedup"] = round(result["ours_compiled_images_per_s"] / result["original_images_per_s"], 3)
    return result
