"""Random-weight encoders in the layouts people download, for the probe and zero-shot demo (no weights can be
downloaded here, and a probe needs a file): `python -m cxrlib demo-encoders --out data/demo-encoders
[--image-size 64]` writes, each by the library that writes that layout in the wild,

  resnet18-random.pth     a torchvision ResNet18 state_dict (torch.save of torchvision's model)
  open_clip-vit-random/   an open_clip folder, as open_clip's save_for_hf writes it (BiomedCLIP's layout)
  openai-clip-vit-random.pt  an OpenAI-CLIP state dict (CheXzero's layout): open_clip's QuickGELU CLIP, whose
                          tensors carry OpenAI's names

and beside each the JSON that says what it is (random weights, which saw nothing). Their figures mean nothing:
they show the machinery (embed once, probe at 1/10/100% of the patients, zero-shot), not an encoder.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ..fsutil import atomic_write_json

RECORD = {"source": "random weights (cxrlib demo-encoders)", "trained_on": "nothing", "mimic": "none"}


def clip_config(image_size: int) -> dict:
    patch = 16 if image_size % 16 == 0 else 8
    return {"embed_dim": 64, "quick_gelu": True,
            "vision_cfg": {"image_size": image_size, "layers": 2, "width": 128, "patch_size": patch, "head_width": 64},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}}


def write(out, image_size: int = 64, seed: int = 0) -> dict:
    """The three files (or folders) under `out`; {layout: path}."""
    import open_clip  # lazy: open_clip and torch, for this command only
    import torch
    import torchvision
    from open_clip.push_to_hf_hub import save_for_hf

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    resnet = out / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    atomic_write_json(resnet.with_name(resnet.name + ".json"), RECORD)

    config = clip_config(image_size)
    with tempfile.TemporaryDirectory() as configs:
        (Path(configs) / "cxrlib-demo-ViT.json").write_text(json.dumps(config))
        open_clip.add_model_config(configs)
        model = open_clip.create_model("cxrlib-demo-ViT")

    class DefaultTokenizer:   # open_clip's own BPE: nothing to save (save_for_hf would fetch Hugging Face's copy)
        def save_pretrained(self, dest):
            pass

    folder = out / "open_clip-vit-random"
    save_for_hf(model, DefaultTokenizer(), config, folder, safe_serialization=True)
    atomic_write_json(folder / "cxrlib.json", RECORD)
    torch.manual_seed(seed + 1)
    openai = out / "openai-clip-vit-random.pt"
    state = {k: v for k, v in open_clip.create_model("cxrlib-demo-ViT").state_dict().items()}
    torch.save(state, openai)
    atomic_write_json(openai.with_name(openai.name + ".json"), RECORD)
    return {"torchvision state_dict": str(resnet), "open_clip": str(folder), "openai clip": str(openai)}


def cli(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m cxrlib {command}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write them into, e.g. data/demo-encoders")
    parser.add_argument("--image-size", type=int, default=64, help="the CLIP towers' input size: the run's image_size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for layout, path in write(args.out, args.image_size, args.seed).items():
        print(f"{layout:<24} {path}")
    return 0
