"""Every weights layout cxrlib claims to read, written at test time by the library that writes it in the wild (random
tensors), in every variant still circulating: torchvision's pre-0.4.1 model-zoo files, timm's CheckpointSaver and
Hub folders, transformers' save_pretrained, torchxrayvision's own classes, PyTorch Lightning 1.0's dicts,
safetensors. Where the library can read its own file it is the oracle (torchvision, timm, torchxrayvision load it
and cxrlib must hold the same tensors); every backbone tensor cxrlib loads must equal the file's (none left at
random), and the record must name the right layout, hash and input normalisation.

The library versions that wrote each file are printed by test_versions_of_the_writing_libraries (pytest -s)."""
import argparse
import collections
import json
import re
import sys

import pytest
import timm
import torch
import torchvision

from cxrlib import params
from cxrlib.errors import UserError
from cxrlib.evaluation.explain import GradCAM
from cxrlib.fsutil import sha256_file
from cxrlib.training import contamination, convert, model, weights

pytestmark = pytest.mark.usefixtures("one_thread")
RESNET_PARTS = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
XRV_INPUT = {"mean": 0.5, "std": 1 / 2048}


def backbone_state(net, arch: str) -> dict:
    """The loaded network's backbone tensors under the names its source library gives them."""
    state = net.body.state_dict()
    if arch.startswith("resnet"):
        return {re.sub(r"^(\d+)\.", lambda m: RESNET_PARTS[int(m.group(1))] + ".", k): v for k, v in state.items()}
    if arch.startswith("densenet"):
        return {k.replace("0.", "features.", 1): v for k, v in state.items()}
    return state


def assert_holds_exactly(net, arch: str, expected: dict) -> None:
    """Every backbone tensor of `net` equals `expected`'s (a three-channel first conv summed over its channels, as
    on a grey image copied into R, G, B); every non-head tensor of `expected` was loaded; none is left at random."""
    loaded = backbone_state(net, arch)
    for key, value in loaded.items():
        assert key in expected, f"{key} is not in the file: left at random"
        want = expected[key]
        if want.shape != value.shape and want.ndim == 4:
            want = want.sum(dim=1, keepdim=True)
        assert torch.equal(value, want.to(value.dtype)), key
    head = ("fc.", "classifier.", "head.fc.", "head.weight", "head.bias")
    assert {k for k in expected if not k.startswith(head)} <= set(loaded)


def record(arch: str, where) -> dict:
    return contamination.describe(model.starting_info(arch, str(where)))


