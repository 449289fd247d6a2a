"""Pictures of a classifier for W&B: learned conv1 filters and feature maps per epoch, and an
interactive confusion matrix of the test set at the end."""

from __future__ import annotations

from collections.abc import Mapping

import wandb

from callbacks.tables import EpochTable
from core.events import Callback, EPOCH_AXIS, Loop
from viz.feature_maps import feature_map_grid, filter_grid, upscale
from viz.images import to_uint8


class FilterGrid(Callback):
    """``viz/conv1_filters``: the first conv layer's learned filters as one image, every epoch."""

    def on_epoch_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        picture = filter_grid(trainer.first_layer_filters())
        trainer.log({"viz/conv1_filters": wandb.Image(to_uint8(picture), caption=f"conv1 after epoch {epoch + 1}")},
                    axis=EPOCH_AXIS)


class FeatureMapTable(Callback):
    """``viz/feature_maps``: epoch | input | label | layer | feature maps, for a fixed set of
    validation images (the same ones every epoch), one row per image and conv layer; one
    incremental table that each epoch adds its rows to."""

    def __init__(self, n_images: int = 4, max_maps: int = 16) -> None:
        self.n_images = n_images
        self.max_maps = max_maps
        self.table = EpochTable(["epoch", "input", "label", "layer", "feature_maps"])

    def on_fit_start(self, trainer: Loop) -> None:
        self.x, y = trainer.loaders.fixed_batch("val", self.n_images)
        classes = trainer.loaders.classes
        self.labels = [classes[int(i)] for i in y]
        # One wandb.Image per input, reused in all of its rows.
        self.inputs = [
            wandb.Image(to_uint8(upscale(trainer.loaders.denormalise(img), 96)), caption=label)
            for img, label in zip(self.x, self.labels)
        ]

    def on_epoch_end(self, trainer: Loop, epoch: int, metrics: Mapping[str, float]) -> None:
        rows = []
        for layer, maps in trainer.feature_maps(self.x):
            for i, fmap in enumerate(maps):
                shown = min(self.max_maps, fmap.shape[0])
                picture = wandb.Image(to_uint8(feature_map_grid(fmap, self.max_maps)),
                                      caption=f"{layer}: {shown} of {fmap.shape[0]} maps, {fmap.shape[1]}x{fmap.shape[2]}")
                rows.append([epoch + 1, self.inputs[i], self.labels[i], layer, picture])
        trainer.log({"viz/feature_maps": self.table.with_rows(rows)}, axis=EPOCH_AXIS)


class ConfusionMatrix(Callback):
    """``test/confusion_matrix``: W&B's interactive confusion matrix of the final test predictions."""

    def on_test_end(self, trainer: Loop, metrics: Mapping[str, float]) -> None:
        chart = wandb.plot.confusion_matrix(
            y_true=trainer.test_targets, preds=trainer.test_predictions, class_names=list(trainer.loaders.classes),
            title="test confusion matrix",
        )
        trainer.log({"test/confusion_matrix": chart}, axis=EPOCH_AXIS)
