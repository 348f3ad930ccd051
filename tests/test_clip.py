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
from cxrlib.evaluation import evaluate
from cxrlib.training import clip_models
from cxrlib.training.checkpoint import load_trained
from cxrlib.training.model import build
from cxrlib.training.train import fit
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
    # the tower's tensors go in as stored (open_clip's whole-model OpenAI loader would round them through float16)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
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
    """A run from the cohort run's cohort: through the notebooks, or (notebooks empty) by the calls notebooks 02
    and 03 make, without a kernel's start (make test's time)."""
    target = cohort_p.run_dir().parent / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    shutil.copy(cohort_p.run_dir() / runfiles.COHORT, target / runfiles.COHORT)
    p = dataclasses.replace(cohort_p, name=name, **changes)
    if notebooks:
        return run_notebooks(p, notebooks)
    runfiles.freeze(p, target)
    fit(p, target, progress=False)
    evaluate.evaluate_run(target, p, evaluate.predict_run(target, p))
    return target


@pytest.mark.parametrize("layout", ["open_clip", "openai"])
def test_a_zero_shot_run_scores_every_label_with_the_prompts_recorded(cohort_run, clip_files, layout):
    path, writer = clip_files[layout]
    # the open_clip run through notebooks 02 and 03, the other by their calls
    notebooks = [runfiles.TRAIN_NOTEBOOK, runfiles.EVALUATE_NOTEBOOK] if layout == "open_clip" else []
    run = _run(cohort_run, f"zero-shot-{layout}", notebooks, weights=str(path), train_from="zero_shot")
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
    run = _run(cohort_run, "clip-probe", [], train_from="embeddings", epochs=2)
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


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A CLIP and a SigLIP folder as transformers' save_pretrained writes them (MedSigLIP's layout); the CLIP one
    with a tokenizer (a letter-level BPE vocabulary, saved by transformers' CLIPTokenizer) for zero-shot."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for end in ("", "</w>"):
        for c in "abcdefghijklmnopqrstuvwxyz":
            vocab[c + end] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    tower = dict(image_size=SIZE, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=64)
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(text, vocab_size=len(vocab), bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=tower, projection_dim=16)).eval()
    clip.save_pretrained(root / "hf-clip")
    tokenizer.save_pretrained(root / "hf-clip")
    transformers.CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size=SIZE).save_pretrained(root / "hf-clip")
    siglip = transformers.SiglipModel(transformers.SiglipConfig(text_config=dict(text, vocab_size=100),
                                                                vision_config=tower)).eval()
    siglip.save_pretrained(root / "hf-siglip")
    return {"clip": (root / "hf-clip", clip, tokenizer), "siglip": (root / "hf-siglip", siglip, None)}


