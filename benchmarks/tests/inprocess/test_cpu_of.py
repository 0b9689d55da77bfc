"""The CPU a contender's processes used counts their children too (nginx's workers)."""

from __future__ import annotations

import subprocess
import sys
import time

from comparison.common import children_of
from comparison.routing import _cpu_of


def test_a_parents_cpu_includes_its_busy_children() -> None:
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    script = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {spin!r}])"
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 10
        while not children_of([parent.pid]) and time.monotonic() < deadline:
            time.sleep(0.02)
        (child,) = children_of([parent.pid])
        used = _cpu_of([parent.pid])
        while (used or 0.0) < 0.3 and time.monotonic() < deadline + 20:  # a busy machine
            time.sleep(0.05)
            used = _cpu_of([parent.pid])
        # the child spun 0.6 s; the parent only started it and waits (well under 0.3 s)
        assert used is not None and used >= 0.3
        assert child not in children_of([child])
    finally:
        parent.wait(timeout=30)
    assert parent.returncode == 0
