"""Starting weights in every layout people have, made here with random weights: each loads, and the loaded
network computes what the source network computes on the same grey image (copied into R, G, B where the source
takes three channels)."""
import json
import shutil

import pandas as pd
import pytest
import timm
import torch
import torchvision

from cxrlib import param_rules, params
from cxrlib.data.sources import SOURCE_NAMES
from cxrlib.errors import UserError
from cxrlib.evaluation.explain import GradCAM
from cxrlib.fsutil import sha256_file
from cxrlib.training import contamination, convert, model, optim

pytestmark = pytest.mark.usefixtures("one_thread")


def features(net, gray):
    """The classifier's pooled features: what its new head reads."""
    with torch.no_grad():
        out = net.body(net.stem(gray))
        return out if out.ndim == 2 else net.head[:2](out)   # torchvision bodies give maps: pool, flatten


def test_torchvision_and_safetensors_files_compute_the_source_network(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None).eval()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    save_file(source.state_dict(), str(tmp_path / "r18.safetensors"))
    source.fc = torch.nn.Identity()
    gray = torch.rand(2, 1, 64, 64)
    expected = source(gray.repeat(1, 3, 1, 1)).detach()
    for name in ("r18.pth", "r18.safetensors"):
        net = model.build("resnet18", "avgpool", 14, 64, str(tmp_path / name)).eval()
        assert torch.allclose(features(net, gray), expected, atol=1e-4), name


def test_timm_checkpoint_loads_into_a_grey_level_convnext(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("convnext_atto", pretrained=False, num_classes=5).eval()   # its own head is dropped
    torch.save({"state_dict": source.state_dict(), "epoch": 7, "arch": "convnext_atto"}, tmp_path / "timm.pth.tar")
    net = model.build("timm:convnext_atto", "avgpool", 14, 64, str(tmp_path / "timm.pth.tar")).eval()
    assert net.body.stem[0].in_channels == 1
    gray = torch.rand(2, 1, 64, 64)
    expected = source.forward_head(source.forward_features(gray.repeat(1, 3, 1, 1)), pre_logits=True).detach()
    assert torch.allclose(features(net, gray), expected, atol=1e-4)
    assert net(gray).shape == (2, 14)
    cam = GradCAM(net, image_size=64)   # timm's feature_info names the stages: the deepest with an 8 x 8 map
    assert "`body.stages.1`, its map 8 x 8 at 64 px" in cam.note and cam(gray, 0).shape == (2, 64, 64)


def test_moco_cxr_lightning_checkpoint_uses_the_query_encoder(tmp_path):
    torch.manual_seed(0)
    query, key = torchvision.models.densenet121(weights=None).eval(), torchvision.models.densenet121(weights=None)
    state = {**{f"model.encoder_q.{k}": v for k, v in query.state_dict().items()},
             **{f"model.encoder_k.{k}": v for k, v in key.state_dict().items()},
             "model.queue": torch.randn(128, 64), "model.queue_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save({"state_dict": state, "epoch": 3, "global_step": 99, "pytorch-lightning_version": "1.9.0"},
               tmp_path / "mimic-moco.ckpt")
    (tmp_path / "mimic-moco.ckpt.json").write_text(json.dumps({"source": "moco-cxr:mimic"}))
    net = model.build("densenet121", "avgpool", 14, 64, str(tmp_path / "mimic-moco.ckpt")).eval()
    gray = torch.rand(2, 1, 64, 64)
    expected = torch.relu(query.features(gray.repeat(1, 3, 1, 1)))
    assert torch.allclose(net.body(gray), expected, atol=1e-4)
    info = model.starting_info("densenet121", str(tmp_path / "mimic-moco.ckpt"))
    record = contamination.describe(info)
    assert record["mimic"] == "official-train" and record["external_seen"] == []
    assert contamination.external_warning(record, "nih") is None


def test_a_file_that_does_not_fit_names_its_keys(tmp_path):
    # 725 keys of which 121 BatchNorm counters, which a file may lack (filled as BatchNorm does): 604 missing
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"Missing \(604\): features.conv0.weight.*Unexpected \(120\): conv1.weight"):
        model.build("densenet121", "avgpool", 14, 64, str(tmp_path / "r18.pth"))


@pytest.mark.parametrize("change, message", [
    ({"arch": "timm:convnext_tiny"}, "weights: imagenet names torchvision's files"),
    ({"arch": "timm:convnext_tiny", "weights": "none"}, "head: flatten is the original project's"),
    ({"freeze": "backbone", "head": "avgpool", "weights": "none"}, "linear probe of random features"),
    ({"freeze": "backbone"}, "1x1 stem starts random"),
    ({"arch": "vgg16"}, "not supported"),
])
def test_impossible_combinations_are_refused_before_any_work(change, message):
    with pytest.raises(params.ParamError, match=message):
        params.validate(change)


