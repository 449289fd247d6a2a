"""The batched, device-resident data path against the per-image albumentations pipeline it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from dlhw.trainers.datasets import load, make_loaders, transforms
from dlhw.trainers.device_data import DeviceBatches, augment, epoch_generator

DRAWS = 3000
YY, XX = np.mgrid[:32, :32]


def _shape() -> np.ndarray:
    """An off-centre bright bar: flips move its centroid across the middle, rotation tilts it."""
    img = np.zeros((32, 32, 1), np.uint8)
    img[6:14, 4:20] = 200
    return img


def _measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: centroid, whether it lies right of the centre, and the bar's tilt in degrees."""
    z = images.astype(np.float64)
    m = z.sum((1, 2))
    cx, cy = (z * XX).sum((1, 2)) / m, (z * YY).sum((1, 2)) / m
    dx, dy = XX - cx[:, None, None], YY - cy[:, None, None]
    mxx, myy, mxy = (z * dx**2).sum((1, 2)) / m, (z * dy**2).sum((1, 2)) / m, (z * dx * dy).sum((1, 2)) / m
    tilt = np.degrees(0.5 * np.arctan2(2 * mxy, mxx - myy))
    flipped = cx > 15.5
    return {"mass": m, "flipped": flipped, "cx_folded": np.where(flipped, 31 - cx, cx), "cy": cy, "tilt": np.abs(tilt)}


@pytest.fixture(scope="module")
def draws() -> tuple[dict, dict]:
    img = _shape()
    per_image = transforms(32, [0.0], [1.0], augment=True, flips=True, seed=1)
    ours = np.stack([per_image(image=img)["image"][0].numpy() for _ in range(DRAWS)])
    batch = torch.from_numpy(img).permute(2, 0, 1)[None].float().repeat(DRAWS, 1, 1, 1)
    batched = augment(batch, flips=True, generator=epoch_generator(1, 0, torch.device("cpu")))[:, 0].numpy() / 255
    return _measure(ours), _measure(batched)


def test_flip_rate_is_one_half_in_both(draws):
    for stats in draws:
        assert abs(stats["flipped"].mean() - 0.5) < 0.04


@pytest.mark.parametrize("key", ["cx_folded", "cy", "tilt"])
def test_crop_offsets_and_rotation_match_in_distribution(draws, key):
    reference, batched = draws
    # Same seeds every run, so the test is deterministic; the KS test would flag a shift of
    # a tenth of a pixel or a wrong rotation range.
    assert ks_2samp(reference[key], batched[key]).pvalue > 1e-3
    assert abs(reference[key].std() - batched[key].std()) < 0.1 * reference[key].std()


def test_rotation_spread_is_ten_degrees(draws):
    # Uniform in [-10, 10] degrees: |angle| has mean 5; the bar starts level.
    for stats in draws:
        assert 4.5 < stats["tilt"].mean() < 5.5


def test_mass_is_kept_but_for_what_leaves_the_frame(draws):
    reference, batched = draws
    assert abs(reference["mass"].mean() - batched["mass"].mean()) < 0.005 * reference["mass"].mean()


def test_evaluation_batches_equal_the_per_image_transform():
    splits = load("digits", "unused")
    mean, std = splits.mean_std()
    plain = transforms(32, mean, std, augment=False, flips=False)
    expected = torch.stack([plain(image=i)["image"] for i in splits.val[0]])
    got = torch.cat([x for x, _ in DeviceBatches(*splits.val, size=32, mean=mean, std=std, batch_size=50, device="cpu")])
    diff = (expected - got).abs() * 255 * std[0]  # in grey levels
    # cv2 resizes in fixed point: a grey level either way at most, rarely.
    assert float(diff.max()) <= 1.0 + 1e-4 and float(diff.mean()) < 0.15


def test_an_epoch_of_training_batches_has_the_statistics_of_the_per_image_loader():
    splits = load("digits", "unused")
    kw = dict(size=32, batch_size=64, augment=True)
    reference = torch.cat([x for seed in (0, 1) for x, _ in make_loaders(splits, **kw, seed=seed).train])
    on_device = make_loaders(splits, **kw, seed=0, on_device=True)
    batched = torch.cat([x for _ in range(2) for x, _ in on_device.train])
    # Per-channel mean and std after normalisation, over two epochs of each.
    assert abs(float(reference.mean()) - float(batched.mean())) < 0.02
    assert abs(float(reference.std()) - float(batched.std())) < 0.02
    labels = torch.cat([y for _, y in on_device.train])
    assert sorted(labels.tolist()) == sorted(splits.train[1].tolist())  # every image once per epoch


def test_batches_are_deterministic_for_a_seed_and_differ_across_epochs_and_seeds():
    splits = load("digits", "unused")

    def epochs(seed: int, n: int = 2) -> list[torch.Tensor]:
        b = make_loaders(splits, size=32, batch_size=256, augment=True, seed=seed, on_device=True).train
        return [next(iter(b))[0] for _ in range(n)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], other[0])
    resumed = make_loaders(splits, size=32, batch_size=256, augment=True, seed=0, on_device=True).train
    resumed.set_epoch(1)
    assert torch.equal(next(iter(resumed))[0], first[1])