def model_zoo_file(net, path, legacy_densenet_names=False):
    """As torchvision's IMAGENET1K_V1 files were saved (before PyTorch 0.4.1): an OrderedDict with no _metadata,
    no BatchNorm num_batches_tracked, DenseNet's `norm.1`-style names, in the pre-1.6 (non-zip) file format."""
    state = collections.OrderedDict((k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked"))
    if legacy_densenet_names:
        state = collections.OrderedDict(
            (re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k), v) for k, v in state.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


# --------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("arch, head, file_name", [
    ("resnet101", "flatten", "resnet101-63fe2227.pth"),      # the original recipe's pretrained=True
    ("densenet121", "avgpool", "densenet121-a639ec97.pth"),  # CheXNet's start
])
def test_torchvision_model_zoo_files_load_as_torchvision_loads_them(tmp_path, monkeypatch, arch, head, file_name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    no_network(monkeypatch)
    torch.manual_seed(0)
    path = model_zoo_file(getattr(torchvision.models, arch)(), tmp_path / "hub" / "checkpoints" / file_name,
                          legacy_densenet_names=arch == "densenet121")
    assert "num_batches_tracked" not in str(torch.load(path, weights_only=True).keys())
    oracle = getattr(torchvision.models, arch)(weights="IMAGENET1K_V1").state_dict()   # torchvision reads it
    p = params.validate({"arch": arch, "head": head, "weights": "IMAGENET1K_V1", "image_size": 64})
    model.check_model(p)   # the check before notebook 01 passes
    net = model.build(arch, head, 14, 64, "IMAGENET1K_V1")
    assert_holds_exactly(net, arch, oracle)
    info = record(arch, "IMAGENET1K_V1")
    assert info["layout"] == "torchvision model zoo" and info["sha256"] == sha256_file(path)
    assert "input" not in info   # the run's own mean/std, as the original


def test_todays_torchvision_and_safetensors_files(tmp_path):
    from safetensors.torch import save_file, save_model

    torch.manual_seed(1)
    source = torchvision.models.resnet50()
    torch.save(source.state_dict(), tmp_path / "r50.pth")
    save_file(source.state_dict(), str(tmp_path / "r50.safetensors"))
    save_model(source, str(tmp_path / "r50-model.safetensors"))
    for name, layout in (("r50.pth", "state_dict"), ("r50.safetensors", "safetensors"),
                         ("r50-model.safetensors", "safetensors")):
        assert_holds_exactly(model.build("resnet50", "avgpool", 14, 64, str(tmp_path / name)), "resnet50",
                             source.state_dict())
        info = record("resnet50", tmp_path / name)
        assert info["layout"] == layout and info["sha256"] == sha256_file(tmp_path / name) and "input" not in info


# --------------------------------------------------------------------------- timm
def timm_run(tmp_path, ema: bool):
    """What timm's train.py leaves: CheckpointSaver files holding args (an argparse.Namespace), the optimizer,
    and with --model-ema the EMA weights beside the live ones."""
    from timm.utils import CheckpointSaver, ModelEmaV3

    torch.manual_seed(2)
    net = timm.create_model("convnext_atto", pretrained=False, num_classes=5)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    model_ema = ModelEmaV3(net, decay=0.5) if ema else None
    net(torch.rand(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    if model_ema is not None:
        model_ema.update(net)
    args = argparse.Namespace(model="convnext_atto", lr=0.1, epochs=1, model_ema=ema)
    saver = CheckpointSaver(net, optimizer, args=args, model_ema=model_ema, checkpoint_dir=str(tmp_path),
                            recovery_dir=str(tmp_path), max_history=1)
    saver.save_checkpoint(epoch=0, metric=0.5)
    return tmp_path / "last.pth.tar", (model_ema.module if ema else net)


@pytest.mark.parametrize("ema", [False, True])
def test_timm_checkpoint_saver_files_load_as_timm_loads_them(tmp_path, ema):
    path, expected_net = timm_run(tmp_path, ema)
    with pytest.raises(Exception, match="Weights only load failed"):   # the Namespace torch refuses by default
        torch.load(path, weights_only=True)
    oracle = timm.create_model("convnext_atto", pretrained=False, num_classes=5)
    timm.models.load_checkpoint(oracle, str(path))   # timm's own reader: EMA weights when present
    assert all(torch.equal(a, b) for a, b in zip(oracle.state_dict().values(), expected_net.state_dict().values()))
    net = model.build("timm:convnext_atto", "avgpool", 14, 64, str(path))
    assert_holds_exactly(net, "timm", oracle.state_dict())
    info = record("timm:convnext_atto", path)
    assert info["layout"] == "timm checkpoint" + (" (EMA weights)" if ema else "")
    assert info["sha256"] == sha256_file(path)


@pytest.mark.parametrize("serialization", [True, False])
def test_timm_hub_folders_from_save_for_hf(tmp_path, serialization):
    from timm.models import save_for_hf

    torch.manual_seed(3)
    source = timm.create_model("convnext_atto", pretrained=False, num_classes=7)
    folder = tmp_path / "convnext_atto.d2_in1k"
    save_for_hf(source, str(folder), safe_serialization=serialization)
    weight_file = folder / ("model.safetensors" if serialization else "pytorch_model.bin")
    assert json.loads((folder / "config.json").read_text())["architecture"] == "convnext_atto"
    net = model.build("timm:convnext_atto", "avgpool", 14, 64, str(folder))
    assert_holds_exactly(net, "timm", source.state_dict())
    info = record("timm:convnext_atto", folder)
    assert info["layout"] == "huggingface timm" and info["sha256"] == sha256_file(weight_file)
    assert info["input"] == pytest.approx({"mean": (0.485 + 0.456 + 0.406) / 3, "std": (0.229 + 0.224 + 0.225) / 3})
    p = params.validate({"arch": "timm:convnext_femto", "head": "avgpool", "weights": str(folder), "image_size": 64})
    with pytest.raises(UserError, match="is timm's convnext_atto .*set arch: timm:convnext_atto"):
        model.check_model(p)


# --------------------------------------------------------------------------- transformers (RAD-DINO)
def test_transformers_dinov2_folder_from_save_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=56,
                                       patch_size=14)
    torch.manual_seed(4)
    source = transformers.Dinov2Model(config).eval()
    folder = tmp_path / "rad-dino"
    source.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5307] * 3, "image_std": [0.2583] * 3}))
    net = model.build("timm:vit_small_patch14_dinov2", "avgpool", 14, 56, str(folder)).eval()
    gray = torch.rand(2, 1, 56, 56)
    with torch.no_grad():
        assert torch.allclose(net.body(gray), source(pixel_values=gray.repeat(1, 3, 1, 1)).pooler_output, atol=1e-4)
    raw = source.state_dict()
    loaded = net.body.state_dict()
    assert torch.equal(loaded["cls_token"], raw["embeddings.cls_token"])
    query = next(raw[k] for k in ("encoder.layer.1.attention.attention.query.weight",   # transformers 4.x
                                  "encoder.layer.1.attention.q_proj.weight") if k in raw)   # 5.x
    assert torch.equal(loaded["blocks.1.attn.qkv.weight"][:48], query)
    assert torch.equal(loaded["patch_embed.proj.weight"],
                       raw["embeddings.patch_embeddings.projection.weight"].sum(1, keepdim=True))
    (folder / "cxrlib.json").write_text(json.dumps({"source": "microsoft/rad-dino"}))
    info = record("timm:vit_small_patch14_dinov2", folder)
    assert info["layout"] == "huggingface dinov2" and info["sha256"] == sha256_file(folder / "model.safetensors")
    assert info["input"] == pytest.approx({"mean": 0.5307, "std": 0.2583}) and info["mimic"] == "manifest"
    cam = GradCAM(net, image_size=56)   # the patch tokens entering the last block, on their grid
    maps = cam(gray, 7)
    assert maps.shape == (2, 56, 56) and "4 x 4 grid" in cam.note and maps.max() <= 1