def test_linear_probe_trains_the_head_alone_with_frozen_statistics(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    p = params.validate({"arch": "resnet18", "head": "avgpool", "weights": str(tmp_path / "r18.pth"),
                         "freeze": "backbone", "image_size": 64})
    net = model.build_model(p).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = optim.make_optimizer(net, p)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2   # the Linear's weight and bias
    loss = net(torch.rand(4, 1, 64, 64)).sum()
    loss.backward()
    optimizer.step()
    after = net.state_dict()
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert changed == ["head.3.weight", "head.3.bias"]   # BatchNorm's running statistics included


def test_backbone_learning_rate_multiplier():
    p = params.validate({"arch": "resnet18", "head": "avgpool", "weights": "none", "backbone_lr": 0.1, "lr": 1e-3})
    groups = optim.make_optimizer(model.build_model(p), p).param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-4)] and len(groups[0]["params"]) == 2


# --------------------------------------------------------------------------- contamination
def cohort(test_ids, test_subjects):
    rows = [("a", "1", "train"), ("b", "2", "validate")] + [(d, s, "test") for d, s in zip(test_ids, test_subjects)]
    return pd.DataFrame(rows, columns=["dicom_id", "subject_id", "split"])


@pytest.mark.parametrize("rule, split_mode, status", [
    ("none", "seed", "clean"), ("random", "official", "contaminated"), ("all", "seed", "contaminated"),
    ("manifest", "seed", "unknown"), ("unknown", "seed", "unknown")])
def test_rules_decide_without_counting(rule, split_mode, status):
    p = params.validate({"split_mode": split_mode})
    check = contamination.assess({"mimic": rule, "source": "x"}, p, cohort(["t1"], ["9"]))
    assert check["status"] == status
    assert (contamination.warning_text({"contamination": check}) is not None) == (status == "contaminated")


def test_official_train_rule_counts_the_seed_split_against_the_split_table(tmp_path):
    pd.DataFrame({"dicom_id": ["t1", "t2", "t3"], "study_id": ["1", "2", "3"], "subject_id": ["9", "9", "8"],
                  "split": ["train", "test", "validate"]}).to_csv(tmp_path / "mimic-cxr-2.0.0-split.csv", index=False)
    record = {"mimic": "official-train", "source": "moco-cxr:mimic"}
    seed = contamination.assess(record, params.validate({"data_root": str(tmp_path)}), cohort(["t1", "t2", "t3"],
                                                                                              ["9", "9", "8"]))
    assert (seed["status"], seed["seen_images"], seed["seen_patients"]) == ("contaminated", 1, 1)
    official = contamination.assess(record, params.validate({"data_root": str(tmp_path), "split_mode": "official"}),
                                    cohort(["t2"], ["9"]))
    assert official["status"] == "clean" and contamination.warning_text({"contamination": official}) is None


def test_manifest_counts_test_images_and_patients_exactly(tmp_path):
    manifest = tmp_path / "training_images.csv"
    pd.DataFrame({"image_path": ["mimic/files/p10/p10000001/s5/t1.jpg", "chexpert/patient1/view1.jpg",
                                 "mimic/files/p10/p10000002/s7/other.jpg"]}).to_csv(manifest, index=False)
    p = params.validate({"weights_manifest": str(manifest)})
    check = contamination.assess({"mimic": "manifest", "source": "microsoft/rad-dino"}, p,
                                 cohort(["t1", "t2", "t3"], ["10000001", "10000002", "10000003"]))
    # t1 is listed; patient 10000002 has another image listed: 1 image, 2 patients
    assert (check["status"], check["seen_images"], check["seen_patients"]) == ("contaminated", 1, 2)
    assert "1 of the 3 test images and 2 of the 3 test patients" in contamination.warning_text({"contamination": check})


def test_bench_train_times_other_archs_beside_the_first():
    from cxrlib.bench import train as bench_train

    result = bench_train.bench_train(["--arch", "resnet18", "--head", "avgpool", "--size", "32", "--batch", "2",
                                      "--steps", "1", "--also", "timm:convnext_atto", "--also", "timm:vit_tiny_patch16_224"])
    assert list(result["archs"]) == ["timm:convnext_atto", "timm:vit_tiny_patch16_224"]
    vit = result["archs"]["timm:vit_tiny_patch16_224"]
    assert vit["image_size"] == 32 and vit["parameters_m"] == pytest.approx(5.5, abs=0.2)
    assert vit["vs_first_arch"] == pytest.approx(vit["images_per_s"] / result["ours_images_per_s"], rel=0.01)


def test_every_known_source_has_a_rule():
    assert all(rule in contamination.RULES for _, rule, _, _ in contamination.KNOWN_SOURCES.values())
    assert all(set(seen) <= set(SOURCE_NAMES) for *_, seen in contamination.KNOWN_SOURCES.values())
    assert param_rules.TORCHVISION_ARCHS == tuple(model.ARCHS)


def test_the_docs_show_the_known_sources_table():
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "pretrained-weights.md").read_text()
    assert contamination.markdown_table() in docs


