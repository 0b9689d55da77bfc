"""The supervisor's settings (the runner itself is tested on real processes in
tests/e2e/test_supervisor.py)."""

from __future__ import annotations

from pathlib import Path

from corral.agent.supervisor import ServerSettings


def test_settings_hide_the_api_key():
    settings = ServerSettings(model=Path("m.gguf"), api_key="sekrit")
    assert "sekrit" not in repr(settings)
    assert settings.host == "127.0.0.1" and settings.binary is None


def test_a_fixed_port_is_kept_and_a_free_one_is_picked_once():
    from corral.agent.supervisor import Supervisor

    fixed = Supervisor(ServerSettings(Path("m.gguf"), port=18081), name="fixed")
    assert [fixed._pick_port(), fixed._pick_port()] == [18081, 18081]
    free = Supervisor(ServerSettings(Path("m.gguf")), name="free")
    first = free._pick_port()
    assert free._pick_port() == first  # still free: the server keeps its address
