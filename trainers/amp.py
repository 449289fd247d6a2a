"""Mixed precision for the CUDA step: bf16 where the GPU has it (no loss scaling), else fp16 with a gradient
scaler; CPU runs stay in float32."""

from __future__ import annotations

import contextlib

import torch


class Precision:
    """Autocast, loss scaling and the optimizer step for one device."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.dtype: torch.dtype | None = None
        if cuda:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)

    @property
    def name(self) -> str:
        """``bf16``, ``fp16+scaler`` or ``fp32``: what a run's config records."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16+scaler"}.get(self.dtype, "fp32")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's autocast context (a no-op in float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled when fp16 needs it."""
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping or reading them)."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step (skipped by the scaler on inf/NaN gradients); True when it happened."""
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # The scaler lowers its scale exactly when it skipped the step.
        return self.scaler.get_scale() >= before
