import pytest
import torch
from torch import nn

from zigzag.errors import ZigzagError
from zigzag.modelimport import MODELS
from zigzag.models import build_model, count_parameters, has_batch_norm


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("resnet18", {}, 11_173_962),
        ("resnet34", {}, 21_282_122),
        ("vgg16", {}, 14_728_266),
        ("cnn", {"in_channels": 1, "batch_norm": False}, 113_162),
    ],
)
def test_parameter_counts_at_width_1(name, kwargs, expected):
    assert count_parameters(build_model(name, **kwargs)) == expected


def test_count_parameters_skips_frozen():
    model = build_model("cnn", width=0.25, batch_norm=False)
    total = count_parameters(model)
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == total - model[0].weight.numel()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shape(name, in_channels):
    torch.manual_seed(0)
    model = build_model(name, width=0.25, in_channels=in_channels, num_classes=7)
    out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_cnn_takes_28_pixel_images():
    model = build_model("cnn", width=0.5, in_channels=1, image_size=28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model[-1].in_features == 64 * 3 * 3


def test_resnet_takes_28_pixel_images():
    model = build_model("resnet18", width=0.125, in_channels=1, image_size=28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg16_head_follows_image_size():
    model = build_model("vgg16", width=0.125, image_size=64)
    assert model[-1].in_features == 64 * 2 * 2
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_too_small_image_raises():
    with pytest.raises(ZigzagError, match="too small for vgg16"):
        build_model("vgg16", image_size=28)


def test_width_scales_channels():
    full = build_model("resnet18")
    quarter = build_model("resnet18", width=0.25)
    assert quarter.conv1.out_channels == 16
    assert quarter.linear.in_features == 128
    assert count_parameters(quarter) < count_parameters(full)
    cnn = build_model("cnn", width=0.5, in_channels=1, batch_norm=False)
    convs = [m.out_channels for m in cnn if isinstance(m, nn.Conv2d)]
    assert convs == [16, 32, 64]


def test_tiny_width_keeps_one_channel():
    model = build_model("cnn", width=0.001, batch_norm=False)
    assert [m.out_channels for m in model if isinstance(m, nn.Conv2d)] == [1, 1, 1]


def test_batch_norm_flag_adds_exactly_bn_parameters():
    with_bn = build_model("cnn", in_channels=1, batch_norm=True)
    without = build_model("cnn", in_channels=1, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert count_parameters(with_bn) - count_parameters(without) == 2 * (32 + 64 + 128)


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_batch_norm_always_on_for_vgg_and_resnet(name):
    model = build_model(name, width=0.125, batch_norm=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_unknown_name_lists_valid_models():
    with pytest.raises(ZigzagError) as info:
        build_model("resnet50")
    message = str(info.value)
    assert "\n" not in message
    assert "resnet50" in message
    for name in MODELS:
        assert name in message


@pytest.mark.parametrize("width", [0, -0.5, float("nan")])
def test_non_positive_width_raises(width):
    with pytest.raises(ZigzagError, match="width"):
        build_model("cnn", width=width)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_parameters(name):
    torch.manual_seed(123)
    first = build_model(name, width=0.125)
    torch.manual_seed(123)
    second = build_model(name, width=0.125)
    pairs = list(zip(first.state_dict().items(), second.state_dict().items()))
    assert pairs
    for (key_a, a), (key_b, b) in pairs:
        assert key_a == key_b
        assert torch.equal(a, b)
    torch.manual_seed(124)
    third = build_model(name, width=0.125)
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), third.parameters()))


@pytest.mark.parametrize("name", MODELS)
def test_the_declared_batch_norm_of_each_builtin_is_its_built_modules(name):
    """The config check reads ``modelimport.builtin_has_batch_norm`` instead of building: it must say what the
    built module has, with and without ``batch_norm``."""
    from zigzag.modelimport import builtin_has_batch_norm

    for batch_norm in (False, True):
        with torch.device("meta"):
            built = has_batch_norm(build_model(name, batch_norm=batch_norm))
        assert builtin_has_batch_norm(name, batch_norm) == built
