"""Every seed recipe end to end on whatever device is present, as a user would start it.

The recipes: ``alexnet --recipe course`` (CIFAR-10, 25 epochs), ``alexnet --recipe d2l``
(Fashion-MNIST at 224, 10 epochs), and the tutorial's ``detect --profile full`` (10 epochs) for
option 1 and option 2. Each runs in a fresh process with W&B offline; seconds per epoch and
images per second come from the run's own ``fit_seconds`` (training and evaluation, no start-up),
the total from the wall clock. Data missing under ``--data`` is generated in the real on-disk
format (CIFAR-10's python batches, Fashion-MNIST's IDX files, Penn-Fudan's folders) with the real
sizes, so the timing is the real recipe's whatever the pixels. Detectors start from random init
(``--weights none``): nothing is downloaded.

    python benchmarks/recipes.py                                  # all four, the recipes' epochs
    python benchmarks/recipes.py --epochs 1 --limit 64 --only d2l  # a quick smoke run (any device)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlhw.tracking.readback import run_summary  # noqa: E402
from dlhw.trainers.datasets import dataset_path, resolve_dataset  # noqa: E402
from dlhw.trainers.detection.dataset import generate_pennfudan  # noqa: E402

RECIPES = {
    # name: (launch.py arguments, training images per epoch at full size)
    "course": (["alexnet", "--recipe", "course"], 45_000),
    "d2l": (["alexnet", "--recipe", "d2l"], 54_000),
    "detect_option1": (["detect", "--profile", "full", "--option", "1", "--skip-photo", "--weights", "none"], 120),
    "detect_option2": (["detect", "--profile", "full", "--option", "2", "--skip-photo", "--weights", "none"], 120),
}


# torchvision checks CIFAR-10's files against their MD5s: a generated copy's are handed to it by this stub,
# run as ``python -c STUB MD5_JSON launch.py ARGS...``.
WITH_CHECKSUMS = """import json, runpy, sys
from torchvision.datasets import CIFAR10
md5 = json.loads(sys.argv.pop(1))
CIFAR10.train_list = [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
CIFAR10.test_list = [["test_batch", md5["test_batch"]]]
CIFAR10.meta = {**CIFAR10.meta, "md5": md5["batches.meta"]}
sys.argv.pop(0)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def write_cifar10(root: Path, per_batch: int, rng: np.random.Generator) -> dict[str, str]:
    """CIFAR-10's python batches (5 training, 1 test) of random pixels and its label names; their MD5s."""
    folder = dataset_path("cifar10", root)
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                    "labels": rng.integers(0, 10, per_batch).tolist()}
             for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]}
    md5 = {}
    for name, content in {**files, "batches.meta": {"label_names": [f"class{i}" for i in range(10)]}}.items():
        (folder / name).write_bytes(pickle.dumps(content))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    return md5


def write_fashion_mnist(root: Path, n_train: int, n_test: int, rng: np.random.Generator) -> None:
    """Fashion-MNIST's four IDX files of random pixels, extracted as torchvision's download leaves them."""
    folder = dataset_path("fashion-mnist", root)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                            ("labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
            (folder / f"{prefix}-{kind}").write_bytes(header + array.tobytes())


def run_recipe(name: str, data: Path, pennfudan: Path, out: Path, epochs: int | None, limit: int | None,
               cifar10_md5: dict[str, str] | None) -> dict:
    """Run one recipe in a fresh process; its timings from the run's summary."""
    args, images = RECIPES[name]
    cmd = [sys.executable, str(ROOT / "launch.py"), *args, "--out", str(out)]
    cmd += ["--data", str(pennfudan if name.startswith("detect") else data)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    if limit is not None:
        if name.startswith("detect"):
            cmd += ["--limit", str(limit), "--holdout", str(max(1, limit // 4))]
            images = limit - max(1, limit // 4)
        else:
            batch = 256 if name == "course" else 128
            cmd += ["--limit-batches", str(max(1, limit // batch))]
            images = max(1, limit // batch) * batch
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    started = time.perf_counter()
    stub = ["-c", WITH_CHECKSUMS, json.dumps(cifar10_md5)] if cifar10_md5 and name == "course" else []
    proc = subprocess.run([cmd[0], *stub, *cmd[1:]], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"recipe": name, "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    summary = run_summary(next(out.glob("wandb/offline-run-*")))["summary"]
    n_epochs = int(summary.get("epoch", epochs or 0)) or epochs or 1
    fit = float(summary["fit_seconds"])
    result = {"recipe": name, "command": " ".join(["launch.py", *cmd[2:]]), "epochs": n_epochs,
              "seconds_per_epoch": round(fit / n_epochs, 2), "images_per_second": round(images * n_epochs / fit, 1),
              "fit_seconds": round(fit, 1), "wall_seconds": round(wall, 1)}
    for key in ("test/acc", "val/bbox_AP", "val/segm_AP", "train/bbox_AP", "train/sec_per_iter"):
        if isinstance(summary.get(key), (int, float)):
            result[key] = round(float(summary[key]), 4)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="folder with cifar-10-batches-py/ and FashionMNIST/raw/ (default: generated)")
    ap.add_argument("--pennfudan", type=Path, default=None, help="a PennFudanPed folder (default: generated)")
    ap.add_argument("--only", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    ap.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (smoke runs)")
    ap.add_argument("--limit", type=int, default=None,
                    help="about N training images per epoch (and only N generated), for smoke runs")
    args = ap.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    results, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or tmp / "data"
        generated, cifar10_md5 = [], None
        if resolve_dataset("auto", data)[0] != "cifar10":
            cifar10_md5 = write_cifar10(data, 10_000 if args.limit is None else max(64, args.limit // 5), rng)
            generated.append("cifar10")
        if not (dataset_path("fashion-mnist", data) / "t10k-labels-idx1-ubyte").is_file():
            n = 60_000 if args.limit is None else max(128, args.limit)
            write_fashion_mnist(data, n, max(64, n // 6), rng)
            generated.append("fashion-mnist")
        pennfudan = args.pennfudan
        if pennfudan is None and any(name.startswith("detect") for name in args.only):
            pennfudan = generate_pennfudan(tmp / "PennFudanPed", n=170 if args.limit is None else args.limit,
                                           seed=0, size=(360, 480))
            generated.append("penn-fudan")
        for name in args.only:
            results.append(run_recipe(name, data, pennfudan, tmp / f"out-{name}", args.epochs, args.limit,
                                      cifar10_md5))
    print(json.dumps({"benchmark": "recipes", "device": device, "torch": torch.__version__,
                      "generated_data": generated, "recipes": results,
                      "total_seconds": round(time.perf_counter() - started, 1)}, indent=1))


if __name__ == "__main__":
    main()
