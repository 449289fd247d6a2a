"""The classifier panels on the suite's classification trainer: learned conv1 filters and feature
maps every epoch, the confusion matrix of the test set at the end."""

from __future__ import annotations

from collections.abc import Mapping

from dlhw.callbacks.panels import ConfusionMatrix, FeatureMaps, LearnedFilters
from dlhw.core.events import EPOCH_AXIS, Callback, Loop


class FilterGrid(Callback):
    """``viz/conv1_filters`` after every epoch."""

    reports_only = True

    def on_fit_start(self, trainer: Loop) -> None:
        self.panel = LearnedFilters(trainer.model)

    def on_epoch_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        trainer.log(self.panel.payload(f"conv1 after epoch {epoch + 1}"), axis=EPOCH_AXIS)


class FeatureMapTable(Callback):
    """``viz/feature_maps`` after every epoch, of the same validation images, each conv's maps after its ReLU."""

    reports_only = True

    def __init__(self, n_images: int = 4, max_maps: int = 16) -> None:
        self.n_images, self.max_maps = n_images, max_maps

    def on_fit_start(self, trainer: Loop) -> None:
        x, y = trainer.loaders.fixed_batch("val", self.n_images)
        layers = list(trainer.model.features)
        after_relu = {name: layers[layers.index(conv) + 1] for name, conv in trainer.model.conv_layers()}
        self.panel = FeatureMaps(trainer.model, x, labels=[trainer.loaders.classes[int(i)] for i in y],
                                 layers=after_relu, pictures=[trainer.loaders.denormalise(img) for img in x],
                                 max_maps=self.max_maps)

    def on_epoch_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        trainer.log(self.panel.payload(epoch + 1), axis=EPOCH_AXIS)


class TestConfusionMatrix(Callback):
    """``test/confusion_matrix`` of the final test predictions."""

    reports_only = True

    def on_test_end(self, trainer: Loop, metrics: Mapping[str, float]) -> None:
        panel = ConfusionMatrix(list(trainer.loaders.classes))
        trainer.log(panel.payload(trainer.test_targets, trainer.test_predictions), axis=EPOCH_AXIS)
