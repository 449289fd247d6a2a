"""The training loop, the checkpoint a resume needs (down to the step and the random generators), mixed precision.
A fit fires on_fit_start (on_epoch_start, on_batch_end*, on_validation_end, on_epoch_end)* on_test_end on_fit_end."""

from __future__ import annotations

import contextlib
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import numpy as np
import torch

from dlhw.core.distributed import Dist
from dlhw.core.events import STOP_SIGNALS, Callback, Session
from dlhw.core.files import plain

# Raised whenever a field of checkpoint_state changes meaning: an older program refuses a newer checkpoint.
CHECKPOINT_FORMAT = 1


class Engine(Session):
    """A training loop; subclasses implement ``train_epoch`` and ``evaluate``. ``dist``: the torchrun job."""

    def __init__(self, callbacks: Iterable[Callback] = (), *, epochs: int, config: Mapping[str, Any] | None = None,
                 name: str = "experiment", steps_per_epoch: int | None = None, dist: Dist | None = None) -> None:
        super().__init__(callbacks, name=name, config=config, epochs=epochs, steps_per_epoch=steps_per_epoch)
        self.dist = dist if dist is not None else Dist()
        # Applied after on_fit_start, whose callbacks may draw random numbers the uninterrupted run drew too.
        self._pending_rng: dict[str, Any] | None = None
        self._epoch_data_rng: dict[str, Any] = {}  # a mid-epoch resume replays the epoch's batches from here
        self._ranks_rng: list[dict[str, Any]] | None = None
        self.resume_batch = 0  # steps of the current epoch a resumed run already trained

    # What a subclass trains, saved and restored below; ``resumed``: its other attributes a checkpoint holds.
    model: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    precision: Precision | None = None
    resumed: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """The weights and what evaluating them needs (the small checkpoint a W&B artifact holds)."""
        return {"model": self.model.state_dict()} if self.model is not None else {}

    def training_state(self) -> dict[str, Any]:
        """What continuing the training needs beyond :meth:`state_dict`: optimizer, scheduler, loss scaler."""
        return {**{key: part.state_dict() for key, part in self._training_parts().items()},
                **{name: getattr(self, name) for name in self.resumed}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`, with a :meth:`training_state` merged into it on a resume."""
        if self.model is not None:
            self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            for key, part in self._training_parts().items():
                part.load_state_dict(state[key])
            for name in self.resumed:
                setattr(self, name, state[name])

    def _training_parts(self) -> dict[str, Any]:
        scaler = self.precision.scaler if self.precision is not None else None
        parts = {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": scaler}
        return {key: part for key, part in parts.items() if part is not None}

    def data_generators(self) -> dict[str, Any]:
        """The training data's own random generators by name (torch, NumPy or ``random.Random``)."""
        return {}

    def _rng_state(self) -> dict[str, Any]:
        # Mid-epoch, the epoch's first batches are replayed from the epoch's start.
        data = self._epoch_data_rng if self.batch_in_epoch > 0 else generators_state(self.data_generators())
        return {"global": global_rng_state(), "data": data}

    def gather_rng(self) -> None:
        """Collect every rank's random state for rank 0's next :meth:`checkpoint_state` (a collective)."""
        self._ranks_rng = self.dist.all_gather_object(self._rng_state()) if self.dist.distributed else None

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume needs, in tensors and plain containers that ``weights_only`` reads."""
        rng = self._rng_state()
        if self.dist.distributed and self._ranks_rng is not None:
            rng["ranks"] = self._ranks_rng
        return {"format": CHECKPOINT_FORMAT, "name": self.name, "config": plain(self.config),
                "epoch": self.epoch + (0 if self.batch_in_epoch else 1), "batch": self.batch_in_epoch,
                "global_step": self.global_step, "summary": plain(self.summary),
                "trainer": {**self.state_dict(), **self.training_state()},
                "callbacks": {key: plain(cb.state_dict()) for key, cb in callback_keys(self.callbacks)}, "rng": rng}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Put back what :meth:`checkpoint_state` returned; the next :meth:`fit` continues from it."""
        self.epoch, self.batch_in_epoch, self.global_step = state["epoch"], state["batch"], state["global_step"]
        self.resume_batch = self.batch_in_epoch
        self.summary.update(state["summary"])
        self.load_state_dict(state["trainer"])
        saved = state["callbacks"]
        for key, cb in callback_keys(self.callbacks):
            if key in saved:
                cb.load_state_dict(saved[key])
        self._pending_rng = state["rng"]

    def check_stop(self) -> None:
        """As :meth:`Session.check_stop`, agreed over the ranks (SIGTERM wins) so all stop after one step."""
        if self.dist.distributed:
            got = self.dist.all_reduce_sum({str(int(sig)): float(self.stop_signal == sig) for sig in STOP_SIGNALS})
            if self.stop_signal is None:
                self.stop_signal = next((sig for sig in sorted(STOP_SIGNALS, reverse=True) if got[str(int(sig))]), None)
        super().check_stop()

    def train_epoch(self, epoch: int) -> None:
        """One epoch of training, :meth:`step_end` after every step."""
        raise NotImplementedError

    def evaluate(self, epoch: int) -> dict[str, float]:  # e.g. val/acc
        return {}

    def test(self) -> dict[str, float]:  # e.g. test/acc, after the last epoch
        return {}

    def fit(self) -> dict[str, Any]:
        """Run the loop (from where :meth:`load_checkpoint_state` left it) and return :attr:`summary`."""
        # The handlers outlive the loop, so a signal during the test or W&B's finish lets them complete.
        with self.stopping_on_signals(), self.running():
            first = self.epoch
            # A checkpoint of the last epoch's end has only the test left, logged against that epoch.
            self.epoch = min(first, self.epochs - 1)
            if self._pending_rng is not None:
                rng = self._pending_rng
                if self.dist.distributed and "ranks" in rng:  # this rank's own state
                    rng = rng["ranks"][self.dist.rank]
                set_global_rng_state(rng["global"])
                set_generators_state(self.data_generators(), rng["data"])
                self._pending_rng = None
            for epoch in range(first, self.epochs):
                self.epoch = epoch
                self._epoch_data_rng = generators_state(self.data_generators())
                self.fire("on_epoch_start", epoch=epoch)
                self.train_epoch(epoch)
                self.batch_in_epoch = 0
                self.epoch_end(epoch, self.evaluate(epoch))
                self.check_stop()
                if self.should_stop:
                    break
            self.test_end(self.test())
        return self.summary

    def epoch_batches(self, batches: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """``(index, batch)`` of this epoch; those a resumed run already trained on are drawn but not yielded."""
        skip, self.resume_batch = self.resume_batch, 0
        self.batch_in_epoch = skip
        yield from islice(enumerate(batches), skip, None)


class Precision:
    """Autocast and loss scaling: bf16 where the GPU has it, else fp16 with a loss scaler (``scaler``); CPU: float32."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step, True unless the scaler skipped it on inf/NaN gradients (it then lowers its scale)."""
        before = self.scaler.get_scale()  # a disabled scaler steps as the optimizer and stays at 1.0
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before


def callback_keys(callbacks: Iterable[Callback]) -> Iterator[tuple[str, Callback]]:
    """``(key, callback)``: the class name, then ``#2``, ``#3``... for later instances of one class."""
    seen: Counter[str] = Counter()
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] += 1
        yield (name if seen[name] == 1 else f"{name}#{seen[name]}"), cb


def global_rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's global generators (every CUDA device's too)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def generators_state(generators: Mapping[str, Any]) -> dict[str, Any]:
    return {name: gen.get_state() if isinstance(gen, torch.Generator) else
            gen.bit_generator.state if isinstance(gen, np.random.Generator) else gen.getstate()
            for name, gen in generators.items()}


def set_generators_state(generators: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    for name in generators.keys() & state.keys():
        gen = generators[name]
        if isinstance(gen, torch.Generator):
            gen.set_state(state[name])
        elif isinstance(gen, np.random.Generator):
            gen.bit_generator.state = state[name]
        else:
            gen.setstate(state[name])


def pipeline_generators(name: str, pipeline: Any) -> dict[str, Any]:
    """The NumPy and Python generators of a seeded albumentations pipeline and of each of its transforms."""
    parts = [pipeline, *getattr(pipeline, "transforms", [])]
    return {f"{name}.{i}.{attr}": getattr(part, attr) for i, part in enumerate(parts)
            for attr in ("random_generator", "py_random") if getattr(part, attr, None) is not None}


def check_finite(losses: Mapping[str, float], *, step: int) -> None:
    if not all(math.isfinite(v) for v in losses.values()):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        raise FloatingPointError(f"non-finite loss at step {step}: {terms}; lower --lr or check the data")
