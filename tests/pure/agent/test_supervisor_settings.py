"""The supervisor's settings (the runner itself is tested on real processes in
tests/e2e/test_supervisor.py)."""

from __future__ import annotations

from pathlib import Path

from corral.agent.supervisor import ServerSettings


def test_settings_hide_the_api_key():
    settings = ServerSettings(model=Path("m.gguf"), api_key="sekrit")
    assert "sekrit" not in repr(settings)
    assert settings.host == "127.0.0.1" and settings.binary is None
