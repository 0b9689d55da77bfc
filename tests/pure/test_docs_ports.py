"""The docs' example commands reach a balancer started with the default ports.

README and docs/runners.md once sent agents to ``lb:8081`` and clients to
``lb:8080`` while a balancer listens on 8060 (management) and 8061 (inference) by
default: copied as written, they reached nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.config import BALANCER

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HOSTS = r"(?:lb|corral|balancer-host|balancer\.example|b1|b2)"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_example_addresses_use_the_default_ports(doc: Path) -> None:
    text = doc.read_text()
    management = BALANCER.default("management_addr")
    inference = BALANCER.default("inference_addr")
    management_port = (management[0] if isinstance(management, tuple) else management).port
    wrong = []
    for m in re.finditer(rf"--management-addr {HOSTS}:(\d+)", text):
        if int(m.group(1)) != management_port:
            wrong.append(m.group(0))
    for m in re.finditer(rf"(?:curl |http://){HOSTS}:(\d+)/v1", text):
        if int(m.group(1)) != inference.port:
            wrong.append(m.group(0))
    assert wrong == [], f"{doc.name}: not the default ports ({management_port}, {inference.port})"
