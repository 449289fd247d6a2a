"""The classification data: digits, and CIFAR-10 / Fashion-MNIST read from generated files in
torchvision's exact on-disk formats; missing files and failed downloads as one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.trainers.standins import write_cifar10, write_fashion_mnist
from dlhw.core.errors import UsageError
from dlhw.trainers import datasets
from dlhw.trainers.datasets import load, make_loaders, resolve_dataset


def test_digits_split_is_fixed_and_disjoint():
    a, b = load("digits", "unused"), load("digits", "unused")
    assert [len(p[0]) for p in (a.train, a.val, a.test)] == [1258, 180, 359]
    assert a.train[0].shape[1:] == (8, 8, 1) and a.train[0].dtype == np.uint8 and a.train[0].max() == 255
    assert np.array_equal(a.test[1], b.test[1]) and a.classes == [str(i) for i in range(10)] and not a.flips
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert len(rows(a.test[0]) & rows(a.train[0])) < 5  # the digits set holds a few exact duplicates
    # Read from scikit-learn's bundled file without importing scikit-learn: the same images and labels as its loader.
    from sklearn.datasets import load_digits

    d = load_digits()
    theirs = sorted((np.round(x * (255 / 16)).astype(np.uint8).tobytes(), y) for x, y in zip(d.images, d.target))
    assert sorted((x.tobytes(), y) for p in (a.train, a.val, a.test) for x, y in zip(*p)) == theirs


def test_cifar10_from_python_batches(tmp_path, monkeypatch):
    write_cifar10(tmp_path, monkeypatch, per_batch=10, test=6)
    s = load("cifar10", tmp_path)
    assert (len(s.train[0]), len(s.val[0]), len(s.test[0])) == (45, 5, 6)
    assert s.train[0].shape[1:] == (32, 32, 3) and s.channels == 3 and s.flips
    assert s.classes[0] == "airplane" and len(s.classes) == 10


def test_fashion_mnist_from_idx_files(tmp_path):
    write_fashion_mnist(tmp_path, train=20, test=7)
    s = load("fashion-mnist", tmp_path)
    assert (len(s.train[0]), len(s.val[0]), len(s.test[0])) == (18, 2, 7)
    assert s.train[0].shape[1:] == (28, 28, 1) and s.classes[-1] == "Ankle boot"


def test_a_file_torchvision_cannot_parse_is_a_usage_error(tmp_path):
    folder = write_fashion_mnist(tmp_path)
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4)
    with pytest.raises(UsageError, match="fashion-mnist not found under .*--download"):
        load("fashion-mnist", tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_missing_files_name_download_and_digits(tmp_path, name):
    with pytest.raises(UsageError) as info:
        load(name, tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and "--download" in msg and "--dataset digits" in msg and str(tmp_path) in msg


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    # torchvision's own downloader, pointed at a local port where nothing listens: the connection
    # is refused at once, as from a machine without network.
    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(UsageError, match=r"could not download cifar10 .*--download.*--dataset digits") as caught:
        load("cifar10", tmp_path, download=True)
    assert "\n" not in str(caught.value) and "Connection refused" in str(caught.value)


def test_auto_prefers_cifar10_when_present(tmp_path, monkeypatch):
    assert resolve_dataset("auto", tmp_path)[0] == "digits"
    write_cifar10(tmp_path, monkeypatch)
    name, why = resolve_dataset("auto", tmp_path)
    assert name == "cifar10" and "found" in why
    assert resolve_dataset("digits", tmp_path)[0] == "digits"


def test_without_val_trains_on_every_training_image_and_validates_on_test(tmp_path):
    write_fashion_mnist(tmp_path, train=20, test=7)
    s = load("fashion-mnist", tmp_path)
    d2l = s.without_val()
    assert len(d2l.train[0]) == 20 and d2l.val is s.test and d2l.test is s.test
    # The same 20 images, none lost or repeated.
    assert sorted(map(bytes, d2l.train[0])) == sorted(map(bytes, np.concatenate([s.train[0], s.val[0]])))


def test_loaders_without_normalisation_scale_pixels_to_unit_range():
    s = load("digits", "unused")
    loaders = make_loaders(s, size=8, batch_size=4, augment=False, seed=0, normalize=False)
    x, _ = next(iter(loaders.val))
    assert loaders.mean == [0.0] and loaders.std == [1.0]
    assert torch.allclose(x[:, 0], torch.from_numpy(s.val[0][:4, :, :, 0]).float() / 255, atol=1e-6)


def test_loaders_resize_normalise_and_augment():
    s = load("digits", "unused")
    loaders = make_loaders(s, size=32, batch_size=64, augment=True, seed=0)
    x, y = next(iter(loaders.val))
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    x_all = torch.cat([b for b, _ in loaders.train])
    assert abs(float(x_all.mean())) < 0.2 and 0.6 < float(x_all.std()) < 1.2  # normalised by train stats
    a, _ = loaders.fixed_batch("val", 4)
    b, _ = loaders.fixed_batch("val", 4)
    assert torch.equal(a, b)
    assert 0 <= float(loaders.denormalise(a[0]).min()) and float(loaders.denormalise(a[0]).max()) <= 1
    # The same image comes out differently each time it passes the augmenting pipeline.
    tf = loaders.train.dataset.transform
    img = s.train[0][0]
    assert not torch.equal(tf(image=img)["image"], tf(image=img)["image"])
    assert datasets.transforms(32, [0.5], [0.5], augment=False, flips=False)(image=img)["image"].shape == (1, 32, 32)
