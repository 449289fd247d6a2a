"""Tiny generated stand-ins for CIFAR-10 and Fashion-MNIST in the files torchvision's datasets read,
so the real loaders and recipes run without the real (undownloadable) files."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10


def write_cifar10(root: Path, monkeypatch, per_batch: int = 10, test: int = 10, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/``: data_batch_1..5, test_batch (pickled dicts of a (N, 3072) uint8 array in
    CHW order and a label list) and batches.meta; ``CIFAR10``'s MD5 list is patched to these files'."""
    rng = np.random.default_rng(seed)
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    files = {"batches.meta": {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        files[name] = {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(),
                       "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"{i}.png" for i in range(n)]}
    md5 = {}
    for name, content in files.items():
        data = pickle.dumps(content)
        (folder / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return folder


def write_fashion_mnist(root: Path, train: int = 20, test: int = 10, seed: int = 0) -> Path:
    """``root/FashionMNIST/raw/``: the four IDX files, extracted as torchvision's download leaves them."""
    rng = np.random.default_rng(seed)
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        for kind, array in (("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))),
                            ("labels-idx1-ubyte", rng.integers(0, 10, n))):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
            (folder / f"{prefix}-{kind}").write_bytes(header + array.astype(np.uint8).tobytes())
    return folder
