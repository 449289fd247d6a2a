"""The homework's two AlexNets: ``course`` (CIFAR-10, 32x32) and ``d2l`` (224x224), both features + classifier."""

from __future__ import annotations

from torch import Tensor, nn

from dlhw.core.registry import Registry

MODELS: Registry[AlexNet] = Registry("AlexNet variant")


class AlexNet(nn.Module):
    """``features`` (convs, ReLUs, pools) then ``classifier``; ``input_size``: the square input's side."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, *, input_size: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.input_size = input_size

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:  # ("conv1", layer), ... in forward order
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        return [(f"conv{i}", m) for i, m in enumerate(convs, start=1)]


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=padding), nn.ReLU(inplace=True)]


@MODELS.register("course")
def course_alexnet(*, in_channels: int = 3, num_classes: int = 10) -> AlexNet:
    """The course notebook's CIFAR-10 AlexNet for 32x32 inputs, initialised as there."""
    features = nn.Sequential(
        *_conv(in_channels, 64, 3, stride=2), nn.MaxPool2d(2),  # 32 -> 16 -> 8
        *_conv(64, 192, 3), nn.MaxPool2d(2),  # 8 -> 4
        *_conv(192, 384, 3),
        *_conv(384, 256, 3),
        *_conv(256, 256, 3), nn.MaxPool2d(2),  # 4 -> 2: 256 * 2 * 2 = 1024 features
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(256 * 2 * 2, 4096), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )
    model = AlexNet(features, classifier, input_size=32)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@MODELS.register("d2l")
def d2l_alexnet(*, in_channels: int = 1, num_classes: int = 10) -> AlexNet:
    """Dive into Deep Learning's AlexNet (section 8.1) for 224x224 inputs, initialised as d2l's ``init_cnn``."""
    features = nn.Sequential(
        *_conv(in_channels, 96, 11, stride=4, padding=1), nn.MaxPool2d(3, stride=2),  # 224 -> 54 -> 26
        *_conv(96, 256, 5, padding=2), nn.MaxPool2d(3, stride=2),  # 26 -> 12
        *_conv(256, 384, 3),
        *_conv(384, 384, 3),
        *_conv(384, 256, 3), nn.MaxPool2d(3, stride=2),  # 12 -> 5: 256 * 5 * 5 = 6400 features
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )
    model = AlexNet(features, classifier, input_size=224)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
    return model