def _features(out) -> torch.Tensor:
    """get_image_features / get_text_features: a tensor in transformers 4, an output with it pooled in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hugging_face_clip_and_siglip_towers_are_transformers_own(hf_folders, kind):
    path, writer, _ = hf_folders[kind]
    info = describe_file(path)
    assert info["layout"] == f"huggingface {kind}" and info["resolution"] == SIZE
    model = build("clip", "avgpool", 14, SIZE, str(path)).eval()
    grey = torch.rand(3, 1, SIZE, SIZE)
    mean = torch.tensor(info["arch_kwargs"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["arch_kwargs"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = torch.nn.Sequential(model.stem, model.body, model.head[0])(
            (grey - info["input"]["mean"]) / info["input"]["std"])
        theirs = _features(writer.get_image_features(pixel_values=(grey.repeat(1, 3, 1, 1) - mean) / std))
    assert torch.allclose(ours, torch.nn.functional.normalize(theirs, dim=-1), atol=1e-5)
    again = build("clip", "avgpool", 14, SIZE, "none", arch_kwargs=model.arch_kwargs)
    again.load_state_dict(model.state_dict())


def test_a_zero_shot_run_from_a_hugging_face_clip_folder(cohort_run, hf_folders):
    path, writer, tokenizer = hf_folders["clip"]
    run = _run(cohort_run, "zero-shot-hf", [], weights=str(path), train_from="zero_shot")
    model, _, config = load_trained(run)
    pair = config["zero_shot"]["prompts"]["Edema"]
    grey = torch.rand(4, 1, SIZE, SIZE)
    info = describe_file(path)
    mean = torch.tensor(info["arch_kwargs"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["arch_kwargs"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        image = _features(writer.get_image_features(pixel_values=(grey.repeat(1, 3, 1, 1) - mean) / std))
        text = _features(writer.get_text_features(**tokenizer([pair["positive"], pair["negative"]], padding=True,
                                                               return_tensors="pt")))
        chexzero = torch.softmax(torch.nn.functional.normalize(image, dim=-1)
                                 @ torch.nn.functional.normalize(text, dim=-1).T, dim=1)[:, 0]
        ours = torch.sigmoid(model((grey - config["mean"]) / config["std"]))[:, model.labels.index("Edema")]
    assert torch.allclose(ours, chexzero, atol=1e-5)


def test_a_wrong_clip_file_or_size_is_refused_before_any_work(clip_files, tmp_path, tiny_data):
    from cxrlib.training.model import check_model

    not_clip = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, not_clip)
    for weights, size, words in ((not_clip, SIZE, "neither an open_clip folder"),
                                 (clip_files["openai"][0], 64, "set image_size: 32"),
                                 (clip_files["open_clip"][0], 64, "set image_size: 32")):
        p = tiny_params(tiny_data, tmp_path, "refused", arch="clip", head="avgpool", freeze="backbone",
                        weights=str(weights), image_size=size, augment=False, train_from="embeddings")
        with pytest.raises(UserError, match=words):
            check_model(p)
    with pytest.raises(Exception, match="arch: clip"):
        tiny_params(tiny_data, tmp_path, "refused", arch="clip", head="avgpool", weights="none")
    with pytest.raises(Exception, match="train_from: zero_shot needs a CLIP"):
        tiny_params(tiny_data, tmp_path, "refused", arch="resnet18", head="avgpool", freeze="backbone",
                    weights=str(not_clip), train_from="zero_shot", epochs=1)


def test_a_biomedclip_layout_gives_its_image_tower_offline_and_says_what_its_text_tower_needs(tmp_path, monkeypatch):
    """BiomedCLIP's open_clip folder: a timm image tower and a text tower that names a Hugging Face model (PubMedBERT).
    The writer is open_clip's own, with the text model at a local path; the folder then names the Hub model, as the
    real one does. A probe needs only the image tower, built without the text model; zero-shot says what it needs."""
    transformers = pytest.importorskip("transformers")
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    bert = tmp_path / "tiny-bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64,
                                                   max_position_embeddings=64)).save_pretrained(bert)
    config = {"embed_dim": 16,
              "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                             "timm_proj": "linear", "image_size": 224},
              "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
                           "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-biomedclip-cxrlib.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")
    writer = open_clip.create_model("tiny-biomedclip-cxrlib").eval()

    class NoTokenizerFiles:
        def save_pretrained(self, dest):
            pass

    from open_clip.push_to_hf_hub import save_for_hf
    folder = tmp_path / "biomedclip-like"
    save_for_hf(writer, NoTokenizerFiles(), config, folder)
    written = json.loads((folder / clip_models.OPEN_CLIP_CONFIG).read_text())
    written["model_cfg"]["text_cfg"]["hf_model_name"] = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    (folder / clip_models.OPEN_CLIP_CONFIG).write_text(json.dumps(written))
    model = build("clip", "avgpool", 14, 224, str(folder)).eval()
    info = describe_file(folder)
    grey = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        ours = torch.nn.Sequential(model.stem, model.body, model.head[0])(
            (grey - info["input"]["mean"]) / info["input"]["std"])
        theirs = torch.nn.functional.normalize(writer.encode_image(_clip_input(grey)), dim=-1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    with pytest.raises(UserError, match="needs that model in the Hugging Face cache"):
        clip_models.text_encoder(folder)