# --------------------------------------------------------------------------- torchxrayvision
@pytest.fixture
def xrv(monkeypatch, tmp_path):
    """torchxrayvision itself, its downloader pointed at the test's files so its own classes load them."""
    xrv = pytest.importorskip("torchxrayvision")
    files = {}
    monkeypatch.setattr(xrv.models, "get_weights", lambda name, cache_dir=None: str(files[name]))
    return xrv, files


@pytest.mark.parametrize("file_format", ["zip", "pre-1.6"])
def test_torchxrayvision_densenet_release_is_converted_without_the_package(xrv, tmp_path, monkeypatch, file_format):
    xrv, files = xrv
    torch.manual_seed(5)
    release = xrv.models.DenseNet(weights=None)   # its own class, as its releases were pickled (op_threshs None:
    release.weights = "densenet121-res224-all"    # the class loads a release's state_dict into a None buffer)
    release.pathologies = list(xrv.datasets.default_pathologies)   # its training script sets them on the instance
    path = tmp_path / "nih-pc-chex-mimic_ch-google-openi-rsna-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    torch.save(release, path, _use_new_zipfile_serialization=file_format == "zip")
    files["densenet121-res224-all"] = path
    oracle = xrv.models.DenseNet(weights="densenet121-res224-all")   # torchxrayvision reads it
    with pytest.raises(UserError, match="convert-weights --from torchxrayvision"):
        model.build("densenet121", "avgpool", 14, 64, str(path))
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)   # conversion needs no package and runs no code
    out, meta = convert.convert(path, "torchxrayvision")
    net = model.build("densenet121", "avgpool", 14, 64, str(out))
    # (op_threshs: set by torchxrayvision from its table after loading, not one of the file's tensors)
    assert_holds_exactly(net, "densenet121", {k: v for k, v in oracle.state_dict().items() if k != "op_threshs"})
    assert net.body[0].conv0.in_channels == 1
    info = record("densenet121", out)
    assert info["source"] == "torchxrayvision:densenet121-res224-all" and info["input"] == XRV_INPUT
    assert info["resolution"] == 224 and info["layout"] == "safetensors" and info["sha256"] == sha256_file(out)
    assert meta["original_sha256"] == sha256_file(path) and meta["labels"] == list(release.pathologies)
    assert "NIH CHESTX-RAY14" in contamination.external_warning(info, "nih")   # `all` saw NIH: not independent
    assert contamination.external_warning(info, "vindr") is None and info["mimic"] == "random"
    assert "op_threshs" not in meta   # the release holds none; torchxrayvision's table has them


