"""nginx as the suite runs it passes large request bodies through.

Its workers cannot write the client-body temp directory the suite gives it (the
master runs as root, the workers as nobody), so a body larger than nginx's buffer
(16 KiB by default) got 500 and every request of the shared-prefix workload failed.
The config keeps bodies in memory; this sends one of 64 KiB through a real nginx.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from support.procs import Fleet, wait_until

from comparison.contenders import Backend, nginx_config
from corral.llamacpp.process import free_port

pytestmark = pytest.mark.e2e


def test_a_64_kib_body_goes_through_nginx(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    fleet = Fleet(tmp_path)
    process = None
    try:
        _, sim = fleet.sim("sim")
        port = free_port()
        work = tmp_path / "nginx"
        work.mkdir()
        conf = work / "nginx.conf"
        conf.write_text(nginx_config("nginx-sticky", [Backend("sim", sim, 2)], port, work))
        process = subprocess.Popen([nginx, "-p", str(work), "-c", str(conf), "-g", "daemon off;"])

        def post() -> int:
            body = {"messages": [{"role": "user", "content": "x" * 65536}], "max_tokens": 2}
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "X-Session-Id": "s1"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status

        assert wait_until(lambda: post() == 200, 15, "a 64 KiB body through nginx")
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        fleet.stop(failed=False)
