"""The data a run trained on, as a W&B dataset artifact, so its models link back to it."""

from __future__ import annotations

from pathlib import Path

import wandb

from dlhw.core.events import Callback, Loop, is_rank_zero


class DatasetArtifact(Callback):
    """At fit start, declares ``path`` (a file or folder) as the dataset artifact ``name``: ``file://``
    references with checksums, nothing uploaded. Online the run uses it (models link to it in W&B's
    lineage); offline W&B cannot mark it used, so the run logs it. Place it after the W&B logger."""

    reports_only = True

    def __init__(self, name: str, path: str | Path, *, metadata: dict | None = None) -> None:
        self.name, self.path, self.metadata = name, Path(path).resolve(), dict(metadata or {})

    def on_fit_start(self, trainer: Loop) -> None:
        run = wandb.run
        if run is None or not is_rank_zero() or not self.path.exists():
            return
        artifact = wandb.Artifact(self.name, type="dataset", metadata={"path": str(self.path), **self.metadata})
        artifact.add_reference(self.path.as_uri(), name=self.path.name if self.path.is_file() else None)
        if run.offline:
            run.log_artifact(artifact)
        else:
            run.use_artifact(artifact)