def test_torchxrayvision_resnet50_state_dict_gets_its_input_range(xrv, tmp_path):
    xrv, files = xrv
    torch.manual_seed(6)
    net18 = torchvision.models.resnet50(num_classes=18)   # what its ResNet class builds and loads the file into
    net18.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    path = tmp_path / "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"
    torch.save(net18.state_dict(), path)
    files["resnet50-res512-all"] = path
    oracle = xrv.models.ResNet(weights="resnet50-res512-all").model   # torchxrayvision reads it
    net = model.build("resnet50", "avgpool", 14, 64, str(path))
    assert_holds_exactly(net, "resnet50", oracle.state_dict())
    info = record("resnet50", path)
    assert info["source"] == "torchxrayvision:resnet50-res512-all" and info["input"] == XRV_INPUT
    assert info["resolution"] == 512 and info["layout"] == "state_dict" and info["recognised_by"] == "keys"
    assert info["mimic"] == "none" and set(info["external_seen"]) == {"nih", "padchest", "vindr"}
    assert info["labels"] == list(oracle_labels(xrv))
    # a JSON naming it (convert-weights --source, or by hand) gets the same range without the key match
    plain = tmp_path / "renamed.pt"
    torch.save({f"module.{k}": v for k, v in net18.state_dict().items()}, plain)
    (tmp_path / "renamed.pt.json").write_text(json.dumps({"source": "torchxrayvision:resnet50-res512-all"}))
    assert record("resnet50", plain)["input"] == XRV_INPUT


def oracle_labels(xrv):
    return xrv.models.model_urls["resnet50-res512-all"]["labels"]


# --------------------------------------------------------------------------- PyTorch Lightning 1.0 (MoCo-CXR)
LIGHTNING_1_0 = {   # module -> class, as pytorch_lightning 1.0.8 names them (pickled by reference)
    "pytorch_lightning.callbacks.model_checkpoint": "ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping": "EarlyStopping",
}


def lightning_1_0_checkpoint(tmp_path, monkeypatch, state_dict: dict):
    """The dict pytorch_lightning 1.0.8's CheckpointConnector.dump_checkpoint writes: callbacks keyed by the
    callback's class, optimizer and scheduler states, hyper_parameters. The classes are pickled by reference, so
    stand-ins under Lightning's module names make the same bytes; they are gone before cxrlib reads the file."""
    import types

    classes = {}
    for package in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    for module_name, class_name in LIGHTNING_1_0.items():
        module = types.ModuleType(module_name)
        classes[class_name] = type(class_name, (), {"__module__": module_name})
        setattr(module, class_name, classes[class_name])
        monkeypatch.setitem(sys.modules, module_name, module)
    weights_ = [p for p in state_dict.values() if p.is_floating_point()][:2]
    optimizer = torch.optim.SGD([torch.nn.Parameter(w.clone()) for w in weights_], lr=0.03, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 200)
    checkpoint = {
        "epoch": 200, "global_step": 12400, "pytorch-lightning_version": "1.0.8",
        "callbacks": {classes["ModelCheckpoint"]: {"best_model_score": torch.tensor(0.8125),
                                                   "best_model_path": "/checkpoints/epoch=199.ckpt"},
                      classes["EarlyStopping"]: {"wait_count": 0, "stopped_epoch": 0, "best_score": torch.tensor(0.8),
                                                 "patience": 3}},
        "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 0},
        "state_dict": state_dict,
        "hparams_name": "kwargs",
        "hyper_parameters": {"arch": "densenet121", "feature_dim": 256, "queue_size": 65536, "use_mlp": False,
                             "learning_rate": 0.03, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 200},
    }
    path = tmp_path / "mimic-lr-0.03-bs-256-t-0.2-ep-200.ckpt"
    torch.save(checkpoint, path)
    for module_name in ("pytorch_lightning", "pytorch_lightning.callbacks", *LIGHTNING_1_0):
        monkeypatch.setitem(sys.modules, module_name, None)   # reading it needs no pytorch_lightning
    return path


