"""The hand-designed filters experiment: every kernel on every photo, and a check of each on generated gratings."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import to_tensor

from dlhw.core.errors import UsageError
from dlhw.core.events import Callback, Session
from dlhw.core.registry import Registry
from dlhw.trainers.settings import make, setting, settings, values
from dlhw.viz.kernels import DIRECTIONS, apply_kernel, grating_gain, high_frequency_energy

# scikit-image ships these inside the package, so they need no download.
SAMPLE_IMAGES = ("camera", "astronaut", "coffee")
SHARPENERS = {"sharpen_horizontal": "horizontal", "sharpen_vertical": "vertical", "sharpen_diagonal": "diagonal"}
BLURS = ("box_blur", "gaussian_blur")
KERNELS: Registry[torch.Tensor] = Registry("filter")


@KERNELS.register()
def box_blur() -> torch.Tensor:
    """Mean of the 3x3 neighbourhood (response (1 + 2 cos w) / 3 per axis)."""
    return torch.full((3, 3), 1.0 / 9.0)


@KERNELS.register()
def gaussian_blur() -> torch.Tensor:
    """Binomial [1, 2, 1]/4 outer product: its response (1 + cos w) / 2 per axis falls to 0 without ringing."""
    b = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    return torch.outer(b, b)


def _line_sharpen(direction: str) -> torch.Tensor:
    # A 1D unsharp mask along one line through the centre: response 3 - 2 cos(w) along it (1 on
    # flat regions, 5 at the finest alternation), 1 across it. Diagonal: cells [2, 0] and [0, 2].
    dy, dx = DIRECTIONS[direction]
    k = torch.zeros(3, 3)
    k[1, 1] = 3.0
    k[1 + dy, 1 + dx] = k[1 - dy, 1 - dx] = -1.0
    return k


for _name, _direction in SHARPENERS.items():
    KERNELS.register(_name)(partial(_line_sharpen, _direction))
kernel = KERNELS.create  # the 3x3 kernel registered as a name


@settings
class FiltersSettings:
    image: tuple[str, ...] = setting((), "photo to filter (repeatable); default: scikit-image's camera, astronaut "
                                         "and coffee", metavar="PATH", repeat=True)
    filters: tuple[str, ...] = setting((), f"kernels to apply (default: all of {', '.join(KERNELS.names())})",
                                       metavar="NAME")
    max_size: int = setting(512, "longer image side after downscaling, to keep tables light (default 512)", min=8)
    seed: int = setting(0, "random seed (the global --seed)", flag=False)


def filters_settings(args: argparse.Namespace) -> FiltersSettings:
    given = values(FiltersSettings, args)
    return make(FiltersSettings, {**given, "filters": given["filters"] or KERNELS.names()})


def _downscale(img: torch.Tensor, max_size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    scale = max_size / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(img.unsqueeze(0), size=size, mode="area").squeeze(0)


def load_image(path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"image not found: {path}; pass an existing file to --image")
    try:
        with Image.open(path) as im:
            return to_tensor(im.convert("L") if im.mode in ("L", "LA", "I;16", "I", "F", "1") else im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"cannot read image {path} ({exc}); pass a PNG or JPEG to --image") from None


@dataclass
class Checks:
    """What the kernels do to generated signals: the numbers behind the pass/fail verdicts."""
    gains: dict[str, dict[str, float]] = field(default_factory=dict)  # filter -> direction -> gain
    hf_ratio: dict[str, float] = field(default_factory=dict)  # filter -> output/input HF energy
    constant_error: dict[str, float] = field(default_factory=dict)  # filter -> max |out - c|

    def passed(self, name: str) -> bool:
        """Sharpeners prefer their direction, blurs lower high frequencies, every kernel keeps a constant image."""
        gains, own = self.gains[name], SHARPENERS.get(name)
        selective = own is None or all(gains[own] > g for d, g in gains.items() if d != own)
        return self.constant_error[name] < 1e-6 and selective and (name not in BLURS or self.hf_ratio[name] < 1)

    def metrics(self) -> dict[str, float]:
        return {**{f"check/gain/{name}/{d}": g for name, per_dir in self.gains.items() for d, g in per_dir.items()},
                **{f"check/hf_ratio/{name}": r for name, r in self.hf_ratio.items()},
                "check/constant_max_error": max(self.constant_error.values()),
                "check/passed": float(all(self.passed(n) for n in self.gains))}


def run_checks(names: Iterable[str], *, size: int = 64, period: float = 4.0, seed: int = 0) -> Checks:
    """Gains on oriented gratings, high-frequency energy of noise, and a constant image, per kernel."""
    checks = Checks()
    noise = torch.rand(1, size, size, generator=torch.Generator().manual_seed(seed))
    flat = torch.full((3, 16, 16), 0.37)
    for name in names:
        k = kernel(name)
        checks.gains[name] = {d: grating_gain(k, d, size, period) for d in DIRECTIONS}
        checks.hf_ratio[name] = high_frequency_energy(apply_kernel(noise, k)) / high_frequency_energy(noise)
        checks.constant_error[name] = float((apply_kernel(flat, k) - flat).abs().max())
    return checks


def run_filters(images: Sequence[tuple[str, torch.Tensor]], filters: Sequence[str], callbacks: Iterable[Callback] = (),
                config: Mapping[str, Any] | None = None) -> Session:
    """Each photo and the kernels to the callbacks (a step per photo), then :func:`run_checks` as the one epoch."""
    kernels = {name: kernel(name) for name in filters}  # an unknown name fails before any work
    session = Session(callbacks, name="filters", config=config, steps_per_epoch=len(images))
    with session.running():
        session.fire("on_epoch_start", epoch=0)
        for i, (image_name, img) in enumerate(images):
            session.step_end(i, {"image_name": image_name, "image": img, "kernels": kernels})
        checks = session.results["checks"] = run_checks(filters, seed=int(session.config.get("seed", 0)))
        session.epoch_end(0, checks.metrics())
    return session


def images_from_args(paths: Sequence[str] | None, max_size: int) -> list[tuple[str, torch.Tensor]]:
    """The user's ``--image`` files (all checked before any work), else scikit-image's bundled samples."""
    import skimage.data

    images = ([(Path(p).stem, load_image(p)) for p in paths] if paths else
              [(name, to_tensor(getattr(skimage.data, name)())) for name in SAMPLE_IMAGES])
    return [(name, _downscale(img, max_size)) for name, img in images]

