"""What a detector's output shows at a glance: how many detections clear each score threshold."""

from __future__ import annotations

import torch

THRESHOLDS = (0.5, 0.7)


def people_counts(scores: torch.Tensor) -> dict[str, float]:
    """Detections at each score threshold, and the mean score of those at the lowest one."""
    counts: dict[str, float] = {f"people@{t}": int((scores >= t).sum()) for t in THRESHOLDS}
    kept = scores[scores >= THRESHOLDS[0]]
    counts["mean_score"] = float(kept.mean()) if len(kept) else 0.0
    return counts
