"""The supervised server's host prompt cache: sized for the machine, passed to
llama-server, told to balancers (an optional protocol field), counted by prefix routing."""

from pathlib import Path

import msgspec

from corral.agent.supervisor import default_cache_ram_mib
from corral.balancer.management import to_report
from corral.core import Condition
from corral.llamacpp.process import llama_server_command
from corral.protocol import messages as m


def test_default_is_an_eighth_of_memory_within_bounds():
    assert default_cache_ram_mib(16 * 1024) == 2048
    assert default_cache_ram_mib(512) == 256
    assert default_cache_ram_mib(1024 * 1024) == 8192
    assert 256 <= default_cache_ram_mib() <= 8192


def test_llama_server_gets_cache_ram_only_when_set():
    base = {"port": 1, "slots": 2, "ctx_size": 100}
    command = llama_server_command(Path("ls"), Path("m.gguf"), cache_ram_mib=512, **base)
    assert command[command.index("--cache-ram") + 1] == "512"
    assert "--cache-ram" not in llama_server_command(Path("ls"), Path("m.gguf"), **base)


def test_status_carries_it_and_omits_it_when_unknown():
    status = m.ServerStatus(condition=Condition.READY, cache_ram_mib=2048)
    wire = msgspec.json.encode(status)
    assert msgspec.json.decode(wire, type=m.ServerStatus).cache_ram_mib == 2048
    assert b"cache_ram_mib" not in msgspec.json.encode(m.ServerStatus(condition=Condition.READY))
    assert to_report(status).cache_ram_mib == 2048
