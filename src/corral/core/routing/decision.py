"""What a policy answers: dispatch to a backend, wait in the buffer, or reject."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dispatch:
    backend_id: str


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    message: str
    models: tuple[str, ...] = ()


Decision = Dispatch | Wait | Reject
