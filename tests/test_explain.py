import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cxrlib.evaluation.explain import GradCAM, find_target_layer, overlay
from cxrlib.labels import FINDINGS


def two_region_model() -> nn.Sequential:
    """Output 0 sums the bright pixels, output 1 the dark ones (channel 0 = relu(x), channel 1 = relu(-x))."""
    conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        linear.weight.copy_(torch.eye(2))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)


def bright_left_dark_right(batch=3, size=32) -> torch.Tensor:
    x = torch.zeros(batch, 1, size, size)
    x[..., 4:28, 2:12] = 1.0     # bright blob on the left
    x[..., 4:28, 20:30] = -1.0   # dark blob on the right (images are normalised, so negatives are real)
    return x


def resnet18_gray() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=14)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


class StemBodyHead(nn.Module):
    """The layout of cxrlib.training.model's flatten head, rebuilt here so the test does not depend on it."""

    def __init__(self):
        super().__init__()
        backbone = resnet18_gray()
        backbone.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.stem = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.ReLU())
        self.body = nn.Sequential(*list(backbone.children())[:-2])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512 * 2 * 2, 14))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def test_maps_follow_the_target_finding():
    model = two_region_model()
    cams = GradCAM(model)(bright_left_dark_right(), 0)
    other = GradCAM(model)(bright_left_dark_right(), 1)
    assert cams.shape == (3, 32, 32) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() == pytest.approx(1.0)
    assert cams[:, :, :16].sum() > 10 * cams[:, :, 16:].sum()    # finding 0 looks left
    assert other[:, :, 16:].sum() > 10 * other[:, :, :16].sum()  # finding 1 looks right
    per_image = GradCAM(model)(bright_left_dark_right(2), [0, 1])
    assert np.allclose(per_image[0], cams[0]) and np.allclose(per_image[1], other[1])


def test_target_layer_is_found_for_our_layouts():
    assert isinstance(find_target_layer(two_region_model()), nn.Conv2d)
    resnet = resnet18_gray()
    assert find_target_layer(resnet) is resnet.layer4
    ours = StemBodyHead()
    assert find_target_layer(ours) is ours.body
    densenet = torchvision.models.densenet121(weights=None)
    assert find_target_layer(densenet) is densenet.features


def test_resnet_maps_in_eval_mode_without_side_effects():
    model = StemBodyHead()
    model.train()
    model.labels = list(FINDINGS)   # what load_trained gives a checkpoint's model: a finding by name needs them
    images = torch.randn(2, 1, 64, 64)
    with GradCAM(model) as cam:
        a = cam(images, 3)
        b = cam(images, "Edema")
        c = cam(images, 9)
    assert a.shape == (2, 64, 64) and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b)  # Edema is finding 3
    assert not np.allclose(a, c)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    assert not model.body._forward_hooks
    single = GradCAM(model)(images[1:], 3)  # eval-mode batch norm: a map depends on its own image only
    assert np.allclose(single[0], a[1], atol=1e-5)


def test_explicit_layer_and_bad_requests():
    model = two_region_model()
    cams = GradCAM(model, target_layer=model[1])(bright_left_dark_right(1), 0)
    assert cams[0, :, :16].sum() > cams[0, :, 16:].sum()
    with pytest.raises(ValueError):
        GradCAM(model)(bright_left_dark_right(1), 5)
    with pytest.raises(ValueError):
        GradCAM(model)(torch.zeros(1, 32, 32), 0)
    with pytest.raises(Exception, match="target_layer"):
        GradCAM(model, target_layer=model[4])(bright_left_dark_right(1), 0)


def test_overlay():
    image = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    cam = np.linspace(0, 1, 256).reshape(16, 16)
    rgb = overlay(image, cam, alpha=0.5)
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert np.array_equal(overlay(image, cam, alpha=0.0), np.repeat(image[..., None], 3, axis=2))
    assert rgb[-1, -1, 0] > rgb[-1, -1, 2]  # hot end of 'inferno' is yellow: red over blue
    assert np.array_equal(overlay(image, np.zeros_like(cam)), np.repeat(image[..., None], 3, axis=2))  # blank map
    with pytest.raises(ValueError):
        overlay(image, cam[:8])


def test_small_images_get_a_grad_cam_layer_with_at_least_an_8_by_8_map():
    from cxrlib.evaluation.explain import MIN_CAM_SIDE, GradCAM
    from cxrlib.training.model import build

    torch.manual_seed(0)
    small = build("resnet18", "avgpool", image_size=64, weights="none")
    small.labels = list(FINDINGS)
    cam = GradCAM(small, image_size=64)
    assert cam.target_layer is small.body[5] and "its map 8 x 8 at 64 px" in cam.note   # layer2; layer4 is 2 x 2
    assert "layer2 (body.5)" in cam.note   # torchvision's name, not only the Sequential's index
    maps = cam(torch.rand(2, 1, 64, 64), "Edema")
    assert maps.shape == (2, 64, 64)
    # 8 x 8 cells upsampled: more distinct values per row than layer4's 2 x 2 map could give
    assert len(np.unique(np.round(maps[0, 32], 4))) > 8 or maps[0].max() == 0
    large = build("resnet18", "avgpool", image_size=256, weights="none")
    assert GradCAM(large, image_size=256).target_layer is large.body and MIN_CAM_SIDE == 8
