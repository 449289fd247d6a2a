from __future__ import annotations

from dlhw.tracking.cli import api_key_configured, resolve_mode


def test_flag_wins(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("disabled") == ("disabled", "--wandb-mode")


def test_env_aliases(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode(None)[0] == "offline"


def test_no_key_means_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    mode, why = resolve_mode(None)
    assert mode == "offline" and "wandb login" in why


def test_key_in_netrc_or_env_means_online(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.ai")
    assert api_key_configured() and resolve_mode(None)[0] == "online"
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode(None)[0] == "online"
