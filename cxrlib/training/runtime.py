"""Where and how training runs: the device, determinism, TF32, autocast, and torchrun/DDP plumbing.

CPU runs are deterministic (torch.use_deterministic_algorithms). On a GPU, cuDNN autotunes unless
`deterministic: true`, and TF32 is on unless `amp: off` ("fp32 as the original" means IEEE fp32).
Under torchrun every process joins a process group, one process or many (see train.fit).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


def resolve_device(params, local_rank: int = 0) -> torch.device:
    """cpu, gpu or auto -> a torch.device; a GPU request without CUDA fails before any work."""
    if params.device == "gpu" and not torch.cuda.is_available():
        raise UserError("device: gpu but torch.cuda.is_available() is False: this torch build "
                        f"({torch.__version__}) sees no CUDA GPU. Use DEVICE=cpu (device: cpu), or install a "
                        "CUDA build of torch (https://pytorch.org/get-started/locally/) on a machine with a GPU.")
    if params.device == "cpu" or (params.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if params.gpus > torch.cuda.device_count():
        raise UserError(f"gpus: {params.gpus} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                        f"set GPUS={torch.cuda.device_count()} or fewer")
    return torch.device("cuda", local_rank)


def configure(params, device: torch.device) -> None:
    """Deterministic CPU runs; on the GPU, cuDNN autotuning unless deterministic is asked for."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        return
    torch.backends.cudnn.benchmark = not params.deterministic
    # TF32 on Ampere and newer, except where fp32 is asked for (amp: off, "fp32 as the original").
    set_tf32(params.amp != "off")
    if params.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA backward kernels (adaptive pooling) have no deterministic version.
        torch.use_deterministic_algorithms(True, warn_only=True)


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls and convolutions. torch >= 2.9 has fp32_precision and refuses a mix of it
    with the older allow_tf32 flags, so use the newer one where it exists."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        precision = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def amp_dtype(params, device: torch.device):
    """The autocast dtype (None: fp32). On a CPU only with cpu_amp, and then bf16 (CPUs have no fast fp16)."""
    if device.type != "cuda":
        return torch.bfloat16 if getattr(params, "cpu_amp", False) and params.amp != "off" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[params.amp]


def inference_amp(params, device: torch.device):
    """The autocast dtype of forward passes that score (validation, test predictions, predict): the GPU's amp;
    on a CPU always fp32, so that cpu_amp speeds training only and a CPU run's predictions agree with each
    other and with its fp32 export."""
    return amp_dtype(params, device) if device.type == "cuda" else None


def use_channels_last(params, device: torch.device) -> bool:
    """channels_last memory format: on the GPU, and on a CPU with cpu_amp (oneDNN's fast path for bf16)."""
    return bool(params.channels_last and (device.type == "cuda" or getattr(params, "cpu_amp", False)))


def step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch, step, 1]).generate_state(1, np.uint64)[0] >> 1)


def distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def under_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets these for every worker, one process or many."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def broadcast_buffers(model: nn.Module) -> None:
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_reduce(values: list, device) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def torchrun_command(processes: int, run_dir) -> list[str]:
    """The command launch() runs for gpus > 1 (tools/gpu-check runs it with one process, on NCCL)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "cxrlib.training.train", "--run-dir", str(run_dir)]
