"""Tiny generated stand-ins for CIFAR-10 and Fashion-MNIST in exactly torchvision's on-disk
formats, so the real loaders and recipes run without the real (undownloadable) files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_cifar10(root: Path, per_batch: int = 10, test: int = 10, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/``: data_batch_1..5, test_batch (pickled dicts of a (N, 3072)
    uint8 array in CHW order and a label list) and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        batch = {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(),
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, fh)
    return folder


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(root: Path, train: int = 20, test: int = 10, gz: bool = True, seed: int = 0) -> Path:
    """``root/FashionMNIST/raw/``: the four IDX files (gzipped like the downloads, or extracted)."""
    rng = np.random.default_rng(seed)
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        for kind, array in (("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))),
                            ("labels-idx1-ubyte", rng.integers(0, 10, n))):
            data = _idx(array)
            path = folder / f"{prefix}-{kind}"
            if gz:
                with gzip.open(str(path) + ".gz", "wb") as fh:
                    fh.write(data)
            else:
                path.write_bytes(data)
    return folder
