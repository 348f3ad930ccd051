import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from cxrlib import params
from cxrlib.errors import UserError
from cxrlib.training import model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flatten_head_is_the_original_network():
    net = model.build("resnet101", "flatten", 14, image_size=64, weights="none")
    conv, relu = net.stem
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels, conv.kernel_size) == (1, 3, (1, 1))
    assert conv.bias is None and isinstance(relu, nn.ReLU)
    # the ResNet101 body without avgpool and fc: conv1 sees the stem's 3 channels
    assert net.body[0].in_channels == 3 and len(net.body) == 8
    linear = net.head[-1]
    assert (linear.in_features, linear.out_features) == (2048 * 2 * 2, 14)
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 14)
    # torchvision's resnet101 has 44,549,160 parameters, 2,049,000 of them in its fc layer
    assert sum(p.numel() for p in net.body.parameters()) == 44_549_160 - 2_049_000


@pytest.mark.parametrize("size, hint", [(250, "224 or 256"), (40, "32 or 64")])
def test_flatten_head_rejects_sizes_not_divisible_by_32(size, hint):
    with pytest.raises(UserError, match=f"image_size: {size}.*{hint}"):
        model.build("resnet50", "flatten", image_size=size, weights="none")


def test_avgpool_head_feeds_gray_images_to_the_pretrained_stem(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.densenet121(weights=None).eval()
    path = tmp_path / "backbone.pth"
    torch.save(reference.state_dict(), path)   # a torchvision backbone file: its classifier is ignored
    net = model.build("densenet121", "avgpool", 14, image_size=72, weights=str(path)).eval()
    conv0 = net.body[0].conv0
    assert conv0.in_channels == 1
    assert torch.equal(conv0.weight, reference.features.conv0.weight.sum(dim=1, keepdim=True))
    gray = torch.randn(2, 1, 72, 72)
    with torch.no_grad():
        expected = torch.relu(reference.features(gray.repeat(1, 3, 1, 1)))   # gray copied into R, G and B
        assert torch.allclose(net.body(gray), expected, atol=1e-4)
        assert net(gray).shape == (2, 14)          # any size works with global pooling


@pytest.mark.parametrize("head", ["flatten", "avgpool"])
def test_densenet121(head):
    net = model.build("densenet121", head, 14, image_size=64, weights="none", dropout=0.3)
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 14)
    assert net.head[-1].in_features == (1024 * 4 if head == "flatten" else 1024)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in net.head)


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)


def test_imagenet_weights_load_offline_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _no_network(monkeypatch)
    expected_file = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert model.weights_file("resnet50") == expected_file
    torch.manual_seed(1)
    fake = torchvision.models.resnet50(weights=None).state_dict()
    expected_file.parent.mkdir(parents=True)
    torch.save(fake, expected_file)
    net = model.build("resnet50", "flatten", 14, image_size=64, weights="imagenet")
    assert torch.equal(net.body[0].weight, fake["conv1.weight"])
    assert torch.equal(net.body[4][0].conv1.weight, fake["layer1.0.conv1.weight"])


def test_missing_imagenet_weights_offline_say_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _no_network(monkeypatch)
    with pytest.raises(UserError) as info:
        model.build("resnet101", "flatten", image_size=64, weights="imagenet")
    message = str(info.value)
    assert "resnet101-cd907fc2.pth" in message and "IMAGENET1K_V2" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "weights: none" in message
    with pytest.raises(UserError, match="IMAGENET1K_V1"):   # the original's pretrained=True, named explicitly
        model.build("resnet101", "flatten", image_size=64, weights="IMAGENET1K_V1")


def test_damaged_weights_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _no_network(monkeypatch)
    path = model.weights_file("densenet121")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a download")
    with pytest.raises(UserError, match="delete it"):
        model.build("densenet121", "avgpool", image_size=64, weights="imagenet")


def test_local_state_dicts(tmp_path):
    torch.manual_seed(2)
    trained = model.build("densenet121", "flatten", 14, image_size=64, weights="none")
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "best.pt")   # our checkpoint
    again = model.build("densenet121", "flatten", 14, image_size=64, weights=str(tmp_path / "best.pt"))
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), again.state_dict().values()))
    with pytest.raises(UserError, match="another arch, head or image_size"):
        model.build("densenet121", "flatten", 14, image_size=96, weights=str(tmp_path / "best.pt"))
    with pytest.raises(UserError, match="does not exist"):
        model.build("densenet121", "flatten", 14, image_size=64, weights=str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="weights: 'imagenet2'"):
        model.build("densenet121", "flatten", 14, image_size=64, weights="imagenet2")


def test_original_project_checkpoint_loads(tmp_path):
    torch.manual_seed(3)
    ours = model.build("resnet50", "flatten", 14, image_size=64, weights="none")
    renamed = {}
    for k, v in ours.state_dict().items():   # the original's names: layer1 (stem), resnet (body), fc.0
        k = k.replace("stem.", "layer1.", 1).replace("body.", "resnet.", 1).replace("head.2.", "fc.0.", 1)
        renamed[k] = v
    torch.save({"model": renamed, "optimizer": {}}, tmp_path / "model.pt")
    loaded = model.build("resnet50", "flatten", 14, image_size=64, weights=str(tmp_path / "model.pt"))
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), loaded.state_dict().values()))


def test_build_model_reads_params():
    p = params.validate({"arch": "densenet121", "head": "avgpool", "weights": "none", "image_size": 48,
                         "dropout": 0.1, "val_fraction": 0.1})
    net = model.build_model(p)
    assert net(torch.randn(2, 1, 48, 48)).shape == (2, 14)
