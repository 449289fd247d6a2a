"""Which W&B mode a run uses, decided without ever prompting for a login or touching the network."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

# --out's default: the sweep runner sets it so that a trial's files land under the sweep's own --out.
OUT_ENV = "DLHW_OUT"
# --resume's default: the sweep runner sets "auto" when it starts an interrupted trial again.
RESUME_ENV = "DLHW_RESUME"
# Spellings W&B itself accepts in WANDB_MODE.
_ENV_ALIASES = {"run": "online", "dryrun": "offline", "online": "online", "offline": "offline", "disabled": "disabled"}


def api_key_configured() -> bool:
    """``WANDB_API_KEY`` or a netrc entry for W&B's host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str | None) -> tuple[str, str]:
    """``(mode, reason)``: the flag wins, then ``WANDB_MODE``, then whether a key exists."""
    if requested:
        return requested, "--wandb-mode"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in _ENV_ALIASES:
        return _ENV_ALIASES[env], "WANDB_MODE"
    if api_key_configured():
        return "online", "a W&B API key is configured"
    return "offline", "no W&B API key configured; run `wandb login` to go online"
