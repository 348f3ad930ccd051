"""CLIP-style models (issue 37), read from files written by the libraries that write them in the wild, with random
weights: an open_clip folder as open_clip's save_for_hf writes it (BiomedCLIP's layout on the Hub) and an
OpenAI-CLIP state dict made by OpenAI's own `clip` package's CLIP class (CheXzero's checkpoints). Their image
towers equal the writers' own encode_image; a zero-shot run gives CheXzero's softmax over each label's prompts for
every label of the set, evaluated with intervals, the prompts recorded; CheXzero's weights are flagged."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import site
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_notebooks, tiny_params

from cxrlib import runfiles
from cxrlib.errors import UserError
from cxrlib.training import clip_models
from cxrlib.training.checkpoint import load_trained
from cxrlib.training.model import build
from cxrlib.training.weights import describe_file

open_clip = pytest.importorskip("open_clip")
SIZE = 32   # the tiny data's image_size
TOWER = {"embed_dim": 32, "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def openai_clip_class():
    """OpenAI's CLIP class from the `clip` package (pip: openai-clip), loaded from its file: the package's
    __init__ imports pkg_resources, which new setuptools no longer has."""
    for root in site.getsitepackages():
        path = Path(root) / "clip" / "model.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("openai_clip_model", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.CLIP
    pytest.skip("the openai-clip package is not installed (pip install openai-clip)")


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    (root / "configs").mkdir()
    (root / "configs" / "tiny-ViT-cxrlib.json").write_text(json.dumps(TOWER))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(0)
    writer = open_clip.create_model("tiny-ViT-cxrlib")

    class NoTokenizerFiles:   # the default CLIP tokenizer is open_clip's own; save_for_hf would fetch HF's copy
        def save_pretrained(self, dest):
            pass

    from open_clip.push_to_hf_hub import save_for_hf
    save_for_hf(writer, NoTokenizerFiles(), TOWER, root / "biomedclip-like")
    openai = openai_clip_class()(embed_dim=32, image_resolution=SIZE, vision_layers=2, vision_width=64,
                                 vision_patch_size=8, context_length=77, vocab_size=49408, transformer_width=64,
                                 transformer_heads=1, transformer_layers=2).eval()
    torch.save(openai.state_dict(), root / "chexzero-like.pt")
    (root / "chexzero-like.pt.json").write_text(json.dumps({"source": "chexzero"}))
    return {"open_clip": (root / "biomedclip-like", writer.eval()), "openai": (root / "chexzero-like.pt", openai)}


def _clip_input(grey: torch.Tensor) -> torch.Tensor:
    """What CLIP's own preprocessing gives for a grey image in [0, 1]: R = G = B, each channel normalised."""
    mean, std = torch.tensor(clip_models.OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(clip_models.OPENAI_STD).view(1, 3, 1, 1)
    return (grey.repeat(1, 3, 1, 1) - mean) / std


@pytest.mark.parametrize("layout", ["open_clip", "openai"])
def test_the_image_tower_is_the_writers_own(clip_files, layout):
    path, writer = clip_files[layout]
    info = describe_file(path)
    assert info["layout"] == {"open_clip": "open_clip", "openai": "openai clip"}[layout]
    assert info["resolution"] == SIZE and len(info["sha256"]) == 64
    model = build("clip", "avgpool", 14, SIZE, str(path)).eval()
    grey = torch.rand(3, 1, SIZE, SIZE)
    m, s = info["input"]["mean"], info["input"]["std"]
    with torch.no_grad():
        ours = torch.nn.Sequential(model.stem, model.body, model.head[0])((grey - m) / s)
        theirs = torch.nn.functional.normalize(writer.encode_image(_clip_input(grey)).float(), dim=-1)
    # open_clip's OpenAI loader rounds the weights through float16, as OpenAI's clip.load does
    assert torch.allclose(ours, theirs, atol=2e-3 if layout == "openai" else 1e-5), (ours - theirs).abs().max()
    # a checkpoint rebuilds the tower from its recorded shape alone
    again = build("clip", "avgpool", 14, SIZE, "none", arch_kwargs=model.arch_kwargs)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()((grey - m) / s), model((grey - m) / s))
    with pytest.raises(UserError, match="set image_size: 32"):
        build("clip", "avgpool", 14, 64, str(path))


