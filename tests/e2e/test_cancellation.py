"""A client that gives up on a long non-streamed generation frees its slot within 2 s,
with Corral's agent watching the server and through Corral, as on a bare llama-server.

llama-server notices such a client only after a second with no task result on its
queue; an agent that reads ``/slots`` too often hides it (see corral.agent.runners.llamacpp).
Each check reads the server's ``/slots`` once, at the end, so the test itself does not
hide anything."""

from __future__ import annotations

import json
import socket
import time

import pytest
from support.procs import Fleet, get_json, wait_until

pytestmark = pytest.mark.e2e

LONG = json.dumps({"prompt": "Once upon a time", "n_predict": 100000}).encode()


def give_up(port: int, path: str = "/completion", after: float = 1.0) -> None:
    """Send a long non-streamed generation, wait ``after`` seconds, close the socket."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(LONG), LONG)
        )
        time.sleep(after)
        sock.settimeout(0)
        with pytest.raises(BlockingIOError):  # still generating: no answer yet
            sock.recv(1)


def busy_slots(server_port: int) -> int:
    status, slots = get_json(f"http://127.0.0.1:{server_port}/slots")
    assert status == 200, slots
    return sum(s["is_processing"] for s in slots)


def test_an_abandoned_request_frees_its_slot_while_the_agent_watches(fleet: Fleet):
    _, server = fleet.llama_server("a", slots=2)
    _, _, management = fleet.balancer()
    fleet.agent("a", server, management)  # reads the server every 0.1 s

    give_up(server)
    time.sleep(2.0)
    assert busy_slots(server) == 0, "the server did not notice the client leave"


def test_an_abandoned_request_through_corral_frees_the_servers_slot(fleet: Fleet):
    _, server = fleet.llama_server("a", slots=2)
    _, inference, management = fleet.balancer()
    fleet.agent("a", server, management)

    give_up(inference, "/v1/completions")
    time.sleep(2.0)
    assert busy_slots(server) == 0, "the server still generates for a client that left"
    # and the balancer learns it from the agent's next read of /slots
    wait_until(
        lambda: get_json(f"http://127.0.0.1:{inference}/health")[1]["slots_processing"] == 0,
        3,
        "the balancer to see the slot free",
    )