def test_moco_cxr_lightning_1_0_checkpoint_reads_without_lightning(tmp_path, monkeypatch):
    torch.manual_seed(7)
    query, key = torchvision.models.densenet121(num_classes=256), torchvision.models.densenet121(num_classes=256)
    state = {**{f"model.encoder_q.{k}": v for k, v in query.state_dict().items()},
             **{f"model.encoder_k.{k}": v for k, v in key.state_dict().items()},
             "model.queue": torch.randn(256, 64), "model.queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = lightning_1_0_checkpoint(tmp_path, monkeypatch, state)
    with pytest.raises(Exception):   # torch's own safe reader refuses the callback classes
        torch.load(path, weights_only=True)
    (tmp_path / f"{path.name}.json").write_text(json.dumps({"source": "moco-cxr:mimic"}))
    net = model.build("densenet121", "avgpool", 14, 64, str(path))
    assert_holds_exactly(net, "densenet121", query.state_dict())
    info = record("densenet121", path)
    assert info["layout"] == "moco-cxr (lightning 1.0.8)" and info["sha256"] == sha256_file(path)
    assert info["mimic"] == "official-train" and "input" not in info


# --------------------------------------------------------------------------- refusals and the check before work
def test_a_file_that_does_not_fit_is_refused_by_the_check_before_notebook_01(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    p = params.validate({"arch": "resnet50", "head": "avgpool", "weights": str(tmp_path / "r18.pth"), "image_size": 64})
    with pytest.raises(UserError, match=r"r18.pth does not fit this arch\. Missing \(\d+\): layer1.0.conv3.weight.*"
                                         r"Other shape \(\d+\): layer1.0.conv1.weight \(64, 64, 3, 3\) vs \(64, 64, 1, 1\)"):
        model.check_model(p)


def test_a_whole_pickled_module_other_than_torchxrayvision_is_refused_with_its_class(tmp_path):
    torch.save(torchvision.models.resnet18(), tmp_path / "whole.pt")
    with pytest.raises(UserError, match=r"whole pickled module \(torchvision.models.resnet.ResNet\)"):
        model.build("resnet18", "avgpool", 14, 64, str(tmp_path / "whole.pt"))


def test_missing_imagenet_file_is_refused_before_notebook_01_with_the_command_that_fetches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    no_network(monkeypatch)
    p = params.validate({"arch": "resnet101", "head": "flatten", "weights": "IMAGENET1K_V1", "image_size": 64})
    with pytest.raises(UserError) as info:
        model.check_model(p)
    target = tmp_path / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    assert f"curl -L --create-dirs -o {target} https://download.pytorch.org/models/resnet101-63fe2227.pth" \
        in str(info.value)


def test_versions_of_the_writing_libraries():
    """The versions of the libraries that wrote this run's files (pytest -s shows them; the note quotes them)."""
    import safetensors
    import transformers

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
                "transformers": transformers.__version__, "safetensors": safetensors.__version__}
    try:
        import torchxrayvision
        versions["torchxrayvision"] = torchxrayvision.__version__
    except ImportError:
        versions["torchxrayvision"] = "not installed"
    print(json.dumps(versions))
    assert all(versions.values())


def test_weights_module_names_the_input_range_of_torchxrayvision():
    assert weights.XRV_INPUT == XRV_INPUT and weights.source_defaults("torchxrayvision:densenet121-res224-nih") == {
        "input": XRV_INPUT, "resolution": 224}


def test_every_layout_the_docs_list_names_a_real_format_test_that_exists():
    import pathlib

    import test_model
    docs = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "pretrained-weights.md").read_text()
    table = docs[docs.index("## Layouts cxrlib reads"):docs.index("**The JSON beside the file**")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| you have", "|---"))]
    assert len(rows) >= 10
    here = globals()
    for row in rows:
        tests = re.findall(r"`(test_\w+)`", row.rsplit("|", 2)[1])
        assert tests, f"no test named for: {row[:80]}"
        for name in tests:
            assert callable(here.get(name)) or callable(getattr(test_model, name, None)), name
