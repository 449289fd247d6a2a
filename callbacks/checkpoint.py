"""Last and best checkpoints, written atomically in the background, announced to the other callbacks."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlhw.core.events import Callback, Session, Stopped, is_rank_zero
from dlhw.core.files import BackgroundWriter, plain

LAST, BEST, FINISHED = "last.pt", "best.pt", "finished.pt"


class Checkpoint(Callback):
    """``last.pt`` every epoch and on a stop, ``best.pt`` when ``monitor`` rises, ``finished.pt`` at the end, written in
    the background; ``on_checkpoint_saved`` announces the best at each improvement or at the end (``upload``)."""

    def __init__(self, directory: str | Path, *, monitor: str, upload: str = "improved",
                 upload_last: bool = False) -> None:
        if upload not in ("improved", "end"):
            raise ValueError(f"upload must be 'improved' or 'end', got {upload!r}")
        self.directory, self.monitor = Path(directory), monitor
        self.upload, self.upload_last = upload, upload_last
        self.best: float | None = None
        self.best_metadata: dict[str, Any] = {}
        self.writer = BackgroundWriter()
        self.pending: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer: Session, epoch: int, metrics: Mapping[str, float]) -> None:
        trainer.gather_rng()  # every rank's random state to rank 0's checkpoint: a collective, every rank calls it
        if not is_rank_zero():
            return
        if self.pending:
            self._announce(trainer)
        metadata = {"epoch": epoch + 1, "step": trainer.global_step,
                    **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        value = metrics.get(self.monitor)
        improved = value is not None and (self.best is None or float(value) > self.best)
        best_path, best = str(self.directory / BEST), []
        if improved:
            best = [({"epoch": epoch + 1, "global_step": trainer.global_step, "metrics": dict(metrics),
                      "config": plain(trainer.config), "trainer": trainer.state_dict()}, best_path)]
            self.best = float(value)
            self.best_metadata = metadata
            trainer.summary[f"best/{self.monitor}"] = self.best
        # The callbacks' states go in last.pt, this one's included: best is updated first.
        self.writer.submit(trainer.checkpoint_state(), self.directory / LAST, also=best)
        last_epoch = epoch + 1 == trainer.epochs or trainer.should_stop
        best_aliases = ["best"] + (["last"] if self.upload_last and last_epoch and improved else [])
        # Announced once written: "improved" at the next epoch's end, so the fit never waits on the disk.
        if (improved and self.upload == "improved") or (last_epoch and self.upload == "end" and self.best is not None):
            self.pending.append(dict(path=best_path, aliases=best_aliases, metadata=self.best_metadata))
        if last_epoch:
            if self.upload_last and not improved:
                self.pending.append(dict(path=str(self.directory / LAST), aliases=["last"], metadata=metadata))
            self._announce(trainer)

    def _announce(self, trainer: Session) -> None:
        self.writer.wait()
        for event in self.pending:
            trainer.fire("on_checkpoint_saved", **event)
        self.pending.clear()

    def on_fit_end(self, trainer: Session) -> None:
        if not is_rank_zero():
            return
        self.writer.submit({"name": trainer.name, "summary": plain(trainer.summary)}, self.directory / FINISHED)
        self.writer.wait()

    def on_exception(self, trainer: Session, exception: BaseException) -> None:
        # The last epoch that finished is on disk for a resume; a write error here is secondary.
        try:
            self.writer.wait()
            if isinstance(exception, Stopped):  # every rank stops after the same step
                trainer.gather_rng()
                if is_rank_zero():
                    # A stop signal lands between steps: the state is whole, so it is saved where it is.
                    self.writer.submit(trainer.checkpoint_state(), self.directory / LAST)
                    self.writer.wait()
                    exception.checkpoint = str(self.directory / LAST)
        except RuntimeError as error:
            print(f"checkpoint: {error}", file=sys.stderr)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "monitor": self.monitor, "best_metadata": self.best_metadata}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")
        self.best_metadata = dict(state.get("best_metadata") or {})