@pytest.fixture(scope="module")
def cohort_run(tiny_data, tmp_path_factory, clip_files):
    runs_dir = tmp_path_factory.mktemp("clip-runs")
    p = tiny_params(tiny_data, runs_dir, "clip-cohort", arch="clip", head="avgpool", freeze="backbone",
                    weights=str(clip_files["openai"][0]), image_size=SIZE, augment=False, cpu_amp=False,
                    max_train_batches=0, epochs=1, tracker="none")
    run_notebooks(p, [runfiles.COHORT_NOTEBOOK])
    return p


def _run(cohort_p, name, notebooks, **changes):
    target = cohort_p.run_dir().parent / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    shutil.copy(cohort_p.run_dir() / runfiles.COHORT, target / runfiles.COHORT)
    return run_notebooks(dataclasses.replace(cohort_p, name=name, **changes), notebooks)


@pytest.mark.parametrize("layout", ["open_clip", "openai"])
def test_a_zero_shot_run_scores_every_label_with_the_prompts_recorded(cohort_run, clip_files, layout):
    path, writer = clip_files[layout]
    run = _run(cohort_run, f"zero-shot-{layout}", [runfiles.TRAIN_NOTEBOOK, runfiles.EVALUATE_NOTEBOOK],
               weights=str(path), train_from="zero_shot")
    model, _, config = load_trained(run)
    prompts = config["zero_shot"]["prompts"]
    assert list(prompts) == model.labels and len(model.labels) == 14
    assert prompts["Atelectasis"] == {"positive": "Atelectasis", "negative": "no Atelectasis"}
    # CheXzero's probability from the writer's own towers: softmax of the two cosine similarities
    grey = torch.rand(4, 1, SIZE, SIZE)
    tokens = open_clip.tokenize([prompts["Edema"]["positive"], prompts["Edema"]["negative"]])
    with torch.no_grad():
        image = torch.nn.functional.normalize(writer.encode_image(_clip_input(grey)).float(), dim=-1)
        text = torch.nn.functional.normalize(writer.encode_text(tokens).float(), dim=-1)
        chexzero = torch.softmax(image @ text.T, dim=1)[:, 0]
        ours = torch.sigmoid(model((grey - config["mean"]) / config["std"]))[:, model.labels.index("Edema")]
    assert torch.allclose(ours, chexzero, atol=2e-3 if layout == "openai" else 1e-5)
    metrics = json.loads((run / runfiles.METRICS).read_text())
    assert metrics["contaminated"] is (layout == "openai")   # the OpenAI file's JSON names CheXzero
    test = metrics["splits"]["test"]
    assert sorted(test["per_finding"]) == sorted(model.labels)
    with_ci = [f for f in test["per_finding"].values() if f["estimable"]]
    assert with_ci and all(f["auroc"]["lo"] <= f["auroc"]["value"] <= f["auroc"]["hi"] for f in with_ci)


def test_a_probe_on_a_clip_tower_reads_the_embedding_cache(cohort_run, capsys):
    run = _run(cohort_run, "clip-probe", [runfiles.TRAIN_NOTEBOOK], train_from="embeddings", epochs=2)
    config = load_trained(run)[2]
    assert config["arch_kwargs"]["quick_gelu"] is True and config["starting_weights"]["source"] == "chexzero"
    assert np.isfinite(json.loads(json.dumps(config["train_patients"])))


def test_the_demo_encoders_are_read_in_their_layouts(tmp_path):
    from cxrlib.synthetic import encoders

    written = encoders.write(tmp_path, image_size=SIZE)
    for layout, path in written.items():
        info = describe_file(path)
        assert info["layout"] == {"torchvision state_dict": "state_dict"}.get(layout, layout)
        assert info["mimic"] == "none" and info["source"].startswith("random weights")
    assert build("clip", "avgpool", 14, SIZE, written["openai clip"]).arch_kwargs["quick_gelu"] is True
