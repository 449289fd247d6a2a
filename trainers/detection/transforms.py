"""Training augmentation with albumentations: image and instance masks move together (boxes come from the
masks; resizing and normalisation are the detector's own)."""

from __future__ import annotations

import albumentations as A
import numpy as np


class Augment:
    """The tutorial's random horizontal flip, plus optional photometric jitter (image only)."""

    def __init__(self, *, flip: float = 0.5, jitter: float = 0.0, seed: int | None = None) -> None:
        steps: list[A.BasicTransform] = [A.HorizontalFlip(p=flip)]
        if jitter > 0:
            steps.append(A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(jitter, 0.5) / 4, p=0.8))
        self.pipeline = A.Compose(steps, seed=seed)

    def __call__(self, image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (N, H, W) uint8 masks -> the same, augmented consistently."""
        if len(masks) == 0:  # an image without pedestrians is valid; albumentations wants >= 1 mask
            return self.pipeline(image=image)["image"], masks
        out = self.pipeline(image=image, masks=masks)
        return out["image"], np.asarray(out["masks"], dtype=np.uint8)
