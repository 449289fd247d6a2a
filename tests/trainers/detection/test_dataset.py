"""Penn-Fudan reading, the generated stand-in, splits, augmentation and the user errors around data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dlhw.trainers.detection import dataset as ds
from dlhw.trainers.detection.dataset import (
    Augment,
    PennFudan,
    generate_pennfudan,
    instance_masks,
    make_target,
    read_pennfudan,
    resolve_data,
    split,
)
from dlhw.core.errors import UsageError


def _check_targets(samples):
    instances = 0
    for i, s in enumerate(samples):
        t = make_target(instance_masks(s.mask), i)
        h, w = s.mask.shape
        b = t["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert t["masks"].shape == (len(b), h, w) and (t["labels"] == 1).all() and (t["iscrowd"] == 0).all()
        assert int(t["image_id"]) == i and (t["area"] > 0).all()
        instances += len(b)
    return instances


def test_real_pennfudan(shared_data):
    samples = read_pennfudan(shared_data / "PennFudanPed")
    assert len(samples) == 170
    # The current release labels more pedestrians than the 345 of the paper and the tutorial text.
    assert _check_targets(samples) == 423
    train, held = split(len(samples), seed=0)
    assert len(held) == 50 and len(train) == 120 and sorted(train + held) == list(range(170))
    assert split(len(samples), seed=0) == (train, held) and split(len(samples), seed=1) != (train, held)


def test_generated_dataset_has_the_same_format(tmp_path):
    root = generate_pennfudan(tmp_path / "gen", n=8, seed=3, size=(60, 80))
    names = sorted(p.name for p in (root / "PNGImages").iterdir())
    assert len(names) == 8 and all((root / "PedMasks" / n.replace(".png", "_mask.png")).is_file() for n in names)
    samples = read_pennfudan(root)
    for s in samples:  # ids are 0 for background and 1..N, consecutive, like PedMasks
        ids = np.unique(s.mask)
        assert ids[0] == 0 and list(ids[1:]) == list(range(1, len(ids)))
        assert s.image.dtype == np.uint8 and s.image.shape[:2] == s.mask.shape
    assert _check_targets(samples) > 0
    image, target = PennFudan(samples)[0]
    assert image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1


def test_image_without_pedestrians_is_valid(tmp_path):
    root = generate_pennfudan(tmp_path / "gen", n=1, size=(40, 50))
    Image.fromarray(np.zeros((np.asarray(Image.open(next((root / "PedMasks").iterdir()))).shape), np.uint8)).save(
        next((root / "PedMasks").iterdir()))
    _, target = PennFudan(read_pennfudan(root), Augment(flip=1.0))[0]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape[0] == 0


def test_missing_or_corrupt_files_name_the_file(tmp_path):
    root = generate_pennfudan(tmp_path / "gen", n=3, size=(40, 50))
    mask = root / "PedMasks" / "Generated00002_mask.png"
    mask.unlink()
    with pytest.raises(UsageError, match="missing file .*Generated00002_mask.png"):
        read_pennfudan(root)
    (root / "PNGImages" / "Generated00002.png").unlink()
    (root / "PNGImages" / "Generated00003.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match="cannot read .*Generated00003.png"):
        read_pennfudan(root)
    with pytest.raises(UsageError, match="is not a Penn-Fudan folder"):
        read_pennfudan(resolve_data(str(tmp_path / "nowhere"))[0])


def test_no_data_falls_back_to_generated_when_the_download_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DLHW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ds, "URL", "http://127.0.0.1:9/PennFudanPed.zip")  # nothing listens: fails at once
    monkeypatch.setattr(ds, "generate_pennfudan", lambda root, seed: generate_pennfudan(root, n=4, seed=seed, size=(40, 50)))
    root, source = resolve_data(None, seed=0)
    assert source == "generated" and len(read_pennfudan(root)) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Penn-Fudan unavailable" in err[0] and "not real data" in err[0]
    assert not list((tmp_path / "cache").glob("*.part"))


def test_flip_moves_image_masks_and_boxes_together(shared_data):
    s = read_pennfudan(shared_data / "PennFudanPed", limit=3)[2]
    masks = instance_masks(s.mask)
    image, flipped = Augment(flip=1.0, jitter=0.0, seed=0)(s.image, masks)
    w = s.image.shape[1]
    assert np.array_equal(flipped, masks[:, :, ::-1]) and np.array_equal(image, s.image[:, ::-1])
    before, after = make_target(masks, 0)["boxes"], make_target(flipped, 0)["boxes"]
    # Boxes hold the first and last covered pixel, so a flip maps column c to w - 1 - c.
    assert np.allclose(after[:, [0, 2]].numpy(), (w - 1 - before[:, [2, 0]]).numpy())
    assert np.allclose(after[:, [1, 3]].numpy(), before[:, [1, 3]].numpy())
    # Jitter changes colours only: the pedestrians' pixels stay where the masks say.
    jittered, same = Augment(flip=0.0, jitter=0.4, seed=1)(s.image, masks)
    assert np.array_equal(same, masks) and not np.array_equal(jittered, s.image)


def test_boxes_are_the_masks_inclusive_extent_as_in_the_tutorial():
    masks = np.zeros((4, 6, 8), np.uint8)
    masks[0, 1:4, 2:6] = 1  # rows 1..3, columns 2..5
    masks[1, 5, 7] = 1  # one pixel: a box with no width or height, dropped
    masks[2, 0:2, 0:3] = 1
    # masks[3] is empty (a pedestrian cropped away): dropped
    target = make_target(masks, 4)
    assert target["boxes"].tolist() == [[2, 1, 5, 3], [0, 0, 2, 1]]
    assert target["area"].tolist() == [6, 2] and target["masks"].shape == (2, 6, 8)
    assert np.array_equal(target["masks"][0].numpy(), masks[0])


def test_real_targets_match_the_tutorials_reading(shared_data):
    from torchvision.ops import masks_to_boxes

    for i, s in enumerate(read_pennfudan(shared_data / "PennFudanPed", limit=5)):
        # The tutorial: one mask per id in the PNG (0 is background), masks_to_boxes, area of the box.
        mask = torch.from_numpy(s.mask)
        ids = mask.unique()[1:]
        expected = masks_to_boxes((mask == ids[:, None, None]).to(torch.uint8))
        target = make_target(instance_masks(s.mask), i)
        assert torch.equal(target["boxes"], expected)
        assert torch.equal(target["area"], (expected[:, 3] - expected[:, 1]) * (expected[:, 2] - expected[:, 0]))
