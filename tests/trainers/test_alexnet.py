"""Both AlexNet variants: output and feature shapes, exact parameter counts, initialisation."""

from __future__ import annotations

import pytest
import torch

from dlhw.core.errors import UsageError
from dlhw.trainers.classification import MODELS


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def linear(i: int, o: int) -> int:
    return i * o + o


COURSE = (conv(3, 64, 3) + conv(64, 192, 3) + conv(192, 384, 3) + conv(384, 256, 3) + conv(256, 256, 3)
          + linear(1024, 4096) + linear(4096, 4096) + linear(4096, 10))
D2L = (conv(1, 96, 11) + conv(96, 256, 5) + conv(256, 384, 3) + conv(384, 384, 3) + conv(384, 256, 3)
       + linear(6400, 4096) + linear(4096, 4096) + linear(4096, 10))


@pytest.mark.parametrize(
    "variant, in_channels, size, features, params",
    [("course", 3, 32, (256, 2, 2), COURSE), ("d2l", 1, 224, (256, 5, 5), D2L)],
)
def test_shapes_and_parameter_counts(variant, in_channels, size, features, params):
    assert (COURSE, D2L) == (23_272_266, 46_764_746)
    model = MODELS.create(variant, in_channels=in_channels, num_classes=10).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.input_size == size
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        assert model.features(x).shape == (2, *features)
        assert model(x).shape == (2, 10)
    assert [name for name, _ in model.conv_layers()] == ["conv1", "conv2", "conv3", "conv4", "conv5"]


def test_layer_details():
    course = MODELS.create("course", in_channels=3, num_classes=100)
    convs = [m for _, m in course.conv_layers()]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 5 and convs[0].stride == (2, 2)
    assert course.classifier[-1].out_features == 100
    dropouts = [m.p for m in course.classifier if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.5, 0.5]
    assert all(not m.bias.detach().any() for m in course.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    d2l = [m for _, m in MODELS.create("d2l", in_channels=1, num_classes=10).conv_layers()]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in d2l[:2]] == [((11, 11), (4, 4), 96), ((5, 5), (1, 1), 256)]


def test_unknown_variant_suggests():
    assert MODELS.names() == ["course", "d2l"]
    with pytest.raises(UsageError, match="did you mean course"):
        MODELS.create("corse", in_channels=3, num_classes=10)