def dinov2_folder(folder, meta: dict, patch_size: int = 14):
    """A tiny DINOv2 in the Hugging Face layout (config.json + model.safetensors), with a cxrlib.json."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                       image_size=2 * patch_size, patch_size=patch_size)
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(folder)
    (folder / "cxrlib.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def torchxrayvision_file(tmp_path):
    """A torchxrayvision DenseNet release: pickled from torchxrayvision's own class (random weights)."""
    xrv = pytest.importorskip("torchxrayvision")
    torch.manual_seed(0)
    release = xrv.models.DenseNet(weights=None)
    release.weights = "densenet121-res224-all"
    path = tmp_path / "xrv-all.pt"
    torch.save(release, path)
    return path, release


@pytest.mark.slow
def test_runs_record_their_starting_weights_and_flag_a_contaminated_test_split(torchxrayvision_file, tiny_data,
                                                                              tmp_path):
    """Through the notebooks, a torchxrayvision `all` start (DenseNet) is flagged in 02, 03 and the card (the tiny
    run, weights: none, is not: tests/test_handoff.py). A ViT from a Hugging Face folder trained on MIMIC's official
    train split, tested on the official split, is not flagged, and exports with parity in both formats."""
    from conftest import run_notebooks, tiny_params

    from cxrlib.evaluation import evaluate
    from cxrlib.handoff import card, export
    from cxrlib.training import train

    converted, _ = convert.convert(torchxrayvision_file[0], "torchxrayvision")
    p = tiny_params(tiny_data, tmp_path / "runs", "xrv", arch="densenet121", weights=str(converted))
    run_dir = run_notebooks(p, ["01_cohort", "02_train", "03_evaluate"])
    card.write_card(run_dir)
    texts = [(run_dir / f"{nb}.html").read_text() for nb in ("02_train", "03_evaluate")]
    texts.append((run_dir / "MODEL_CARD.md").read_text())
    assert all("MAY HAVE SEEN THE TEST PATIENTS" in t for t in texts)
    report = json.loads((run_dir / "metrics.json").read_text())
    starting = report["model"]["starting_weights"]
    assert starting["sha256"] == sha256_file(converted) and starting["sha256"][:12] in texts[-1]
    assert report["contaminated"] and report["model"]["mean"] == 0.5   # the JSON's input range was used

    # the same cohort and 32 px cache: patches of 16 px (the folder's shape overrides the arch's)
    vit = dinov2_folder(tmp_path / "dino", {"source": "a DINOv2 of ours", "mimic": "official-train"}, patch_size=16)
    p = tiny_params(tiny_data, tmp_path / "runs", "vit", arch="timm:vit_small_patch14_dinov2", weights=str(vit))
    vit_dir = p.run_dir()
    vit_dir.mkdir()
    shutil.copy2(run_dir / "cohort.csv", vit_dir / "cohort.csv")
    train.fit(p, vit_dir, progress=False)
    report = evaluate.evaluate_run(vit_dir, p, evaluate.predict_run(vit_dir, p))
    assert not report["contaminated"] and report["model"]["starting_weights"]["contamination"]["status"] == "clean"
    assert report["model"]["arch_kwargs"]["patch_size"] == 16
    for fmt in ("onnx", "torchscript"):
        record = export.export_run(vit_dir, p, fmt)
        assert record["parity"]["max_abs_prob_diff"] < 1e-4
        assert record["metadata"]["starting_weights"]["source"] == "a DINOv2 of ours"


@pytest.mark.parametrize("arch, size, message", [
    ("timm:vit_base_patch14_dinov2", 256, "not a multiple of vit_base_patch14_dinov2's patch size 14; use e.g. 252 or 266"),
    ("timm:convnext_tny", 64, "not a timm model; e.g. .*convnext_atto"),
])
def test_timm_names_and_patch_sizes_are_checked_before_any_work(arch, size, message):
    p = params.validate({"arch": arch, "head": "avgpool", "weights": "none", "image_size": size})
    with pytest.raises(UserError, match=message):
        model.check_model(p)


def test_a_bad_weights_json_or_manifest_is_refused_before_any_work(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    (tmp_path / "r18.pth.json").write_text(json.dumps({"mimic": "some of it"}))
    p = params.validate({"arch": "resnet18", "head": "avgpool", "weights": str(tmp_path / "r18.pth")})
    with pytest.raises(UserError, match="r18.pth: mimic: 'some of it' in its JSON is not one of"):
        model.check_model(p)
    (tmp_path / "r18.pth.json").write_text(json.dumps({"mimic": "manifest"}))
    (tmp_path / "list.csv").write_text("study,reader\n1,a\n")
    with pytest.raises(UserError, match="list.csv has neither a dicom_id/image_id column nor a column of image paths"):
        model.check_model(params.validate({**p.to_dict(), "weights_manifest": str(tmp_path / "list.csv")}))


def test_a_dinov2_folder_given_to_another_family_is_refused_before_any_work(tmp_path):
    folder = dinov2_folder(tmp_path / "dino", {"source": "microsoft/rad-dino"})
    p = params.validate({"arch": "timm:convnext_atto", "head": "avgpool", "weights": str(folder), "image_size": 42})
    with pytest.raises(UserError, match="cannot take the shape .*'embed_dim': 48.*timm:vit_base_patch14_dinov2"):
        model.check_model(p)
    model.check_model(params.validate({**p.to_dict(), "arch": "timm:vit_small_patch14_dinov2"}))   # the right family
